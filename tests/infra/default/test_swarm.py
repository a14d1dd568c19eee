"""The swarm role: one swarm, three managers Ready, one Leader, two Reachable, the leader label on node1 only."""

import json

from tests.infra.helpers import lab_addresses, swarm_nodes

testinfra_hosts = ["ansible://managers"]


def test_this_host_is_an_active_manager(host):
    info = json.loads(host.check_output("docker info --format '{{json .Swarm}}'"))
    assert info["LocalNodeState"] == "active"
    assert info["ControlAvailable"] is True
    assert info["Managers"] == 3 and info["Nodes"] == 3


def test_three_managers_ready_one_leader_two_reachable(host):
    nodes = swarm_nodes(host)
    assert sorted(n["Description"]["Hostname"] for n in nodes) == ["node1", "node2", "node3"]
    assert all(n["Spec"]["Role"] == "manager" for n in nodes)
    assert all(n["Status"]["State"] == "ready" for n in nodes)
    assert all(n["ManagerStatus"]["Reachability"] == "reachable" for n in nodes)
    assert sum(bool(n["ManagerStatus"].get("Leader")) for n in nodes) == 1


def test_raft_leader_is_the_designated_leader_after_a_fresh_build(host):
    leaders = [n["Description"]["Hostname"] for n in swarm_nodes(host) if n["ManagerStatus"].get("Leader")]
    assert leaders == ["node1"]


def test_leader_label_only_on_node1(host):
    labelled = {n["Description"]["Hostname"]: n["Spec"].get("Labels", {}) for n in swarm_nodes(host)}
    assert labelled["node1"].get("modelswarm.leader") == "true"
    assert "modelswarm.leader" not in labelled["node2"]
    assert "modelswarm.leader" not in labelled["node3"]


def test_nodes_advertise_their_lab_addresses(host):
    addresses = {n["Description"]["Hostname"]: n["Status"]["Addr"] for n in swarm_nodes(host)}
    assert addresses == lab_addresses()


def test_dispatcher_heartbeat_is_the_configured_one(host):
    spec = json.loads(host.check_output("docker info --format '{{json .Swarm.Cluster.Spec}}'"))
    assert spec["Dispatcher"]["HeartbeatPeriod"] == 5_000_000_000


def test_swarm_ports_listen(host):
    assert host.socket("tcp://0.0.0.0:2377").is_listening or host.socket("tcp://:::2377").is_listening
    assert host.socket("tcp://0.0.0.0:7946").is_listening or host.socket("tcp://:::7946").is_listening
    assert host.socket("udp://0.0.0.0:7946").is_listening or host.socket("udp://:::7946").is_listening
