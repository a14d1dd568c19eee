"""The lab's settings, clash detection and generated inventory, without a Docker daemon."""

from dataclasses import replace
from types import SimpleNamespace

import docker.errors
import pytest
import yaml

from modelswarm.lab import hosts as lab


def settings(tmp_path, **overrides):
    base = lab.LabSettings(state_dir=tmp_path / "state", inventory_file=tmp_path / "inv" / "hosts.yml")
    return replace(base, **overrides)


class FakeNetworks:
    def __init__(self, networks):
        self._networks = networks

    def list(self, **_):
        return self._networks


class FakeContainers:
    def __init__(self, containers):
        self._containers = containers

    def get(self, name):
        if name not in self._containers:
            raise docker.errors.NotFound(name)
        return self._containers[name]


def fake_client(networks=(), containers=None):
    return SimpleNamespace(networks=FakeNetworks(list(networks)), containers=FakeContainers(containers or {}))


def network(name, subnet, labels=None, net_id="0123456789abcdef"):
    return SimpleNamespace(
        name=name, id=net_id, attrs={"Labels": labels or {}, "IPAM": {"Config": [{"Subnet": subnet}]}}
    )


def route_table(tmp_path, rows):
    """A /proc/net/route file; rows are (iface, dest, mask) in dotted quads."""
    import ipaddress

    def hexle(addr):
        return ipaddress.IPv4Address(addr).packed[::-1].hex().upper()

    lines = ["Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT"]
    for iface, dest, mask in rows:
        lines.append(f"{iface}\t{hexle(dest)}\t00000000\t0001\t0\t0\t0\t{hexle(mask)}\t0\t0\t0")
    path = tmp_path / "route"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_addresses_follow_the_subnet(tmp_path):
    s = settings(tmp_path, subnet="10.77.0.0/24")
    assert [s.address(n) for n in s.nodes] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert s.gateway == "10.77.0.1"
    assert s.vip_address == "10.77.0.10"  # below the hosts
    assert s.container_name("node2") == "modelswarm-lab-node2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODELSWARM_LAB_SUBNET": "not-a-net"}, "is not a network address"),
        ({"MODELSWARM_LAB_SUBNET": "10.0.0.1/24"}, "is not a network address"),  # host bits set
        ({"MODELSWARM_LAB_SUBNET": "10.0.0.0/29"}, "/28 or larger"),
        ({"MODELSWARM_LAB_SUBNET": "fd00::/64"}, "IPv4"),
        ({"MODELSWARM_LAB_PREFIX": "bad name!"}, "letters, digits and dashes"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(env, message):
    with pytest.raises(lab.LabError, match=message):
        lab.LabSettings.from_env(env)


def test_no_clash_on_a_clean_machine(tmp_path):
    s = settings(tmp_path)
    client = fake_client([network("bridge", "172.17.0.0/16")])
    table = route_table(tmp_path, [("eth0", "10.0.0.0", "255.255.255.0"), ("eth0", "0.0.0.0", "0.0.0.0")])
    assert lab.find_clashes(client, s, table) == []


def test_overlapping_docker_network_is_named(tmp_path):
    s = settings(tmp_path)
    client = fake_client([network("corp-net", "172.30.0.0/16")])
    clashes = lab.find_clashes(client, s, route_table(tmp_path, []))
    assert len(clashes) == 1
    assert "'corp-net' (172.30.0.0/16)" in clashes[0] and "MODELSWARM_LAB_SUBNET" in clashes[0]


def test_our_own_network_is_not_a_clash(tmp_path):
    s = settings(tmp_path)
    client = fake_client([network(s.network_name, s.subnet, labels=s.labels)])
    assert lab.find_clashes(client, s, route_table(tmp_path, [])) == []


def test_foreign_network_with_our_name_is_named(tmp_path):
    s = settings(tmp_path)
    client = fake_client([network(s.network_name, "10.200.0.0/24")])
    clashes = lab.find_clashes(client, s, route_table(tmp_path, []))
    assert clashes == [
        "a Docker network named 'modelswarm-lab' already exists and was not made by the lab "
        "(set MODELSWARM_LAB_PREFIX to use another name)"
    ]


def test_host_route_overlap_is_named_with_its_interface(tmp_path):
    s = settings(tmp_path)
    table = route_table(tmp_path, [("vpn0", "172.30.96.0", "255.255.252.0")])
    clashes = lab.find_clashes(fake_client(), s, table)
    assert len(clashes) == 1 and "172.30.96.0/22 on interface vpn0" in clashes[0]


def test_foreign_container_with_a_node_name_is_named(tmp_path):
    s = settings(tmp_path)
    stranger = SimpleNamespace(labels={})
    mine = SimpleNamespace(labels=s.labels)
    client = fake_client(containers={"modelswarm-lab-node1": mine, "modelswarm-lab-node3": stranger})
    clashes = lab.find_clashes(client, s, route_table(tmp_path, []))
    assert len(clashes) == 1 and "'modelswarm-lab-node3'" in clashes[0]


def test_inventory_has_three_managers_and_one_leader_and_is_rewritten_only_on_change(tmp_path):
    s = settings(tmp_path)
    key, public = lab.ensure_ssh_key(s)
    assert public.startswith("ssh-ed25519 ")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert lab.write_inventory(s, key) is True
    assert lab.write_inventory(s, key) is False
    inventory = yaml.safe_load(s.inventory_file.read_text())
    children = inventory["all"]["children"]
    assert list(children["managers"]["hosts"]) == ["node1", "node2", "node3"]
    assert children["managers"]["hosts"]["node2"]["ansible_host"] == "172.30.99.12"
    assert list(children["leader"]["hosts"]) == ["node1"]
    assert inventory["all"]["vars"]["ansible_ssh_private_key_file"] == str(key)


@pytest.mark.parametrize("subnet", ["172.30.99.0/24", "10.77.0.0/16", "10.0.0.240/28"])
def test_ansible_and_the_lab_agree_on_the_vip(tmp_path, subnet):
    """inventory/lab/group_vars/all.yml and LabSettings.vip_address state one rule: just below the first host."""
    import jinja2

    s = settings(tmp_path, subnet=subnet)
    group_vars = yaml.safe_load((lab.REPO_ROOT / "inventory" / "lab" / "group_vars" / "all.yml").read_text())
    rendered = (
        jinja2.Environment()
        .from_string(group_vars["vip_address"])
        .render(groups={"managers": list(s.nodes)}, hostvars={n: {"ansible_host": s.address(n)} for n in s.nodes})
    )
    assert rendered == s.vip_address
    assert s.vip_address not in [s.address(n) for n in s.nodes] and s.vip_address != s.gateway


def test_ssh_key_is_made_once(tmp_path):
    s = settings(tmp_path)
    _, first = lab.ensure_ssh_key(s)
    _, second = lab.ensure_ssh_key(s)
    assert first == second


def test_molecule_instances_match_the_inventory(tmp_path):
    s = settings(tmp_path)
    key, _ = lab.ensure_ssh_key(s)
    rows = lab.instances(s, key)
    assert [(r["instance"], r["address"]) for r in rows] == [
        ("node1", "172.30.99.11"),
        ("node2", "172.30.99.12"),
        ("node3", "172.30.99.13"),
    ]
    assert all(r["identity_file"] == str(key) and r["user"] == "root" for r in rows)


def test_cluster_inventory_reads_either_key_spelling(tmp_path):
    from modelswarm import cluster

    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    managers:\n      hosts:\n"
        "        a: {ansible_host: 127.0.0.21, ansible_private_key_file: /k/short}\n"
        "        b: {ansible_host: 127.0.0.22, ansible_ssh_private_key_file: /k/long,"
        " ansible_ssh_common_args: '-o StrictHostKeyChecking=no'}\n"
        "    leader:\n      hosts:\n        a: {}\n"
    )
    inventory = cluster.read_inventory(tmp_path / "hosts.yml")
    assert inventory.hosts["a"].key == "/k/short" and inventory.hosts["b"].key == "/k/long"
    assert inventory.leader.name == "a" and [h.name for h in inventory.managers] == ["a", "b"]
    assert inventory.hosts["b"].ssh_args == ("-o", "StrictHostKeyChecking=no")


class ListedContainers:
    """containers.list for the foreign-lab check: lab hosts with their labels and authorized_keys."""

    def __init__(self, hosts):
        self.hosts = hosts

    def list(self, all, filters):
        assert all is True and filters == {"label": "io.modelswarm.lab=modelswarm-lab"}
        return self.hosts


def lab_host(labels, authorized=b""):
    return SimpleNamespace(labels=labels, exec_run=lambda command: SimpleNamespace(output=authorized))


def test_the_key_fingerprint_is_what_ssh_keygen_prints(tmp_path):
    import shutil
    import subprocess

    s = settings(tmp_path)
    key, public = lab.ensure_ssh_key(s)
    if not shutil.which("ssh-keygen"):
        pytest.skip("no ssh-keygen here")
    printed = subprocess.run(["ssh-keygen", "-lf", str(key.with_suffix(".pub"))], capture_output=True, text=True)
    assert printed.stdout.split()[1] == lab.key_fingerprint(public)


def test_our_own_lab_is_not_foreign(tmp_path):
    s = settings(tmp_path)
    _, public = lab.ensure_ssh_key(s)
    ours = {**s.labels, lab.OWNER_LABEL: str(lab.REPO_ROOT), lab.KEY_LABEL: lab.key_fingerprint(public)}
    client = SimpleNamespace(containers=ListedContainers([lab_host(ours)] * 3))
    assert lab.find_foreign_lab(client, s, public) is None
    assert lab.find_foreign_lab(SimpleNamespace(containers=ListedContainers([])), s, public) is None


def test_a_lab_made_by_another_checkout_is_named_with_both_ways_out(tmp_path):
    s = settings(tmp_path)
    _, public = lab.ensure_ssh_key(s)
    theirs = {**s.labels, lab.OWNER_LABEL: "/elsewhere/checkout", lab.KEY_LABEL: "SHA256:someone-else"}
    client = SimpleNamespace(containers=ListedContainers([lab_host(theirs)]))
    message = lab.find_foreign_lab(client, s, public)
    assert "was made by the checkout /elsewhere/checkout:" in message
    assert "`make down` in /elsewhere/checkout" in message
    assert "MODELSWARM_LAB_PREFIX=modelswarm-lab-" in message and "MODELSWARM_LAB_SUBNET=" in message
    assert "Nothing was changed" in message


def test_a_lab_from_before_owner_labels_is_judged_by_its_authorized_keys(tmp_path):
    s = settings(tmp_path)
    _, public = lab.ensure_ssh_key(s)
    accepts = lab_host(s.labels, authorized=(public + "\n").encode())
    refuses = lab_host(s.labels, authorized=b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther other\n")
    assert lab.find_foreign_lab(SimpleNamespace(containers=ListedContainers([accepts])), s, public) is None
    message = lab.find_foreign_lab(SimpleNamespace(containers=ListedContainers([refuses])), s, public)
    assert "was made by another checkout" in message and "`make down` in the checkout that made it" in message


# ------------------------------------------------------------------------------------------------------ workers


def test_workers_follow_the_managers_in_names_and_addresses(tmp_path):
    s = lab.LabSettings.from_env({"MODELSWARM_LAB_WORKERS": "2", "MODELSWARM_LAB_SUBNET": "10.77.0.0/24"})
    assert s.worker_nodes == ("node4", "node5")
    assert [s.address(n) for n in s.all_nodes] == ["10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.14", "10.77.0.15"]
    assert lab.LabSettings.from_env({}).worker_nodes == ()


@pytest.mark.parametrize("value", ["-1", "two", "5", "1.5"])
def test_a_bad_worker_count_is_refused_with_the_variable_named(value):
    with pytest.raises(lab.LabError, match=r"MODELSWARM_LAB_WORKERS=.*whole number from 0 to 4"):
        lab.LabSettings.from_env({"MODELSWARM_LAB_WORKERS": value})


def test_a_subnet_too_small_for_the_workers_is_refused():
    with pytest.raises(lab.LabError, match="too small for 5 hosts"):
        lab.LabSettings.from_env({"MODELSWARM_LAB_WORKERS": "2", "MODELSWARM_LAB_SUBNET": "10.0.0.0/28"})


def test_the_inventory_puts_workers_in_their_own_group(tmp_path):
    s = settings(tmp_path, workers=1)
    key, _ = lab.ensure_ssh_key(s)
    lab.write_inventory(s, key)
    children = yaml.safe_load(s.inventory_file.read_text())["all"]["children"]
    assert list(children["managers"]["hosts"]) == ["node1", "node2", "node3"]
    assert children["workers"]["hosts"] == {"node4": {"ansible_host": "172.30.99.14"}}
    # molecule's platforms are the managers: the worker is not a molecule instance
    assert [r["instance"] for r in lab.instances(s, key)] == ["node1", "node2", "node3"]
    without = settings(tmp_path, workers=0)
    lab.write_inventory(without, key)
    assert yaml.safe_load(without.inventory_file.read_text())["all"]["children"]["workers"]["hosts"] == {}


def test_the_designated_leader_can_be_another_manager_and_only_a_manager(tmp_path):

    chosen = lab.LabSettings.from_env({"MODELSWARM_LAB_LEADER": "node2"})
    assert chosen.leader == "node2"
    s = replace(settings(tmp_path), leader="node2")
    key, _ = lab.ensure_ssh_key(s)
    lab.write_inventory(s, key)
    children = yaml.safe_load(s.inventory_file.read_text())["all"]["children"]
    assert list(children["leader"]["hosts"]) == ["node2"]
    for wrong in ("node4", "node9", "leader"):
        with pytest.raises(lab.LabError, match=r"MODELSWARM_LAB_LEADER=.*must be a manager: node1, node2, node3"):
            lab.LabSettings.from_env({"MODELSWARM_LAB_LEADER": wrong, "MODELSWARM_LAB_WORKERS": "1"})


class LabHost:
    """A lab host container as the docker SDK shows it; `swarm` is what its Docker reports for Swarm.LocalNodeState."""

    def __init__(self, node, prefix="modelswarm-lab", status="running", swarm="inactive"):
        self.name = f"{prefix}-{node}"
        self.labels = {lab.LAB_LABEL: prefix, f"{lab.LAB_LABEL}.node": node}
        self.status = status
        self.swarm = swarm
        self.removed = False

    def exec_run(self, argv):
        assert argv[:2] == ["docker", "info"]
        return SimpleNamespace(exit_code=0, output=(self.swarm + "\n").encode())

    def remove(self, force=False, v=False):
        self.removed = True


class LabDocker:
    def __init__(self, hosts):
        self.hosts = hosts
        self.volumes_removed = []
        self.containers = SimpleNamespace(list=lambda all=False, filters=None: list(hosts))
        self.volumes = SimpleNamespace(get=self._volume)

    def _volume(self, name):
        return SimpleNamespace(remove=lambda force=False: self.volumes_removed.append(name))


def test_fewer_workers_removes_the_extra_hosts_that_left_the_swarm(tmp_path):
    hosts = [LabHost("node1", swarm="active"), LabHost("node4", swarm="active"), LabHost("node5"),
             LabHost("node6", status="exited", swarm="active")]  # fmt: skip
    client = LabDocker(hosts)
    removed = lab.remove_extra_workers(client, settings(tmp_path, workers=1))
    assert removed == ["node5", "node6"]  # node6 is stopped: a dead host, removed from the swarm with force=true
    assert [h.removed for h in hosts] == [False, False, True, True]
    assert client.volumes_removed == ["modelswarm-lab-node5-docker", "modelswarm-lab-node6-docker"]


def test_a_worker_still_in_the_swarm_is_not_removed_and_the_way_out_is_named(tmp_path):
    hosts = [LabHost("node4", swarm="active"), LabHost("node5", swarm="active")]
    with pytest.raises(lab.LabError) as caught:
        lab.remove_extra_workers(LabDocker(hosts), settings(tmp_path, workers=0))
    message = str(caught.value)
    assert "node4 (active), node5 (active)" in message
    assert "playbooks/remove-node.yml -e node=node4" in message and "nothing was removed" in message
    assert not any(h.removed for h in hosts)


def test_two_builds_of_the_shared_images_take_turns(tmp_path, capsys):
    """`lab up` and `images build/bundle` of two lab instances at once (CI brings up two) never build together:
    the second waits, says why, and starts once the first is done."""
    import threading

    settings = replace(lab.LabSettings(), state_dir=tmp_path / "state")
    order: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def first():
        with lab.build_lock(settings, "lab up"):
            order.append("first in")
            first_in.set()
            release_first.wait(10)
            order.append("first out")

    def second():
        first_in.wait(10)
        with lab.build_lock(settings, "images build"):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_in.wait(10)
    for _ in range(100):  # bounded: until the second one says it waits
        if "another lab build holds" in capsys.readouterr().err:
            break
        threading.Event().wait(0.05)
    else:
        pytest.fail("the second build never said that it waits")
    assert order == ["first in"]  # the second did not get in while the first held the lock
    release_first.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first in", "first out", "second in"]
