"""Talking to the console's rollout ledger through NGINX on any node (the first that answers), with an API key.

The ledger records the caller's identity (the key's name) as the actor; what the caller adds is a free-text note.
"""

from __future__ import annotations

from modelswarm.apiclient import Api, ApiError


class LedgerError(RuntimeError):
    """No node's NGINX could reach the console, or the console refused the entry."""


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
