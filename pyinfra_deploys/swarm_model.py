"""Custom pyinfra facts and operations for model images and model services.

Each operation asks facts first and yields nothing when nothing would change (pyinfra then reports no change);
when there is work, it yields one FunctionCommand that runs the model pipeline (`modelswarm.lifecycle.pipeline`) -
the same functions the CLI calls - against the cluster described by the Ansible inventory.
"""

from __future__ import annotations

import json
import os
import shlex

from pyinfra import host
from pyinfra.api import FactBase, FunctionCommand, operation
from pyinfra.api.exceptions import OperationError

from modelswarm import cluster, contract, registryauth
from modelswarm.apiclient import Api, CredentialsMissing
from modelswarm.lifecycle import modelimage, modelsecrets, pipeline
from modelswarm.lifecycle.bundle import load_bundle


class SwarmService(FactBase):
    """`docker service inspect` of one service (None if absent). Run it on a manager."""

    def requires_command(self, service):
        return "docker"

    def command(self, service):
        return f"docker service inspect {shlex.quote(service)} 2>/dev/null || true"

    def process(self, output):
        found = json.loads("".join(output).strip() or "[]")  # an absent service prints []
        return found[0] if found else None


class DeployFacts(FactBase):
    """What the platform published for deploys (registry, models network, runtime image), read on a manager;
    None when the platform has not published it."""

    def requires_command(self):
        return "docker"

    def command(self):
        return f"docker config inspect {shlex.quote(contract.DEPLOY_FACTS_CONFIG)} 2>/dev/null || true"

    def process(self, output):
        found = json.loads("".join(output).strip() or "[]")
        return cluster.parse_deploy_facts(found[0]["Spec"]["Data"]) if found else None


class ModelSecrets(FactBase):
    """`docker secret inspect` of every swarm secret of one model (the API never returns a value). Run it on a
    manager."""

    def requires_command(self, model):
        return "docker"

    def command(self, model):
        filters = (
            f"--filter label={shlex.quote(f'{contract.LABEL_MODEL}={model}')} --filter label={contract.LABEL_SECRET}"
        )
        ids = f"$(docker secret ls -q {filters})"
        return f'ids={ids}; if [ -n "$ids" ]; then docker secret inspect $ids; else echo "[]"; fi'

    def process(self, output):
        return json.loads("".join(output).strip() or "[]")


class ImageSourceHash(FactBase):
    """The io.modelswarm.source-hash label of an image in this host's Docker (None if the image is absent)."""

    def requires_command(self, image):
        return "docker"

    def command(self, image):
        fmt = shlex.quote('{{index .Config.Labels "' + contract.LABEL_SOURCE_HASH + '"}}')
        return f"docker image inspect --format {fmt} {shlex.quote(image)} 2>/dev/null || true"

    def process(self, output):
        return "".join(output).strip() or None


def _inventory_path() -> str:
    return os.environ.get("MODELSWARM_INVENTORY", "inventory/lab")


def _build(bundle_path: str, inventory_path: str, overrides: pipeline.Overrides) -> None:
    inventory = cluster.read_inventory(inventory_path)
    with cluster.manager(inventory) as client:
        pipeline.build(client, load_bundle(bundle_path), overrides)


def _deploy(bundle_path: str, inventory_path: str, overrides: pipeline.Overrides, timeout: float, note: str) -> None:
    inventory = cluster.read_inventory(inventory_path)
    recorded = pipeline.deploy(inventory, load_bundle(bundle_path), overrides, timeout=timeout, note=note)
    if recorded.ledger_warning:
        print(f"warning: {recorded.ledger_warning}")
    outcome = recorded.outcome
    if outcome.exit_code != contract.Exit.OK:
        raise OperationError(f"{outcome.result}: {outcome.model} {outcome.to_version}: {outcome.message}")


def _published() -> cluster.DeployFacts:
    published = host.get_fact(DeployFacts)
    if published is None:
        raise OperationError(
            f"{host.name} has no {contract.DEPLOY_FACTS_CONFIG} swarm config: run playbooks/site.yml first"
        )
    return published


@operation()
def model_image(bundle_path: str, runtime_image: str | None = None, registry: str | None = None):
    """Build and push a bundle's image, unless this host (a manager) already holds it with the same source hash."""
    bundle = load_bundle(bundle_path)
    try:
        registryauth.credentials("push")  # no push account: stop before any change
    except CredentialsMissing as exc:
        raise OperationError(str(exc)) from None
    registry = registry or _published().registry
    present = host.get_fact(ImageSourceHash, image=f"{modelimage.repository(registry, bundle)}:{bundle.version}")
    if present == bundle.source_hash():
        host.noop(f"{bundle.name} {bundle.version} is already built and pushed")
        return
    overrides = pipeline.Overrides(registry=registry, runtime_image=runtime_image)
    yield FunctionCommand(_build, (bundle_path, _inventory_path(), overrides), {})


@operation()
def model_service(bundle_path: str, runtime_image: str | None = None, timeout: float = 600, note: str = ""):
    """Roll the bundle's version out, unless its service already runs exactly it (with the newest version of each
    secret it declares), converged. The ledger records the API key's name ($MODELSWARM_API_KEY, else the
    controller's deploy key) as the actor, and `note` beside it."""
    bundle = load_bundle(bundle_path)
    try:
        Api.for_inventory(cluster.read_inventory(_inventory_path()), "deploy")  # no key: stop before any change
    except CredentialsMissing as exc:
        raise OperationError(str(exc)) from None
    wanted = {}
    if bundle.secrets:  # the newest version of each; one never set stops the deploy here, before any change
        found = modelsecrets.newest(host.get_fact(ModelSecrets, model=bundle.name), bundle.name)
        try:
            wanted = {n: v.secret_name for n, v in modelsecrets.require(found, bundle.name, bundle.secrets).items()}
        except modelsecrets.SecretMissing as exc:
            raise OperationError(str(exc)) from None
    current = host.get_fact(SwarmService, service=bundle.service)
    if current:
        labels = current["Spec"].get("Labels") or {}
        settled = (current.get("UpdateStatus") or {}).get("State") in (None, "completed")
        same = labels.get(contract.LABEL_VERSION) == bundle.version and labels.get(contract.LABEL_SOURCE_HASH) == (
            bundle.source_hash()
        )
        same = same and modelsecrets.mounted_names(current["Spec"]) == wanted  # a new secret version is a change
        if same and settled and current["Spec"]["Mode"]["Replicated"]["Replicas"] == bundle.replicas:
            host.noop(f"{bundle.service} already runs {bundle.version}")
            return
    overrides = pipeline.Overrides(runtime_image=runtime_image)
    yield FunctionCommand(_deploy, (bundle_path, _inventory_path(), overrides, timeout, note), {})
