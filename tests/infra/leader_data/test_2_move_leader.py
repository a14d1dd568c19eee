"""playbooks/move-leader.yml on the legacy-core lab, last (after the restore; the lab is destroyed afterwards, so the
leader is not moved back):

- the playbook refuses a `to` that the inventory's leader group does not name, changing nothing;
- with the lab's inventory naming node2 (MODELSWARM_LAB_LEADER=node2), site.yml refuses to move the label by itself
  (the data would stay behind), naming move-leader.yml;
- `--check` prints the plan; the move under load spread over the three nodes by a health-checking balancer: 0 failed
  requests; the label, the console, PostgreSQL and the registry are on node2; the ledger verifies and holds every
  entry it held before; the model runs from the registry at node2's address and answers; a key made before still
  works; a second run has nothing to do.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from modelswarm import contract
from modelswarm.lab import LabSettings
from tests.infra.ha import helpers as ha
from tests.infra.ha.test_ha_day2 import VIRGINICA, LoadWhile, balancer_over
from tests.infra.helpers import (
    REPO,
    call,
    ledger_export,
    modelswarm,
    playbook_failure,
    run_playbook,
    run_tool,
    secrets_dir,
)

testinfra_hosts = ["ansible://node1"]

NEW = "node2"


def with_lab_inventory(inventory: Path, *args: str, timeout: int = 1500):
    """A playbook against the lab's own inventory alone, as an operator runs it: its leader group is the one that
    counts (together with the scenario's inventory, which names node1, Ansible would see two leaders)."""
    return run_tool(
        "ansible-playbook", "-i", str(inventory), *args, timeout=timeout, ANSIBLE_ROLES_PATH=str(REPO / "roles")
    )


def ledger_entries() -> dict[int, str]:
    return {e["id"]: e["entry_hash"] for e in ledger_export()}


def test_a_leader_the_inventory_does_not_name_is_refused():
    run = run_playbook("playbooks/move-leader.yml", "-e", f"to={NEW}")
    assert run.returncode != 0
    assert "Put the new leader in the inventory's leader group first" in run.stdout + run.stderr
    assert ha.nodes_view("node1")["node1"]["labels"].get(contract.LEADER_LABEL) == "true"


@pytest.fixture(scope="module")
def inventory_names_node2(tmp_path_factory) -> Path:
    """The lab's inventory rewritten with node2 as the leader (MODELSWARM_LAB_LEADER), beside the lab's group_vars:
    what an operator's inventory looks like once they have named the new leader."""
    up = run_tool("modelswarm", "lab", "up", "--json", timeout=600, MODELSWARM_LAB_LEADER=NEW)
    assert up.returncode == 0, up.stderr[-2000:]
    directory = tmp_path_factory.mktemp("inventory-leader-node2")
    shutil.copy(replace(LabSettings.from_env(), leader=NEW).inventory_file, directory / "hosts.yml")
    (directory / "group_vars").symlink_to(REPO / "inventory" / "lab" / "group_vars")
    assert yaml.safe_load((directory / "hosts.yml").read_text())["all"]["children"]["leader"]["hosts"] == {NEW: {}}
    return directory


def test_site_yml_refuses_to_move_the_label_without_the_data(inventory_names_node2):
    run = with_lab_inventory(inventory_names_node2, "playbooks/site.yml", "--tags", "swarm")
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "The swarm's designated leader" in output and f"move-leader.yml -e to={NEW}" in output
    assert ha.nodes_view("node1")["node1"]["labels"].get(contract.LEADER_LABEL) == "true"


def test_check_mode_prints_the_plan(inventory_names_node2):
    run = with_lab_inventory(inventory_names_node2, "playbooks/move-leader.yml", "-e", f"to={NEW}", "--check")
    assert run.returncode == 0, playbook_failure(run)
    assert f"Move the designated leader from node1 to {NEW}." in run.stdout
    assert "Check mode: nothing is changed." in run.stdout


@pytest.fixture(scope="module")
def moved(inventory_names_node2):
    before = ledger_entries()
    with balancer_over(["node1", "node2", "node3"]) as balancer:
        with LoadWhile(balancer, chunk=20) as load:
            started = time.monotonic()
            run = with_lab_inventory(inventory_names_node2, "playbooks/move-leader.yml", "-e", f"to={NEW}")
            seconds = round(time.monotonic() - started, 1)
        figures = load.figures()  # the balancer's counts too, before it stops
    assert run.returncode == 0, playbook_failure(run)
    print(f"\n  move-leader.yml node1 -> {NEW} under load: {json.dumps({'seconds': seconds, **figures})}")
    return before, figures


def test_no_request_failed_during_the_move(moved):
    _, figures = moved
    assert figures["requests"] > 0 and figures["load_errors"] == []
    assert figures["failed"] == 0, figures


def test_the_label_and_the_pinned_services_are_on_the_new_leader(moved):
    view = ha.nodes_view(NEW)
    assert view[NEW]["labels"].get(contract.LEADER_LABEL) == "true"
    assert contract.LEADER_LABEL not in view["node1"]["labels"]
    for service in ha.PINNED:
        assert ha.running_on(NEW, service) == [NEW], service


def test_the_ledger_moved_whole_and_verifies(moved):
    before, _ = moved
    code, result, err = modelswarm("ledger", "verify", "--no-anchor")
    assert code == 0 and result["ok"] is True, err
    after = ledger_entries()
    assert {i: after.get(i) for i in before} == before  # every entry, unchanged
    assert len(after) > len(before)  # and the model's re-pointing recorded after them


def test_the_model_runs_from_the_registry_at_the_new_leaders_address_and_answers(moved):
    code, status, err = modelswarm("status")
    assert code == 0, err
    address = LabSettings.from_env().address(NEW)
    assert status["iris"]["image"].startswith(f"{address}:"), status["iris"]["image"]
    key = (secrets_dir() / "keys" / f"{contract.CONTROLLER_DEPLOY_KEY}.key").read_text().strip()
    for node in ("node1", "node2", "node3"):
        answer = call(node, "POST", "/models/iris/predict", key=key, json=VIRGINICA)
        assert answer.status_code == 200, (node, answer.status_code)


def test_a_second_run_has_nothing_to_do(moved, inventory_names_node2):
    run = with_lab_inventory(inventory_names_node2, "playbooks/move-leader.yml", "-e", f"to={NEW}")
    assert run.returncode == 0, playbook_failure(run)
    assert f"Nothing to do: {NEW} is the designated leader already." in run.stdout
