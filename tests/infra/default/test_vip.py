"""The vip role: one floating address, held by exactly one node, answering through that node's NGINX over TLS."""

import time

import pytest
import requests
import testinfra

from modelswarm.lab import LabSettings
from tests.infra.helpers import inventory, lab_addresses, secrets_dir

NODES = sorted(lab_addresses())
VIP = LabSettings.from_env().vip_address


def node(name: str):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory())


def holders() -> list[str]:
    return [name for name in NODES if node(name).check_output(f"ip -o -4 addr show to {VIP}/32").strip()]


def test_exactly_one_node_holds_the_vip_and_its_nginx_answers_on_it():
    held = holders()
    assert len(held) == 1, held
    answer = requests.get(f"https://{VIP}/healthz", timeout=5, verify=str(secrets_dir() / "pki" / "ca.crt"))
    assert answer.status_code == 200 and answer.json()["node"] == held[0]  # the certificate names the VIP


@pytest.mark.parametrize("name", NODES)
def test_keepalived_runs_everywhere_and_vrrp_passes_from_the_peers_only(name):
    host = node(name)
    assert host.service("keepalived").is_running and host.service("keepalived").is_enabled
    rules = [word for line in host.check_output("ufw status").splitlines() for word in line.split() if "/vrrp" in word]
    sources = sorted(rule.split("/")[0] for rule in rules)  # "Anywhere  ALLOW  172.30.99.11/vrrp  # modelswarm vrrp"
    assert sources == sorted(lab_addresses().values())
    assert host.user("keepalived_script").shell == "/usr/sbin/nologin"  # the check runs unprivileged


def test_the_vip_moves_when_the_holders_nginx_stops_answering():
    """A gray failure of the entry point: the holder is up, but its NGINX does not answer. Its check fails twice,
    it gives the VIP up, and another node takes it; when NGINX answers again nothing moves back (nopreempt)."""
    holder = holders()[0]
    host = node(holder)
    rule = "OUTPUT -o lo -p tcp --dport 80 -j REJECT"  # only the holder's own check is refused
    host.check_output(f"iptables -I {rule}")
    try:
        deadline, new = time.monotonic() + 30, []
        while time.monotonic() < deadline and not (new := [n for n in holders() if n != holder]):
            time.sleep(0.5)
    finally:
        host.check_output(f"iptables -D {rule}")
    assert len(new) == 1 and holders() == new
    time.sleep(4)  # the old holder's check passes again (rise 2): it stays a backup
    assert holders() == new
