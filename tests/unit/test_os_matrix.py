"""The docker and firewall roles on every OS they support, without a host of any of them.

One ansible-playbook run (tests/unit/os_matrix/matrix.yml) over faked hosts, all local: CentOS 7, RHEL 7, EL 8
(platform-python 3.6 and python3.11), EL 9 (python3 and python3.12), Debian 12 and Ubuntu 22.04/24.04, plus hosts
set up to stop. Each takes on its OS's facts, loads the roles' variables as a real run does and renders them
through Ansible's own templating. The EL repository tasks run for real (yum_repository only writes ini files)
against a scratch directory seeded with CentOS 7's stock repository files; the test parses what they wrote.
"""

import base64
import configparser
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ansible.release import __version__ as ANSIBLE_CORE_VERSION

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent / "os_matrix"
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
CORE_AT_LEAST_2_17 = tuple(int(part) for part in ANSIBLE_CORE_VERSION.split(".")[:2]) >= (2, 17)

SWARM_PORTS = [{"port": 2377, "proto": "tcp"}, {"port": 7946, "proto": "tcp"}, {"port": 7946, "proto": "udp"}]
SWARM_PORTS += [{"port": 4789, "proto": "udp"}]
MANAGERS = {"centos7": "10.0.0.7", "el9": "10.0.0.9", "debian12": "10.0.0.12"}
LAB_PEERS = ["172.30.97.11", "172.30.97.12", "172.30.97.13"]
DEFAULT_DAEMON = {
    "data-root": "/var/lib/docker",
    "log-driver": "json-file",
    "log-opts": {"max-size": "20m", "max-file": "5"},
    "no-new-privileges": True,
}
EL7_PIP = ["docker==4.4.4", "websocket-client==0.59.0", "requests==2.27.1", "certifi==2021.10.8"]
EL7_PIP += ["urllib3==1.26.20", "chardet==4.0.0", "idna==2.10", "jsondiff==1.3.1"]
VAULT = "https://vault.centos.org/7.9.2009"
OS_VARS_TASK = "Load the variables for this OS (family-major first, then family)."
EPEL = "https://dl.fedoraproject.org/pub/archive/epel"


def facts(distribution, version, release, python, address):
    major, minor = python.split(".")[:2]
    return {
        "os_family": "Debian" if distribution in ("Debian", "Ubuntu") else "RedHat",
        "distribution": distribution,
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0],
        "distribution_release": release,
        "python": {"version": {"major": int(major), "minor": int(minor)}, "executable": f"/usr/bin/python{python}"},
        "default_ipv4": {"address": address},
    }


def rich_rule(address, service="modelswarm-swarm"):
    return f'rule family="ipv4" source address="{address}" service name="{service}" accept'


# What the firewalld_info task would register: two rules this role wrote (one for a former peer), an
# administrator's rule, and a rule in a zone other than the default one (not the role's to touch).
FIREWALLD_INFO = {
    "firewalld_info": {
        "default_zone": "public",
        "zones": {
            "public": {
                "rich_rules": [
                    rich_rule("172.30.97.11"),
                    rich_rule("172.30.97.14"),
                    rich_rule("10.9.9.9", "postgresql"),
                ]
            },
            "trusted": {"rich_rules": [rich_rule("172.30.97.15")]},
        },
    }
}

HOSTS = {
    "centos7": {
        "facts": facts("CentOS", "7.9", "Core", "2.7", MANAGERS["centos7"]),
        "seed": "centos7-yum.repos.d",
        "vars": {"os_matrix_repo_passes": ["first", "second"]},
    },
    "rhel7": {
        "facts": facts("RedHat", "7.9", "Maipo", "2.7", "10.0.0.17"),
        "vars": {"os_matrix_repo_passes": ["first"]},
    },
    "el8": {
        "facts": facts("Rocky", "8.10", "Green Obsidian", "3.6", "10.0.0.8"),
        "vars": {"os_matrix_repo_passes": ["first"]},
    },
    "el8-py311": {"facts": facts("AlmaLinux", "8.10", "Cerulean Leopard", "3.11", "10.0.0.81")},
    "el9": {
        "facts": facts("Rocky", "9.4", "Blue Onyx", "3.9", MANAGERS["el9"]),
        "vars": {
            "os_matrix_repo_passes": ["first"],
            "docker_daemon_extra_options": {"log-opts": {"max-size": "50m"}, "live-restore": True},
            "firewall_cluster_peers": LAB_PEERS,
            "firewall_allow_esp": True,
            "firewall_allow_vrrp": True,
        },
    },
    "el9-py312": {"facts": facts("RedHat", "9.4", "Plow", "3.12", "10.0.0.91")},
    "debian12": {"facts": facts("Debian", "12.5", "bookworm", "3.11", MANAGERS["debian12"])},
    "debian12-firewalld": {
        "facts": facts("Debian", "12.5", "bookworm", "3.11", "10.0.0.13"),
        "vars": {"firewall_backend": "firewalld", "docker_install_source": "distro"},
    },
    "ubuntu2204": {
        "facts": facts("Ubuntu", "22.04", "jammy", "3.10", "10.0.0.22"),
        "vars": {"firewall_cluster_peers": LAB_PEERS, "firewall_allow_esp": True, "firewall_allow_vrrp": True},
    },
    "ubuntu2404": {
        "facts": facts("Ubuntu", "24.04", "noble", "3.12", "10.0.0.24"),
        "vars": {"firewall_cluster_peers": LAB_PEERS},
    },
    # Set up to stop: a manager group with a host whose facts were never gathered, and an IPv6 peer.
    "missing-peer": {
        "facts": facts("Debian", "12.5", "bookworm", "3.11", "10.0.0.50"),
        "vars": {"firewall_manager_group": "broken", "os_matrix_expect_firewall_stop": True},
    },
    "ipv6-peer": {
        "facts": facts("Debian", "12.5", "bookworm", "3.11", "10.0.0.60"),
        "vars": {"firewall_cluster_peers": ["fd00::1", "10.0.0.1"], "os_matrix_expect_firewall_stop": True},
    },
}


def inventory(out: Path) -> dict:
    user_rules = base64.b64encode((HERE / "ufw-user.rules").read_bytes()).decode()
    hosts = {}
    for name, spec in HOSTS.items():
        hostvars = {"os_matrix_facts": spec["facts"], **spec.get("vars", {})}
        if name.startswith("el8") and CORE_AT_LEAST_2_17:
            hostvars["os_matrix_expect_el8_stop"] = True
        hosts[name] = hostvars
    return {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "os_matrix_out": str(out),
                "os_matrix_roles": str(REPO / "roles"),
                # What the firewall role's read tasks would register on a host with these rules.
                "_firewall_ufw_user_rules": {"content": user_rules, "encoding": "base64"},
                "_firewall_firewalld_info": FIREWALLD_INFO,
            },
            "children": {
                "matrix": {"hosts": hosts},
                "managers": {"hosts": {name: {} for name in MANAGERS}},
                "broken": {"hosts": {"missing-peer": {}, "never-gathered": {}}},
            },
        }
    }


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Run the play once; return {host: {task name: [results, in order]}} and the scratch directory."""
    work = tmp_path_factory.mktemp("os-matrix")
    out = work / "out"
    for name, spec in HOSTS.items():
        (out / name / "yum.repos.d").mkdir(parents=True)
        if "seed" in spec:
            for repo_file in (HERE / spec["seed"]).iterdir():
                shutil.copy(repo_file, out / name / "yum.repos.d" / repo_file.name)
    (work / "inventory.json").write_text(json.dumps(inventory(out)))
    (work / "ansible.cfg").write_text(
        "[defaults]\nstdout_callback = ansible.posix.json\nforks = 16\nretry_files_enabled = False\n"
        f"roles_path = {REPO / 'roles'}\n[connection]\npipelining = True\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(work / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    run = subprocess.run(
        [PLAYBOOK, "-i", str(work / "inventory.json"), str(HERE / "matrix.yml")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    results: dict[str, dict[str, list]] = {}
    for play in json.loads(run.stdout)["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                results.setdefault(host, {}).setdefault(task["task"]["name"], []).append(result)
    return results, out


def rendered(matrix, host):
    return matrix[0][host]["Show the rendered values."][0]["msg"]


def read_repo(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    assert parser.read(path), f"{path} was not written"
    return parser


# --- docker: packages, Python libraries, daemon.json ---------------------------------------------------------

EXPECTED_DOCKER = {
    "centos7": (["docker-ce-26.1.4-1.el7", "docker-ce-cli-26.1.4-1.el7"], ["python2-pip", "PyYAML"], EL7_PIP, "2.7"),
    "rhel7": (["docker-ce-26.1.4-1.el7", "docker-ce-cli-26.1.4-1.el7"], ["python2-pip", "PyYAML"], EL7_PIP, "2.7"),
    "el8": (
        ["docker-ce-26.1.4-1.el8", "docker-ce-cli-26.1.4-1.el8"],
        ["python3-pip", "python3-pyyaml"],
        ["docker==5.0.3", "jsondiff==2.0.0"],
        "3.6",
    ),
    "el8-py311": (
        ["docker-ce-26.1.4-1.el8", "docker-ce-cli-26.1.4-1.el8"],
        ["python3.11-pip", "python3.11-pyyaml"],
        ["docker==7.1.0", "jsondiff==2.2.1"],
        "3.11",
    ),
    "el9": (
        ["docker-ce-26.1.4-1.el9", "docker-ce-cli-26.1.4-1.el9"],
        ["python3-pip", "python3-pyyaml"],
        ["docker==7.1.0", "jsondiff==2.2.1"],
        "3.9",
    ),
    "el9-py312": (
        ["docker-ce-26.1.4-1.el9", "docker-ce-cli-26.1.4-1.el9"],
        ["python3.12-pip", "python3.12-pyyaml"],
        ["docker==7.1.0", "jsondiff==2.2.1"],
        "3.12",
    ),
    "debian12": (
        ["docker-ce=5:26.1.4-1~debian.12~bookworm", "docker-ce-cli=5:26.1.4-1~debian.12~bookworm"],
        ["python3-docker", "python3-jsondiff", "python3-yaml"],
        [],
        "3.11",
    ),
    "ubuntu2204": (
        ["docker-ce=5:26.1.4-1~ubuntu.22.04~jammy", "docker-ce-cli=5:26.1.4-1~ubuntu.22.04~jammy"],
        ["python3-docker", "python3-jsondiff", "python3-yaml"],
        [],
        "3.10",
    ),
    "ubuntu2404": (
        ["docker-ce=5:26.1.4-1~ubuntu.24.04~noble", "docker-ce-cli=5:26.1.4-1~ubuntu.24.04~noble"],
        ["python3-docker", "python3-jsondiff", "python3-yaml"],
        [],
        "3.12",
    ),
}


@pytest.mark.parametrize("host", sorted(EXPECTED_DOCKER))
def test_docker_packages_and_python_libraries_per_os(matrix, host):
    engine, os_packages, pip_packages, python = EXPECTED_DOCKER[host]
    docker = rendered(matrix, host)["docker"]
    assert docker["install_names"] == [*engine, "containerd.io"]
    assert docker["held_packages"] == ["docker-ce", "docker-ce-cli", "containerd.io"]
    assert docker["python_os_packages"] == os_packages
    assert docker["python_pip_packages"] == pip_packages
    # pip of the interpreter Ansible runs modules with, so the SDK lands where community.docker imports it.
    assert docker["pip_executable"] == f"pip{python}"


def test_the_distro_engine_on_debian_is_the_pinned_docker_io(matrix):
    docker = rendered(matrix, "debian12-firewalld")["docker"]
    assert docker["install_names"] == ["docker.io=20.10.24+dfsg1-1+deb12u1+b6"]
    assert docker["held_packages"] == ["docker.io"]


@pytest.mark.parametrize("host", sorted(set(EXPECTED_DOCKER) - {"el9"}))
def test_daemon_json_rotates_logs(matrix, host):
    assert json.loads(rendered(matrix, host)["docker"]["daemon_json"]) == DEFAULT_DAEMON


def test_daemon_json_merges_extra_options_recursively(matrix):
    daemon = json.loads(rendered(matrix, "el9")["docker"]["daemon_json"])
    assert daemon == {**DEFAULT_DAEMON, "log-opts": {"max-size": "50m", "max-file": "5"}, "live-restore": True}


# --- docker: EL repository files --------------------------------------------------------------------------------


def test_centos7_repositories_keep_the_stock_ids_and_point_at_the_vault(matrix):
    repos = matrix[1] / "centos7" / "yum.repos.d"
    assert sorted(path.name for path in repos.iterdir()) == ["CentOS-Base.repo", "docker-ce.repo", "epel.repo"]
    base = read_repo(repos / "CentOS-Base.repo")
    stock = read_repo(HERE / "centos7-yum.repos.d" / "CentOS-Base.repo")
    # The distribution's own ids, no others: a repository under a new id would sit beside the dead stock one.
    assert sorted(base.sections()) == sorted(stock.sections()) == ["base", "centosplus", "extras", "updates"]
    for repo_id, path in [("base", "os"), ("updates", "updates"), ("extras", "extras")]:
        section = dict(base.items(repo_id))
        assert section == {
            "name": f"CentOS-7 - {repo_id.capitalize()} (vault)",
            "baseurl": f"{VAULT}/{path}/$basearch/",
            "gpgcheck": "1",
            "gpgkey": "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7",
        }, repo_id
    # Not the role's: left as shipped (disabled).
    assert dict(base.items("centosplus")) == dict(stock.items("centosplus"))


@pytest.mark.parametrize("host", ["centos7", "rhel7"])
def test_el7_gets_epel_from_its_archive(matrix, host):
    epel = read_repo(matrix[1] / host / "yum.repos.d" / "epel.repo")
    assert dict(epel.items("epel")) == {
        "name": "Extra Packages for Enterprise Linux 7 - $basearch (archive)",
        "baseurl": f"{EPEL}/7/$basearch/",
        "gpgcheck": "1",
        "gpgkey": f"{EPEL}/RPM-GPG-KEY-EPEL-7",
    }
    if host == "centos7":  # epel-release's file was there: its other sections stay, disabled
        assert sorted(epel.sections()) == ["epel", "epel-debuginfo", "epel-source"]
        assert [epel.get(section, "enabled") for section in ("epel-debuginfo", "epel-source")] == ["0", "0"]


@pytest.mark.parametrize(("host", "major"), [("centos7", 7), ("rhel7", 7), ("el8", 8), ("el9", 9)])
def test_docker_repository_per_el_release(matrix, host, major):
    repos = matrix[1] / host / "yum.repos.d"
    expected_files = {7: ["docker-ce.repo", "epel.repo"], 8: ["docker-ce.repo"], 9: ["docker-ce.repo"]}[major]
    if host == "centos7":
        expected_files = ["CentOS-Base.repo", *expected_files]
    assert sorted(path.name for path in repos.iterdir()) == expected_files  # RHEL 7 keeps its own repositories
    docker = read_repo(repos / "docker-ce.repo")
    assert docker.sections() == ["docker-ce-stable"]
    assert dict(docker.items("docker-ce-stable")) == {
        "name": "Docker CE Stable - $basearch",
        "baseurl": f"https://download.docker.com/linux/centos/{major}/$basearch/stable",
        "gpgcheck": "1",
        "gpgkey": "https://download.docker.com/linux/centos/gpg",
    }


def test_repository_tasks_change_nothing_on_a_second_pass(matrix):
    passes = {name: results for name, results in matrix[0]["centos7"].items() if name.startswith("docker : ")}
    passes = {name: results for name, results in passes.items() if name != "docker : " + OS_VARS_TASK}
    assert len(passes) == 3, passes.keys()  # vault, EPEL, Docker
    for name, (first, second) in passes.items():
        assert first["changed"], f"{name} wrote nothing on the first pass"
        assert not second["changed"], f"{name} changed on the second pass"


def test_non_el_hosts_write_no_repository_file(matrix):
    for host in ["debian12", "ubuntu2204", "ubuntu2404", "debian12-firewalld"]:
        assert list((matrix[1] / host / "yum.repos.d").iterdir()) == []


@pytest.mark.skipif(not CORE_AT_LEAST_2_17, reason="ansible-core 2.16 manages EL 8 (platform-python 3.6)")
@pytest.mark.parametrize("host", ["el8", "el8-py311"])
def test_el8_stops_under_an_ansible_core_that_cannot_manage_it(matrix, host):
    stop = matrix[0][host]["Record why the docker role stopped."][0]["msg"]
    assert "EL 8 packages the dnf and firewalld Python bindings for its platform-python 3.6 only" in stop
    assert "requirements/lock-el7.txt" in stop


# --- firewall: the rule set, and what each backend makes of it ------------------------------------------------

EXPECTED_BACKEND = {
    "centos7": "firewalld",
    "rhel7": "firewalld",
    "el8": "firewalld",
    "el8-py311": "firewalld",
    "el9": "firewalld",
    "el9-py312": "firewalld",
    "debian12": "ufw",
    "debian12-firewalld": "firewalld",  # forced
    "ubuntu2204": "ufw",
    "ubuntu2404": "ufw",
}


def peer_protocols(host: str) -> list[str]:
    settings = HOSTS[host].get("vars", {})
    return [p for p in ("esp", "vrrp") if settings.get(f"firewall_allow_{p}", False)]


@pytest.mark.parametrize("host", sorted(EXPECTED_BACKEND))
def test_firewall_rule_set_per_os(matrix, host):
    firewall = rendered(matrix, host)["firewall"]
    peers = HOSTS[host].get("vars", {}).get("firewall_cluster_peers", list(MANAGERS.values()))
    assert firewall["backend"] == EXPECTED_BACKEND[host]
    assert firewall["rules"] == {
        "anywhere_tcp_ports": [22, 80, 443],
        "peers": peers,
        "peer_ports": SWARM_PORTS,
        "peer_protocols": peer_protocols(host),
    }
    assert firewall["firewalld_rich_rules"] == [rich_rule(peer) for peer in peers]


@pytest.mark.parametrize("host", sorted(EXPECTED_BACKEND))
def test_ufw_profile_names_exactly_the_swarm_ports(matrix, host):
    profile = configparser.RawConfigParser()  # what ufw reads application profiles with
    profile.read_string(rendered(matrix, host)["firewall"]["ufw_app_profile"])
    assert profile.sections() == ["modelswarm-swarm"]
    fields = dict(profile.items("modelswarm-swarm"))
    assert set(fields) == {"title", "description", "ports"} and all(fields.values())
    assert fields["ports"] == "2377/tcp|7946/tcp|7946/udp|4789/udp"


@pytest.mark.parametrize("host", sorted(EXPECTED_BACKEND))
def test_firewalld_service_holds_the_swarm_ports_and_esp_and_vrrp_when_asked(matrix, host):
    service = ET.fromstring(rendered(matrix, host)["firewall"]["firewalld_service"].encode())
    assert service.tag == "service"
    assert service.findtext("short") == "modelswarm-swarm"
    ports = [(port.get("port"), port.get("protocol")) for port in service.findall("port")]
    assert ports == [(str(item["port"]), item["proto"]) for item in SWARM_PORTS]
    assert [protocol.get("value") for protocol in service.findall("protocol")] == peer_protocols(host)
    assert ("VRRP" in service.findtext("description")) == ("vrrp" in peer_protocols(host))


def test_ufw_comment_constants_match_their_text(matrix):
    for comment in rendered(matrix, "debian12")["firewall"]["ufw_comments"].values():
        assert comment["hex"] == comment["text"].encode().hex()


LEGACY = [f"{peer}||{proto}|{port}" for peer in LAB_PEERS[:2] for port, proto in
          [("2377", "tcp"), ("7946", "tcp"), ("7946", "udp"), ("4789", "udp")]]  # fmt: skip


@pytest.mark.parametrize(
    ("host", "stale"),
    [
        # Peers .11-.13, ESP on: earlier versions' per-port rules, and the former peer .14's profile and ESP rules.
        ("ubuntu2204", [*LEGACY, "172.30.97.14|modelswarm-swarm||", "172.30.97.14||esp|any"]),
        # ESP off: every ESP rule of the role goes too.
        ("ubuntu2404", [*LEGACY, "172.30.97.14|modelswarm-swarm||", "172.30.97.11||esp|any", "172.30.97.14||esp|any"]),
        # Peers 10.0.0.x: all of the role's lab peer rules go; SSH, public and the administrator's rules stay.
        (
            "debian12",
            [
                *LEGACY,
                *[f"172.30.97.{n}|modelswarm-swarm||" for n in (11, 12, 14)],
                *["172.30.97.11||esp|any", "172.30.97.14||esp|any"],
            ],
        ),
    ],
)
def test_ufw_rules_of_former_peers_are_found_for_removal(matrix, host, stale):
    assert sorted(rendered(matrix, host)["firewall"]["ufw_stale"]) == sorted(stale)


@pytest.mark.parametrize(
    ("host", "missing"),
    [
        # ESP and VRRP on, peers .11-.13; user.rules already holds ESP from .11 (and from .14, a former peer).
        ("ubuntu2204", ["172.30.97.12||esp|any", "172.30.97.13||esp|any",
                        *[f"172.30.97.{n}||vrrp|any" for n in (11, 12, 13)]]),
        ("ubuntu2404", []),  # neither asked for
    ],
)  # fmt: skip
def test_ufw_protocol_rules_already_there_are_not_asked_for_again(matrix, host, missing):
    assert sorted(rendered(matrix, host)["firewall"]["ufw_missing_protocol_rules"]) == sorted(missing)


@pytest.mark.parametrize(
    ("host", "stale"),
    [
        ("el9", [rich_rule("172.30.97.14")]),  # peers .11-.13
        ("centos7", [rich_rule("172.30.97.11"), rich_rule("172.30.97.14")]),  # peers 10.0.0.x
    ],
)
def test_firewalld_rules_of_former_peers_are_found_for_removal(matrix, host, stale):
    # Only the default zone's rules that name the role's service: not the postgresql rule, not the trusted zone.
    assert rendered(matrix, host)["firewall"]["firewalld_stale"] == stale


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            "missing-peer",
            "Could not find an address for every host in 'broken' (found missing-peer=10.0.0.50, never-gathered=)",
        ),
        ("ipv6-peer", "Cluster peers must be IPv4 addresses or networks; these are not: fd00::1."),
    ],
)
def test_firewall_stops_on_peers_it_cannot_write_rules_for(matrix, host, message):
    assert message in matrix[0][host]["Record why the firewall checks stopped."][0]["msg"]


def test_good_hosts_pass_the_firewall_checks(matrix):
    for host in EXPECTED_BACKEND:
        assert "Record why the firewall checks stopped." not in matrix[0][host], host
