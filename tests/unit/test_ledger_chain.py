"""The ledger's hash chain: the canonical serialisation (pure), verify() on made-up chains (pure), and tampering on
a real PostgreSQL as its superuser would do it (triggers disabled), found and named by verify()."""

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from modelswarm import ledgerchain
from modelswarm.apps.console import ledger

SAMPLE = {
    "id": 1,
    "model": "iris",
    "from_version": None,
    "to_version": "1.0.0",
    "image": "r/models/iris:1.0.0",
    "image_digest": None,
    "started_at": "2026-11-22T10:00:00Z",
    "finished_at": "2026-11-22T10:01:30.5Z",
    "result": "succeeded",
    "message": "",
    "note": "ci job ✓",
    "actor": "ci",
    "actor_kind": "key",
    "recorded_at": "2026-11-22T10:01:31.000001+00:00",
    "prev_hash": ledgerchain.GENESIS,
}


# ------------------------------------------------------------------------------------------- canonical form


def test_the_canonical_form_is_pinned():
    """Changing the rule would break every stored chain: this pins it byte for byte."""
    assert ledgerchain.canonical(SAMPLE) == (
        '{"actor":"ci","actor_kind":"key","finished_at":"2026-11-22T10:01:30.500000Z","from_version":null,'
        '"id":1,"image":"r/models/iris:1.0.0","image_digest":null,"message":"","model":"iris",'
        '"note":"ci job ✓","prev_hash":"' + "0" * 64 + '","recorded_at":"2026-11-22T10:01:31.000001Z",'
        '"result":"succeeded","started_at":"2026-11-22T10:00:00.000000Z","to_version":"1.0.0"}'
    ).encode("utf-8")
    assert ledgerchain.entry_hash(SAMPLE) == __import__("hashlib").sha256(ledgerchain.canonical(SAMPLE)).hexdigest()


@pytest.mark.parametrize(
    "same_instant",
    [
        "2026-11-22T12:00:00+02:00",
        "2026-11-22T05:00:00-05:00",
        "2026-11-22T10:00:00.000000+00:00",
        datetime(2026, 11, 22, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 22, 19, 0, tzinfo=timezone(timedelta(hours=9))),
    ],
)
def test_timestamps_in_other_zones_give_the_same_hash(same_instant):
    assert ledgerchain.canonical_timestamp(same_instant) == "2026-11-22T10:00:00.000000Z"
    assert ledgerchain.entry_hash({**SAMPLE, "started_at": same_instant}) == ledgerchain.entry_hash(SAMPLE)


def test_a_timestamp_without_a_zone_is_refused():
    with pytest.raises(ValueError, match="time zone"):
        ledgerchain.canonical_timestamp("2026-11-22T10:00:00")
    with pytest.raises(ValueError, match="time zone"):
        ledgerchain.canonical_timestamp(datetime(2026, 11, 22, 10, 0))


@pytest.mark.parametrize("field", [f for f in ledgerchain.HASHED_FIELDS if f not in ("id", "prev_hash")])
def test_every_hashed_field_changes_the_hash(field):
    value = SAMPLE[field]
    changed = "2027-01-01T00:00:00Z" if field in ledgerchain.TIMESTAMP_FIELDS else (value or "") + "x"
    assert ledgerchain.entry_hash({**SAMPLE, field: changed}) != ledgerchain.entry_hash(SAMPLE)


def test_id_and_prev_hash_are_hashed_and_extra_fields_are_not():
    base = ledgerchain.entry_hash(SAMPLE)
    assert ledgerchain.entry_hash({**SAMPLE, "id": 2}) != base
    assert ledgerchain.entry_hash({**SAMPLE, "prev_hash": "f" * 64}) != base
    assert ledgerchain.entry_hash({**SAMPLE, "duration_s": 90.5, "entry_hash": "x"}) == base


def test_an_export_line_is_one_json_object_and_keeps_unicode():
    line = ledgerchain.to_json_line({**SAMPLE, "entry_hash": ledgerchain.entry_hash(SAMPLE)})
    assert line.endswith("\n") and line.count("\n") == 1 and "ci job ✓" in line
    record = json.loads(line)
    assert set(record) == set(ledgerchain.EXPORT_FIELDS)
    assert record["started_at"] == "2026-11-22T10:00:00.000000Z"


# --------------------------------------------------------------------------------------- verify (pure)


def make_chain(n: int) -> list[dict]:
    chain, prev = [], ledgerchain.GENESIS
    for i in range(1, n + 1):
        item = {**SAMPLE, "id": i, "to_version": f"1.{i}.0", "prev_hash": prev}
        item["entry_hash"] = prev = ledgerchain.entry_hash(item)
        chain.append(item)
    return chain


def test_an_intact_chain_verifies_in_any_input_order():
    chain = make_chain(5)
    result = ledgerchain.verify(reversed(chain))
    assert result.ok and result.checked == 5 and result.head == (5, chain[-1]["entry_hash"])
    assert ledgerchain.verify([]).ok


def test_a_changed_entry_is_named():
    chain = make_chain(5)
    chain[2]["model"] = "forged"
    result = ledgerchain.verify(chain)
    assert not result.ok and result.failed_id == 3 and "hash mismatch at id 3" in result.reason
    assert result.checked == 2 and result.head == (2, chain[1]["entry_hash"])


def test_a_removed_entry_is_named_by_the_entry_after_it():
    chain = make_chain(5)
    del chain[2]
    result = ledgerchain.verify(chain)
    assert not result.ok and result.failed_id == 4
    assert "prev_hash of id 4 does not match the hash of id 2" in result.reason and "ids 3..3" in result.reason


def test_a_removed_first_entry_is_found():
    result = ledgerchain.verify(make_chain(3)[1:])
    assert not result.ok and result.failed_id == 2 and "genesis" in result.reason


def test_reordered_entries_are_found():
    chain = make_chain(4)
    # Swap two entries' places (their ids swapped, everything else moved along).
    chain[1]["id"], chain[2]["id"] = chain[2]["id"], chain[1]["id"]
    result = ledgerchain.verify(chain)
    assert not result.ok and result.failed_id == 2 and "prev_hash of id 2" in result.reason


def test_a_rewritten_chain_is_caught_only_against_an_anchor():
    chain = make_chain(4)
    anchor = (3, chain[2]["entry_hash"])
    rewritten = make_chain(4)
    rewritten[1]["note"] = "rewritten"
    prev = rewritten[0]["entry_hash"]
    for item in rewritten[1:]:  # what someone with full rights could do: recompute every later hash
        item["prev_hash"] = prev
        item["entry_hash"] = prev = ledgerchain.entry_hash(item)
    assert ledgerchain.verify(rewritten).ok
    result = ledgerchain.verify(rewritten, anchor=anchor)
    assert not result.ok and result.failed_id == 3 and "no longer has the hash seen earlier" in result.reason
    assert ledgerchain.verify(chain, anchor=anchor).ok


def test_entries_removed_from_the_end_are_caught_against_an_anchor():
    chain = make_chain(4)
    anchor = (4, chain[3]["entry_hash"])
    assert ledgerchain.verify(chain[:3]).ok  # the chain alone cannot tell a shorter ledger from an older one
    result = ledgerchain.verify(chain[:3], anchor=anchor)
    assert not result.ok and result.failed_id == 4 and "no longer in the ledger" in result.reason


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda e: e.pop("actor"), "lacks the field actor"),
        (lambda e: e.update(started_at="yesterday"), "malformed"),
        (lambda e: e.update(id="2"), "no integer id"),
        (lambda e: e.update(note=7), "malformed"),
    ],
)
def test_a_damaged_export_is_reported_not_crashed_on(damage, reason):
    chain = make_chain(3)
    damage(chain[1])
    result = ledgerchain.verify(chain)
    assert not result.ok and reason in result.reason


def test_a_duplicated_id_is_found():
    chain = make_chain(3)
    result = ledgerchain.verify([*chain, dict(chain[1])])
    assert not result.ok and result.failed_id == 2 and "twice" in result.reason


# ------------------------------------------------------------------ tampering on a real PostgreSQL, as superuser


GOOD = {
    "model": "iris",
    "from_version": "1.0.0",
    "image": "10.0.0.11:5000/models/iris:1.1.0",
    "image_digest": "sha256:" + "0f" * 32,
    "started_at": "2026-11-22T10:00:00Z",
    "finished_at": "2026-11-22T10:01:30+00:00",
    "result": "succeeded",
}


@pytest.fixture
def chained(pg_database):
    """A migrated database with five recorded entries; the connection is the owner's (a superuser)."""
    conn = pg_database.connect()
    ledger.migrate(conn)
    for i in range(1, 6):
        ledger.record(conn, {**GOOD, "to_version": f"1.{i}.0"}, actor="ci", actor_kind="key")
    yield conn
    conn.close()


def exported(conn) -> list[dict]:
    return [json.loads(line) for line in ledger.export_lines(conn)]


def as_superuser(conn, *statements) -> None:
    """What a database superuser can do despite the triggers: disable them, change rows, enable them again."""
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE rollouts DISABLE TRIGGER USER")
        for statement in statements:
            cur.execute(*statement) if isinstance(statement, tuple) else cur.execute(statement)
        cur.execute("ALTER TABLE rollouts ENABLE TRIGGER USER")
    conn.commit()


def test_an_untouched_ledger_verifies(chained):
    result = ledgerchain.verify(exported(chained))
    assert result.ok and result.checked == 5


def test_a_row_changed_with_sql_is_named(chained):
    as_superuser(chained, "UPDATE rollouts SET result = 'failed' WHERE id = 3")
    result = ledgerchain.verify(exported(chained))
    assert not result.ok and result.failed_id == 3 and "hash mismatch at id 3" in result.reason


def test_a_row_deleted_with_sql_is_named(chained):
    as_superuser(chained, "DELETE FROM rollouts WHERE id = 2")
    result = ledgerchain.verify(exported(chained))
    assert not result.ok and result.failed_id == 3
    assert "does not match the hash of id 1" in result.reason and "ids 2..2 are absent" in result.reason


def test_swapped_content_is_named(chained):
    """Two rows' content exchanged in place: the first of them no longer matches its hash."""
    as_superuser(
        chained,
        "UPDATE rollouts AS a SET to_version = b.to_version FROM rollouts AS b WHERE (a.id, b.id) IN ((2, 4), (4, 2))",
    )
    result = ledgerchain.verify(exported(chained))
    assert not result.ok and result.failed_id == 2 and "hash mismatch at id 2" in result.reason


def test_swapped_rows_with_their_hashes_are_named(chained):
    """Two whole rows exchanged, hashes and all, as a reordering would: the link breaks at the first of them."""
    fields = [f for f in ledgerchain.EXPORT_FIELDS if f not in ("id", "prev_hash", "entry_hash")]
    assignments = ", ".join(f"{f} = b.{f}" for f in fields)
    as_superuser(
        chained,
        # The hashes are UNIQUE: move them through placeholders, then into each other's rows.
        "ALTER TABLE rollouts DROP CONSTRAINT rollouts_prev_hash_unique",
        "ALTER TABLE rollouts DROP CONSTRAINT rollouts_entry_hash_unique",
        f"UPDATE rollouts AS a SET {assignments}, prev_hash = b.prev_hash, entry_hash = b.entry_hash"
        " FROM rollouts AS b WHERE (a.id, b.id) IN ((2, 3), (3, 2))",
    )
    result = ledgerchain.verify(exported(chained))
    assert not result.ok and result.failed_id == 2 and "prev_hash of id 2" in result.reason


def test_a_chain_rewritten_by_a_superuser_is_caught_against_the_anchor(chained):
    anchor = ledgerchain.verify(exported(chained)).head
    as_superuser(chained, "UPDATE rollouts SET note = 'rewritten' WHERE id = 2")
    rows = exported(chained)
    prev = rows[0]["entry_hash"]
    with chained.cursor() as cur:  # recompute every later hash, as a careful forger would
        cur.execute("ALTER TABLE rollouts DISABLE TRIGGER USER")
        cur.execute("ALTER TABLE rollouts DROP CONSTRAINT rollouts_prev_hash_unique")
        cur.execute("ALTER TABLE rollouts DROP CONSTRAINT rollouts_entry_hash_unique")
        for row in rows[1:]:
            row["prev_hash"] = prev
            prev = ledgerchain.entry_hash(row)
            cur.execute(
                "UPDATE rollouts SET prev_hash = %s, entry_hash = %s WHERE id = %s", (row["prev_hash"], prev, row["id"])
            )
    chained.commit()
    assert ledgerchain.verify(exported(chained)).ok
    result = ledgerchain.verify(exported(chained), anchor=anchor)
    assert not result.ok and result.failed_id == anchor[0] and "hash seen earlier" in result.reason


# ------------------------------------------- the CLI's side: export through a node's HTTP, verify on the controller


@pytest.fixture
def export_server(chained, unused_tcp_port):
    """A loopback stand-in for NGINX + the console: GET /api/ledger/export streams export_lines() with a token."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/api/ledger/export":
                self.send_error(404)
                return
            if self.headers.get("Authorization") != f"Bearer {VIEWER_KEY}":
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
            self.end_headers()
            for line in ledger.export_lines(chained):
                self.wfile.write(line.encode("utf-8"))

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", unused_tcp_port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{unused_tcp_port}"
    server.shutdown()
    server.server_close()


VIEWER_KEY = "msk_0123456789ab_" + "v" * 43


def api_of(*addresses, key=VIEWER_KEY):
    from modelswarm.apiclient import Api
    from modelswarm.cluster import Host

    return Api(hosts=[Host(f"m{i}", address) for i, address in enumerate(addresses)], key=key, source="a test")


def test_the_cli_exports_through_the_first_node_that_answers_and_verifies(export_server, chained, tmp_path):
    from modelswarm.lifecycle import ledger as client

    silent = "127.0.0.1:9"  # the discard port: nothing answers there
    api = api_of(silent, export_server)
    result, entries = client.verify(api)
    assert result.ok and result.checked == 5 and [e["id"] for e in entries] == [1, 2, 3, 4, 5]
    anchor_file = tmp_path / "ledger-anchor.json"
    assert client.load_anchor(anchor_file) is None
    client.save_anchor(anchor_file, result.head)
    assert client.load_anchor(anchor_file) == result.head

    as_superuser(chained, "UPDATE rollouts SET image = 'r/models/iris:forged' WHERE id = 4")
    result, _ = client.verify(api, anchor=client.load_anchor(anchor_file))
    assert not result.ok and result.failed_id == 4 and "hash mismatch at id 4" in result.reason


def test_the_export_without_credentials_is_refused_at_once(export_server):
    from modelswarm.lifecycle import ledger as client

    with pytest.raises(client.LedgerError, match=r"HTTP 401.*unknown or revoked"):
        client.export(api_of(export_server, "127.0.0.1:9", key="msk_0123456789ab_" + "x" * 43))


def test_a_damaged_export_line_is_named():
    from modelswarm.lifecycle import ledger as client

    with pytest.raises(client.LedgerError, match="line 2 of the export is not JSON"):
        client.parse_export(b'{"id": 1}\n{not json\n')
    with pytest.raises(client.LedgerError, match="line 1 of the export is not a JSON object"):
        client.parse_export(b"[1, 2]\n")
    assert client.parse_export('{"note": "ü"}\n\n'.encode()) == [{"note": "ü"}]
