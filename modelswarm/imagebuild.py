"""Image builds through the Docker API, with the extra CA certificates injected into every build context.

Every image this project builds (lab hosts now, platform and model images later) goes through `build_image`, so the
"extra CA certificates" setting is honoured in one place: the bundle is added to the build context as
`extra-ca-certificates.crt`, and each Dockerfile template installs it into the image's trust store.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

import docker
import docker.errors
from jinja2 import Environment, PackageLoader, StrictUndefined

from modelswarm.tooling.progress import progress

CA_BUNDLE_ENV = "MODELSWARM_EXTRA_CA_CERTS"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_FILE_IN_CONTEXT = "extra-ca-certificates.crt"


@functools.cache
def _templates(package: str) -> Environment:
    return Environment(
        loader=PackageLoader(package, "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders Dockerfiles and config files, never HTML
    )


class BuildError(RuntimeError):
    """An image build failed; the message carries the builder's own error."""


def render(package: str, template: str, **values: object) -> str:
    """Render a Jinja2 template from `package`'s templates/ directory; an undefined value is an error, not an empty
    string."""
    return _templates(package).get_template(template).render(**values)


def extra_ca_bundle(setting: str | None = None) -> bytes:
    """The PEM bundle to inject into builds.

    `setting` (default: the MODELSWARM_EXTRA_CA_CERTS environment variable) is a path to a PEM file, or "none" to
    inject nothing. Unset means the build host's system bundle, when it has one: HTTPS from inside containers on
    hosts behind a TLS-inspecting proxy works only with it.
    """
    if setting is None:
        setting = os.environ.get(CA_BUNDLE_ENV, "")
    if setting.strip().lower() == "none":
        return b""
    if setting:
        path = Path(setting)
        if not path.is_file():
            raise BuildError(f"{CA_BUNDLE_ENV}={setting}: no such file (give a PEM bundle, or 'none' for no extra CAs)")
        data = path.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise BuildError(f"{CA_BUNDLE_ENV}={setting}: not a PEM certificate bundle (no BEGIN CERTIFICATE line)")
        return data
    return SYSTEM_CA_BUNDLE.read_bytes() if SYSTEM_CA_BUNDLE.is_file() else b""


def context_tar(files: Mapping[str, bytes | str], ca_bundle: bytes) -> io.BytesIO:
    """A build context as an in-memory tar: the given files plus the CA bundle (possibly empty)."""
    buf = io.BytesIO()
    entries = dict(files)
    entries[CA_FILE_IN_CONTEXT] = ca_bundle
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in sorted(entries.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0  # stable contexts keep the layer cache valid across runs
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_image(
    client: docker.DockerClient,
    tag: str,
    files: Mapping[str, bytes | str],
    *,
    labels: Mapping[str, str] | None = None,
    ca_setting: str | None = None,
) -> str:
    """Build `tag` from in-memory `files` (which must include a Dockerfile); return the image id.

    The low-level API is used so progress can be streamed: it reports errors in the stream rather than raising.
    """
    started = time.monotonic()
    context = context_tar(files, extra_ca_bundle(ca_setting))
    image_id = None
    last_step = ""
    stream = client.api.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        decode=True,
        labels=dict(labels or {}),
        pull=False,
    )
    for chunk in stream:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            raise BuildError(f"building {tag} failed at {last_step.strip() or 'start'}: {detail.strip()}")
        line = chunk.get("stream", "")
        if line.startswith("Step "):
            last_step = line
            progress(f"  {tag}: {line.strip()}")
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    if image_id is None:
        image_id = client.images.get(tag).id
    progress(f"  built {tag} in {time.monotonic() - started:.0f}s")
    return image_id
