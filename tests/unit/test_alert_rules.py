"""The platform's alert rules (roles/platform/files/prometheus/alerts.yml), with Debian's promtool: they load, and
their unit tests (tests/prometheus/alerts-test.yml: series that must make each alert fire, with its labels and
text, and series that must not) pass. Every alert has a firing case there."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from modelswarm.tooling.nginx_harness import REPO

RULES = REPO / "roles/platform/files/prometheus/alerts.yml"
TESTS = REPO / "tests/prometheus/alerts-test.yml"

if shutil.which("promtool") is None:
    pytest.fail("promtool is missing: scripts/test-packages.sh installs Debian's prometheus package", pytrace=False)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False)


def test_the_rules_load():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_unit_tests_pass():
    tested = promtool("test", "rules", str(TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_case_where_it_fires():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    fired = {
        case["alertname"]
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - fired == set()
    assert len(alerts) >= 11


def test_a_wrong_expectation_fails(tmp_path):
    """The unit tests can fail: the same tests, one expected text changed, do."""
    broken = tmp_path / "alerts-test.yml"
    text = TESTS.read_text().replace("../../roles/", f"{REPO}/roles/").replace("1.961%", "2%")
    broken.write_text(text)
    tested = promtool("test", "rules", str(broken))
    assert tested.returncode != 0 and "ModelErrorRateHigh" in tested.stdout + tested.stderr
