"""The model pipeline, once: validate -> build and push -> stage on every node -> roll out -> record.

The CLI and the pyinfra deploys both call these functions; they differ only in how they parse their input and
show the result. What the cluster is (registry, models network, endpoint mode, runtime image) comes from the deploy
facts its platform published (`cluster.deploy_facts`); an explicit override wins over the published value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import docker

from modelswarm import cluster, contract, registryauth
from modelswarm.apiclient import Api
from modelswarm.lifecycle import ledger, modelimage, modelsecrets, rollout
from modelswarm.lifecycle.bundle import Bundle

Report = Callable[[str], None]


class PipelineError(ValueError):
    """The request cannot be carried out as asked (bad input); nothing was changed."""


@dataclass(frozen=True)
class Overrides:
    """Explicit choices that win over what the cluster published (None: use the published value)."""

    registry: str | None = None
    runtime_image: str | None = None
    endpoint_mode: str | None = None
    pip_index_url: str = ""


@dataclass(frozen=True)
class Recorded:
    """A rollout's outcome and what became of its ledger entry."""

    outcome: rollout.Outcome
    ledger_id: int | None
    ledger_warning: str | None

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


def facts(client: docker.DockerClient, overrides: Overrides = Overrides()) -> cluster.DeployFacts:
    """The cluster's published deploy facts with the explicit overrides applied."""
    published = cluster.deploy_facts(client)
    chosen = {
        "registry": overrides.registry,
        "runtime_image": overrides.runtime_image,
        "endpoint_mode": overrides.endpoint_mode,
    }
    return replace(published, **{key: value for key, value in chosen.items() if value})


def build(
    client: docker.DockerClient, bundle: Bundle, overrides: Overrides = Overrides()
) -> tuple[modelimage.ModelImage, bool]:
    """Build the bundle's image on `client`'s manager and push it, unless the registry holds it already."""
    return _build_on(client, bundle, facts(client, overrides), overrides)


def _build_on(
    client: docker.DockerClient, bundle: Bundle, found: cluster.DeployFacts, overrides: Overrides
) -> tuple[modelimage.ModelImage, bool]:
    # The client reads with the pull account (the runtime base, the registry's answers, the service spec) and
    # pushes with the push account, given to the push alone.
    push = registryauth.credentials("push")
    registryauth.login(client, found.registry, "pull")
    return modelimage.build_and_push(
        client, bundle, found.registry, found.runtime_image, overrides.pip_index_url, push_auth=push
    )


def record(api: Api, outcome: rollout.Outcome) -> Recorded:
    """Write the outcome to the ledger; a ledger that cannot be reached is a warning, not a failed rollout."""
    try:
        stored = ledger.record(api, outcome.ledger_entry())
    except ledger.LedgerError as exc:
        return Recorded(outcome, None, str(exc))
    return Recorded(outcome, stored["id"], None)


def deploy(
    inventory: cluster.Inventory,
    bundle: Bundle,
    overrides: Overrides = Overrides(),
    timeout: float = 600,
    report: Report = lambda line: None,
    note: str = "",
    api: Api | None = None,
) -> Recorded:
    """Build if needed, stage the image on every node, roll the version out health-gated, record the outcome.

    The ledger's credentials are looked up first (default: the controller's deploy key), so that a missing key
    stops the deploy before anything changes (CredentialsMissing)."""
    api = api or Api.for_inventory(inventory, "deploy")
    with cluster.manager(inventory) as client:
        found = facts(client, overrides)
        modelsecrets.current(client, bundle.name, bundle.secrets)  # a secret never set: stop before the build
        image, _ = _build_on(client, bundle, found, overrides)
        modelimage.stage(inventory, image.reference)
        target = rollout.Target.for_bundle(
            bundle, image, network=found.models_network, endpoint_mode=found.endpoint_mode
        )
        outcome = rollout.rollout(client, target, timeout=timeout, report=report, note=note)
    return record(api, outcome)


def rollback(
    inventory: cluster.Inventory,
    name: str,
    to: str | None = None,
    timeout: float = 600,
    report: Report = lambda line: None,
    note: str = "",
    api: Api | None = None,
) -> Recorded:
    """Return model `name` to a version the ledger recorded as good: `to`, or the newest one other than the
    current. Raises PipelineError when the model is not deployed or no such version was recorded."""
    api = api or Api.for_inventory(inventory, "deploy")
    entries = ledger.history(api, name)
    with cluster.manager(inventory) as client:
        service = rollout.find(client, contract.service_name(name))
        if service is None:
            raise PipelineError(f"model {name!r} is not deployed")
        current = rollout.describe(service)
        published = cluster.deploy_facts(client)
        registryauth.login(client, published.registry, "pull")
        chosen = choose_rollback(entries, current["version"], to)
        if chosen is None:
            known = sorted({e["to_version"] for e in good_rollouts(entries)})
            raise PipelineError(f"no recorded good rollout of {name} to {to or 'another version'}; known: {known}")
        spec = service.attrs["Spec"]
        # In this cluster's registry: after a restore onto new hosts the ledger names the old registry's address.
        image = moved_reference(f"{chosen['image']}@{chosen['image_digest']}", published.registry)
        # An image gone from the registry is bad input: refused (ImageMissing) before its labels are asked for.
        modelimage.ensure_in_registry(client, image)
        repo, tag = image.split("@", 1)[0].rsplit(":", 1)
        found = modelimage.existing(client, repo, tag)  # the chosen version's own source hash, from its image
        # The whole serving spec the chosen version was built with (replicas, resources, environment, secrets),
        # from its image; an image older than that label keeps the running replica count.
        serving, complete = modelimage.serving_spec(client, image)
        if not complete:
            serving["replicas"] = spec["Mode"]["Replicated"]["Replicas"]
            report(
                f"{image.split('@')[0]} was built before images carried their serving spec: its replica count is "
                "kept from the running service, and no resource limits but the defaults apply"
            )
        target = rollout.Target.for_serving(
            name,
            chosen["to_version"],
            image,
            found[1] if found else "",
            serving,
            network=published.models_network,
            endpoint_mode=spec.get("EndpointSpec", {}).get("Mode", "dnsrr"),
        )
        modelimage.stage(inventory, target.image)
        outcome = rollout.rollout(client, target, timeout=timeout, report=report, note=note)
    return record(api, outcome)


def validate(
    client: docker.DockerClient,
    bundle: Bundle,
    overrides: Overrides = Overrides(),
    on_cluster: bool = True,
    report: Report = lambda line: None,
) -> modelimage.ExamplesVerdict:
    """Build the bundle's image and have it answer its example inputs, before anything reaches the cluster's
    registry or services. `on_cluster`: `client` is a manager (runtime image and registry login from the published
    facts); else it is any Docker daemon and `overrides.runtime_image` names the base image it holds."""
    runtime_image = overrides.runtime_image
    if on_cluster:
        found = facts(client, overrides)
        registryauth.login(client, found.registry, "pull")
        runtime_image = found.runtime_image
    if not runtime_image:
        raise PipelineError("name the runtime image the local Docker daemon holds: --runtime-image IMAGE")
    return modelimage.answer_examples(client, bundle, runtime_image, overrides.pip_index_url, report)


def good_rollouts(entries: list[dict]) -> list[dict]:
    """Ledger entries (newest first) of versions that went live and whose image digest is known."""
    return [e for e in entries if e["result"] in ("succeeded", "no_op") and e["image_digest"]]


def choose_rollback(entries: list[dict], current_version: str | None, to: str | None) -> dict | None:
    """The entry to roll back to: the newest good rollout of `to`, or of any version but the current one."""
    good = good_rollouts(entries)
    candidates = (
        [e for e in good if e["to_version"] == to] if to else [e for e in good if e["to_version"] != current_version]
    )
    return candidates[0] if candidates else None


def moved_reference(image: str, registry: str) -> str:
    """`image` (registry/path:tag@digest, as a backup recorded it) in `registry`: a cluster restored onto new hosts
    has its registry at another address, and the same repository path, tag and digest."""
    if "/" not in image:
        raise PipelineError(f"{image!r} names no registry: cannot move it to {registry}")
    return f"{registry}/{image.split('/', 1)[1]}"


def restore_models(
    inventory: cluster.Inventory,
    models: dict[str, dict],
    timeout: float = 600,
    report: Report = lambda line: None,
    note: str = "",
    api: Api | None = None,
) -> list[Recorded]:
    """Serve again the models a backup recorded (`modelswarm status --json` at backup time: name -> version, image,
    replicas), from the images restored into this cluster's registry, each as its image's serving spec says, with
    the replica count it had. Each is one health-gated rollout, recorded in the ledger. Raises PipelineError, before
    anything changes, when an image is not in the registry (its storage was not restored)."""
    api = api or Api.for_inventory(inventory, "deploy")
    outcomes = []
    with cluster.manager(inventory) as client:
        found = cluster.deploy_facts(client)
        registryauth.login(client, found.registry, "pull")
        targets = []
        for name, recorded in sorted(models.items()):
            if "@" not in (recorded.get("image") or ""):
                raise PipelineError(f"the backup's record of {name} has no digest-pinned image: {recorded!r}")
            image = moved_reference(recorded["image"], found.registry)
            try:
                modelimage.ensure_in_registry(client, image)
            except modelimage.ImageMissing as exc:
                raise PipelineError(f"{name}: {exc}; restore the registry storage first") from exc
            serving, complete = modelimage.serving_spec(client, image)
            if recorded.get("replicas"):  # the count it ran with wins over the one it was built with
                serving["replicas"] = int(recorded["replicas"])
            elif not complete:
                serving["replicas"] = int(serving.get("replicas") or 1)
            target = rollout.Target.for_serving(
                name,
                recorded["version"],
                image,
                recorded.get("source_hash") or "",
                serving,
                network=found.models_network,
                endpoint_mode=found.endpoint_mode,
            )
            targets.append(target)
        for target in targets:
            report(f"{target.name}: {target.version} from {target.image.split('@')[0]}")
            modelimage.stage(inventory, target.image)
            outcomes.append(record(api, rollout.rollout(client, target, timeout=timeout, report=report, note=note)))
    return outcomes
