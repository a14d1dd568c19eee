"""Choosing a manager: the designated leader first, the next one when it is down, and a plain report of lost quorum."""

import contextlib

import docker.errors
import pytest

from modelswarm import cluster

INVENTORY = cluster.Inventory(
    hosts={n: cluster.Host(name=n, address=f"10.0.0.{i}") for i, n in enumerate(("node1", "node2", "node3"), 1)},
    groups={"managers": ["node1", "node2", "node3"], "leader": ["node1"]},
)


class FakeManager:
    def __init__(self, name, behaviour):
        self.name, self.behaviour = name, behaviour
        self.api = self

    def info(self):
        return {"Swarm": {"ControlAvailable": True}}

    def nodes(self):
        if self.behaviour == "no-leader":
            raise docker.errors.APIError(
                "503 Server Error: rpc error: code = Unknown desc = The swarm does not have a leader. It's possible "
                "that too few managers are online. Make sure more than half of the managers are online."
            )
        if self.behaviour == "stale-leader":  # its two followers died a moment ago
            return [
                {"ManagerStatus": {"Leader": True, "Reachability": "reachable"}},
                {"ManagerStatus": {"Reachability": "unreachable"}},
                {"ManagerStatus": {"Reachability": "unreachable"}},
                {"Description": {}},  # an entry that never completed a join: not a raft member
            ]
        if self.behaviour == "one-follower-down":
            return [
                {"ManagerStatus": {"Leader": True, "Reachability": "reachable"}},
                {"ManagerStatus": {"Reachability": "reachable"}},
                {"ManagerStatus": {"Reachability": "unreachable"}},
            ]
        return []


def fake_docker_on(behaviours):
    @contextlib.contextmanager
    def docker_on(host, timeout=15.0):
        behaviour = behaviours[host.name]
        if behaviour == "down":
            raise cluster.ClusterError(f"cannot reach {host.name} ({host.address}) over SSH: timed out")
        yield FakeManager(host.name, behaviour)

    return docker_on


def test_the_next_manager_is_used_when_the_designated_leader_is_down(monkeypatch):
    monkeypatch.setattr(cluster, "docker_on", fake_docker_on({"node1": "down", "node2": "ok", "node3": "ok"}))
    with cluster.manager(INVENTORY) as client:
        assert client.name == "node2"


def test_lost_quorum_is_reported_plainly_with_the_recovery(monkeypatch):
    monkeypatch.setattr(cluster, "docker_on", fake_docker_on({"node1": "down", "node2": "no-leader", "node3": "down"}))
    with pytest.raises(cluster.QuorumLost) as caught, cluster.manager(INVENTORY):
        pass
    message = str(caught.value)
    assert message.startswith("the swarm has lost quorum: 1 of 3 managers answer (node2)")
    assert "playbooks/recover-quorum.yml -e recover_survivor=<host>" in message


def test_a_leader_that_reaches_no_majority_is_a_lost_quorum(monkeypatch):
    monkeypatch.setattr(
        cluster, "docker_on", fake_docker_on({"node1": "down", "node2": "stale-leader", "node3": "down"})
    )
    with pytest.raises(cluster.QuorumLost) as caught, cluster.manager(INVENTORY):
        pass
    assert "node2: answers, but only 1 of 3 managers are reachable from it" in str(caught.value)


def test_a_leader_that_reaches_a_majority_is_used(monkeypatch):
    monkeypatch.setattr(
        cluster, "docker_on", fake_docker_on({"node1": "one-follower-down", "node2": "ok", "node3": "ok"})
    )
    with cluster.manager(INVENTORY) as client:
        assert client.name == "node1"


def test_no_manager_at_all_is_not_called_a_quorum_loss(monkeypatch):
    monkeypatch.setattr(cluster, "docker_on", fake_docker_on(dict.fromkeys(("node1", "node2", "node3"), "down")))
    with pytest.raises(cluster.ClusterError) as caught, cluster.manager(INVENTORY):
        pass
    assert not isinstance(caught.value, cluster.QuorumLost)
    assert str(caught.value).startswith("no swarm manager answered: node1: cannot reach node1")


def test_a_missing_inventory_is_named(tmp_path):
    with pytest.raises(cluster.ClusterError, match="does not exist"):
        cluster.read_inventory(tmp_path / "nope")
