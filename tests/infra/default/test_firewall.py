"""The firewall role: swarm ports open to the cluster peers only; SSH, 80 and 443 to everyone."""

import socket

import pytest

from tests.infra.helpers import lab_addresses

testinfra_hosts = ["ansible://managers"]
PEERS = sorted(lab_addresses().values())


def test_ufw_is_active_and_denies_by_default(host):
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "Default: deny (incoming)" in status


@pytest.mark.parametrize("port", ["2377/tcp", "7946/tcp", "7946/udp", "4789/udp"])
def test_swarm_port_allowed_from_each_peer_only(host, port):
    rules = [line for line in host.check_output("ufw status").splitlines() if line.startswith(port + " ")]
    sources = sorted(line.split()[2] for line in rules)
    assert sources == PEERS


@pytest.mark.parametrize("port", ["22/tcp", "80/tcp", "443/tcp"])
def test_public_ports_allowed_from_anywhere(host, port):
    rules = [line.split() for line in host.check_output("ufw status").splitlines() if line.startswith(port + " ")]
    assert ["ALLOW", "Anywhere"] in [r[1:3] for r in rules]


def test_a_peer_reaches_the_swarm_port_but_a_stranger_does_not(host):
    address = host.ansible.get_variables()["ansible_host"]
    # A peer: this host reaching another lab host's swarm port.
    other = next(peer for peer in PEERS if peer != address)
    peer_check = host.run("timeout 3 bash -c '</dev/tcp/%s/2377'", other)
    assert peer_check.rc == 0, f"{address} -> {other}:2377 failed: {peer_check.stderr}"
    # A stranger: this test runner (the lab's gateway address), which is not a cluster peer. Bounded to 2 s.
    with socket.socket() as probe:
        probe.settimeout(2)
        with pytest.raises(OSError):
            probe.connect((address, 2377))
