"""Talking to the console's rollout ledger through NGINX on any node (the first that answers)."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from modelswarm import ledgerchain
from modelswarm.cluster import Inventory


class LedgerError(RuntimeError):
    """No node's NGINX could reach the console, or the console refused the entry."""


def _bases(inventory: Inventory) -> list[str]:
    return [f"http://{host.address}" for host in inventory.managers]


def record(inventory: Inventory, entry: dict) -> dict:
    failures = []
    for base in _bases(inventory):
        try:
            response = requests.post(f"{base}/api/rollouts", json=entry, timeout=10)
        except requests.RequestException as exc:
            failures.append(f"{base}: {exc.__class__.__name__}")
            continue
        if response.status_code == 201:
            return response.json()
        if response.status_code == 400:
            raise LedgerError(f"the ledger refused the entry: {response.text.strip()}")
        failures.append(f"{base}: HTTP {response.status_code}")
    raise LedgerError("the ledger could not be written: " + "; ".join(failures))


def history(inventory: Inventory, model: str, limit: int = 100) -> list[dict]:
    failures = []
    for base in _bases(inventory):
        try:
            response = requests.get(f"{base}/api/rollouts", params={"model": model, "limit": limit}, timeout=10)
        except requests.RequestException as exc:
            failures.append(f"{base}: {exc.__class__.__name__}")
            continue
        if response.status_code == 200:
            return response.json()
        failures.append(f"{base}: HTTP {response.status_code}")
    raise LedgerError("the ledger could not be read: " + "; ".join(failures))


def parse_export(body: bytes) -> list[dict]:
    """The export's JSON lines (UTF-8, one entry per line) as entries; a damaged line is named, not skipped."""
    entries = []
    for number, line in enumerate(body.decode("utf-8").splitlines(), start=1):
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


def export(inventory: Inventory, headers: dict) -> list[dict]:
    """The whole ledger, in id order with both hashes (GET /api/ledger/export), from the first node that answers.

    `headers` carries the credentials (a viewer's key or better); they are sent, never printed. A 401/403 is the
    console's answer on every node alike, so it ends the attempt at once."""
    failures = []
    for base in _bases(inventory):
        try:
            response = requests.get(f"{base}/api/ledger/export", headers=headers, timeout=60)
        except requests.RequestException as exc:
            failures.append(f"{base}: {exc.__class__.__name__}")
            continue
        if response.status_code == 200:
            try:
                return parse_export(response.content)
            except UnicodeDecodeError as exc:
                raise LedgerError(f"the export from {base} is not UTF-8: {exc}") from exc
        if response.status_code in (401, 403):
            raise LedgerError(f"{base} refused the credentials for the ledger export (HTTP {response.status_code})")
        failures.append(f"{base}: HTTP {response.status_code}")
    raise LedgerError("the ledger could not be exported: " + "; ".join(failures))


def verify(
    inventory: Inventory, headers: dict, anchor: tuple[int, str] | None = None
) -> tuple[ledgerchain.Result, list[dict]]:
    """Export the ledger and recompute its chain here, on the controller, with the rule the console wrote it by.

    Returns the verdict and the entries. Pass the `head` of an earlier passing run as `anchor` (see load_anchor and
    save_anchor): that also catches a chain rewritten from the start by someone with full database rights, and
    entries removed from its end."""
    entries = export(inventory, headers)
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
