"""Model secrets: values a model needs at run time (passwords, tokens, keys), kept as swarm secrets - never in the
image, its environment, `docker inspect`, the logs or the ledger.

A model declares the names in its manifest (`secrets: [db_password]`). `modelswarm secrets set MODEL NAME` stores a
value as a new swarm secret; a rollout mounts the newest version of each declared name at /run/secrets/<name>
(owned by the model user, mode 0400), where the model reads it with `modelswarm_model.secret(name)`.

Versions: swarm secrets are immutable, so each new value is a new secret, `model-<model>-<name>-v<N>` with N
counting up per model and name. Its labels say the model, the name, the version, when it was made and a salted
PBKDF2 digest of the value: setting the same value again creates nothing. The digest can be read only through a
manager's API, which can read the value itself anyway; the secret's name, which the service spec and every
container show, says nothing about the value. The value is never printed, logged or kept outside the swarm.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import docker
import docker.errors
from docker.types import SecretReference

from modelswarm import contract
from modelswarm.contract import (
    LABEL_MODEL,
    LABEL_SECRET,
    LABEL_SECRET_CREATED_AT,
    LABEL_SECRET_DIGEST,
    LABEL_SECRET_VERSION,
)

MAX_SWARM_NAME = 64  # swarm's limit for a secret's name
DIGEST_ITERATIONS = 100_000


class SecretError(ValueError):
    """A secret cannot be stored or used as asked (bad input, or not set yet); nothing was changed."""


class SecretMissing(SecretError):
    """A model declares secrets that were never set: its rollout is refused before the service is touched."""


@dataclass(frozen=True)
class SecretVersion:
    """One stored value of a model's secret: a swarm secret."""

    model: str
    name: str
    version: int
    secret_id: str
    secret_name: str  # the swarm secret's name, model-<model>-<name>-v<N>
    created_at: str


def swarm_name(model: str, name: str, version: int) -> str:
    """model-<model>-<name>-v<version>; past swarm's 64 characters the readable part is cut and a hash of (model,
    name) keeps names of different secrets apart."""
    base, suffix = f"{contract.MODEL_SERVICE_PREFIX}{model}-{name}", f"-v{version}"
    if len(base) + len(suffix) <= MAX_SWARM_NAME:
        return base + suffix
    tag = hashlib.sha256(f"{model}\0{name}".encode()).hexdigest()[:8]
    return base[: MAX_SWARM_NAME - len(suffix) - len(tag) - 1].rstrip("-_") + f"-{tag}{suffix}"


def digest(value: bytes, salt: bytes | None = None, iterations: int = DIGEST_ITERATIONS) -> str:
    """pbkdf2-sha256$<iterations>$<salt hex>$<digest hex> of `value`, with a random salt unless one is given."""
    salt = os.urandom(16) if salt is None else salt
    derived = hashlib.pbkdf2_hmac("sha256", value, salt, iterations)
    return f"pbkdf2-sha256${iterations}${salt.hex()}${derived.hex()}"


def holds(label: str, value: bytes) -> bool:
    """Whether a secret whose digest label is `label` holds `value`."""
    try:
        scheme, iterations, salt, _ = label.split("$")
        if scheme != "pbkdf2-sha256":
            return False
        return hmac.compare_digest(digest(value, bytes.fromhex(salt), int(iterations)), label)
    except ValueError:
        return False


def check_names(model: str, name: str | None = None) -> None:
    if not contract.matches(contract.MODEL_NAME_PATTERN, model):
        raise SecretError(f"model {model!r}: use {contract.MODEL_NAME_RULE}")
    if name is not None and not contract.matches(contract.SECRET_NAME_PATTERN, name):
        raise SecretError(f"secret {name!r}: use {contract.SECRET_NAME_RULE}")


def check_value(value: bytes) -> None:
    """Refuse an empty value (a lone newline counts as empty: the model would read "") and one over swarm's limit."""
    if value in (b"", b"\n", b"\r\n"):
        raise SecretError("the value is empty: nothing was stored")
    if len(value) > contract.MAX_SECRET_BYTES:
        raise SecretError(
            f"the value has {len(value)} bytes; swarm keeps at most {contract.MAX_SECRET_BYTES} bytes per secret"
        )


def versions(inspected: Iterable[Mapping], model: str) -> dict[str, list[SecretVersion]]:
    """The model's secrets by name, oldest version first, from `docker secret inspect` documents (the API's
    attributes); secrets of other models and ones without a readable version label are left out."""
    found: dict[str, list[SecretVersion]] = {}
    for attrs in inspected:
        labels = attrs.get("Spec", {}).get("Labels") or {}
        name, version = labels.get(LABEL_SECRET), labels.get(LABEL_SECRET_VERSION, "")
        if labels.get(LABEL_MODEL) != model or not name or not version.isdigit():
            continue
        found.setdefault(name, []).append(
            SecretVersion(model, name, int(version), attrs["ID"], attrs["Spec"]["Name"],
                          labels.get(LABEL_SECRET_CREATED_AT) or attrs.get("CreatedAt", ""))
        )  # fmt: skip
    return {name: sorted(found[name], key=lambda v: v.version) for name in sorted(found)}


def newest(inspected: Iterable[Mapping], model: str) -> dict[str, SecretVersion]:
    return {name: listed[-1] for name, listed in versions(inspected, model).items()}


def inspected(client: docker.DockerClient, model: str) -> list[dict]:
    """The attributes of every swarm secret of `model` (values are never returned by the API)."""
    return [s.attrs for s in client.secrets.list(filters={"label": [f"{LABEL_MODEL}={model}", LABEL_SECRET]})]


def missing_message(model: str, names: Iterable[str]) -> str:
    names = list(names)
    commands = "; ".join(f"`modelswarm secrets set {model} {n}`" for n in names)
    return (
        f"model {model} needs secret(s) that are not set: {', '.join(names)}. Set each first: {commands} "
        "(the value is read from stdin or --from-file); nothing was changed"
    )


def require(found: Mapping[str, SecretVersion], model: str, names: Iterable[str]) -> dict[str, SecretVersion]:
    """The newest version of each of `names` from `found`; SecretMissing names every one that is not set."""
    names = list(names)
    absent = [n for n in names if n not in found]
    if absent:
        raise SecretMissing(missing_message(model, absent))
    return {n: found[n] for n in names}


def current(client: docker.DockerClient, model: str, names: Iterable[str]) -> dict[str, SecretVersion]:
    """The newest version of each declared secret; SecretMissing (before anything changes) if one is not set.
    Declaring no secret asks nothing of the swarm."""
    names = list(names)
    if not names:
        return {}
    return require(newest(inspected(client, model), model), model, names)


def references(mounted: Mapping[str, SecretVersion]) -> list[SecretReference]:
    """Service secret references: each version at /run/secrets/<name>, owned by the model user, readable by it only."""
    uid = str(contract.MODEL_UID)
    return [
        SecretReference(v.secret_id, v.secret_name, filename=name, uid=uid, gid=uid, mode=0o400)
        for name, v in sorted(mounted.items())
    ]


def mounted_names(spec: Mapping | None) -> dict[str, str]:
    """File name -> swarm secret name of the secrets a service spec mounts."""
    container = ((spec or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
    return {ref["File"]["Name"]: ref["SecretName"] for ref in container.get("Secrets") or []}


def store(
    client: docker.DockerClient, model: str, name: str, value: bytes, now: str | None = None
) -> tuple[SecretVersion, bool]:
    """Store `value` as the newest version of the model's secret `name`. Returns (version, created): the newest
    version already holding this value is returned as it is (created False)."""
    check_names(model, name)
    check_value(value)
    existing = inspected(client, model)
    listed = versions(existing, model).get(name, [])
    if listed:
        latest = next(a for a in existing if a["ID"] == listed[-1].secret_id)
        if holds((latest["Spec"].get("Labels") or {}).get(LABEL_SECRET_DIGEST, ""), value):
            return listed[-1], False
    number = listed[-1].version + 1 if listed else 1
    created_at = now or datetime.now(UTC).isoformat(timespec="seconds")
    labels = {
        LABEL_MODEL: model,
        LABEL_SECRET: name,
        LABEL_SECRET_VERSION: str(number),
        LABEL_SECRET_CREATED_AT: created_at,
        LABEL_SECRET_DIGEST: digest(value),
    }
    secret_name = swarm_name(model, name, number)
    try:
        made = client.secrets.create(name=secret_name, data=value, labels=labels)
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise SecretError(
                f"{secret_name} already exists (another `secrets set` at the same time?): run the command again"
            ) from None
        raise SecretError(f"the swarm refused to store {secret_name}: {exc.explanation or exc}") from None
    return SecretVersion(model, name, number, made.id, secret_name, created_at), True


def remove_unused(client: docker.DockerClient, model: str, in_use: set[str]) -> list[str]:
    """Remove the model's secret versions that are neither the newest of their name nor in `in_use` (swarm secret
    names a service spec, or its previous spec, mounts). Returns the removed names."""
    removed = []
    for listed in versions(inspected(client, model), model).values():
        for version in listed[:-1]:
            if version.secret_name not in in_use:
                client.api.remove_secret(version.secret_id)
                removed.append(version.secret_name)
    return removed
