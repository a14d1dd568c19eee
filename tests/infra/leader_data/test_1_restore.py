"""playbooks/restore.yml onto a new cluster: this scenario's lab, which never held the backup's data, restoring the
backup the default scenario took of its own lab (tests/infra/default/test_zx_backup.py; CI runs `make test` first).
It runs last on the legacy-core lab, after the HA and day-2 cases.

- a backup with one altered byte is refused, naming the file, and nothing changes;
- `--check` prints the plan;
- the restore: the ledger verifies from the head the backup recorded (its entries are this cluster's now), the
  probe key made before the backup is served by NGINX on every node, the models run again at their recorded
  versions from images now in this cluster's registry (at this cluster's registry address), and answer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.infra.helpers import (
    REPO,
    bearer,
    call,
    leaked,
    ledger_export,
    modelswarm,
    playbook_failure,
    run_playbook,
    secrets_dir,
)

testinfra_hosts = ["ansible://node1"]

PROBE = "restore-probe"
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


def this_swarm(host) -> str:
    return json.loads(host.check_output("docker info --format '{{json .Swarm.Cluster.ID}}'"))


@pytest.fixture(scope="module")
def backup(host) -> Path:
    """The newest backup taken of another swarm than this one."""
    own = this_swarm(host)
    candidates = []
    for manifest in (REPO / "backups").glob("*/manifest.json"):
        meta = json.loads(manifest.read_text()).get("meta", {})
        if meta.get("swarm_id") and meta["swarm_id"] != own:
            candidates.append(manifest.parent)
    if not candidates:
        pytest.skip("no backup of another cluster in backups/: `make test` (the default scenario) takes one first")
    return max(candidates, key=lambda p: p.name)


def test_an_altered_backup_is_refused_and_nothing_changes(backup, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(backup, altered)
    data = bytearray((altered / "registry.tar").read_bytes())
    data[len(data) // 2] ^= 0x01
    (altered / "registry.tar").write_bytes(bytes(data))
    before = ledger_export()
    run = run_playbook("playbooks/restore.yml", "-e", f"restore_from={altered}")
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "registry.tar does not match its checksum" in output, output[-3000:]
    assert "Load it into PostgreSQL" not in output
    assert ledger_export() == before


def test_a_missing_name_is_refused_with_the_way_out():
    run = run_playbook("playbooks/restore.yml")
    assert run.returncode != 0
    assert "-e restore_from=DIR" in run.stdout + run.stderr


def test_check_mode_prints_the_plan(backup):
    run = run_playbook("playbooks/restore.yml", "-e", f"restore_from={backup}", "--check")
    assert run.returncode == 0, playbook_failure(run)
    assert "Check mode: nothing is changed." in run.stdout
    assert json.loads((backup / "manifest.json").read_text())["meta"]["swarm_id"] in run.stdout


@pytest.fixture(scope="module")
def restored(backup):
    relative = os.path.relpath(backup, REPO)  # relative to the checkout, as ops may give it
    started = time.monotonic()
    run = run_playbook("playbooks/restore.yml", "-e", f"restore_from={relative}", timeout=1500)
    seconds = round(time.monotonic() - started, 1)
    assert run.returncode == 0, playbook_failure(run)
    assert not leaked(run.stdout + run.stderr), "a secret appeared in the restore's output"
    print(f"\n  restore.yml onto a new cluster: {seconds} s")
    return backup


def test_the_ledger_verifies_from_the_backups_head(restored):
    anchor = json.loads((restored / "ledger-anchor.json").read_text())
    code, result, err = modelswarm("ledger", "verify")
    assert code == 0, err
    assert result["ok"] is True
    assert result["head"][0] > anchor["id"]  # the restore's own rollouts are chained after the restored entries
    # The entry the backup verified is in this cluster's ledger, unchanged.
    held = {e["id"]: e["entry_hash"] for e in ledger_export()}
    assert held.get(anchor["id"]) == anchor["entry_hash"]


def test_the_models_run_again_at_their_recorded_versions_from_this_registry(restored, host):
    recorded = json.loads((restored / "models.json").read_text())
    code, status, err = modelswarm("status")
    assert code == 0, err
    registry = host.check_output("docker info --format '{{json .Swarm.NodeAddr}}'").strip('"')
    for name, was in recorded.items():
        now = status[name]
        assert now["version"] == was["version"], name
        assert now["image"].split("/", 1)[1] == was["image"].split("/", 1)[1]  # the same path, tag and digest
        assert now["image"].startswith(f"{registry}:"), now["image"]  # in this cluster's registry
        assert len([t for t in now["tasks"] if t["state"] == "running"]) == was["replicas"]


def test_the_probe_key_made_before_the_backup_is_served_on_every_node(restored):
    key = (secrets_dir() / f"{PROBE}.key").read_text().strip()
    deadline = time.monotonic() + 60  # NGINX polls the console for the grants (bounded wait)
    answers = {}
    while time.monotonic() < deadline:
        answers = {
            node: call(node, "POST", "/models/iris/predict", key=key, json=VIRGINICA, headers=bearer(key)).status_code
            for node in ("node1", "node2", "node3")
        }
        if set(answers.values()) == {200}:
            break
        time.sleep(3)
    assert set(answers.values()) == {200}, answers
