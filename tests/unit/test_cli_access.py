"""The CLI's access-control commands against a fake API: what they print where, what they wait for, exit codes."""

import json
from types import SimpleNamespace

import pytest

from modelswarm import apiclient, cli, contract, ledgerchain
from modelswarm.apiclient import Api

KEY = "msk_0123456789ab_" + "s" * 43
INVENTORY = "tests/unit/inventories/good.yml"


@pytest.fixture
def fake_api(monkeypatch, repo, tmp_path):
    monkeypatch.chdir(repo)
    monkeypatch.setenv(contract.API_KEY_ENV, "msk_0123456789ab_" + "a" * 43)
    monkeypatch.setenv("MODELSWARM_SECRETS_DIR", str(tmp_path))
    seen = {"calls": [], "waits": [], "answers": {}}

    def call(self, method, path, expected=(200,), timeout=None, **kwargs):
        seen["calls"].append((method, path, kwargs.get("json")))
        return SimpleNamespace(json=lambda: seen["answers"][(method, path)], content=seen["answers"].get("export"))

    def wait(self, version, probe_key=None, timeout=10):
        seen["waits"].append((version, probe_key))
        return {host.name: seen.get("in_force", True) for host in self.hosts}

    monkeypatch.setattr(Api, "call", call)
    monkeypatch.setattr(Api, "wait_for_grants", wait)
    return seen


def test_keys_create_prints_the_key_alone_on_the_last_line_after_every_node_has_it(fake_api, capsys):
    created = {"name": "alice", "role": "viewer", "models": ["iris"], "key_id": "0123456789ab", "key": KEY}
    fake_api["answers"][("POST", "/api/keys")] = {**created, "grants_version": 9}
    assert cli.main(["keys", "create", "alice", "--role", "viewer", "--models", "iris, ", "-i", INVENTORY]) == 0
    assert fake_api["calls"] == [("POST", "/api/keys", {"name": "alice", "role": "viewer", "models": ["iris"]})]
    assert fake_api["waits"] == [(9, KEY)]
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == KEY and captured.out.count(KEY) == 1
    assert KEY not in captured.err and "in force on every node" in captured.err


def test_a_change_not_in_force_everywhere_in_10_seconds_fails_naming_the_nodes(fake_api, capsys):
    fake_api["answers"][("DELETE", "/api/keys/bob")] = {"name": "bob", "key_id": "x", "revoked": True,
                                                        "grants_version": 4}  # fmt: skip
    fake_api["in_force"] = False
    assert cli.main(["keys", "revoke", "bob", "-i", INVENTORY]) == contract.Exit.FAILED
    assert "not yet in force on a, b, c after 10 s" in capsys.readouterr().err


def test_without_any_key_the_cli_says_where_it_looked(monkeypatch, repo, tmp_path, capsys):
    monkeypatch.chdir(repo)
    monkeypatch.delenv(contract.API_KEY_ENV, raising=False)
    monkeypatch.setenv("MODELSWARM_SECRETS_DIR", str(tmp_path))
    assert cli.main(["keys", "list", "-i", INVENTORY]) == contract.Exit.USAGE
    err = capsys.readouterr().err
    assert contract.API_KEY_ENV in err and "controller-admin.key" in err


def chain(n: int) -> list[dict]:
    entries, previous = [], ledgerchain.GENESIS
    for i in range(1, n + 1):
        entry = {"id": i, "model": "iris", "from_version": None, "to_version": str(i), "image": "r/iris",
                 "image_digest": None, "actor": "ci", "actor_kind": "key", "note": "", "result": "succeeded",
                 "message": "", "started_at": "2026-11-22T10:00:00Z", "finished_at": "2026-11-22T10:00:01Z",
                 "recorded_at": "2026-11-22T10:00:02Z", "prev_hash": previous}  # fmt: skip
        entry["entry_hash"] = ledgerchain.entry_hash(entry)
        previous = entry["entry_hash"]
        entries.append(entry)
    return entries


def test_ledger_verify_keeps_an_anchor_and_names_a_changed_entry(fake_api, tmp_path, capsys):
    entries = chain(3)
    fake_api["answers"]["export"] = "".join(json.dumps(e) + "\n" for e in entries).encode()
    assert cli.main(["ledger", "verify", "-i", INVENTORY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["head"] == [3, entries[2]["entry_hash"]]
    assert json.loads((tmp_path / "ledger-anchor.json").read_text())["id"] == 3
    entries[1]["to_version"] = "forged"
    fake_api["answers"]["export"] = "".join(json.dumps(e) + "\n" for e in entries).encode()
    assert cli.main(["ledger", "verify", "-i", INVENTORY]) == contract.Exit.FAILED
    assert "entry 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "ledger-anchor.json").read_text())["id"] == 3  # a failed run keeps the anchor


def test_the_api_client_prefers_the_environment_and_otherwise_reads_the_controllers_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELSWARM_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv(contract.API_KEY_ENV, raising=False)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "controller-deploy.key").write_text(KEY + "\n")
    assert apiclient.api_key("deploy") == (KEY, str(tmp_path / "keys" / "controller-deploy.key"))
    with pytest.raises(apiclient.CredentialsMissing):
        apiclient.api_key("admin")
    monkeypatch.setenv(contract.API_KEY_ENV, "from-env")
    assert apiclient.api_key("admin") == ("from-env", f"${contract.API_KEY_ENV}")
