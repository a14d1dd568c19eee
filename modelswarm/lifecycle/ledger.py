"""Talking to the console's rollout ledger through NGINX on any node (the first that answers), with an API key.

The ledger records the caller's identity (the key's name) as the actor; what the caller adds is a free-text note.
`verify` exports the whole ledger and recomputes its hash chain here, on the controller.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelswarm import ledgerchain
from modelswarm.apiclient import Api, ApiError


class LedgerError(RuntimeError):
    """No node's NGINX could reach the console, or the console refused the request."""


def record(api: Api, entry: dict) -> dict:
    try:
        return api.call("POST", "/api/rollouts", expected=(201,), json=entry).json()
    except ApiError as exc:
        raise LedgerError(f"the ledger could not be written: {exc}") from exc


def history(api: Api, model: str, limit: int = 100) -> list[dict]:
    try:
        return api.call("GET", "/api/rollouts", params={"model": model, "limit": limit}).json()
    except ApiError as exc:
        raise LedgerError(f"the ledger could not be read: {exc}") from exc


def parse_export(body: bytes) -> list[dict]:
    """The export's JSON lines (UTF-8, one entry per line) as entries; a damaged line is named, not skipped."""
    entries = []
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LedgerError(f"the export is not UTF-8: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"line {number} of the export is not JSON: {exc}") from exc
        if not isinstance(item, dict):
            raise LedgerError(f"line {number} of the export is not a JSON object")
        entries.append(item)
    return entries


def export_text(api: Api) -> bytes:
    """The whole ledger as the console exports it (GET /api/ledger/export): JSON lines in id order, both hashes."""
    try:
        return api.call("GET", "/api/ledger/export", timeout=60).content
    except ApiError as exc:
        raise LedgerError(f"the ledger could not be exported: {exc}") from exc


def export(api: Api) -> list[dict]:
    return parse_export(export_text(api))


def verify(api: Api, anchor: tuple[int, str] | None = None) -> tuple[ledgerchain.Result, list[dict]]:
    """Export the ledger and recompute its chain here, with the rule the console wrote it by.

    Returns the verdict and the entries. Pass the `head` of an earlier passing run as `anchor` (see load_anchor and
    save_anchor): that also catches a chain rewritten from the start by someone with full database rights, and
    entries removed from its end."""
    entries = export(api)
    return ledgerchain.verify(entries, anchor=anchor), entries


def load_anchor(path: str | Path) -> tuple[int, str] | None:
    """The (id, entry_hash) head saved by an earlier passing verification, or None when there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        anchor = (saved["id"], saved["entry_hash"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"{path} is not a ledger anchor ({{'id': N, 'entry_hash': '…'}}): {exc}") from exc
    if isinstance(anchor[0], bool) or not isinstance(anchor[0], int) or not isinstance(anchor[1], str):
        raise LedgerError(f"{path} is not a ledger anchor: id must be an integer and entry_hash a string")
    return anchor


def save_anchor(path: str | Path, head: tuple[int, str] | None) -> None:
    """Keep a passing verification's head for the next run (only save a head from a Result with ok=True)."""
    if head is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"id": head[0], "entry_hash": head[1]}) + "\n")
    temporary.replace(path)
