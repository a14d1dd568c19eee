"""Guards that need the playbook run again; disruptive, so this file runs last (zz) and restores the cluster.

- the converge output never carries a join token;
- a host that belongs to a different swarm stops the play with a clear error, changing nothing.
"""

import json

import testinfra

from modelswarm.tooling import recap
from tests.infra.helpers import (
    inventory,
    lab_addresses,
    leaked,
    run_playbook,
    secret_values,
    swarm_nodes,
)

testinfra_hosts = ["ansible://node1"]


def node_ids(host):
    return sorted(n["ID"] for n in swarm_nodes(host))


def test_no_join_token_in_a_verbose_converge(host):
    tokens = [host.check_output("docker swarm join-token -q %s", role) for role in ("manager", "worker")]
    result = run_playbook("playbooks/site.yml", "--tags", "swarm", "-vv")
    assert result.returncode == 0, result.stdout[-3000:]
    leaked = any(token in result.stdout + result.stderr for token in tokens)
    assert not leaked, "a swarm join token appears in the converge output"


def test_no_secret_in_a_verbose_converge(host):
    """No key, password, token, TLS key or htpasswd hash the converge keeps appears in a -vvv converge's output.
    (A deploy's output, which logs in to the registry with both accounts: test_models_secrets.)"""
    secrets = secret_values()
    assert len(secrets) >= 10 and any(name.startswith("registry/") for name in secrets), sorted(secrets)
    result = run_playbook("playbooks/site.yml", "--tags", "platform", "-vvv")
    assert result.returncode == 0, result.stdout[-3000:]
    output = result.stdout + result.stderr
    assert leaked(output) == [], "secrets appear in the -vvv converge output"
    assert recap.changed_hosts(output) == {}  # and the re-run changed nothing, on any host


def test_host_in_a_different_swarm_stops_the_play_and_nothing_changes(host):
    node3 = testinfra.get_host("ansible://node3", ansible_inventory=inventory())
    # Make node3 a member of another swarm: demote it, let it leave, forget it, and give it a swarm of its own.
    host.check_output("docker node demote node3")
    node3.check_output("docker swarm leave")
    host.check_output("docker node rm --force node3")
    node3.check_output("docker swarm init --advertise-addr %s", lab_addresses()["node3"])
    foreign_id = json.loads(node3.check_output("docker info --format '{{json .Swarm}}'"))["Cluster"]["ID"]
    ours_before = node_ids(host)
    try:
        result = run_playbook("playbooks/site.yml", "--tags", "swarm")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-3000:]
        assert "node3 is active in a swarm that the designated leader node1 does not manage" in output, output[-3000:]
        assert "Nothing was changed." in output
        # Nothing changed: our swarm has the same nodes, node3 is still in its own swarm, alone.
        assert node_ids(host) == ours_before
        node3_swarm = json.loads(node3.check_output("docker info --format '{{json .Swarm}}'"))
        assert node3_swarm["Cluster"]["ID"] == foreign_id and node3_swarm["Nodes"] == 1
    finally:
        # Restore: node3 leaves the foreign swarm and the playbook joins it back as a manager.
        node3.run("docker swarm leave --force")
        restore = run_playbook("playbooks/site.yml", "--tags", "swarm")
        assert restore.returncode == 0, restore.stdout[-3000:]
    nodes = swarm_nodes(host)
    assert sorted(n["Description"]["Hostname"] for n in nodes) == ["node1", "node2", "node3"]
    assert all(n["Spec"]["Role"] == "manager" and n["Status"]["State"] == "ready" for n in nodes)
