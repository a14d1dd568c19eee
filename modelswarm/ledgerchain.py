"""The rollout ledger's hash chain: the one definition of an entry's hash, and its verification.

Each entry stores `prev_hash` (the previous entry's `entry_hash`; 64 zeros for the first entry) and `entry_hash`, the
SHA-256 of a canonical serialisation of its content together with `prev_hash`. Changing, removing or reordering an
entry therefore breaks the chain at that entry, and a verifier that kept an earlier head (`anchor`) also notices a
chain rewritten from the start.

The console (which writes the chain) and the CLI (which verifies an export) both import this module, so the rule
exists once. Standard library only: the console image copies this package and has no other dependency for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

GENESIS = "0" * 64
# What the hash covers: the entry's id, every content field, who recorded it and when, and the link to the previous
# entry. Derived values (duration_s) are left out; they follow from the hashed ones.
CONTENT_FIELDS = (
    "model",
    "from_version",
    "to_version",
    "image",
    "image_digest",
    "started_at",
    "finished_at",
    "result",
    "message",
    "note",
)
HASHED_FIELDS = ("id", *CONTENT_FIELDS, "actor", "actor_kind", "recorded_at", "prev_hash")
TIMESTAMP_FIELDS = ("started_at", "finished_at", "recorded_at")
ACTOR_KINDS = ("key", "user", "legacy")
EXPORT_FIELDS = (*HASHED_FIELDS, "entry_hash")


def canonical_timestamp(value: datetime | str) -> str:
    """One text for one instant, whatever zone it was given in: UTC, microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.

    A timestamp without a zone is refused: its instant would depend on where the hash is computed."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise ValueError(f"not a timestamp: {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamp without a time zone: {value.isoformat()}")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(entry: Mapping) -> bytes:
    """The bytes that are hashed: JSON of exactly HASHED_FIELDS, sorted keys, no spaces, UTF-8, timestamps in UTC.

    Raises KeyError for a missing field and ValueError for a value of the wrong kind, so that a damaged export is
    reported, never hashed into something that happens to differ."""
    document = {}
    for field in HASHED_FIELDS:
        value = entry[field]
        if field in TIMESTAMP_FIELDS:
            value = canonical_timestamp(value)
        elif field == "id":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"id must be an integer, not {value!r}")
        elif value is not None and not isinstance(value, str):
            raise ValueError(f"{field} must be a string or null, not {type(value).__name__}")
        document[field] = value
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_hash(entry: Mapping) -> str:
    """SHA-256 hex of canonical(entry); `entry["prev_hash"]` must already be set."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def export_record(entry: Mapping) -> dict:
    """An entry as auditors get it: the hashed fields (timestamps canonical) and its entry_hash."""
    record = {field: entry[field] for field in EXPORT_FIELDS}
    for field in TIMESTAMP_FIELDS:
        record[field] = canonical_timestamp(record[field])
    return record


def to_json_line(entry: Mapping) -> str:
    """One export line (with its newline); the console and the CLI write the same text for the same entry."""
    return json.dumps(export_record(entry), sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Result:
    """The outcome of verify(): ok, or the first entry (in id order) that does not match, and why.

    `head` is the last verified (id, entry_hash): keep it and pass it back as `anchor` next time."""

    ok: bool
    checked: int
    head: tuple[int, str] | None
    failed_id: int | None = None
    reason: str = ""


def _describe(entry_id: int, previous: tuple[int, str] | None) -> str:
    if previous is None:
        return (
            f"prev_hash of id {entry_id} is not the genesis value (64 zeros): "
            "the entries before it were removed, or the chain was rewritten"
        )
    prev_id, _ = previous
    gap = ""
    if entry_id > prev_id + 1:
        gap = f" (ids {prev_id + 1}..{entry_id - 1} are absent)"
    return (
        f"prev_hash of id {entry_id} does not match the hash of id {prev_id}{gap}: "
        "an entry between them was removed, or entries were reordered or rewritten"
    )


def verify(entries: Iterable[Mapping], anchor: tuple[int, str] | None = None) -> Result:
    """Recompute the chain over `entries` in id order; return ok or the first entry that does not match.

    Each entry is checked for (1) its link: prev_hash equals the previous entry's entry_hash (genesis for the
    first), which catches removed and reordered entries; (2) its own hash over its content, which catches a changed
    entry. With `anchor` = an (id, entry_hash) seen earlier, the chain must still hold that entry unchanged: this
    catches someone with full database rights who rewrote every hash after a change."""
    ordered = sorted(entries, key=lambda e: e.get("id") if isinstance(e.get("id"), int) else -1)
    previous: tuple[int, str] | None = None
    checked = 0
    anchor_seen = False
    for entry in ordered:
        entry_id = entry.get("id")
        if isinstance(entry_id, bool) or not isinstance(entry_id, int):
            return Result(False, checked, previous, None, f"an entry has no integer id: {entry_id!r}")
        if previous is not None and entry_id == previous[0]:
            return Result(False, checked, previous, entry_id, f"id {entry_id} appears twice")
        expected_prev = previous[1] if previous else GENESIS
        if entry.get("prev_hash") != expected_prev:
            return Result(False, checked, previous, entry_id, _describe(entry_id, previous))
        try:
            computed = entry_hash(entry)
        except KeyError as exc:
            return Result(False, checked, previous, entry_id, f"entry id {entry_id} lacks the field {exc.args[0]}")
        except ValueError as exc:
            return Result(False, checked, previous, entry_id, f"entry id {entry_id} is malformed: {exc}")
        if entry.get("entry_hash") != computed:
            return Result(
                False,
                checked,
                previous,
                entry_id,
                f"hash mismatch at id {entry_id}: its content is not what was recorded (changed after the fact)",
            )
        if anchor is not None and entry_id == anchor[0]:
            anchor_seen = True
            if computed != anchor[1]:
                return Result(
                    False,
                    checked,
                    previous,
                    entry_id,
                    f"id {entry_id} no longer has the hash seen earlier ({anchor[1][:12]}…): this entry or one "
                    "before it was changed and the chain's hashes recomputed",
                )
        previous = (entry_id, computed)
        checked += 1
    if anchor is not None and not anchor_seen:
        return Result(
            False,
            checked,
            previous,
            anchor[0],
            f"id {anchor[0]}, seen earlier with hash {anchor[1][:12]}…, is no longer in the ledger: "
            "entries were removed from the end, or the chain was rewritten",
        )
    return Result(True, checked, previous)
