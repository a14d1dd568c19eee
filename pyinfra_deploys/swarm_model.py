"""Custom pyinfra facts and operations for model images and model services.

Each operation asks a fact first and yields nothing when nothing would change (pyinfra then reports no change);
when there is work, it yields one FunctionCommand that runs the modelswarm engine - the same code the CLI and the
tests use - against the cluster described by the Ansible inventory.
"""

from __future__ import annotations

import json
import os
import shlex

from pyinfra import host
from pyinfra.api import FactBase, FunctionCommand, operation
from pyinfra.api.exceptions import OperationError

from modelswarm import cluster, ledgerclient, modelimage, rollout
from modelswarm.bundle import load_bundle


class SwarmService(FactBase):
    """`docker service inspect` of one service (None if absent). Run it on a manager."""

    def requires_command(self, service):
        return "docker"

    def command(self, service):
        return f"docker service inspect {shlex.quote(service)} 2>/dev/null || true"

    def process(self, output):
        found = json.loads("".join(output).strip() or "[]")  # an absent service prints []
        return found[0] if found else None


class ImageSourceHash(FactBase):
    """The io.modelswarm.source-hash label of an image in this host's Docker (None if the image is absent)."""

    def requires_command(self, image):
        return "docker"

    def command(self, image):
        fmt = shlex.quote('{{index .Config.Labels "io.modelswarm.source-hash"}}')
        return f"docker image inspect --format {fmt} {shlex.quote(image)} 2>/dev/null || true"

    def process(self, output):
        return "".join(output).strip() or None


def _build(bundle_path: str, inventory_path: str, runtime_image: str) -> None:
    inventory = cluster.read_inventory(inventory_path)
    with cluster.manager(inventory) as client:
        modelimage.build_and_push(client, load_bundle(bundle_path), inventory.registry, runtime_image)


def _rollout(bundle_path: str, inventory_path: str, runtime_image: str, timeout: float, actor: str) -> None:
    inventory = cluster.read_inventory(inventory_path)
    bundle = load_bundle(bundle_path)
    with cluster.manager(inventory) as client:
        image, _ = modelimage.build_and_push(client, bundle, inventory.registry, runtime_image)
        modelimage.stage(inventory, image.reference)
        target = rollout.Target.for_bundle(bundle, image)
        outcome = rollout.rollout(client, target, timeout=timeout, report=lambda line: None, actor=actor)
    try:
        ledgerclient.record(inventory, outcome.ledger_entry())
    except ledgerclient.LedgerError as exc:
        print(f"warning: {exc}")
    if outcome.exit_code != 0:
        raise OperationError(f"{outcome.result}: {outcome.model} {outcome.to_version}: {outcome.message}")


def _inventory_path() -> str:
    return os.environ.get("MODELSWARM_INVENTORY", "inventory/lab")


@operation()
def model_image(bundle_path: str, runtime_image: str):
    """Build and push a bundle's image, unless this host (a manager) already holds it with the same source hash."""
    bundle = load_bundle(bundle_path)
    registry = cluster.read_inventory(_inventory_path()).registry
    present = host.get_fact(ImageSourceHash, image=f"{modelimage.repository(registry, bundle)}:{bundle.version}")
    if present == bundle.source_hash():
        host.noop(f"{bundle.name} {bundle.version} is already built and pushed")
        return
    yield FunctionCommand(_build, (bundle_path, _inventory_path(), runtime_image), {})


@operation()
def model_service(bundle_path: str, runtime_image: str, timeout: float = 600, actor: str = "pyinfra"):
    """Roll the bundle's version out, unless its service already runs exactly it, converged."""
    bundle = load_bundle(bundle_path)
    current = host.get_fact(SwarmService, service=bundle.service)
    if current:
        labels = current["Spec"].get("Labels") or {}
        settled = (current.get("UpdateStatus") or {}).get("State") in (None, "completed")
        same = labels.get(rollout.LABEL_VERSION) == bundle.version and labels.get(rollout.LABEL_SOURCE) == (
            bundle.source_hash()
        )
        if same and settled and current["Spec"]["Mode"]["Replicated"]["Replicas"] == bundle.replicas:
            host.noop(f"{bundle.service} already runs {bundle.version}")
            return
    yield FunctionCommand(_rollout, (bundle_path, _inventory_path(), runtime_image, timeout, actor), {})
