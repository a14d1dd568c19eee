"""The rollout ledger in PostgreSQL: schema migrations, validation, writes and reads.

Validation happens here, before SQL, so a client gets one clear message per bad field; the table's CHECK
constraints repeat the rules so that nothing invalid can be stored by another path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from modelswarm import contract

RESULTS = ("succeeded", "rolled_back", "failed", "no_op")
FIELDS = (
    "model",
    "from_version",
    "to_version",
    "image",
    "image_digest",
    "actor",
    "started_at",
    "finished_at",
    "result",
    "message",
)
# Serialises migrations across console replicas or restarts (an arbitrary, fixed key).
MIGRATION_LOCK = 0x6D6F64656C


class InvalidEntry(ValueError):
    """A ledger entry failed validation; `errors` maps field -> message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


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
    """The packaged migrations, in order: files named NNNN_description.sql."""
    found = []
    for entry in resources.files("modelswarm.apps.console").joinpath("migrations").iterdir():
        match = re.match(r"^(\d{4})_([a-z0-9_]+)\.sql$", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), _with_contract(entry.read_text())))
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
    return parsed


def validate(entry: object) -> dict:
    """Check a ledger entry (a decoded JSON object); return it normalised or raise InvalidEntry."""
    if not isinstance(entry, dict):
        raise InvalidEntry({"body": "expected a JSON object"})
    errors: dict[str, str] = {}
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        errors["body"] = f"unknown field(s): {', '.join(unknown)}"
    model = entry.get("model")
    if not contract.matches(contract.MODEL_NAME_PATTERN, model):
        errors["model"] = f"required: {contract.MODEL_NAME_RULE}"
    for field in ("to_version", "image", "actor"):
        value = entry.get(field)
        if not isinstance(value, str) or not value.strip():
            errors[field] = "required, a non-empty string"
        elif len(value) > 512:
            errors[field] = "too long (512 characters at most)"
    for field in ("from_version", "image_digest", "message"):
        value = entry.get(field)
        if value is not None and not isinstance(value, str):
            errors[field] = "must be a string or null"
    digest = entry.get("image_digest")
    if isinstance(digest, str) and not contract.matches(contract.DIGEST_PATTERN, digest):
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
    clean["started_at"], clean["finished_at"] = started, finished
    return clean


def record(conn, entry: dict) -> dict:
    """Validate and store one entry; return it as stored (with id and duration)."""
    clean = validate(entry)
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO rollouts ({', '.join(FIELDS)}) VALUES ({', '.join(['%s'] * len(FIELDS))})"  # noqa: S608
            " RETURNING id",
            [clean[f] for f in FIELDS],
        )
        new_id = cur.fetchone()[0]
    conn.commit()
    return get(conn, new_id)


def _row(columns, row) -> dict:
    item = dict(zip(columns, row, strict=True))
    for key in ("started_at", "finished_at"):
        item[key] = item[key].isoformat()
    item["duration_s"] = float(item["duration_s"])
    return item


# Built from the constant column names above only; values always go through query parameters.
SELECT = "SELECT id, {}, EXTRACT(EPOCH FROM finished_at - started_at) AS duration_s FROM rollouts".format(  # noqa: S608
    ", ".join(FIELDS)
)


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
