"""Calling the cluster's HTTP API (the console behind NGINX on any node) with an API key.

Which key: $MODELSWARM_API_KEY when set (CI keeps it in its secrets), else the key the converge wrote for this
controller: `.secrets/keys/controller-deploy.key` for deploys and reads, `controller-admin.key` for managing keys
and users. `.secrets` is the checkout's (the directory the converge ran from), or $MODELSWARM_SECRETS_DIR.

HTTPS is used when the cluster CA is known (`.secrets/pki/ca.crt`, or $MODELSWARM_CA_BUNDLE): keys then never
cross the network in the clear. Without it, plain HTTP (NGINX serves both).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from modelswarm import contract
from modelswarm.cluster import Host, Inventory

TRANSIENT = (502, 503, 504)  # NGINX could not reach the console: ask the next node


class CredentialsMissing(RuntimeError):
    """No API key to use (bad usage: nothing was changed)."""


class ApiError(RuntimeError):
    """The API refused the request or no node answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def secrets_dir() -> Path:
    return Path(os.environ.get("MODELSWARM_SECRETS_DIR", ".secrets"))


def api_key(need: str = "deploy") -> tuple[str, str]:
    """(key, where it came from) for an operation that needs role `need`."""
    from_env = os.environ.get(contract.API_KEY_ENV, "").strip()
    if from_env:
        return from_env, f"${contract.API_KEY_ENV}"
    name = contract.CONTROLLER_ADMIN_KEY if need == "admin" else contract.CONTROLLER_DEPLOY_KEY
    path = secrets_dir() / "keys" / f"{name}.key"
    try:
        return path.read_text().strip(), str(path)
    except OSError:
        raise CredentialsMissing(
            f"no API key: set {contract.API_KEY_ENV}, or run from the checkout that ran the converge "
            f"(it keeps {path}); MODELSWARM_SECRETS_DIR points elsewhere"
        ) from None


def ca_bundle() -> str | bool | None:
    """The CA to verify NGINX's certificate with; None when unknown (then plain HTTP is used)."""
    given = os.environ.get("MODELSWARM_CA_BUNDLE")
    if given:
        return given
    path = secrets_dir() / "pki" / "ca.crt"
    return str(path) if path.exists() else None


@dataclass
class Api:
    hosts: list[Host]
    key: str
    source: str = ""
    verify: str | bool | None = None
    timeout: float = 10

    @classmethod
    def for_inventory(cls, inventory: Inventory, need: str = "deploy") -> Api:
        key, source = api_key(need)
        return cls(hosts=list(inventory.managers), key=key, source=source, verify=ca_bundle())

    def base(self, host: Host) -> str:
        return f"{'https' if self.verify else 'http'}://{host.address}"

    @property
    def tls_verify(self) -> str | bool:
        """What requests' `verify` gets: the cluster CA when known, else the system's CAs (HTTPS is then unused)."""
        return self.verify or True

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def call(
        self, method: str, path: str, expected: tuple[int, ...] = (200,), timeout: float | None = None, **kwargs
    ) -> requests.Response:
        """Send to the first node whose NGINX reaches the console. 401/403/4xx are final; the message says why."""
        failures = []
        for host in self.hosts:
            try:
                response = requests.request(
                    method,
                    self.base(host) + path,
                    headers=self.headers,
                    timeout=timeout or self.timeout,
                    verify=self.tls_verify,
                    **kwargs,
                )
            except requests.RequestException as exc:
                failures.append(f"{host.name}: {exc.__class__.__name__}")
                continue
            if response.status_code in expected:
                return response
            if response.status_code in TRANSIENT:
                failures.append(f"{host.name}: HTTP {response.status_code}")
                continue
            raise ApiError(self._explain(response), response.status_code)
        raise ApiError(f"{method} {path}: no node could answer: " + "; ".join(failures))

    def _explain(self, response: requests.Response) -> str:
        try:
            body = response.json()
            message = body.get("error", response.text.strip())
            details = body.get("details")
        except ValueError:
            message, details = response.text.strip()[:200], None
        hint = ""
        if response.status_code == 401:
            hint = f" (the key from {self.source} is unknown or revoked)"
        elif response.status_code == 403:
            hint = f" (the key from {self.source} lacks the role)"
        text = f"HTTP {response.status_code}: {message}{hint}"
        if details:
            text += ": " + "; ".join(f"{k}: {v}" for k, v in details.items())
        return text

    def node_get(self, host: Host, path: str, key: str | None = None) -> requests.Response | None:
        """GET from one node's NGINX; None when it does not answer."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            return requests.get(self.base(host) + path, headers=headers, timeout=3, verify=self.tls_verify)
        except requests.RequestException:
            return None

    def wait_for_grants(self, version: int, probe_key: str | None = None, timeout: float = 10) -> dict[str, bool]:
        """Wait until every node's NGINX has loaded grants `version` (and, given a key, admits it); per node."""
        done = {host.name: False for host in self.hosts}
        deadline = time.monotonic() + timeout
        while True:
            for host in self.hosts:
                if done[host.name]:
                    continue
                answer = self.node_get(host, "/auth/version")
                try:
                    loaded = answer.status_code == 200 and answer.json()["grants_version"] >= version
                except (AttributeError, ValueError, KeyError, TypeError):  # no answer, or not the JSON expected
                    loaded = False
                if loaded and probe_key:
                    # Three fresh connections: just after a reload an old NGINX worker may still take one.
                    answers = [self.node_get(host, "/auth/whoami", probe_key) for _ in range(3)]
                    loaded = all(a is not None and a.status_code == 200 for a in answers)
                done[host.name] = loaded
            if all(done.values()) or time.monotonic() >= deadline:
                return done
            time.sleep(0.25)
