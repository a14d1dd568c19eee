"""The rollout engine: create or update a model's swarm service and wait until the outcome is known.

The outcome is read from the service itself - its UpdateStatus and its up-to-date running tasks - never from an
exit code (`docker service update` exits 0 even after an automatic rollback). The CLI and the tests share it.

Service model-<name>: on the models network, DNS round-robin endpoints (or VIP), N replicas (2 by default) spread by
swarm's scheduler - which prefers the nodes that run the fewest of them, so any count works on any number of nodes -
updated one task at a time, start-first, rolled back automatically when a new task fails its
health check within the monitor window. Swarm counts the old tasks of a start-first update on their nodes, so an
update can end uneven (2 + 2 + 0 seen in CI); a rollout that succeeded then evens the placement out (`rebalance`:
one per node first, the rest on the nodes with the fewest). A new task is healthy only once it has answered the
bundle's example inputs; when a rollout is rolled back because of one, the outcome names it (read from the
service's log). The newest version of each secret the model declares is mounted at /run/secrets/<name>; a new
version of a secret alone is a change to roll out, and a secret that was never set stops the rollout before the
service is touched.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import docker
import docker.errors
from docker.types import EndpointSpec, Mount, Resources, RestartPolicy, RollbackConfig, ServiceMode, UpdateConfig

from modelswarm import contract
from modelswarm.contract import LABEL_MODEL, LABEL_SOURCE_HASH, LABEL_SPEC_HASH, LABEL_VERSION, Exit
from modelswarm.lifecycle import modelimage, modelsecrets

SECOND = 1_000_000_000
EXAMPLE_FAILED = "modelswarm-example-failed"  # the line server.py logs when a new replica fails an example input
MODEL_TMP = "/tmp"  # noqa: S108 - a tmpfs of the replica's own, the only place it can write


@dataclass(frozen=True)
class Target:
    """What a model's service should run."""

    name: str
    version: str
    image: str  # repository:tag@sha256:... (digest-pinned)
    source_hash: str = ""
    replicas: int = contract.DEFAULT_REPLICAS
    cpus: str | None = None
    memory: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # names the model declares; the newest version of each is mounted
    queue_timeout: int = contract.DEFAULT_QUEUE_TIMEOUT  # seconds NGINX holds a request while no replica answers
    timeout: int | None = None  # seconds a replica may take to answer; None: the platform's default
    network: str = contract.MODELS_NETWORK
    endpoint_mode: str = "dnsrr"
    monitor_seconds: int = contract.ROLLOUT_MONITOR_SECONDS
    stop_grace_seconds: int = contract.STOP_GRACE_SECONDS

    @property
    def service(self) -> str:
        return contract.service_name(self.name)

    @classmethod
    def for_bundle(cls, bundle, image, network: str = contract.MODELS_NETWORK, endpoint_mode: str = "dnsrr") -> Target:
        """What a bundle's manifest asks for, running `image` (a modelimage.ModelImage), on the cluster's models
        network with its endpoint mode (both published by the platform)."""
        return cls.for_serving(
            bundle.name, bundle.version, image.reference, image.source_hash, bundle.serving(), network, endpoint_mode
        )

    @classmethod
    def for_serving(
        cls,
        name: str,
        version: str,
        image: str,
        source_hash: str,
        serving: dict,
        network: str = contract.MODELS_NETWORK,
        endpoint_mode: str = "dnsrr",
    ) -> Target:
        """A version served as its serving spec says (`Bundle.serving()`, which its image also carries as a label):
        the same for a deploy from the bundle and for a rollback to the image."""
        return cls(
            name=name,
            version=version,
            image=image,
            source_hash=source_hash,
            replicas=serving.get("replicas", contract.DEFAULT_REPLICAS),
            cpus=serving.get("cpus"),
            memory=serving.get("memory"),
            environment=dict(serving.get("environment") or {}),
            secrets=tuple(serving.get("secrets") or ()),
            queue_timeout=int(serving.get("queue_timeout", contract.DEFAULT_QUEUE_TIMEOUT)),
            timeout=int(serving["timeout"]) if serving.get("timeout") is not None else None,
            network=network,
            endpoint_mode=endpoint_mode,
        )


@dataclass
class Outcome:
    model: str
    from_version: str | None
    to_version: str
    image: str
    image_digest: str | None
    result: str  # succeeded | rolled_back | failed | no_op
    message: str
    started_at: str
    finished_at: str
    note: str = ""  # the caller's free text for the ledger (e.g. a CI job URL); the actor is the key's name

    @property
    def exit_code(self) -> int:
        return {"succeeded": Exit.OK, "no_op": Exit.OK, "rolled_back": Exit.ROLLED_BACK}.get(
            self.result, Exit.TIMED_OUT if "timed out" in self.message else Exit.FAILED
        )

    def ledger_entry(self) -> dict:
        entry = asdict(self)
        entry["image"] = self.image.split("@")[0]
        return entry


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _memory_bytes(text: str | None) -> int | None:
    if not text:
        return None
    return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[text[-1]]


def resources(target: Target) -> Resources:
    """CPU and memory as the manifest asks (memory: the contract's default when it does not), and the pids limit
    (Docker 20.10's API 1.41 takes Limits.Pids; the SDK has no argument for it)."""
    limits = Resources(
        cpu_limit=int(float(target.cpus) * 1e9) if target.cpus else None,
        mem_limit=_memory_bytes(target.memory or contract.MODEL_DEFAULT_MEMORY),
    )
    limits.setdefault("Limits", {})["Pids"] = contract.MODEL_PIDS_LIMIT
    return limits


def service_kwargs(target: Target, secrets: dict[str, modelsecrets.SecretVersion] | None = None) -> dict:
    """The full service spec, labelled with its own hash (see _service_kwargs). `secrets`: the version to mount of
    each secret the target declares (`modelsecrets.current`)."""
    kwargs = _service_kwargs(target, secrets)
    kwargs["labels"][LABEL_SPEC_HASH] = spec_hash(kwargs)
    return kwargs


def spec_hash(kwargs: dict) -> str:
    """SHA-256 of a service spec's arguments (labels but this one included), in a canonical form."""
    import hashlib
    import json

    canonical = {**kwargs, "labels": {k: v for k, v in kwargs["labels"].items() if k != LABEL_SPEC_HASH}}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=repr).encode()).hexdigest()


def _service_kwargs(target: Target, secrets: dict[str, modelsecrets.SecretVersion] | None) -> dict:
    """The full service spec, for create and update alike (an update replaces what it names).

    Every replica runs as the model user (contract.MODEL_UID, also the image's USER), on a read-only root
    filesystem with a tmpfs /tmp (gunicorn's heartbeat files, the model's scratch space), with every capability
    dropped and its pids and memory limited. no-new-privileges is the daemon's setting (the docker role)."""
    return {
        "image": target.image,
        "name": target.service,
        "labels": {
            LABEL_MODEL: target.name,
            LABEL_VERSION: target.version,
            LABEL_SOURCE_HASH: target.source_hash,
            contract.LABEL_QUEUE_TIMEOUT: str(target.queue_timeout),  # NGINX reads it (modelswarm_wait.js)
            contract.LABEL_REPLICAS: str(target.replicas),  # the console's /metrics: the declared replicas
            # NGINX's replica check reads it (modelswarm_replicas.js: the model's own route in the replica router).
            **({contract.LABEL_TIMEOUT: str(target.timeout)} if target.timeout is not None else {}),
        },
        "container_labels": {LABEL_MODEL: target.name, LABEL_VERSION: target.version},
        "env": [f"{k}={v}" for k, v in sorted(target.environment.items())] + [f"MODELSWARM_IMAGE={target.image}"],
        "secrets": modelsecrets.references(secrets or {}),
        "networks": [target.network],
        "endpoint_spec": EndpointSpec(mode=target.endpoint_mode),
        "mode": ServiceMode("replicated", replicas=target.replicas),
        # No per-node maximum: swarm puts a new task on the node with the fewest of the service's tasks, so
        # replicas <= nodes run one per node, more share the nodes evenly, and a start-first update always has
        # room for its extra task (replicas = nodes included).
        "update_config": UpdateConfig(
            parallelism=1,
            delay=0,
            failure_action="rollback",
            monitor=target.monitor_seconds * SECOND,
            max_failure_ratio=0.0,
            order="start-first",
        ),
        "rollback_config": RollbackConfig(
            parallelism=1, delay=0, failure_action="pause", monitor=5 * SECOND, order="start-first"
        ),
        "restart_policy": RestartPolicy(
            condition="any", delay=contract.REPLICA_RESTART_DELAY_SECONDS * SECOND, max_attempts=0
        ),
        "resources": resources(target),
        "user": f"{contract.MODEL_UID}:{contract.MODEL_UID}",
        "read_only": True,
        "cap_drop": ["ALL"],
        "mounts": [Mount(target=MODEL_TMP, source=None, type="tmpfs", tmpfs_size=contract.MODEL_TMPFS_BYTES)],
        "stop_grace_period": target.stop_grace_seconds * SECOND,
    }


def find(client: docker.DockerClient, service: str):
    try:
        return client.services.get(service)
    except docker.errors.NotFound:
        return None


def describe(service) -> dict:
    spec = service.attrs["Spec"]
    labels = spec.get("Labels") or {}
    return {
        "version": labels.get(LABEL_VERSION),
        "source_hash": labels.get(LABEL_SOURCE_HASH),
        "spec_hash": labels.get(LABEL_SPEC_HASH),
        "image": spec["TaskTemplate"]["ContainerSpec"]["Image"],
        "replicas": spec["Mode"].get("Replicated", {}).get("Replicas"),
        "secrets": modelsecrets.mounted_names(spec),
        "update_state": (service.attrs.get("UpdateStatus") or {}).get("State"),
        "update_message": (service.attrs.get("UpdateStatus") or {}).get("Message"),
    }


def running_up_to_date(client: docker.DockerClient, service_id: str) -> tuple[int, dict[str, int]]:
    """(tasks running the current spec, count by state of the current spec's tasks meant to run)."""
    tasks = client.api.tasks(filters={"service": service_id, "_up-to-date": "true", "desired-state": "running"})
    states: dict[str, int] = {}
    for task in tasks:
        states[task["Status"]["State"]] = states.get(task["Status"]["State"], 0) + 1
    return states.get("running", 0), states


def wait(
    client: docker.DockerClient,
    service_id: str,
    replicas: int,
    timeout: float,
    hold: float,
    report: Callable[[str], None],
) -> tuple[str, str]:
    """Poll until the service converges, rolls back, pauses or times out. Returns (result, message).

    Converged means: no update in progress (or it completed) and `replicas` up-to-date tasks running, held for
    `hold` seconds (the monitor window) - the same rule as the docker CLI's progress loop.
    """
    started, since, last = time.monotonic(), None, ""
    while time.monotonic() - started < timeout:
        service = client.services.get(service_id)
        status = service.attrs.get("UpdateStatus") or {}
        state, message = status.get("State"), status.get("Message", "")
        running, states = running_up_to_date(client, service_id)
        line = f"{state or 'creating'}: {running}/{replicas} up-to-date tasks running " + (
            "(" + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")" if states else ""
        )
        if line != last:
            report(line)
            last = line
        if state == "rollback_completed":
            return "rolled_back", f"rolled back automatically: {message}"
        if state in ("paused", "rollback_paused"):
            return "failed", f"update {state}: {message}"
        if state in (None, "completed") and running == replicas:
            since = since or time.monotonic()
            if time.monotonic() - since >= hold:
                return "succeeded", f"{running}/{replicas} replicas running the new version"
        else:
            since = None
        time.sleep(1)
    return "failed", f"timed out after {timeout:.0f}s waiting for the rollout ({last})"


def placement(client: docker.DockerClient, service_id: str, nodes: list | None = None) -> dict[str, int]:
    """Node ID -> running tasks of the service, for every node that can take a task now (ready and active; a
    node without a task counts 0). A task on a node that cannot take one is not counted: swarm moves it.
    `nodes`: the swarm's nodes if the caller has listed them already."""
    eligible = [
        node.id
        for node in (client.nodes.list() if nodes is None else nodes)
        if node.attrs["Status"].get("State") == "ready" and node.attrs["Spec"].get("Availability") == "active"
    ]
    counts = dict.fromkeys(eligible, 0)
    for task in client.api.tasks(filters={"service": service_id, "desired-state": "running"}):
        if task["Status"]["State"] == "running" and task.get("NodeID") in counts:
            counts[task["NodeID"]] += 1
    return counts


def excess(counts: dict[str, int]) -> int:
    """How many replicas to take off the nodes that hold the most so that the nodes differ by at most one once
    they are added back. Swarm's scale-down removes the nth copy on a node before any (n-1)th copy, and its
    scheduler puts a new task on the node with the fewest: the two together are the one-per-node-first rule."""
    left, removed = dict(counts), 0
    while left and max(left.values()) - min(left.values()) > 1:
        left[max(left, key=left.__getitem__)] -= 1
        removed += 1
    return removed


def shape(counts: dict[str, int], names: dict[str, str] | None = None) -> str:
    """'node1 2, node2 2, node3 0': the placement in words, in node-name order."""
    named = sorted(((names or {}).get(node, node[:12]), n) for node, n in counts.items())
    return ", ".join(f"{name} {n}" for name, n in named)


def rebalance(
    client: docker.DockerClient, service_id: str, replicas: int, report: Callable[[str], None], timeout: float = 120
) -> str | None:
    """Even out an uneven placement: scale down by `excess` (swarm takes those from the crowded nodes), wait, scale
    back up (swarm puts them on the emptiest nodes), wait. The rest keep serving all along; the spec is otherwise
    untouched. Returns what was done, in words, or None when the placement was already even."""
    nodes = client.nodes.list()
    counts = placement(client, service_id, nodes)
    extra = excess(counts)
    if not extra or len(counts) < 2:
        return None
    names = {node.id: node.attrs["Description"].get("Hostname", node.id[:12]) for node in nodes}
    before = shape(counts, names)
    report(f"placement uneven ({before}): scaling {replicas} -> {replicas - extra} -> {replicas} to spread it")
    for count in (replicas - extra, replicas):
        client.services.get(service_id).scale(count)
        result, message = wait(client, service_id, count, timeout, 0, lambda line, n=count: report(
            f"  scaling to {n}: " + line.split(": ", 1)[-1]
        ))  # fmt: skip
        if result != "succeeded":
            return f"placement left uneven ({before}): {message}"
    return f"placement evened out: {before} -> {shape(placement(client, service_id, nodes), names)}"


def example_failure(chunks) -> str | None:
    """The first `modelswarm-example-failed` report in a replica log (bytes chunks), in words; None if there is
    none. The report names the example and the exception's class, never its text (server.py writes it)."""
    text = b"".join(chunks).decode("utf-8", "replace")
    for line in text.splitlines():
        marker, _, payload = line.partition(" ")
        if marker != EXAMPLE_FAILED:
            continue
        try:
            report = json.loads(payload)
            return (
                f"example {int(report['example'])} of {int(report['of'])} in {report['file']} failed on the new "
                f"replicas: {int(report['status'])}, {report['what']} ({report['exception']})"
            )
        except (ValueError, KeyError, TypeError):
            continue
    return None


def failed_example(client: docker.DockerClient, service_id: str, since: float, timeout: float = 15) -> str | None:
    """Why the new replicas failed, if it was an example input: read from the service's log since `since` (epoch
    seconds), through the manager, at most `timeout` seconds (a node that does not answer must not hold the CLI)."""
    found: list[str | None] = [None]

    def read() -> None:
        try:
            logs = client.api.service_logs(service_id, stdout=False, stderr=True, since=int(since), follow=False)
            found[0] = example_failure(logs)
        except (docker.errors.DockerException, OSError):
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0]


def rollout(
    client: docker.DockerClient,
    target: Target,
    timeout: float = 600,
    report: Callable[[str], None] = print,
    note: str = "",
) -> Outcome:
    """Create or update the model's service to `target` and wait for the outcome."""
    started, started_epoch = _now(), time.time()
    digest = target.image.split("@", 1)[1] if "@" in target.image else None
    service = find(client, target.service)
    before = describe(service) if service else None
    # The newest version of each declared secret; one never set stops here, before the service is touched.
    secrets = modelsecrets.current(client, target.name, target.secrets)
    kwargs = service_kwargs(target, secrets)
    # The same image, replica count and spec (hardening, limits, environment, secret versions): nothing to do.
    same = before and (before["image"], before["replicas"]) == (target.image, target.replicas)
    if same and before["spec_hash"] == kwargs["labels"][LABEL_SPEC_HASH]:
        running, _ = running_up_to_date(client, service.id)
        if running == target.replicas and before["update_state"] in (None, "completed"):
            return Outcome(
                target.name, before["version"], target.version, target.image, digest, "no_op",
                f"{target.service} already runs {target.version} on {running} replicas", started, _now(), note,
            )  # fmt: skip
    # Refuse an image the registry does not hold before the service is touched (raises modelimage.ImageMissing).
    modelimage.ensure_in_registry(client, target.image)
    mounted = "".join(f", secret {n} v{v.version}" for n, v in secrets.items())
    try:
        if service is None:
            report(f"creating {target.service} ({target.replicas} replicas of {target.version}{mounted})")
            service = client.services.create(**kwargs)
        else:
            report(f"updating {target.service}: {before['version']} -> {target.version}{mounted}")
            kwargs.pop("name")
            service.update(**kwargs)
    except docker.errors.APIError as exc:
        return Outcome(
            target.name, before and before["version"], target.version, target.image, digest, "failed",
            f"the swarm refused the service spec: {exc.explanation or exc}", started, _now(), note,
        )  # fmt: skip
    result, message = wait(client, service.id, target.replicas, timeout, target.monitor_seconds, report)
    if result in ("rolled_back", "failed"):
        why = failed_example(client, service.id, started_epoch - 1)
        if why:
            report(why)
            message += f"; {why}"
    if mounted and result == "succeeded":
        message += f" ({mounted[2:]})"  # names and versions of the secrets, never a value
    if result == "succeeded":
        evened = rebalance(client, service.id, target.replicas, report)
        if evened:
            report(evened)
            message += f"; {evened}"
    return Outcome(
        target.name, before and before["version"], target.version, target.image, digest, result, message,
        started, _now(), note,
    )  # fmt: skip
