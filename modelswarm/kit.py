"""The lab image kit and the air-gapped image bundle.

On a machine with no registry, the platform's images are built from the Debian base: real NGINX, PostgreSQL, the
registry, the Python runtime and the console; clearly named placeholders stand in for Consul, Logstash,
Elasticsearch, LogSpout and Registrator (their images cannot be obtained offline). `save_bundle` writes them all
into one tarball plus a manifest; the Ansible `images` role copies and loads it on every node.

The map KIT is the one source of the lab's image names: the manifest carries it to Ansible (platform_images).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import docker
import docker.errors

from modelswarm.build import build_image, render
from modelswarm.console import progress
from modelswarm.lab import LabSettings, ensure_base_image

KIT_LABEL = "io.modelswarm.kit"
BUNDLE_TAR = "images.tar"
MANIFEST = "manifest.json"


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
    """The console's code (the modelswarm.webconsole package) as build-context files."""
    files: dict[str, bytes] = {"modelswarm/__init__.py": b""}
    root = resources.files("modelswarm.webconsole")

    def walk(node, prefix: str) -> None:
        for entry in node.iterdir():
            if entry.name == "__pycache__":
                continue
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            else:
                files[f"modelswarm/webconsole/{prefix}{entry.name}"] = entry.read_bytes()

    walk(root, "")
    return files


def context_files(image: KitImage, base_image: str) -> dict[str, bytes | str]:
    values = {"base_image": base_image, "python_runtime_image": PYTHON_RUNTIME, **image.values}
    files: dict[str, bytes | str] = {"Dockerfile": render(image.template, **values)}
    for extra in image.extra_files:  # copied as they are, not rendered
        files[Path(extra).name] = resources.files("modelswarm").joinpath("templates", extra).read_bytes()
    if image.key == "console":
        files.update(_console_source())
    return files


def _image_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        return None


def build_kit(client: docker.DockerClient, settings: LabSettings) -> dict[str, object]:
    """Build every kit image (the layer cache makes unchanged ones instant). Returns what changed."""
    ensure_base_image(client, settings)
    changed = []
    for image in KIT:
        before = _image_id(client, image.tag)
        labels = {KIT_LABEL: image.key}
        if image.placeholder:
            labels["io.modelswarm.placeholder"] = image.key
        after = build_image(client, image.tag, context_files(image, settings.base_image), labels=labels)
        if after != before:
            changed.append(image.tag)
    return {"changed": bool(changed), "built": changed, "images": {i.key: i.tag for i in KIT}}


def save_bundle(client: docker.DockerClient, bundle_dir: Path) -> dict[str, object]:
    """Write all kit images into one tarball (layers shared between images are stored once) and a manifest.

    Skipped when the manifest already lists the same image IDs: the bundle is then up to date.
    """
    images = {i.key: i.tag for i in KIT}
    ids = {}
    for key, tag in images.items():
        image_id = _image_id(client, tag)
        if image_id is None:
            raise RuntimeError(f"image {tag} ({key}) is missing: run `modelswarm images build` first")
        ids[tag] = image_id
    manifest = {
        "images": images,
        "ids": ids,
        "placeholders": sorted(i.key for i in KIT if i.placeholder),
        "tarball": BUNDLE_TAR,
    }
    manifest_path, tar_path = bundle_dir / MANIFEST, bundle_dir / BUNDLE_TAR
    if manifest_path.exists() and tar_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("ids") == ids:
            progress(f"bundle {bundle_dir} is up to date")
            return {"changed": False, "manifest": str(manifest_path), **manifest}
    if not shutil.which("docker"):
        raise RuntimeError("the docker CLI is needed to save the bundle (docker save)")
    bundle_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    partial = tar_path.with_suffix(".tar.partial")
    progress(f"saving {len(images)} images into {tar_path}")
    subprocess.run(["docker", "save", "-o", str(partial), *images.values()], check=True)
    partial.replace(tar_path)
    digest = hashlib.sha256()
    with tar_path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    manifest["sha256"] = digest.hexdigest()
    manifest["bytes"] = tar_path.stat().st_size
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    progress(f"bundle written: {manifest['bytes'] / 1e6:.0f} MB in {time.monotonic() - started:.0f}s")
    return {"changed": True, "manifest": str(manifest_path), **manifest}
