"""The rollout ledger in PostgreSQL: schema migrations, validation, writes and reads.

Validation happens here, before SQL, so a client gets one clear message per bad field; the table's CHECK
constraints repeat the rules so that nothing invalid can be stored by another path.

The ledger is a hash chain (modelswarm/ledgerchain.py holds the rule) and append-only (migration 5: privileges and
triggers). Who recorded an entry is the authenticated identity the caller passes to record(), never a body field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from modelswarm import contract, ledgerchain

RESULTS = ("succeeded", "rolled_back", "failed", "no_op")
# What a client may send; everything else about an entry is set by the ledger.
FIELDS = ledgerchain.CONTENT_FIELDS
# Set by the ledger from the request's identity and the chain; a body naming them is refused, field by field.
SERVER_FIELDS = ("id", "actor_kind", "recorded_at", "prev_hash", "entry_hash", "duration_s")
NOTE_MAX = 512
# Serialises migrations across console replicas or restarts (an arbitrary, fixed key).
MIGRATION_LOCK = 0x6D6F64656C
# Serialises ledger inserts, so each new entry links to the newest one and the chain never forks.
LEDGER_LOCK = 0x6C6564676572
APPLICATION_ROLE = "console_app"


class InvalidEntry(ValueError):
    """A ledger entry failed validation; `errors` maps field -> message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Migration:
    """One schema step: SQL from a packaged file, or a Python `step(cursor)` where SQL cannot express it (hashing
    existing rows with the chain's one rule). Either runs in the migration's transaction."""

    version: int
    name: str
    sql: str = ""
    step: Callable | None = None


def chain_existing_entries(cur) -> None:
    """Migration 4: put the rows recorded before the chain existed into it, in id order. They keep their actor and
    are marked 'legacy' (migration 3): nobody authenticated them. Runs before migration 5 creates the triggers that
    refuse UPDATE. A ledger holds thousands of rows at most, so reading them at once is fine."""
    columns = [c for c in ledgerchain.HASHED_FIELDS if c != "prev_hash"]
    cur.execute(f"SELECT {', '.join(columns)} FROM rollouts ORDER BY id")  # noqa: S608 (constant column names)
    rows = cur.fetchall()
    prev = ledgerchain.GENESIS
    for row in rows:
        entry = {**dict(zip(columns, row, strict=True)), "prev_hash": prev}
        digest = ledgerchain.entry_hash(entry)
        cur.execute("UPDATE rollouts SET prev_hash = %s, entry_hash = %s WHERE id = %s", (prev, digest, entry["id"]))
        prev = digest


# Migrations written in Python, by number; they count in the 1..n sequence like the SQL files.
PYTHON_STEPS: dict[int, tuple[str, Callable]] = {4: ("chain_existing_entries", chain_existing_entries)}


def _with_contract(sql: str) -> str:
    """Migrations name the contract's rules as {{MODEL_NAME_PATTERN}} etc., so the database checks what the code
    checks, from the one definition."""
    patterns = ["MODEL_NAME_PATTERN", "VERSION_PATTERN", "DIGEST_PATTERN"]
    patterns += ["API_KEY_ID_PATTERN", "PRINCIPAL_NAME_PATTERN"]
    for name in patterns:
        sql = sql.replace("{{" + name + "}}", getattr(contract, name))
    for name in ("ROLES", "USER_ROLES"):  # role lists as SQL literals
        sql = sql.replace("{{" + name + "}}", ", ".join(f"'{role}'" for role in getattr(contract, name)))
    return sql


def migrations() -> list[Migration]:
    """The migrations, in order: packaged files named NNNN_description.sql and the PYTHON_STEPS, numbered 1..n
    together, so a database at version k always gets k+1.. in the same order."""
    found = []
    for entry in resources.files("modelswarm.apps.console").joinpath("migrations").iterdir():
        match = re.match(r"^(\d{4})_([a-z0-9_]+)\.sql$", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), _with_contract(entry.read_text())))
    found.extend(Migration(version, name, step=step) for version, (name, step) in PYTHON_STEPS.items())
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def migrate(conn) -> list[int]:
    """Apply pending migrations in one transaction each, under an advisory lock. Returns the versions applied."""
    applied = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            conn.commit()
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
            for migration in migrations():
                if migration.version in done:
                    continue
                if migration.step is not None:
                    migration.step(cur)
                else:
                    cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                conn.commit()
                applied.append(migration.version)
        except Exception:
            conn.rollback()
            raise
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            conn.commit()
    return applied


def _timestamp(value, field: str, errors: dict[str, str]) -> datetime | None:
    if not isinstance(value, str):
        errors[field] = "required, an ISO 8601 timestamp with a time zone"
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        errors[field] = f"not an ISO 8601 timestamp: {value!r}"
        return None
    if parsed.tzinfo is None:
        errors[field] = f"needs a time zone (e.g. {value}Z): {value!r}"
        return None
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        errors[field] = f"out of range: {value!r}"
        return None
    if parsed.year < 1000:  # the chain's canonical form writes four-digit years
        errors[field] = f"out of range (before the year 1000): {value!r}"
        return None
    return parsed


def _text_problem(value: str) -> str | None:
    """What PostgreSQL's text and the chain's UTF-8 serialisation cannot hold, refused here rather than as a 500."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (unpaired surrogate)"
    return None


def validate(entry: object) -> dict:
    """Check a ledger entry (a decoded JSON object); return it normalised or raise InvalidEntry."""
    if not isinstance(entry, dict):
        raise InvalidEntry({"body": "expected a JSON object"})
    errors: dict[str, str] = {}
    if "actor" in entry:
        errors["actor"] = "not accepted: the actor is the authenticated identity (put free text in `note`)"
    for field in SERVER_FIELDS:
        if field in entry:
            errors[field] = "not accepted: set by the ledger"
    unknown = sorted(set(entry) - set(FIELDS) - set(SERVER_FIELDS) - {"actor"})
    if unknown:
        errors["body"] = f"unknown field(s): {', '.join(unknown)}"
    model = entry.get("model")
    if not contract.matches(contract.MODEL_NAME_PATTERN, model):
        errors["model"] = f"required: {contract.MODEL_NAME_RULE}"
    for field in ("to_version", "image"):
        value = entry.get(field)
        if not isinstance(value, str) or not value.strip():
            errors[field] = "required, a non-empty string"
        elif len(value) > 512:
            errors[field] = "too long (512 characters at most)"
    if isinstance(entry.get("to_version"), str) and len(entry["to_version"]) > 128 and "to_version" not in errors:
        errors["to_version"] = "too long (128 characters at most)"
    for field in ("from_version", "image_digest", "message", "note"):
        value = entry.get(field)
        if value is not None and not isinstance(value, str):
            errors[field] = "must be a string or null"
    note = entry.get("note")
    if isinstance(note, str) and len(note) > NOTE_MAX:
        errors["note"] = f"too long ({NOTE_MAX} characters at most)"
    for field in ("to_version", "image", "from_version", "image_digest", "message", "note"):
        value = entry.get(field)
        if isinstance(value, str) and field not in errors and (problem := _text_problem(value)):
            errors[field] = problem
    digest = entry.get("image_digest")
    if (
        isinstance(digest, str)
        and "image_digest" not in errors
        and not contract.matches(contract.DIGEST_PATTERN, digest)
    ):
        errors["image_digest"] = "must look like sha256:<64 hex digits>"
    if entry.get("result") not in RESULTS:
        errors["result"] = f"required, one of {', '.join(RESULTS)}"
    started = _timestamp(entry.get("started_at"), "started_at", errors)
    finished = _timestamp(entry.get("finished_at"), "finished_at", errors)
    if started and finished and finished < started:
        errors["finished_at"] = "is before started_at"
    if errors:
        raise InvalidEntry(errors)
    clean = {field: entry.get(field) for field in FIELDS}
    clean["message"] = clean["message"] or ""
    clean["note"] = clean["note"] or ""
    clean["started_at"], clean["finished_at"] = started, finished
    return clean


def _check_identity(actor: object, actor_kind: object) -> None:
    """The caller's authenticated identity; a wrong one is a programming error on the server, not bad input."""
    if actor_kind not in ledgerchain.ACTOR_KINDS:
        raise ValueError(f"actor_kind must be one of {', '.join(ledgerchain.ACTOR_KINDS)}, not {actor_kind!r}")
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 512 or _text_problem(actor):
        raise ValueError("actor must be a non-empty identity name (512 characters at most)")


def record(conn, entry: dict, actor: str, actor_kind: str) -> dict:
    """Validate and append one entry to the chain; return it as stored (with id, hashes and duration).

    `actor` is the authenticated identity's name (an API key's or a user's) and `actor_kind` says which ('key',
    'user'); the request body cannot set them. Inserts are serialised by a transaction-scoped advisory lock, so the
    entry read as the newest is still the newest when this one links to it. The hash is computed here, with the
    chain's one rule, and checked again against the row the database returns before the transaction commits, so
    an entry that would not verify is never stored.
    """
    clean = validate(entry)
    _check_identity(actor, actor_kind)
    if conn.autocommit:
        raise RuntimeError("ledger.record needs a transaction (autocommit off): its lock lasts for the transaction")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LEDGER_LOCK,))
            cur.execute("SELECT entry_hash FROM rollouts ORDER BY id DESC LIMIT 1")
            newest = cur.fetchone()
            # clock_timestamp(), not now(): taken under the lock, so recorded_at follows chain order.
            cur.execute("SELECT nextval('rollouts_id_seq'), clock_timestamp()")
            new_id, recorded_at = cur.fetchone()
            stored = {
                "id": new_id,
                **clean,
                "actor": actor,
                "actor_kind": actor_kind,
                "recorded_at": recorded_at,
                "prev_hash": newest[0] if newest else ledgerchain.GENESIS,
            }
            stored["entry_hash"] = ledgerchain.entry_hash(stored)
            columns = list(ledgerchain.EXPORT_FIELDS)
            cur.execute(
                f"INSERT INTO rollouts ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608
                f" RETURNING {SELECTED}",
                [stored[c] for c in columns],
            )
            row = _row([d[0] for d in cur.description], cur.fetchone())
            if ledgerchain.entry_hash(row) != stored["entry_hash"]:
                raise RuntimeError(f"ledger entry {new_id} reads back differently from what was hashed; not stored")
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    return row


def _row(columns, row) -> dict:
    item = dict(zip(columns, row, strict=True))
    for key in ledgerchain.TIMESTAMP_FIELDS:
        item[key] = ledgerchain.canonical_timestamp(item[key])
    item["duration_s"] = float(item["duration_s"])
    return item


# Built from constant column names only; values always go through query parameters.
SELECTED = ", ".join(ledgerchain.EXPORT_FIELDS) + ", EXTRACT(EPOCH FROM finished_at - started_at) AS duration_s"
SELECT = f"SELECT {SELECTED} FROM rollouts"  # noqa: S608


def get(conn, entry_id: int) -> dict | None:
    with conn.cursor() as cur:
        cur.execute(SELECT + " WHERE id = %s", (entry_id,))
        row = cur.fetchone()
        columns = [d[0] for d in cur.description]
    return _row(columns, row) if row else None


def history(conn, model: str | None = None, limit: int = 50) -> list[dict]:
    """Newest first; one model's or all."""
    if model is not None and not contract.matches(contract.MODEL_NAME_PATTERN, model):
        raise InvalidEntry({"model": "not a valid model name"})
    limit = max(1, min(int(limit), 1000))
    with conn.cursor() as cur:
        if model:
            cur.execute(SELECT + " WHERE model = %s ORDER BY started_at DESC, id DESC LIMIT %s", (model, limit))
        else:
            cur.execute(SELECT + " ORDER BY started_at DESC, id DESC LIMIT %s", (limit,))
        columns = [d[0] for d in cur.description]
        return [_row(columns, row) for row in cur.fetchall()]


def export_lines(conn) -> Iterator[str]:
    """The whole ledger for auditors (GET /api/ledger/export): one JSON object per line, in id order, with both
    hashes, exactly what `ledgerchain.verify` checks. A server-side cursor streams it in batches, so a long ledger
    is never held in memory; the connection must stay open (and in a transaction) until the generator is done."""
    with conn.cursor(name="ledger_export") as cur:
        cur.itersize = 500
        cur.execute(f"SELECT {', '.join(ledgerchain.EXPORT_FIELDS)} FROM rollouts ORDER BY id")  # noqa: S608
        columns = list(ledgerchain.EXPORT_FIELDS)
        for row in cur:
            yield ledgerchain.to_json_line(dict(zip(columns, row, strict=True)))
    conn.rollback()  # a read: end its transaction and release the snapshot


def set_application_password(conn, password: str) -> None:
    """Let the application role log in with `password` (the console calls this at start, as the owner).

    The password is turned into a SCRAM-SHA-256 verifier by libpq (psycopg2's encrypt_password) before it is sent,
    so the statement, should the server log it, never holds the password itself."""
    from psycopg2.extensions import encrypt_password

    if not isinstance(password, str) or not password:
        raise ValueError("the application role's password must be a non-empty string")
    verifier = encrypt_password(password, APPLICATION_ROLE, conn, "scram-sha-256")
    try:
        with conn.cursor() as cur:
            cur.execute(f"ALTER ROLE {APPLICATION_ROLE} LOGIN PASSWORD %s", (verifier,))
        conn.commit()
    except Exception:
        conn.rollback()
        raise
