"""The cluster registry's accounts, as the CLI and the pyinfra deploys use them.

The registry answers only to its two accounts (contract.REGISTRY_USERS): `push` builds and pushes model images (the
controller, CI), `pull` reads them (the nodes, and every model service's spec, so that a node restarted or a replica
rescheduled pulls with it). A password comes from $MODELSWARM_REGISTRY_PUSH_PASSWORD / _PULL_PASSWORD (CI keeps
them in its secrets) or from the controller's file `<secrets dir>/registry/<user>.password`, written by the
converge. Passwords are handed to the Docker daemon the client talks to and never printed.
"""

from __future__ import annotations

import os

import docker
import docker.errors

from modelswarm import contract
from modelswarm.apiclient import CredentialsMissing, secrets_dir


class RegistryLoginFailed(RuntimeError):
    """The registry refused the account (wrong or changed password) or could not be reached."""


def credentials(kind: str) -> dict[str, str]:
    """{"username", "password"} of the `push` or `pull` account (CredentialsMissing when none is found)."""
    user, variable = contract.REGISTRY_USERS[kind], contract.REGISTRY_PASSWORD_ENV[kind]
    password = os.environ.get(variable, "").strip()
    if not password:
        path = secrets_dir() / "registry" / f"{user}.password"
        try:
            password = path.read_text().strip()
        except OSError:
            raise CredentialsMissing(
                f"no password for the registry's {kind} account ({user}): set {variable}, or run from the checkout "
                f"that ran the converge (it keeps {path}); MODELSWARM_SECRETS_DIR points elsewhere"
            ) from None
        if not password:
            raise CredentialsMissing(f"{path} is empty: run the converge again (playbooks/site.yml)")
    return {"username": user, "password": password}


def login(client: docker.DockerClient, registry: str, kind: str = "pull") -> dict[str, str]:
    """Log `client` in to `registry` with the account: the daemon checks it, and the client then sends it with
    every build (base image pulls), pull and service create/update it makes for images of that registry. Returns
    the credentials (an auth_config for the SDK's calls that take one)."""
    auth = credentials(kind)
    try:
        client.login(auth["username"], auth["password"], registry=registry, reauth=True)
    except docker.errors.APIError as exc:
        raise RegistryLoginFailed(
            f"the registry {registry} refused the {kind} account {auth['username']}: "
            f"{(exc.explanation or str(exc)).replace(auth['password'], '***')}"
        ) from None
    return auth
