"""Bad inventories stop in preflight with one clear message, before any host is contacted.

Runs the real site.yml with ansible-playbook against loopback-only test inventories (tests/unit/inventories).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelswarm.tooling import recap

REPO = Path(__file__).resolve().parents[2]
INVENTORIES = Path(__file__).parent / "inventories"
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


def run_site(inventory: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [PLAYBOOK, "-i", str(INVENTORIES / f"{inventory}.yml"), "playbooks/site.yml", "--tags", "preflight_inventory"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("inventory", "message"),
    [
        ("two-managers", "Group 'managers' has 2 host(s) (a, b): swarm managers need an odd number"),
        ("four-managers", "Group 'managers' has 4 host(s) (a, b, c, d): swarm managers need an odd number"),
        ("no-leader", "Group 'leader' must hold exactly one host that is also in 'managers'; found 0 ()"),
        ("two-leaders", "Group 'leader' must hold exactly one host that is also in 'managers'; found 2 (a, b)"),
        ("leader-not-manager", "found 1 (z)"),
        ("shared-address", "Hosts share addresses: a=127.0.0.11, b=127.0.0.11"),
    ],
)
def test_bad_inventory_stops_with_one_clear_message(inventory, message):
    result = run_site(inventory)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
    # One clear message: exactly one failed assertion, and the play stopped there.
    assert output.count("FAILED!") == 1, output
    # Nothing changed, and facts were never gathered (no host was contacted).
    assert recap.changed_hosts(output) == {}, output
    assert "Gathering Facts" not in output and "Gather facts" not in output, output


def test_sane_inventory_passes_the_inventory_checks():
    result = run_site("good")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "failed=0" in output
    assert "Warn when the manager count" in output  # the task ran (and was skipped: 3 is recommended)
    # Only the inventory was checked: no play gathered facts from (contacted) any host.
    assert "Gathering Facts" not in output and "Gather facts" not in output, output
