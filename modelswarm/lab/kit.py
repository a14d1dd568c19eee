"""The lab image kit and the air-gapped image bundle.

On a machine with no registry, the platform's images are built from the Debian base: real NGINX, PostgreSQL, the
registry, HAProxy (the Docker API proxy), Prometheus, Alertmanager, the node exporter, the Python runtime and the
console; clearly named placeholders stand in for
Consul, Logstash, Elasticsearch, LogSpout and Registrator (their images cannot be obtained offline). `save_bundle`
writes them all into one tarball plus a manifest; the Ansible `images` role copies and loads it on every node.

The map KIT is the one source of the lab's image names: the manifest carries it to Ansible (platform_images).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import docker
import docker.errors

from modelswarm import contract
from modelswarm.imagebuild import build_image, render
from modelswarm.lab.hosts import LabSettings, ensure_base_image
from modelswarm.tooling.progress import progress

KIT_LABEL = "io.modelswarm.kit"
MANIFEST = "manifest.json"
# Kit builds at once per stage: the images of a stage are independent of each other.
BUILD_PARALLELISM = 4


@dataclass(frozen=True)
class KitImage:
    key: str  # the platform_images key it fills
    tag: str
    template: str
    values: dict = field(default_factory=dict)
    extra_files: tuple[str, ...] = ()
    placeholder: bool = False


PYTHON_RUNTIME = "modelswarm/python-runtime:3.11-bookworm"

KIT: tuple[KitImage, ...] = (
    KitImage("python_runtime", PYTHON_RUNTIME, "kit/python-runtime.Dockerfile.j2"),
    KitImage("nginx", "modelswarm/lab-nginx:1.22-bookworm", "kit/nginx.Dockerfile.j2"),
    KitImage(
        "postgres",
        "modelswarm/lab-postgres:15-bookworm",
        "kit/postgres.Dockerfile.j2",
        extra_files=("kit/postgres-entrypoint.sh",),
    ),
    KitImage(
        "registry",
        "modelswarm/lab-registry:2.8-bookworm",
        "kit/registry.Dockerfile.j2",
        extra_files=("kit/registry-config.yml",),
    ),
    KitImage("console", "modelswarm/console:0.1.0", "kit/console.Dockerfile.j2"),
    KitImage("docker_api_proxy", "modelswarm/lab-haproxy:2.6-bookworm", "kit/haproxy.Dockerfile.j2"),
    KitImage("prometheus", "modelswarm/lab-prometheus:2.42-bookworm", "kit/prometheus.Dockerfile.j2"),
    KitImage("alertmanager", "modelswarm/lab-alertmanager:0.25-bookworm", "kit/alertmanager.Dockerfile.j2"),
    KitImage("node_exporter", "modelswarm/lab-node-exporter:1.5-bookworm", "kit/node-exporter.Dockerfile.j2"),
    *(
        KitImage(
            service,
            f"modelswarm/placeholder-{service}:lab",
            "kit/placeholder.Dockerfile.j2",
            values={"service": service, "ports": ports},
            extra_files=("kit/placeholder.py",),
            placeholder=True,
        )
        for service, ports in (
            ("consul", [8500, 8600]),
            ("logstash", [5000, 9600]),
            ("elasticsearch", [9200]),
            ("logspout", [80]),
            ("registrator", [8080]),
        )
    ),
)


def _console_source() -> dict[str, bytes]:
    """The console's code as build-context files: its package (modelswarm.apps.console) and the parent packages'
    markers, the contract, the ledger's hash-chain rule (shared with the CLI's verifier) and the request hygiene it
    shares with the model server (httpguard), so the image imports them by the same names as the repository does."""
    files: dict[str, bytes] = {
        "modelswarm/__init__.py": b"",
        "modelswarm/apps/__init__.py": b"",
        "modelswarm/apps/modelserver/__init__.py": b"",
        "modelswarm/apps/modelserver/httpguard.py": resources.files("modelswarm.apps.modelserver")
        .joinpath("httpguard.py")
        .read_bytes(),
        "modelswarm/contract.py": resources.files("modelswarm").joinpath("contract.py").read_bytes(),
        "modelswarm/ledgerchain.py": resources.files("modelswarm").joinpath("ledgerchain.py").read_bytes(),
    }
    root = resources.files("modelswarm.apps.console")

    def walk(node, prefix: str) -> None:
        for entry in node.iterdir():
            if entry.name == "__pycache__":
                continue
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            else:
                files[f"modelswarm/apps/console/{prefix}{entry.name}"] = entry.read_bytes()

    walk(root, "")
    return files


def context_files(image: KitImage, base_image: str) -> dict[str, bytes | str]:
    values = {"base_image": base_image, "python_runtime_image": PYTHON_RUNTIME, "contract": contract, **image.values}
    files: dict[str, bytes | str] = {"Dockerfile": render(__package__, image.template, **values)}
    for extra in image.extra_files:  # copied as they are, not rendered
        files[Path(extra).name] = resources.files(__package__).joinpath("templates", extra).read_bytes()
    if image.key == "console":
        files.update(_console_source())
    return files


def _image_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        return None


def build_kit(client: docker.DockerClient, settings: LabSettings) -> dict[str, object]:
    """Build every kit image (the layer cache makes unchanged ones instant). Returns what changed.

    Two stages, each built in parallel: the images on the Debian base (mostly package downloads and unpacking,
    which overlap well), then those on the Python runtime built in the first stage.
    """
    ensure_base_image(client, settings)

    def build(image: KitImage) -> str | None:
        before = _image_id(client, image.tag)
        labels = {KIT_LABEL: image.key}
        if image.placeholder:
            labels["io.modelswarm.placeholder"] = image.key
        after = build_image(client, image.tag, context_files(image, settings.base_image), labels=labels)
        return image.tag if after != before else None

    changed: list[str] = []
    for stage in (
        [i for i in KIT if not _on_runtime(i)],
        [i for i in KIT if _on_runtime(i)],
    ):
        with ThreadPoolExecutor(max_workers=BUILD_PARALLELISM) as pool:
            changed += [tag for tag in pool.map(build, stage) if tag]
    return {"changed": bool(changed), "built": changed, "images": {i.key: i.tag for i in KIT}}


def _on_runtime(image: KitImage) -> bool:
    """Whether the image is built FROM the kit's Python runtime (so after it)."""
    return (
        "{{ python_runtime_image }}" in resources.files(__package__).joinpath("templates", image.template).read_text()
    )


def bundle_parts() -> dict[str, dict[str, object]]:
    """The bundle's tarballs by where they go: `all` nodes, or the `leader` only (the images of the services the
    stack pins to the designated leader; no other node ever runs them)."""
    pinned = set(contract.LEADER_PINNED_SERVICES)
    return {
        "all": {"tarball": "images-all.tar", "images": [i.tag for i in KIT if i.key not in pinned]},
        "leader": {"tarball": "images-leader.tar", "images": [i.tag for i in KIT if i.key in pinned]},
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(client: docker.DockerClient, bundle_dir: Path) -> dict[str, object]:
    """Write the kit images into tarballs by placement (layers shared inside a tarball are stored once) and a
    manifest that the `images` role reads.

    Skipped when the manifest already lists the same image IDs: the bundle is then up to date.
    """
    images = {i.key: i.tag for i in KIT}
    ids = {}
    for key, tag in images.items():
        image_id = _image_id(client, tag)
        if image_id is None:
            raise RuntimeError(f"image {tag} ({key}) is missing: run `modelswarm images build` first")
        ids[tag] = image_id
    parts = bundle_parts()
    manifest: dict[str, object] = {
        "images": images,
        "ids": ids,
        "placeholders": sorted(i.key for i in KIT if i.placeholder),
        "parts": parts,
    }
    manifest_path = bundle_dir / MANIFEST
    if manifest_path.exists() and all((bundle_dir / str(p["tarball"])).exists() for p in parts.values()):
        old = json.loads(manifest_path.read_text())
        if old.get("ids") == ids and old.get("parts", {}).keys() == parts.keys():
            progress(f"bundle {bundle_dir} is up to date")
            return {"changed": False, "manifest": str(manifest_path), **old}
    if not shutil.which("docker"):
        raise RuntimeError("the docker CLI is needed to save the bundle (docker save)")
    bundle_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for scope, part in parts.items():
        tar_path = bundle_dir / str(part["tarball"])
        partial = tar_path.with_suffix(".tar.partial")
        progress(f"saving {len(part['images'])} images for {scope} nodes into {tar_path}")
        subprocess.run(["docker", "save", "-o", str(partial), *part["images"]], check=True)
        partial.replace(tar_path)
        part["sha256"] = _sha256(tar_path)
        part["bytes"] = tar_path.stat().st_size
    for stale in bundle_dir.glob("*.tar"):
        if stale.name not in {p["tarball"] for p in parts.values()}:
            stale.unlink()  # a tarball of an older layout
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    sizes = ", ".join(f"{scope} {int(p['bytes']) / 1e6:.0f} MB" for scope, p in parts.items())
    progress(f"bundle written ({sizes}) in {time.monotonic() - started:.0f}s")
    return {"changed": True, "manifest": str(manifest_path), **manifest}
