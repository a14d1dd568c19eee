"""Talking to the console's rollout ledger through NGINX on any node (the first that answers)."""

from __future__ import annotations

import requests

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
