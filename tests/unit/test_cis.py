"""The CIS Docker Benchmark checks (sections 5 and 7, and 4.1) on inspect data captured from the lab, and the
exceptions file that excuses their warnings.

Fixtures (tests/unit/cis/, environment values and TLS material removed):
- lab-node1.json: `--save-snapshot` of the demo lab's leader after issue 13's hardening: nine containers (the
  platform, the registry behind its gateway, the Docker API proxy, a hardened model replica), dockerd with
  no-new-privileges, autolock off, unencrypted overlays. Every warning left is accepted in docs/cis-exceptions.yml.
- lab-node1-before-platform-hardening.json: the same node captured midway through the wave: the model replica,
  dockerd and the registry gateway already hardened, the platform services not yet (no pids limits, writable roots,
  a root console, the Docker socket in the console, logspout and registrator). The exceptions file must not excuse
  what was fixed since.
- model-iris-before-hardening.json: a model replica's inspect from before the hardening (root, writable, no pids
  limit).
- host-probe-node1.txt: the host probe's output on node1 (three containers' NoNewPrivs, one gone pid, /proc/net/tcp).
"""

import copy
import dataclasses
import fnmatch
import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from modelswarm import cluster
from modelswarm.tooling import cis

FIXTURES = Path(__file__).parent / "cis"
LAB = FIXTURES / "lab-node1.json"
BEFORE = FIXTURES / "lab-node1-before-platform-hardening.json"
LAB_WARNINGS = ["4.1", "5.1", "5.2", "5.3", "5.8", "5.9", "5.13", "5.14", "5.32", "7.2", "7.3", "7.5"]
BEFORE_WARNINGS = ["4.1", "5.1", "5.2", "5.3", "5.8", "5.9", "5.13", "5.14", "5.29", "5.32", "7.2", "7.3", "7.5"]


def lab(path: Path = LAB) -> cis.Snapshot:
    return cis.snapshot_from_json(json.loads(path.read_text()))


def before() -> cis.Snapshot:
    return lab(BEFORE)


def subjects(snapshot: cis.Snapshot, check_id: str) -> list[str]:
    return sorted({o.subject for o in result(snapshot, check_id).offenders})


def replace(snapshot: cis.Snapshot, **changes) -> cis.Snapshot:
    return dataclasses.replace(snapshot, **changes)


def container(snapshot: cis.Snapshot, service: str) -> dict:
    return next(c for c in snapshot.containers if cis.subject_of(c) == service)


def model_only() -> tuple[cis.Snapshot, dict]:
    """The lab's snapshot with only its (hardened) model replica running; the replica is returned to change."""
    snapshot = lab()
    model = copy.deepcopy(container(snapshot, "model-iris"))
    return replace(snapshot, containers=[model]), model


def set_path(data: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    if value is DELETE:
        data.pop(last, None)
    else:
        data[last] = value


DELETE = object()


def result(snapshot: cis.Snapshot, check_id: str) -> cis.Result:
    return cis.CHECKS[check_id].run(snapshot)


# ------------------------------------------------------------------------------------------ the lab as captured
@pytest.mark.parametrize(
    ("snapshot", "warnings"), [(LAB, LAB_WARNINGS), (BEFORE, BEFORE_WARNINGS)], ids=["now", "before"]
)
def test_the_lab_leader_warns_on_the_checks_the_issue_counted_and_4_1(snapshot, warnings):
    results = cis.run_checks(lab(snapshot))
    assert [r.id for r in results if r.level == cis.WARN] == warnings
    levels = {r.id: r.level for r in results}
    assert [i for i, level in levels.items() if level == cis.NOTE] == ["5.23", "5.24", "7.6"]
    assert [i for i, level in levels.items() if level == cis.INFO] == ["5.19", "5.28", "7.7", "7.8", "7.9"]
    assert len(results) == len(cis.CHECKS) == 42


def test_offenders_are_named_by_service_with_what_is_wrong():
    snapshot = before()
    sockets = result(snapshot, "5.32").offenders
    assert {o.subject: o.detail for o in sockets} == {
        "modelswarm_console": "mounts /var/run/docker.sock",
        "modelswarm_logspout": "mounts /var/run/docker.sock",
        "modelswarm_registrator": "mounts /tmp/docker.sock",
    }
    assert all(o.container.startswith(o.subject + ".") for o in sockets)
    assert {o.subject: o.detail for o in result(snapshot, "5.8").offenders} == {"modelswarm_nginx": "host port 80,443"}
    overlays = ["ingress", "modelswarm_platform", "modelswarm-models"]
    assert [o.subject for o in result(snapshot, "7.3").offenders] == overlays
    assert result(snapshot, "7.2").note == "port 2377 listens on all interfaces (::)"


def test_what_the_hardening_changed_on_the_leader():
    now, then = lab(), before()
    platform = sorted({cis.subject_of(c) for c in then.containers} - {"model-iris"})
    assert subjects(then, "5.29") == platform and result(now, "5.29").level == cis.PASS
    assert [(o.subject, o.detail) for o in result(now, "5.32").offenders] == [
        ("modelswarm_docker-api-proxy", "mounts /var/run/docker.sock")
    ]
    assert subjects(then, "5.13") == platform
    assert subjects(now, "5.13") == ["modelswarm_logspout", "modelswarm_registrator"]  # third-party, accepted
    assert "modelswarm_console" in subjects(then, "4.1") and "modelswarm_console" not in subjects(now, "4.1")
    # The registry itself publishes no port, before or after: only its gateway (5000) and NGINX (80, 443) do.
    for snapshot in (now, then):
        assert (
            subjects(snapshot, "5.9")
            == subjects(snapshot, "5.14")
            == ["modelswarm_nginx", "modelswarm_registry-gateway"]
        )
    assert [o.subject for o in result(now, "7.3").offenders] == [
        "modelswarm-models", "ingress", "modelswarm_platform", "modelswarm_docker-api",
    ]  # fmt: skip


def test_the_hardened_model_replica_passes_what_the_hardening_is_for():
    snapshot = lab()
    for check_id in ("4.1", "5.4", "5.11", "5.13", "5.26", "5.29", "5.32"):
        assert "model-iris" not in {o.subject for o in result(snapshot, check_id).offenders}, check_id


def test_a_model_replica_from_before_the_hardening_warns_for_it():
    before = json.loads((FIXTURES / "model-iris-before-hardening.json").read_text())
    snapshot = replace(lab(), containers=[before], no_new_privs={before["Id"]: False}, processes={before["Id"]: []})
    warned = [r.id for r in cis.run_checks(snapshot) if r.level == cis.WARN and any(o.container for o in r.offenders)]
    assert warned == ["4.1", "5.2", "5.3", "5.13", "5.26", "5.29"]
    assert result(snapshot, "5.26").offenders[0].detail == "NoNewPrivs: 0"


# ---------------------------------------------------------------------------------- each container check, both ways
CASES = [
    # id, changes that make the model replica warn (or INFO), changes that make it pass
    ("4.1", {"Config.User": ""}, {"Config.User": "10001:10001"}),
    ("4.1", {"Config.User": "0:0"}, {"Config.User": "model"}),
    ("5.2", {"AppArmorProfile": "unconfined"}, {"AppArmorProfile": "docker-default"}),
    ("5.3", {"HostConfig.SecurityOpt": None}, {"HostConfig.SecurityOpt": ["label=type:container_t"]}),
    ("5.4", {"HostConfig.CapAdd": ["SYS_ADMIN"]}, {"HostConfig.CapAdd": ["CAP_NET_BIND_SERVICE", "chown"]}),
    ("5.5", {"HostConfig.Privileged": True}, {"HostConfig.Privileged": False}),
    (
        "5.6",
        {"Mounts": [{"Type": "bind", "Source": "/etc", "Destination": "/host/etc", "RW": True}]},
        {"Mounts": [{"Type": "bind", "Source": "/etc", "Destination": "/host/etc", "RW": False}]},
    ),
    (
        "5.6",
        {"Mounts": [{"Type": "bind", "Source": "/srv", "Destination": "/", "RW": True}]},
        {"Mounts": [{"Type": "bind", "Source": "/etc/docker", "Destination": "/cfg", "RW": True}]},
    ),
    ("5.8", {"NetworkSettings.Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "80"}]}},
     {"NetworkSettings.Ports": {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}}),
    ("5.9", {"NetworkSettings.Ports": {"8000/tcp": [{"HostIp": "10.0.0.1", "HostPort": "8000"}]}},
     {"NetworkSettings.Ports": {"8000/tcp": None}}),
    ("5.10", {"HostConfig.NetworkMode": "host"}, {"HostConfig.NetworkMode": "default"}),
    ("5.11", {"HostConfig.Memory": 0}, {"HostConfig.Memory": 268435456}),
    ("5.12", {"HostConfig.NanoCpus": 0, "HostConfig.CpuShares": 0},
     {"HostConfig.NanoCpus": 0, "HostConfig.CpuShares": 512}),
    ("5.13", {"HostConfig.ReadonlyRootfs": False}, {"HostConfig.ReadonlyRootfs": True}),
    ("5.14", {"NetworkSettings.Ports": {"8000/tcp": [{"HostIp": "::", "HostPort": "8000"}]}},
     {"NetworkSettings.Ports": {"8000/tcp": [{"HostIp": "172.30.99.11", "HostPort": "8000"}]}}),
    ("5.15", {"HostConfig.RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 10}},
     {"HostConfig.RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 5}}),
    ("5.16", {"HostConfig.PidMode": "host"}, {"HostConfig.PidMode": ""}),
    ("5.17", {"HostConfig.IpcMode": "host"}, {"HostConfig.IpcMode": "private"}),
    ("5.18", {"HostConfig.Devices": [{"PathOnHost": "/dev/kvm", "PathInContainer": "/dev/kvm"}]},
     {"HostConfig.Devices": []}),
    ("5.19", {"HostConfig.Ulimits": None}, {"HostConfig.Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]}),
    ("5.20", {"Mounts": [{"Type": "bind", "Source": "/s", "Destination": "/s", "RW": True, "Propagation": "rshared"}]},
     {"Mounts": [{"Type": "bind", "Source": "/s", "Destination": "/s", "RW": True, "Propagation": "rprivate"}]}),
    ("5.21", {"HostConfig.UTSMode": "host"}, {"HostConfig.UTSMode": ""}),
    ("5.22", {"HostConfig.SecurityOpt": ["seccomp=unconfined"]}, {"HostConfig.SecurityOpt": ["seccomp=/etc/p.json"]}),
    ("5.22", {"HostConfig.SecurityOpt": ["seccomp:unconfined"]}, {"HostConfig.SecurityOpt": None}),
    ("5.25", {"HostConfig.CgroupParent": "/custom"}, {"HostConfig.CgroupParent": ""}),
    ("5.27", {"State.Health": DELETE}, {"State.Health": {"Status": "starting"}}),
    ("5.29", {"HostConfig.PidsLimit": -1}, {"HostConfig.PidsLimit": 256}),
    ("5.29", {"HostConfig.PidsLimit": 0}, {"HostConfig.PidsLimit": 1}),
    ("5.31", {"HostConfig.UsernsMode": "host"}, {"HostConfig.UsernsMode": ""}),
    ("5.32", {"Mounts": [{"Type": "bind", "Source": "/run/docker.sock", "Destination": "/sock", "RW": False}]},
     {"Mounts": [{"Type": "bind", "Source": "/run/other.sock", "Destination": "/sock", "RW": False}]}),
]  # fmt: skip


@pytest.mark.parametrize(("check_id", "bad", "good"), CASES, ids=[f"{c[0]}-{n}" for n, c in enumerate(CASES)])
def test_each_container_check_warns_and_passes(check_id, bad, good):
    expected = cis.INFO if check_id in ("5.18", "5.19", "5.30") else cis.WARN
    for changes, level in ((bad, expected), (good, cis.PASS)):
        snapshot, model = model_only()
        for path, value in changes.items():
            set_path(model, path, value)
        found = result(snapshot, check_id)
        assert found.level == level, (check_id, changes, found)
        if level != cis.PASS:
            assert [(o.subject, o.kind) for o in found.offenders] == [("model-iris", "container")]
            assert found.offenders[0].container.startswith("model-iris.")


def test_container_checks_pass_when_nothing_runs():
    snapshot = replace(lab(), containers=[])
    assert result(snapshot, "5.13") == cis.Result(
        "5.13", cis.CHECKS["5.13"].title, cis.PASS, (), "no running containers"
    )


def test_5_7_sshd_in_the_process_list_or_an_unreadable_one_warns():
    snapshot, model = model_only()
    assert result(snapshot, "5.7").level == cis.PASS
    with_sshd = replace(snapshot, processes={model["Id"]: ["root 4242 1 0 20:16 ? 00:00:00 /usr/sbin/sshd -D"]})
    assert result(with_sshd, "5.7").offenders[0].detail == "runs sshd"
    unreadable = replace(snapshot, processes={model["Id"]: None})
    assert result(unreadable, "5.7").offenders[0].detail == "process list unreadable"


def test_5_15_reads_the_swarm_service_restart_policy_too():
    snapshot, model = model_only()
    service_id = model["Config"]["Labels"][cis.SERVICE_ID_LABEL]
    policy = {"Condition": "on-failure", "MaxAttempts": 10}
    services = [{"ID": service_id, "Spec": {"TaskTemplate": {"RestartPolicy": policy}}}]
    assert result(replace(snapshot, services=services), "5.15").offenders[0].detail == "10 restart attempts"
    policy["MaxAttempts"] = 0  # unlimited: passes, as in docker-bench
    assert result(replace(snapshot, services=services), "5.15").level == cis.PASS


def test_5_26_counts_the_declared_option_or_the_process_flag():
    snapshot, model = model_only()
    cid = model["Id"]
    assert snapshot.no_new_privs[cid] is True  # dockerd's no-new-privileges on the lab: the flag, not the spec
    assert model["HostConfig"]["SecurityOpt"] is None
    assert result(snapshot, "5.26").level == cis.PASS
    off = replace(snapshot, no_new_privs={cid: False})
    assert result(off, "5.26").offenders[0].detail == "NoNewPrivs: 0"
    unread = replace(snapshot, no_new_privs={})
    assert result(unread, "5.26").offenders[0].detail == "no-new-privileges not declared, process status unread"
    for declared, level in (("no-new-privileges", cis.PASS), ("no-new-privileges=true", cis.PASS),
                            ("no-new-privileges:false", cis.WARN)):  # fmt: skip
        model["HostConfig"]["SecurityOpt"] = [declared]
        assert result(off, "5.26").level == level, declared


def test_5_30_containers_on_docker0_are_info():
    snapshot, model = model_only()
    docker0 = next(n for n in snapshot.networks if n["Name"] == "bridge")
    assert result(snapshot, "5.30").level == cis.PASS
    model["NetworkSettings"]["Networks"]["bridge"] = {"NetworkID": docker0["Id"]}
    assert result(snapshot, "5.30").level == cis.INFO


# --------------------------------------------------------------------------------------------- node-wide checks
def test_5_1_and_the_practices():
    snapshot = lab()
    assert result(snapshot, "5.1").level == cis.WARN
    inactive = replace(snapshot, info={**snapshot.info, "Swarm": {"LocalNodeState": "inactive"}})
    assert result(inactive, "5.1").level == cis.PASS
    assert [result(snapshot, i).level for i in ("5.23", "5.24", "5.28")] == [cis.NOTE, cis.NOTE, cis.INFO]


def test_section_7_passes_everything_but_7_3_without_swarm_mode():
    snapshot = lab()
    inactive = replace(snapshot, info={**snapshot.info, "Swarm": {"LocalNodeState": "inactive"}}, networks=[])
    for check_id in [i for i in cis.CHECKS if i.startswith("7.")]:
        assert result(inactive, check_id).level == cis.PASS, check_id


def test_7_1_one_leader():
    snapshot = lab()
    assert (result(snapshot, "7.1").level, result(snapshot, "7.1").note) == (cis.PASS, "3 managers, 1 leader")
    no_leader = [{**n, "ManagerStatus": {"Reachability": "unreachable"}} for n in snapshot.nodes]
    assert result(replace(snapshot, nodes=no_leader), "7.1").level == cis.WARN
    assert result(replace(snapshot, nodes=None), "7.1").level == cis.INFO


def test_7_2_the_swarm_port_on_a_specific_address():
    snapshot = lab()
    assert cis.swarm_port(snapshot.info) == 2377
    bound = [(a, p) for a, p in snapshot.listeners if p != 2377] + [("172.30.99.11", 2377)]
    assert result(replace(snapshot, listeners=bound), "7.2").level == cis.PASS
    assert result(replace(snapshot, listeners=[("0.0.0.0", 2377)]), "7.2").level == cis.WARN
    unread = replace(snapshot, listeners=None, host_error="ssh to node1 exited 255")
    assert "ssh to node1 exited 255" in result(unread, "7.2").note
    assert result(unread, "7.2").level == cis.WARN
    # Another port for the swarm: the node's own manager address says which.
    swarm = copy.deepcopy(snapshot.info["Swarm"])
    for manager in swarm["RemoteManagers"]:
        manager["Addr"] = manager["Addr"].replace(":2377", ":12377")
    other = replace(snapshot, info={**snapshot.info, "Swarm": swarm}, listeners=[("::", 2377), ("10.0.0.1", 12377)])
    assert result(other, "7.2").level == cis.PASS


def test_7_3_encrypted_overlays_pass():
    snapshot = lab()
    networks = copy.deepcopy(snapshot.networks)
    for network in networks:
        if network["Driver"] == "overlay":
            network["Options"]["encrypted"] = ""
    assert result(replace(snapshot, networks=networks), "7.3").level == cis.PASS


def test_7_4_7_5_7_7_secrets_autolock_certificates():
    snapshot = lab()
    assert result(snapshot, "7.4").level == cis.PASS
    assert result(replace(snapshot, secrets=[]), "7.4").level == cis.INFO
    assert result(snapshot, "7.5").level == cis.WARN
    info = copy.deepcopy(snapshot.info)
    info["Swarm"]["Cluster"]["Spec"]["EncryptionConfig"]["AutoLockManagers"] = True
    info["Swarm"]["Cluster"]["Spec"]["CAConfig"]["NodeCertExpiry"] = 48 * 3600 * 10**9
    assert result(replace(snapshot, info=info), "7.5").level == cis.PASS
    assert result(snapshot, "7.7").note == "node certificates expire after 90 days"
    assert result(replace(snapshot, info=info), "7.7").level == cis.PASS


# ----------------------------------------------------------------------------------------------- the host probe
def test_the_host_probe_is_parsed():
    statuses, listeners = cis.parse_host_probe((FIXTURES / "host-probe-node1.txt").read_text())
    assert list(statuses.values()) == [True, True, True, None]  # the last pid no longer exists
    assert ("::", 2377) in listeners and ("0.0.0.0", 443) in listeners and ("127.0.0.1", 37211) in listeners
    assert all(port != 0 for _, port in listeners)  # only LISTEN sockets, not connections


def test_the_host_probe_only_reads():
    script = cis.host_probe_script([12, 34])
    assert "for p in 12 34;" in script and "/proc/$p/status" in script and "/proc/net/tcp6" in script
    assert not any(word in script.replace("2>/dev/null", "") for word in ("docker", "exec", ">", "rm ", "kill"))


def test_proc_net_addresses():
    assert cis._hex_address("0100007F") == "127.0.0.1"
    assert cis._hex_address("0B631EAC") == "172.30.99.11"
    assert cis._hex_address("00000000000000000000000000000000") == "::"
    mapped = ipaddress.ip_address(cis._hex_address("0000000000000000FFFF00000B631EAC"))
    assert mapped.ipv4_mapped == ipaddress.ip_address("172.30.99.11")


def test_ssh_command_puts_options_before_the_destination_and_the_command_after():
    host = cluster.Host("node1", "172.30.99.11", key="/k", ssh_args=("-o", "StrictHostKeyChecking=no"))
    command = cluster.ssh_command(host, "uptime", options=("-N",))
    assert command[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert command[-3:] == ["-N", "root@172.30.99.11", "uptime"]
    assert command[command.index("-i") + 1] == "/k" and "StrictHostKeyChecking=no" in command


# --------------------------------------------------------------------------------------------- saved snapshots
def test_a_saved_snapshot_keeps_no_environment_values_or_tls_material():
    saved = cis.snapshot_to_json(lab())
    text = json.dumps(saved)
    assert "BEGIN CERTIFICATE" not in text and "JoinTokens" not in text
    envs = [e for c in saved["containers"] for e in c["Config"]["Env"]]
    assert envs and all(e.endswith("=<removed>") for e in envs)
    assert cis.snapshot_from_json(saved) == cis.snapshot_from_json(json.loads(text))


# ---------------------------------------------------------------------------------------------------- exceptions
def exceptions() -> list[cis.Exemption]:
    return cis.load_exceptions(cis.EXCEPTIONS_FILE)


def unexcused(snapshot, lab_inventory=True, strict=False, entries=None) -> dict[str, list[str]]:
    held = cis.conditions(snapshot, lab_inventory)
    assessed = cis.assess(cis.run_checks(snapshot), exceptions() if entries is None else entries, held, strict)
    return {a.result.id: sorted({o.subject for o in a.unexcused}) for a in assessed if a.outcome == cis.WARN}


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_on_the_hardened_lab_every_warning_is_excused(strict):
    assert unexcused(lab(), strict=strict) == {}


def test_the_exceptions_do_not_excuse_what_the_hardening_fixed():
    # Pids limits, read-only roots, the non-root console, the socket out of the console, logspout and registrator.
    platform = sorted({cis.subject_of(c) for c in before().containers} - {"model-iris"})
    expected = {
        "4.1": ["modelswarm_console"],
        "5.13": ["modelswarm_console", "modelswarm_nginx", "modelswarm_postgres", "modelswarm_registry",
                 "modelswarm_registry-gateway"],
        "5.29": platform,
        "5.32": ["modelswarm_console", "modelswarm_logspout", "modelswarm_registrator"],
    }  # fmt: skip
    assert unexcused(before()) == unexcused(before(), strict=True) == expected


def test_the_exceptions_excuse_nothing_an_unhardened_model_replica_does():
    replica = json.loads((FIXTURES / "model-iris-before-hardening.json").read_text())
    snapshot = replace(lab(), containers=[replica], no_new_privs={replica["Id"]: False}, processes={replica["Id"]: []})
    found = unexcused(snapshot)
    assert found == {"4.1": ["model-iris"], "5.13": ["model-iris"], "5.26": ["model-iris"], "5.29": ["model-iris"]}


def test_the_registry_publishing_its_own_port_again_is_not_excused():
    snapshot = lab()
    registry = container(snapshot, "modelswarm_registry")
    registry["NetworkSettings"]["Ports"] = {"5000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "5000"}]}
    assert unexcused(snapshot) == {"5.9": ["modelswarm_registry"], "5.14": ["modelswarm_registry"]}


def test_the_socket_in_any_service_but_the_proxy_is_not_excused():
    snapshot = lab()
    socket = {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock", "RW": False}
    for service in ("modelswarm_console", "modelswarm_logspout"):
        container(snapshot, service).setdefault("Mounts", []).append(socket)
    assert unexcused(snapshot) == {"5.32": ["modelswarm_console", "modelswarm_logspout"]}


def test_on_real_servers_unencrypted_platform_overlays_and_autolock_off_are_not_excused():
    assert unexcused(lab(), lab_inventory=False) == {
        "7.3": ["modelswarm-models", "modelswarm_docker-api", "modelswarm_platform"],
        "7.5": [],  # a whole-check warning: no offenders
    }


def with_to_fix(*to_fix: tuple[str, str]) -> list[cis.Exemption]:
    """The real entries, with those of `to_fix` ((id, scope) pairs) marked to-fix: the mechanism on real data."""
    entries = exceptions()
    assert {(e.id, e.scope()) for e in entries} >= set(to_fix)
    return [dataclasses.replace(e, status=cis.TO_FIX) if (e.id, e.scope()) in to_fix else e for e in entries]


def test_strict_lets_only_accepted_entries_excuse():
    entries = with_to_fix(
        ("5.32", "modelswarm_docker-api-proxy"), ("4.1", "modelswarm_postgres"), ("7.5", "the whole check")
    )
    assert unexcused(lab(), entries=entries) == {}
    assert unexcused(lab(), strict=True, entries=entries) == {
        "4.1": ["modelswarm_postgres"],
        "5.32": ["modelswarm_docker-api-proxy"],
        "7.5": [],
    }
    # Strict or not, what no entry covers warns the same.
    assert unexcused(before(), strict=True, entries=entries) == {
        **unexcused(before(), entries=entries),
        "4.1": ["modelswarm_console", "modelswarm_postgres"],
        "7.5": [],
    }


def test_a_service_no_entry_names_still_warns():
    snapshot = lab()
    proxy = container(snapshot, "modelswarm_docker-api-proxy")
    proxy["Config"]["Labels"][cis.SERVICE_LABEL] = "modelswarm_newcomer"
    found = unexcused(snapshot)
    assert found == {"4.1": ["modelswarm_newcomer"], "5.32": ["modelswarm_newcomer"]}


def test_5_2_is_excused_only_where_the_daemon_has_no_apparmor():
    snapshot = lab()
    assert "no-apparmor" in cis.conditions(snapshot, lab=True)
    with_apparmor = replace(snapshot, info={**snapshot.info, "SecurityOptions": ["name=apparmor", "name=seccomp"]})
    assert cis.conditions(with_apparmor, lab=True) == {"lab"}
    assert list(unexcused(with_apparmor)) == ["5.2"]


def test_a_whole_check_entry_covers_a_warning_without_offenders_and_a_narrow_one_does_not():
    whole = cis.Exemption("7.5", cis.ACCEPTED, "r")
    narrow = cis.Exemption("7.5", cis.ACCEPTED, "r", services=("x",))
    results = [cis.Result("7.5", "t", cis.WARN)]
    assert cis.assess(results, [whole], set())[0].outcome == "excused"
    assert cis.assess(results, [narrow], set())[0].outcome == cis.WARN
    assert cis.assess(results, [cis.Exemption("7.5", cis.ACCEPTED, "r", when=("lab",))], set())[0].outcome == cis.WARN


def test_network_and_service_patterns_cover_their_own_kind():
    entry = cis.Exemption("7.3", cis.ACCEPTED, "r", networks=("modelswarm*",))
    assert entry.covers(cis.Offender("modelswarm-models", kind="network"))
    assert not entry.covers(cis.Offender("ingress", kind="network"))
    assert not entry.covers(cis.Offender("modelswarm_console"))


def unused(snapshot: cis.Snapshot, lab_inventory=True) -> set[tuple[str, str]]:
    held = cis.conditions(snapshot, lab_inventory)
    assessed = cis.assess(cis.run_checks(snapshot), exceptions(), held)
    return {(e.id, e.scope()) for e in cis.unused_exceptions(assessed, exceptions(), held)}


def test_unused_entries_are_reported():
    assert unused(lab()) == set()  # on the leader every entry excuses something
    # Before the hardening no proxy ran; the two overlay entries are one entry each and still cover something.
    assert unused(before()) == {("5.32", "modelswarm_docker-api-proxy")}
    # Where postgres does not run (node2, node3), its entry is reported; off the lab the lab-only entries do not hold.
    no_postgres = replace(lab(), containers=[c for c in lab().containers if cis.subject_of(c) != "modelswarm_postgres"])
    assert unused(no_postgres) == {("4.1", "modelswarm_postgres")}
    assert unused(lab(), lab_inventory=False) == set()


def one(**entry) -> dict:
    return {"exceptions": [{"id": "5.1", "status": "accepted", "reason": "r", **entry}]}


BAD_FILES = [
    (one(id="5.99"), "id '5.99' is not a check"),
    (one(status="maybe"), "status must be accepted or to-fix"),
    (one(reason=" "), "a reason is required"),
    (one(service=["x"]), "unknown keys ['service']"),
    (one(services="x"), "services must be a list"),
    (one(when=["prod"]), "unknown conditions ['prod']"),
    ({"exceptions": {"id": "5.1"}}, "a list `exceptions:` is expected"),
    (["5.1"], "a list `exceptions:` is expected"),
]


@pytest.mark.parametrize(("data", "message"), BAD_FILES)
def test_a_bad_exceptions_file_is_refused_with_where(data, message):
    with pytest.raises(cis.ExceptionsError) as error:
        cis.parse_exceptions(data, "x.yml")
    assert message in str(error.value) and str(error.value).startswith("x.yml")


def test_the_exceptions_file_names_only_checks_with_reasons():
    data = yaml.safe_load(cis.EXCEPTIONS_FILE.read_text())
    entries = exceptions()
    assert len(entries) == len(data["exceptions"])
    # Issue 13's wave is done: what it fixed has no entry left, and nothing is waiting for a fix.
    assert {e.status for e in entries} == {cis.ACCEPTED}
    assert not {"5.26", "5.29"} & {e.id for e in entries}
    # Narrow where it matters: the socket for the proxy only, read-only roots and root users by service.
    assert [e.services for e in entries if e.id == "5.32"] == [("modelswarm_docker-api-proxy",)]
    assert all(e.services for e in entries if e.id in ("4.1", "5.8", "5.9", "5.13", "5.14"))
    assert not any(fnmatch.fnmatchcase("modelswarm_console", p) for e in entries for p in e.services)


# ---------------------------------------------------------------------------------------------------------- docs
def test_security_md_shows_the_exceptions_file():
    doc = cis.SECURITY_DOC.read_text()
    assert cis.docs_with_exceptions(doc, exceptions()) == doc, (
        "docs/security.md is behind docs/cis-exceptions.yml: run python -m modelswarm.tooling.cis --write-docs"
    )
    table = doc[doc.index(cis.DOC_BEGIN) : doc.index(cis.DOC_END)]
    for entry in exceptions():
        assert f"| {entry.id} " in table and entry.reason.replace("|", "\\|") in table


# ------------------------------------------------------------------------------------------------------ the CLI
def run_main(capsys, *args, snapshot: Path = LAB) -> tuple[int, str]:
    code = cis.main(["--snapshot", str(snapshot), *args])
    return code, capsys.readouterr().out


def test_exit_code_zero_when_everything_is_excused_one_when_not(capsys):
    code, out = run_main(capsys, "--lab", "--json")
    assert code == cis.EXIT_OK
    data = json.loads(out)
    assert data["unexcused"] == [] and data["unused_exceptions"] == [] and data["summary"]["5"] == {
        "PASS": 20, "WARN": 8, "INFO": 2, "NOTE": 2, "excused": 8, "unexcused": 0,
    }  # fmt: skip
    code, out = run_main(capsys, "--lab", "--strict")
    assert code == cis.EXIT_OK and "every warning is excused" in out
    code, out = run_main(capsys, "--json")  # not the lab: unencrypted overlays, autolock off
    assert code == cis.EXIT_WARN and json.loads(out)["unexcused"] == ["7.3", "7.5"]
    code, out = run_main(capsys, "--lab", snapshot=BEFORE)
    assert code == cis.EXIT_WARN and "not excused: 4.1, 5.13, 5.29, 5.32" in out


def test_strict_on_the_command_line(capsys, tmp_path):
    mine = tmp_path / "exceptions.yml"
    mine.write_text(
        yaml.safe_dump(
            {
                "exceptions": [
                    {"id": e.id, "status": e.status, "reason": e.reason, "services": list(e.services),
                     "networks": list(e.networks), "when": list(e.when)}
                    for e in with_to_fix(("5.32", "modelswarm_docker-api-proxy"), ("7.2", "the whole check"))
                ]
            }
        )
    )  # fmt: skip
    assert run_main(capsys, "--lab", "--exceptions", str(mine))[0] == cis.EXIT_OK
    code, out = run_main(capsys, "--lab", "--strict", "--exceptions", str(mine))
    assert code == cis.EXIT_WARN and "not excused: 5.32, 7.2" in out


def test_exit_code_two_when_the_checks_cannot_run(capsys, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("exceptions: [{id: '9.9', status: accepted, reason: r}]\n")
    assert run_main(capsys, "--exceptions", str(bad)) == (cis.EXIT_ERROR, "")
    assert cis.main(["-i", str(tmp_path / "missing"), "--exceptions", str(cis.EXCEPTIONS_FILE)]) == cis.EXIT_ERROR


def test_the_table_names_the_unexcused_service(capsys, tmp_path):
    none = tmp_path / "none.yml"
    none.write_text("exceptions: []\n")
    code, out = run_main(capsys, "--exceptions", str(none))
    assert code == cis.EXIT_WARN
    assert "section 5: 20 PASS, 8 WARN (0 excused, 8 not), 2 INFO, 2 NOTE" in out
    assert "not excused: 4.1, 5.1, 5.2, 5.3, 5.8, 5.9, 5.13, 5.14, 5.32, 7.2, 7.3, 7.5" in out
    code, out = run_main(capsys, "--exceptions", str(none), "--json")
    assert {o["subject"] for r in json.loads(out)["results"] if r["id"] == "5.32" for o in r["unexcused"]} == {
        "modelswarm_docker-api-proxy"
    }


def test_the_lab_condition_comes_from_the_inventory(tmp_path):
    good = Path(__file__).parent / "inventories" / "good.yml"
    assert not cluster.read_inventory(good).leader.lab_profile
    data = yaml.safe_load(good.read_text())
    data["all"]["vars"]["preflight_lab_profile"] = True
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(data))
    assert all(h.lab_profile for h in cluster.read_inventory(tmp_path / "hosts.yml").hosts.values())
