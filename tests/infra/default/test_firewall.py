"""The firewall role: swarm ports open to the cluster peers only; SSH, 80 and 443 to everyone."""

import re
import socket

import pytest

from tests.infra.helpers import lab_addresses

testinfra_hosts = ["ansible://managers"]
PEERS = sorted(lab_addresses().values())
# A rule line of `ufw status [verbose]`: "To", the action ("ALLOW", verbose "ALLOW IN"), "From". In verbose output a
# rule made through an application profile shows once per port: "2377/tcp (modelswarm-swarm)  ALLOW IN  <peer>".
RULE = re.compile(r"^(?P<to>\S+(?: \([^)]*\))?)\s+(?:ALLOW|DENY|REJECT|LIMIT)(?: IN)?\s+(?P<source>\S+)")


def ufw_rules(host, verbose=False) -> list[tuple[str, str]]:
    status = host.check_output("ufw status verbose" if verbose else "ufw status")
    return [(m["to"], m["source"]) for m in map(RULE.match, status.splitlines()) if m]


def test_ufw_is_active_and_denies_by_default(host):
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "Default: deny (incoming)" in status


@pytest.mark.parametrize("port", ["2377/tcp", "7946/tcp", "7946/udp", "4789/udp"])
def test_swarm_port_allowed_from_each_peer_only(host, port):
    # Every rule that opens the port, through the profile or not: one per peer, and none from anywhere else.
    sources = sorted(source for to, source in ufw_rules(host, verbose=True) if to.split()[0] == port)
    assert sources == PEERS


def test_one_profile_rule_per_peer(host):
    sources = sorted(source for to, source in ufw_rules(host) if to == "modelswarm-swarm")
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
