"""Model images: render the Dockerfile, build on a manager, push to the cluster registry, return the digest.

Tags are immutable: <registry>/models/<name>:<version>. Pushing a version whose tag already holds other content
(another source hash) is refused; bump the version instead.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import docker
import docker.errors

from modelswarm import cluster, contract, registryauth
from modelswarm.imagebuild import build_image, render
from modelswarm.lifecycle.bundle import Bundle
from modelswarm.tooling.progress import progress

GUNICORN_VERSION = "23.0.0"  # also pinned in requirements/toolchain.in: the unit tests run the server under it
PROMETHEUS_CLIENT_VERSION = "0.26.0"  # the same: the server's metrics, exact across gunicorn's worker processes
# The model server's files, copied next to each other into /opt/model (the model imports modelswarm_model).
SERVER_FILES = ("server.py", "httpguard.py", "modelswarm_model.py", "gunicorn_conf.py")
DEFAULT_WORKERS = 2


class ImageError(RuntimeError):
    """A model image could not be built or pushed; the message says why."""


class ImageMissing(ImageError):
    """A rollout names an image the registry does not hold: bad input, refused before anything changes."""


@dataclass(frozen=True)
class ModelImage:
    repository: str  # <registry>/models/<name>
    tag: str  # the version
    digest: str  # sha256:... as the registry knows it
    source_hash: str

    @property
    def reference(self) -> str:
        """Repository and digest: what services run, so every node runs exactly these bytes."""
        return f"{self.repository}:{self.tag}@{self.digest}"


def context_files(bundle: Bundle, runtime_image: str, pip_index_url: str = "") -> dict[str, bytes | str]:
    source_hash = bundle.source_hash()
    files: dict[str, bytes | str] = {
        "Dockerfile": render(
            __package__,
            "model.Dockerfile.j2",
            bundle=bundle,
            runtime_image=runtime_image,
            source_hash=source_hash,
            gunicorn_version=GUNICORN_VERSION,
            prometheus_client_version=PROMETHEUS_CLIENT_VERSION,
            workers=DEFAULT_WORKERS,
            contract=contract,
            pip_index_url=pip_index_url,
        ),
        "requirements.txt": "\n".join(bundle.requirements) + "\n",
        **{name: resources.files("modelswarm.apps.modelserver").joinpath(name).read_bytes() for name in SERVER_FILES},
    }
    for rel in bundle.files():
        files[f"bundle/{rel}"] = (bundle.path / rel).read_bytes()
    return files


def repository(registry: str, bundle: Bundle) -> str:
    return f"{registry}/{contract.MODEL_REPOSITORY}/{bundle.name}"


def existing(client: docker.DockerClient, repo: str, tag: str) -> tuple[str, str] | None:
    """(digest, source hash) of repo:tag in the registry, or None if the tag is not there."""
    try:
        data = client.images.get_registry_data(f"{repo}:{tag}")
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        if "manifest unknown" in str(exc) or "not found" in str(exc).lower():
            return None
        raise ImageError(f"cannot ask the registry about {repo}:{tag}: {exc}") from exc
    image = client.images.pull(f"{repo}@{data.id}")
    return data.id, (image.labels or {}).get(contract.LABEL_SOURCE_HASH, "")


def build_and_push(
    client: docker.DockerClient,
    bundle: Bundle,
    registry: str,
    runtime_image: str,
    pip_index_url: str = "",
    push_auth: dict[str, str] | None = None,
) -> tuple[ModelImage, bool]:
    """Build the bundle's image on `client`'s daemon and push it (with `push_auth`, the registry's push account).
    Returns (image, built_now). `client` is expected to be logged in to the registry with the pull account.

    If the registry already holds this version with the same source hash, nothing is built or pushed.
    """
    repo, source_hash = repository(registry, bundle), bundle.source_hash()
    found = existing(client, repo, bundle.version)
    if found:
        digest, pushed_hash = found
        if pushed_hash != source_hash:
            raise ImageError(
                f"{repo}:{bundle.version} already exists with other content (source hash {pushed_hash[:12]}, "
                f"this bundle {source_hash[:12]}): tags are immutable, bump the version in modelswarm.yml"
            )
        progress(f"{repo}:{bundle.version} is already in the registry ({digest[:19]}); nothing to build")
        return ModelImage(repo, bundle.version, digest, source_hash), False
    started = time.monotonic()
    progress(f"building {repo}:{bundle.version} on the cluster")
    build_image(
        client,
        f"{repo}:{bundle.version}",
        context_files(bundle, runtime_image, pip_index_url),
        labels={
            contract.LABEL_MODEL: bundle.name,
            contract.LABEL_VERSION: bundle.version,
            contract.LABEL_SERVING: json.dumps(bundle.serving(), sort_keys=True),
        },
    )
    progress(f"pushing {repo}:{bundle.version}")
    digest = None
    for event in client.api.push(repo, tag=bundle.version, stream=True, decode=True, auth_config=push_auth):
        if "error" in event:
            raise ImageError(f"push of {repo}:{bundle.version} failed: {event['error']}")
        if event.get("status") == "Pushed" or event.get("status", "").startswith("Layer already exists"):
            progress(f"  layer {event.get('id', '')}: {event['status']}")
        if "aux" in event and "Digest" in event["aux"]:
            digest = event["aux"]["Digest"]
    if not digest:
        raise ImageError(f"push of {repo}:{bundle.version} reported no digest")
    progress(f"pushed {repo}:{bundle.version}@{digest[:19]} in {time.monotonic() - started:.0f}s")
    return ModelImage(repo, bundle.version, digest, source_hash), True


def _by_digest(reference: str) -> str:
    """repo:tag@sha256:... -> repo@sha256:... (what registries and the pull API key on)."""
    if "@" not in reference:
        return reference
    name, digest = reference.split("@", 1)
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return f"{name}@{digest}"


def ensure_in_registry(client: docker.DockerClient, reference: str) -> None:
    """Raise ImageError unless the registry holds `reference` - asked before a service is changed, so a rollout to
    an image that is gone (deleted, garbage-collected, mistyped) is refused instead of started."""
    wanted = _by_digest(reference)
    try:
        client.images.get_registry_data(wanted)
    except docker.errors.NotFound as exc:
        raise ImageMissing(f"{wanted} does not exist in the registry: nothing was changed") from exc
    except docker.errors.APIError as exc:
        text = str(exc)
        if "manifest unknown" in text or "not found" in text.lower():
            raise ImageMissing(f"{wanted} does not exist in the registry: nothing was changed") from exc
        raise ImageError(f"cannot ask the registry about {wanted}: {exc}") from exc


def serving_spec(client: docker.DockerClient, reference: str) -> tuple[dict, bool]:
    """How image `reference` was built to be served (`Bundle.serving()`, its io.modelswarm.serving label), and
    whether the image says so in full. Images built before the label existed give only the secret names they read
    (io.modelswarm.secrets; none before model secrets existed) and False. Pulls the image onto `client`'s node if
    it is not there."""
    try:
        labels = client.images.pull(_by_digest(reference)).labels or {}
    except docker.errors.APIError as exc:
        raise ImageError(f"cannot read the labels of {reference}: {exc}") from exc
    if contract.LABEL_SERVING in labels:
        try:
            return json.loads(labels[contract.LABEL_SERVING]), True
        except ValueError as exc:
            raise ImageError(f"{reference}: its {contract.LABEL_SERVING} label is not JSON") from exc
    return {"secrets": [name for name in labels.get(contract.LABEL_SECRETS, "").split(",") if name]}, False


def stage(inventory: cluster.Inventory, reference: str) -> dict[str, str]:
    """Pull `reference` on every manager, in parallel, so that a replica rescheduled after a node loss starts from
    the local copy even while the registry (on the designated leader) is down. Returns node -> outcome; a node that
    cannot be reached is reported and skipped (it pulls when it next runs a replica)."""
    wanted = _by_digest(reference)
    repository_name, digest = wanted.split("@", 1)

    registry = repository_name.split("/", 1)[0]

    def pull(host) -> str:
        try:
            with cluster.docker_on(host, timeout=10) as client:
                registryauth.login(client, registry, "pull")
                client.images.pull(repository_name, tag=digest)
            return "present"
        except (cluster.ClusterError, registryauth.RegistryLoginFailed, docker.errors.DockerException) as exc:
            return f"not staged: {str(exc).splitlines()[0][:200]}"

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, len(inventory.managers))) as pool:
        outcomes = dict(zip([h.name for h in inventory.managers], pool.map(pull, inventory.managers), strict=True))
    for node, outcome in sorted(outcomes.items()):
        if outcome != "present":
            progress(f"warning: image on {node} {outcome}")
    staged = sum(1 for o in outcomes.values() if o == "present")
    progress(f"image staged on {staged}/{len(outcomes)} nodes in {time.monotonic() - started:.1f}s")
    return outcomes


VALIDATE_REPOSITORY = "modelswarm-validate"  # local tags of images built only to run their examples
VALIDATE_SECONDS = 300  # loading the model and answering its examples must take less than this


@dataclass(frozen=True)
class ExamplesVerdict:
    """What a model image did with its bundle's example inputs, run as a replica would run (before serving)."""

    image: str
    passed: bool
    examples: int  # how many were answered (all of them when passed)
    failure: str | None  # which example failed and how (never the exception's text); or why nothing ran


def answer_examples(client: docker.DockerClient, bundle: Bundle, runtime_image: str, pip_index_url: str = "",
                    report=progress) -> ExamplesVerdict:  # fmt: skip
    """Build the bundle's image on `client`'s daemon under a local tag (nothing is pushed) and run it once as a
    replica starts - the model user, a read-only root, no network, no capabilities - with `python server.py`, which
    loads the model and answers each example. The container is removed afterwards; the image stays (cache)."""
    from modelswarm.lifecycle import rollout

    tag = f"{VALIDATE_REPOSITORY}/{bundle.name}:{bundle.version}"
    report(f"building {tag} to answer {bundle.example_count} example input(s) from {bundle.examples}")
    build_image(client, tag, context_files(bundle, runtime_image, pip_index_url))
    container = client.containers.run(
        tag,
        command=["/opt/model/venv/bin/python", "/opt/model/server.py"],
        detach=True,
        network_mode="none",
        read_only=True,
        tmpfs={rollout.MODEL_TMP: f"size={contract.MODEL_TMPFS_BYTES}"},  # as a replica has it
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=contract.MODEL_PIDS_LIMIT,
        mem_limit=bundle.memory or contract.MODEL_DEFAULT_MEMORY,
        labels={contract.LABEL_MODEL: bundle.name, contract.LABEL_VERSION: bundle.version},
    )
    try:
        try:
            code = container.wait(timeout=VALIDATE_SECONDS)["StatusCode"]
        except Exception:  # the docker SDK raises the transport's own timeout error
            return ExamplesVerdict(tag, False, 0, f"no answer within {VALIDATE_SECONDS}s (load or an example hangs)")
        stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        stderr = container.logs(stdout=False, stderr=True)
    finally:
        container.remove(force=True)
    for line in stdout.splitlines():
        marker, _, payload = line.partition(" ")
        if marker == "modelswarm-examples-passed" and code == 0:
            return ExamplesVerdict(tag, True, int(json.loads(payload)["examples"]), None)
    failure = rollout.example_failure([stderr])
    if failure:
        return ExamplesVerdict(tag, False, 0, failure.replace(" on the new replicas", ""))
    # The last line of a traceback is "Class: text"; the text may hold a secret, so only the class is shown.
    last = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()][-1:]
    raised = last[0].split(":", 1)[0].split()[-1] if last else "no output"
    return ExamplesVerdict(
        tag, False, 0,
        f"the model did not load (exit {code}, {raised}); to read the traceback: "
        f"docker run --rm {tag} /opt/model/venv/bin/python /opt/model/server.py",
    )  # fmt: skip
