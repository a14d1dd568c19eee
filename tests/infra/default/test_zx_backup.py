"""playbooks/backup.yml on the converged cluster (after the model tests, before the guards that re-run site.yml):

- `--check` prints the plan and writes nothing;
- a backup holds the database, the registry storage, the Raft state, the controller's secrets, the models and the
  ledger's head, with a manifest whose checksums and HMAC verify; private modes; nothing secret in clear;
- the manager whose Docker was stopped for the Raft copy is back, active, and every service runs.

Before the backup an API key, `restore-probe`, is made; its value is kept in .secrets (never in the backup in clear).
The legacy-core scenario restores this backup onto its own, new cluster (tests/infra/restore) and predicts with it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
import testinfra

from tests.infra.helpers import (
    REPO,
    inventory,
    leaked,
    modelswarm,
    playbook_failure,
    run_playbook,
    secrets_dir,
    swarm_nodes,
)

testinfra_hosts = ["ansible://node1"]

PROBE = "restore-probe"
BACKUPS = REPO / "backups"

_spec = importlib.util.spec_from_file_location(
    "backup_archive", REPO / "roles" / "backup" / "library" / "backup_archive.py"
)
archive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(archive)


def passphrase() -> str:
    return os.environ.get("MODELSWARM_BACKUP_PASSPHRASE") or (secrets_dir() / "backup-passphrase").read_text().strip()


def existing_backups() -> set[Path]:
    return set(BACKUPS.glob("*/manifest.json")) if BACKUPS.exists() else set()


@pytest.fixture(scope="module")
def backup(host) -> Path:
    """The probe key made, then one backup taken; its directory."""
    code, made, err = modelswarm("keys", "create", PROBE, "--role", "predict")
    if code != 0 and "already has a working key" in err + json.dumps(made):
        code, made, err = modelswarm("keys", "rotate", PROBE)
    assert code == 0, err
    probe_file = secrets_dir() / f"{PROBE}.key"
    probe_file.write_text(made["key"] + "\n")
    probe_file.chmod(0o600)

    before = existing_backups()
    run = run_playbook("playbooks/backup.yml", timeout=900)
    assert run.returncode == 0, playbook_failure(run)
    assert not leaked(run.stdout + run.stderr), "a secret appeared in the backup's output"
    made_now = existing_backups() - before
    assert len(made_now) == 1, f"expected one new backup, found {sorted(map(str, made_now))}"
    return next(iter(made_now)).parent


def test_check_mode_prints_the_plan_and_writes_nothing():
    before = existing_backups()
    run = run_playbook("playbooks/backup.yml", "--check")
    assert run.returncode == 0, playbook_failure(run)
    assert "Check mode: nothing is changed." in run.stdout
    assert existing_backups() == before


def test_the_backup_holds_every_part_with_private_modes(backup):
    names = {p.name for p in backup.iterdir()}
    assert names == {
        "manifest.json", "database.sql.sealed", "secrets.tar.sealed", "raft.tar.gz.sealed", "registry.tar",
        "models.json", "ledger-anchor.json",
    }  # fmt: skip
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in backup.iterdir()} == {0o600}


def test_the_manifest_verifies_and_names_the_cluster(backup, host):
    manifest = archive.verify_manifest(str(backup), passphrase())
    swarm_id = json.loads(host.check_output("docker info --format '{{json .Swarm.Cluster.ID}}'"))
    assert manifest["meta"]["swarm_id"] == swarm_id
    assert manifest["meta"]["models"] == sorted(json.loads((backup / "models.json").read_text()))
    assert "iris" in manifest["meta"]["models"]
    assert sorted(manifest["meta"]["nodes"]) == sorted(n["Description"]["Hostname"] for n in swarm_nodes(host))


def test_the_database_is_sealed_and_holds_the_keys_and_the_ledger(backup):
    sealed = (backup / "database.sql.sealed").read_bytes()
    assert b"CREATE TABLE" not in sealed and PROBE.encode() not in sealed
    kind, sql = archive.open_bytes(sealed, passphrase())
    assert kind == archive.KIND_FILE
    text = sql.decode()
    assert "CREATE TABLE public.api_keys" in text
    assert f"\t{PROBE}\t" in text  # the probe key's row (its digest, never the key)
    assert (secrets_dir() / f"{PROBE}.key").read_text().strip() not in text
    assert "ledger" in text


def test_the_controller_secrets_are_sealed_without_the_passphrase(backup):
    sealed = (backup / "secrets.tar.sealed").read_bytes()
    assert b"BEGIN" not in sealed
    kind, data = archive.open_bytes(sealed, passphrase())
    assert kind == archive.KIND_DIR
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
    assert {"pki/ca.key", "pki/ca.crt", "console-db-password", f"{PROBE}.key"} <= names
    assert "backup-passphrase" not in names


def test_the_raft_state_is_the_swarm_directory_of_a_stopped_manager(backup):
    _, data = archive.open_bytes((backup / "raft.tar.gz.sealed").read_bytes(), passphrase())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
    assert any(n.startswith("swarm/raft/") for n in names), names[:20]
    assert "swarm/state.json" in names or any(n.startswith("swarm/certificates/") for n in names)


def test_the_registry_storage_holds_the_models_images(backup):
    models = json.loads((backup / "models.json").read_text())
    with tarfile.open(backup / "registry.tar") as tar:
        names = [n.removeprefix("./") for n in tar.getnames()]
    for record in models.values():
        path = record["image"].split("/", 1)[1].split(":", 1)[0]  # models/iris
        assert any(n.startswith(f"docker/registry/v2/repositories/{path}/") for n in names), path
        digest = record["image"].rsplit("@sha256:", 1)[1]
        assert f"docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data" in names


def test_the_ledger_head_is_kept(backup):
    anchor = json.loads((backup / "ledger-anchor.json").read_text())
    assert isinstance(anchor["id"], int) and anchor["id"] > 0
    assert len(anchor["entry_hash"]) == 64


def test_the_raft_manager_is_back_and_every_service_runs(backup, host):
    raft_node = json.loads((backup / "manifest.json").read_text())["meta"]["raft_from"]
    assert raft_node != json.loads((backup / "manifest.json").read_text())["meta"]["leader"]  # never the leader
    nodes = swarm_nodes(host)
    assert {(n["Status"]["State"], n["Spec"]["Availability"]) for n in nodes} == {("ready", "active")}
    flags = testinfra.get_host(f"ansible://{raft_node}", ansible_inventory=inventory()).run(
        "ls -A /var/lib/modelswarm/maintenance/"
    )
    assert flags.rc == 0 and flags.stdout.strip() == "", flags.stdout  # the maintenance flag is cleared
    listing = host.check_output("docker service ls --format '{{json .}}'")
    for service in (json.loads(line) for line in listing.splitlines() if line.strip()):
        running, wanted = service["Replicas"].split(" ")[0].split("/")
        assert running == wanted, service
