"""The cluster contract is decided once: the Ansible side's vars file is generated from it, the database and the
NGINX routes use the same rules, and no other file spells its distinctive values out again."""

import re
import subprocess

import pytest
import yaml

from modelswarm import contract
from modelswarm.apps.console import ledger
from modelswarm.lifecycle import bundle


def test_the_checked_in_ansible_vars_are_what_the_contract_generates(repo):
    checked_in = (repo / contract.ANSIBLE_VARS_FILE).read_text()
    assert checked_in == contract.ansible_vars_yaml(), "run `make contract` and commit the result"
    assert yaml.safe_load(checked_in) == contract.ANSIBLE_VARS


def test_a_changed_contract_value_shows_as_drift(monkeypatch, repo):
    monkeypatch.setitem(contract.ANSIBLE_VARS, "modelswarm_model_port", 9000)
    assert (repo / contract.ANSIBLE_VARS_FILE).read_text() != contract.ansible_vars_yaml()


@pytest.mark.parametrize(
    "value",
    [contract.MODELS_NETWORK, contract.LEADER_LABEL, contract.MODEL_NAME_PATTERN, contract.DEPLOY_FACTS_CONFIG],
)
def test_distinctive_contract_values_are_spelled_out_only_in_the_contract(repo, value):
    """Code, roles and templates read these from the contract; tests and docs may quote them."""
    where = ["modelswarm", "roles", "pyinfra_deploys", "playbooks", "benchmarks", ":(exclude,glob)**/*.md"]
    found = subprocess.run(
        ["git", "grep", "--untracked", "-l", "-w", "-F", value, "--", *where],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert sorted(found) == sorted(["modelswarm/contract.py", str(contract.ANSIBLE_VARS_FILE)])


@pytest.mark.parametrize(
    ("name", "valid"),
    [("iris", True), ("a1", True), ("x" * 40, True), ("x" * 41, False), ("Iris", False), ("ab-", False), ("1a", False)],
)
def test_the_bundle_and_the_ledger_apply_the_same_model_name_rule(name, valid):
    assert contract.matches(contract.MODEL_NAME_PATTERN, name) is valid
    entry = {
        "model": name,
        "to_version": "1",
        "image": "r/models/x:1",
        "note": "t",
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
        "result": "succeeded",
    }
    if valid:
        assert ledger.validate(entry)["model"] == name
    else:
        with pytest.raises(ledger.InvalidEntry, match="model"):
            ledger.validate(entry)


def test_the_ledger_schema_checks_the_contract_rules():
    sql = ledger.migrations()[0].sql
    assert f"model ~ '^{contract.MODEL_NAME_PATTERN}$'" in sql
    assert f"image_digest ~ '^{contract.DIGEST_PATTERN}$'" in sql
    assert "{{" not in sql


def test_nginx_routes_models_by_the_contract_rule(repo):
    template = (repo / "roles/platform/templates/nginx.conf.j2").read_text()
    assert '"^/models/(?<model>{{ modelswarm_model_name_pattern }})(?<rest>/.*)$"' in template
    # The front NGINX hands the model's name to the replica router, which resolves the contract's service name.
    assert "{{ router_prefix }}/$model{{ path }}" in template
    router = (repo / "roles/platform/templates/nginx-router.conf.j2").read_text()
    assert '"^/(?<model>{{ modelswarm_model_name_pattern }})(?<rest>/.*)$"' in router
    route = (repo / "roles/platform/templates/nginx-router-route.conf.j2").read_text()
    assert "{{ modelswarm_model_service_prefix }}$model:{{ modelswarm_model_port }}" in route
    # PCRE as NGINX uses it: the quoted pattern accepts a name exactly when the contract does.
    route = re.compile("^/models/(?P<model>" + contract.MODEL_NAME_PATTERN + ")(?P<rest>/.*)$")
    assert route.match("/models/iris/predict").group("model") == "iris"
    assert route.match("/models/Iris/predict") is None


def test_bundle_defaults_come_from_the_contract(repo):
    iris = bundle.load_bundle(repo / "examples/models/iris")
    assert iris.service == contract.MODEL_SERVICE_PREFIX + "iris"


def test_exit_codes_are_stable():
    assert [int(c) for c in contract.Exit] == [0, 1, 2, 3, 4]
