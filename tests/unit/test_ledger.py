"""Ledger entry validation and the packaged migrations; then the ledger on a real PostgreSQL (tests/unit/conftest.py
starts one per session): migrations on empty and on pre-chain databases, records with identity, privileges."""

import threading

import psycopg2
import psycopg2.errors
import pytest

from modelswarm import ledgerchain
from modelswarm.apps.console import ledger

GOOD = {
    "model": "iris",
    "from_version": "1.0.0",
    "to_version": "1.1.0",
    "image": "10.0.0.11:5000/models/iris:1.1.0",
    "image_digest": "sha256:" + "0f" * 32,
    "note": "https://ci.example/jobs/42",
    "started_at": "2026-11-22T10:00:00Z",
    "finished_at": "2026-11-22T10:01:30+00:00",
    "result": "succeeded",
}


def test_good_entry_is_normalised():
    clean = ledger.validate(GOOD)
    assert clean["message"] == ""
    assert clean["note"] == "https://ci.example/jobs/42"
    assert ledger.validate({**GOOD, "note": None})["note"] == ""
    assert (clean["finished_at"] - clean["started_at"]).total_seconds() == 90
    assert clean["from_version"] == "1.0.0"


def test_first_deploy_has_no_from_version_and_no_digest():
    entry = {**GOOD, "from_version": None, "image_digest": None}
    assert ledger.validate(entry)["from_version"] is None


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"model": "Iris"}, "model", "lowercase"),
        ({"model": "x"}, "model", "2-40 characters"),
        ({"model": "a" * 41}, "model", "2-40 characters"),
        ({"to_version": ""}, "to_version", "non-empty"),
        ({"image": None}, "image", "required"),
        ({"image_digest": "md5:abc"}, "image_digest", "sha256:<64 hex digits>"),
        ({"result": "ok"}, "result", "one of succeeded, rolled_back, failed, no_op"),
        ({"started_at": "2026-11-22T10:00:00"}, "started_at", "needs a time zone"),
        ({"finished_at": "soon"}, "finished_at", "not an ISO 8601 timestamp"),
        ({"finished_at": "2026-11-22T09:00:00Z"}, "finished_at", "before started_at"),
        ({"colour": "blue"}, "body", "unknown field(s): colour"),
        ({"message": 7}, "message", "string or null"),
        ({"actor": "ci"}, "actor", "the actor is the authenticated identity"),
        ({"entry_hash": "0" * 64}, "entry_hash", "set by the ledger"),
        ({"actor_kind": "user"}, "actor_kind", "set by the ledger"),
        ({"note": 5}, "note", "string or null"),
        ({"note": "n" * 513}, "note", "512 characters at most"),
        ({"to_version": "1" * 129}, "to_version", "128 characters at most"),
        ({"message": "a\x00b"}, "message", "NUL"),
        ({"image": "r/iris:\ud800"}, "image", "not valid Unicode"),
        ({"started_at": "0001-01-01T00:00:00+01:00"}, "started_at", "out of range"),
    ],
)
def test_each_bad_field_gets_its_own_message(change, field, message):
    with pytest.raises(ledger.InvalidEntry) as caught:
        ledger.validate({**GOOD, **change})
    assert set(caught.value.errors) == {field}
    assert message in caught.value.errors[field]


def test_non_object_is_refused():
    with pytest.raises(ledger.InvalidEntry, match="expected a JSON object"):
        ledger.validate(["not", "an", "object"])


def test_migrations_are_numbered_and_create_the_ledger():
    found = ledger.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    # A Python step counts in the numbering like a file; migration 2 is the access-control tables'.
    assert found[3].name == "chain_existing_entries" and found[3].step is ledger.chain_existing_entries
    assert found[1].name == "access_control"
    assert "CREATE TABLE rollouts" in found[0].sql
    # The table's CHECKs repeat the validator's rules, so no other path can store what validate() refuses.
    for rule in ("'succeeded', 'rolled_back', 'failed', 'no_op'", "finished_at >= started_at", "sha256:"):
        assert rule in found[0].sql


def test_a_python_step_that_collides_with_a_file_is_refused(monkeypatch):
    monkeypatch.setitem(ledger.PYTHON_STEPS, 3, ("twice", lambda cur: None))
    with pytest.raises(RuntimeError, match=r"numbered 1\.\.n"):
        ledger.migrations()


# ------------------------------------------------------------------------------------- on a real PostgreSQL


@pytest.fixture
def db(migrated_db):
    return migrated_db


def entry(n: int = 0, **change) -> dict:
    return {**GOOD, "to_version": f"1.{n}.0", **change}


def columns(conn) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute("SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = 'rollouts'")
        return dict(cur.fetchall())


def test_migrations_apply_on_an_empty_database_once(pg_database):
    conn = pg_database.connect()
    try:
        assert ledger.migrate(conn) == [m.version for m in ledger.migrations()]
        assert ledger.migrate(conn) == []
        found = columns(conn)
        assert found["entry_hash"] == "NO" and found["prev_hash"] == "NO" and found["actor_kind"] == "NO"
        assert {"note", "recorded_at"} <= set(found)
        with conn.cursor() as cur:
            cur.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'console_app'")
            assert cur.fetchone() is not None
    finally:
        conn.close()


def test_rows_from_before_the_chain_are_chained_as_legacy(pg_database):
    """A database a 0001-era console wrote to: its rows keep their actor, become 'legacy' and verify."""
    conn = pg_database.connect()
    try:
        first = ledger.migrations()[0]
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur.execute(first.sql)
            cur.execute("INSERT INTO schema_migrations (version, name) VALUES (1, %s)", (first.name,))
            for n, actor in enumerate(["ci", "alice", "probe"]):
                cur.execute(
                    "INSERT INTO rollouts (model, to_version, image, actor, started_at, finished_at, result, message)"
                    " VALUES ('iris', %s, 'r/iris:1', %s, '2026-01-01 10:00:00.123456+02', now(), 'succeeded', %s)",
                    (f"1.{n}.0", actor, "ünïcode ✓" if n == 1 else ""),
                )
        conn.commit()

        assert ledger.migrate(conn) == [2, 3, 4, 5]

        exported = [json_line(line) for line in ledger.export_lines(conn)]
        assert [(e["actor"], e["actor_kind"]) for e in exported] == [
            ("ci", "legacy"),
            ("alice", "legacy"),
            ("probe", "legacy"),
        ]
        assert exported[0]["prev_hash"] == ledgerchain.GENESIS
        result = ledgerchain.verify(exported)
        assert result.ok and result.checked == 3 and result.head == (3, exported[-1]["entry_hash"])
        # New entries extend the migrated chain.
        new = ledger.record(conn, entry(9), actor="ci", actor_kind="key")
        assert new["prev_hash"] == exported[-1]["entry_hash"]
        assert ledgerchain.verify([json_line(line) for line in ledger.export_lines(conn)]).ok
    finally:
        conn.close()


def json_line(line: str) -> dict:
    import json

    assert line.endswith("\n") and "\n" not in line[:-1]
    return json.loads(line)


def test_records_carry_identity_and_chain(db):
    first = ledger.record(db, entry(1), actor="ci", actor_kind="key")
    second = ledger.record(db, entry(2, note="ünïcode note ✓"), actor="alice", actor_kind="user")
    assert first["prev_hash"] == ledgerchain.GENESIS
    assert second["prev_hash"] == first["entry_hash"]
    assert (second["actor"], second["actor_kind"], second["note"]) == ("alice", "user", "ünïcode note ✓")
    assert first["entry_hash"] == ledgerchain.entry_hash(first)
    # Reads give the same fields, timestamps in the canonical form (UTC, microseconds, Z).
    assert ledger.get(db, second["id"]) == second
    assert second["started_at"] == "2026-11-22T10:00:00.000000Z"
    assert second["finished_at"] == "2026-11-22T10:01:30.000000Z"
    assert second["recorded_at"].endswith("Z") and second["duration_s"] == 90.0
    assert [e["id"] for e in ledger.history(db, "iris")] == [second["id"], first["id"]]
    assert ledger.history(db)[0]["entry_hash"] == second["entry_hash"]


def test_record_needs_an_identity(db):
    with pytest.raises(ValueError, match="actor_kind"):
        ledger.record(db, entry(), actor="ci", actor_kind="admin")
    with pytest.raises(ValueError, match="actor"):
        ledger.record(db, entry(), actor="", actor_kind="key")
    with pytest.raises(ledger.InvalidEntry, match="authenticated identity"):
        ledger.record(db, {**entry(), "actor": "forged"}, actor="ci", actor_kind="key")


def test_the_trigger_refuses_update_delete_and_truncate_even_for_the_owner(db):
    ledger.record(db, entry(), actor="ci", actor_kind="key")
    for statement in (
        "UPDATE rollouts SET actor = 'someone else'",
        "DELETE FROM rollouts",
        "TRUNCATE rollouts",
    ):
        with db.cursor() as cur, pytest.raises(psycopg2.errors.RaiseException, match="append-only"):
            cur.execute(statement)
        db.rollback()
    assert len(ledger.history(db)) == 1


def test_an_insert_that_does_not_extend_the_chain_is_refused(db):
    """Even a direct INSERT by the owner cannot fork the chain or slip in below the newest id."""
    first = ledger.record(db, entry(1), actor="ci", actor_kind="key")
    ledger.record(db, entry(2), actor="ci", actor_kind="key")
    with db.cursor() as cur, pytest.raises(psycopg2.errors.RaiseException, match="does not extend the chain"):
        cur.execute(
            "INSERT INTO rollouts (model, to_version, image, actor, actor_kind, started_at, finished_at, result,"
            " prev_hash, entry_hash) VALUES ('iris', '9', 'r/iris:9', 'x', 'key', now(), now(), 'succeeded', %s, %s)",
            (first["entry_hash"], "a" * 64),
        )
    db.rollback()


def test_the_application_role_may_read_and_record_but_never_change(pg_database, db):
    password = "app-password-for-the-test"
    ledger.set_application_password(db, password)
    with pytest.raises(psycopg2.OperationalError):
        pg_database.connect(user="console_app", password="wrong").close()
    app = pg_database.connect(user="console_app", password=password)
    try:
        stored = ledger.record(app, entry(), actor="ci", actor_kind="key")
        assert ledger.get(app, stored["id"])["actor"] == "ci"
        assert ledgerchain.verify([json_line(line) for line in ledger.export_lines(app)]).ok
        for statement in ("UPDATE rollouts SET note = 'x'", "DELETE FROM rollouts", "TRUNCATE rollouts"):
            with app.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
            app.rollback()
        for statement in (
            "ALTER TABLE rollouts DISABLE TRIGGER rollouts_no_update_or_delete",
            "SELECT setval('rollouts_id_seq', 1)",
        ):
            with app.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
            app.rollback()
    finally:
        app.close()


def test_the_application_password_is_sent_as_a_verifier_only(db):
    """What reaches the server (and could reach its log) is a SCRAM verifier, never the password itself."""
    ledger.set_application_password(db, "another-password")
    with db.cursor() as cur:
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'console_app'")
        stored = cur.fetchone()[0]
    assert stored.startswith("SCRAM-SHA-256$") and "another-password" not in stored
    with pytest.raises(ValueError):
        ledger.set_application_password(db, "")


def test_concurrent_records_make_one_unforked_chain(pg_database, db):
    threads, per_thread, errors = 4, 5, []

    def work(n: int) -> None:
        conn = pg_database.connect()
        try:
            for i in range(per_thread):
                ledger.record(conn, entry(n * 10 + i), actor=f"writer-{n}", actor_kind="key")
        except Exception as exc:  # reported below; a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            conn.close()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    exported = [json_line(line) for line in ledger.export_lines(db)]
    assert len(exported) == threads * per_thread
    assert len({e["prev_hash"] for e in exported}) == len(exported)
    result = ledgerchain.verify(exported)
    assert result.ok and result.checked == threads * per_thread
    recorded = [e["recorded_at"] for e in exported]
    assert recorded == sorted(recorded)


def test_record_refuses_an_autocommit_connection(pg_database):
    conn = pg_database.connect()
    try:
        ledger.migrate(conn)
        conn.autocommit = True
        with pytest.raises(RuntimeError, match="transaction"):
            ledger.record(conn, entry(), actor="ci", actor_kind="key")
    finally:
        conn.close()
