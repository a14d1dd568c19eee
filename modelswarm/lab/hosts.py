"""The local lab: three hosts on one machine that look like real servers to Ansible (systemd, sshd, python3).

Three managers (node1 the designated leader, node2, node3) and, with MODELSWARM_LAB_WORKERS=N, N worker hosts
(node4, node5, ... at .14, .15, ... of the subnet) that the swarm role joins as workers.

One implementation serves `make demo`, molecule's create/destroy and the benchmarks (`modelswarm lab up|down|status`).

Each host is a container of the node image, with its own SSH host keys, a named volume for /var/lib/docker (so the
Docker engine that the roles install inside it can use overlay2), on a dedicated bridge network with fixed addresses.
Everything the lab creates carries the label `io.modelswarm.lab=<prefix>`; `down` removes only what carries it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import ipaddress
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelswarm.imagebuild import build_image, render
from modelswarm.tooling.progress import progress

LAB_LABEL = "io.modelswarm.lab"
MAX_LAB_WORKERS = 4
# On each lab host: which checkout made it and the fingerprint of the SSH key it accepts, so a
# second checkout finds out before Ansible that this lab is not its own.
OWNER_LABEL, KEY_LABEL = f"{LAB_LABEL}.owner", f"{LAB_LABEL}.ssh-key"
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout

# The capabilities recipe that runs systemd in a container on these kernels: --privileged fails ("unable to apply
# caps": CAP_SYS_RESOURCE is not grantable), so grant everything else explicitly.
NODE_HOST_CONFIG = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
    "tmpfs": {"/run": "", "/run/lock": ""},
}


class LabError(RuntimeError):
    """Something stops the lab from coming up; the message says what and how to fix it."""


@dataclass(frozen=True)
class LabSettings:
    """Where and how the lab is built. Every field can be set from the environment (see `from_env`)."""

    prefix: str = "modelswarm-lab"
    subnet: str = "172.30.99.0/24"
    nodes: tuple[str, ...] = ("node1", "node2", "node3")
    leader: str = "node1"  # MODELSWARM_LAB_LEADER: the inventory's designated leader (playbooks/move-leader.yml)
    workers: int = 0  # MODELSWARM_LAB_WORKERS: worker hosts after the managers (node4, node5, ...)
    first_host_octet: int = 11
    base_image: str = "modelswarm/lab-base:bookworm"
    node_image: str = "modelswarm/lab-node:bookworm"
    upstream_base_image: str = "debian:bookworm-slim"
    debian_suite: str = "bookworm"
    debian_mirror: str = "http://deb.debian.org/debian"
    state_dir: Path = field(default=REPO_ROOT / ".lab")
    inventory_file: Path = field(default=REPO_ROOT / "inventory" / "lab" / "hosts.yml")
    ready_timeout: float = 120.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> LabSettings:
        env = dict(os.environ if env is None else env)
        kwargs: dict[str, object] = {}
        for key, attr in (
            ("MODELSWARM_LAB_PREFIX", "prefix"),
            ("MODELSWARM_LAB_SUBNET", "subnet"),
            ("MODELSWARM_DEBIAN_MIRROR", "debian_mirror"),
        ):
            if env.get(key):
                kwargs[attr] = env[key]
        if env.get("MODELSWARM_LAB_WORKERS"):
            raw = env["MODELSWARM_LAB_WORKERS"].strip()
            if not raw.isdigit() or int(raw) > MAX_LAB_WORKERS:
                raise LabError(f"MODELSWARM_LAB_WORKERS={raw!r}: give a whole number from 0 to {MAX_LAB_WORKERS}")
            kwargs["workers"] = int(raw)
        if env.get("MODELSWARM_LAB_LEADER"):
            leader = env["MODELSWARM_LAB_LEADER"].strip()
            if leader not in cls.nodes:
                raise LabError(
                    f"MODELSWARM_LAB_LEADER={leader!r}: the designated leader must be a manager: "
                    f"{', '.join(cls.nodes)} (then move it: playbooks/move-leader.yml -e to={leader})"
                )
            kwargs["leader"] = leader
        if env.get("MODELSWARM_LAB_STATE_DIR"):
            kwargs["state_dir"] = Path(env["MODELSWARM_LAB_STATE_DIR"])
        if env.get("MODELSWARM_LAB_INVENTORY"):
            kwargs["inventory_file"] = Path(env["MODELSWARM_LAB_INVENTORY"])
        settings = cls(**kwargs)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as exc:
            raise LabError(f"MODELSWARM_LAB_SUBNET={self.subnet!r} is not a network address: {exc}") from exc
        if net.version != 4 or net.prefixlen > 28:
            raise LabError(f"MODELSWARM_LAB_SUBNET={self.subnet}: give an IPv4 network of /28 or larger")
        hosts = len(self.all_nodes)
        if self.first_host_octet < 2 or self.first_host_octet + hosts >= net.num_addresses - 1:
            raise LabError(f"MODELSWARM_LAB_SUBNET={self.subnet} is too small for {hosts} hosts")
        if not self.prefix.replace("-", "").isalnum():
            raise LabError(f"MODELSWARM_LAB_PREFIX={self.prefix!r}: use letters, digits and dashes only")

    @property
    def worker_nodes(self) -> tuple[str, ...]:
        """The worker hosts, named on after the managers: node4, node5, ..."""
        return tuple(f"node{len(self.nodes) + i}" for i in range(1, self.workers + 1))

    @property
    def all_nodes(self) -> tuple[str, ...]:
        return self.nodes + self.worker_nodes

    @property
    def network_name(self) -> str:
        return self.prefix

    @property
    def gateway(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[1])

    @property
    def vip_address(self) -> str:
        """The floating VIP (role vip): the address just below the first host's (.10 of the subnet; hosts .11 on).
        inventory/lab/group_vars/all.yml states the same rule for Ansible (tests/unit/test_lab.py checks both)."""
        return str(ipaddress.ip_address(self.address(self.nodes[0])) - 1)

    def address(self, node: str) -> str:
        return str(ipaddress.ip_network(self.subnet)[self.first_host_octet + self.all_nodes.index(node)])

    def container_name(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def volume_name(self, node: str) -> str:
        return f"{self.prefix}-{node}-docker"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def labels(self) -> dict[str, str]:
        return {LAB_LABEL: self.prefix}


def connect() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except docker.errors.DockerException as exc:
        raise LabError(
            "no Docker daemon answers on this machine. Run `scripts/engine-bootstrap.sh` (as root), "
            f"or start Docker yourself. ({exc})"
        ) from exc
    return client


# ---------------------------------------------------------------------------------------------------------- clashes


def _host_routes(route_table: Path = Path("/proc/net/route")) -> list[tuple[str, ipaddress.IPv4Network]]:
    """IPv4 routes of the build host, as (interface, network), from /proc/net/route."""
    routes: list[tuple[str, ipaddress.IPv4Network]] = []
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return routes
    for line in lines:
        parts = line.split()
        if len(parts) < 8:
            continue
        iface, dest_hex, mask_hex = parts[0], parts[1], parts[7]
        dest = ipaddress.IPv4Address(bytes.fromhex(dest_hex)[::-1])
        mask = ipaddress.IPv4Address(bytes.fromhex(mask_hex)[::-1])
        if int(mask) == 0:
            continue  # the default route overlaps everything and says nothing
        routes.append((iface, ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)))
    return routes


def find_clashes(
    client: docker.DockerClient, settings: LabSettings, route_table: Path = Path("/proc/net/route")
) -> list[str]:
    """Everything on this machine that the lab would collide with, each as a sentence naming it."""
    ours = ipaddress.ip_network(settings.subnet)
    problems: list[str] = []
    for net in client.networks.list():
        attrs = net.attrs
        is_ours = (attrs.get("Labels") or {}).get(LAB_LABEL) == settings.prefix
        if net.name == settings.network_name and not is_ours:
            problems.append(
                f"a Docker network named {net.name!r} already exists and was not made by the lab "
                "(set MODELSWARM_LAB_PREFIX to use another name)"
            )
        if is_ours:
            continue
        for cfg in (attrs.get("IPAM") or {}).get("Config") or []:
            subnet = cfg.get("Subnet")
            if subnet and ipaddress.ip_network(subnet, strict=False).overlaps(ours):
                problems.append(
                    f"the lab subnet {ours} overlaps Docker network {net.name!r} ({subnet}) "
                    "(set MODELSWARM_LAB_SUBNET to a free range, e.g. 172.31.250.0/24)"
                )
    for iface, route in _host_routes(route_table):
        if iface.startswith(("docker", "br-")):
            continue  # Docker's own bridges were judged above, through the networks that own them
        if route.overlaps(ours):
            problems.append(
                f"the lab subnet {ours} overlaps the host route {route} on interface {iface} "
                "(set MODELSWARM_LAB_SUBNET to a free range)"
            )
    for node in settings.all_nodes:
        name = settings.container_name(node)
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            continue
        if (container.labels or {}).get(LAB_LABEL) != settings.prefix:
            problems.append(
                f"a container named {name!r} already exists and was not made by the lab "
                "(set MODELSWARM_LAB_PREFIX to use other names)"
            )
    return problems


# ----------------------------------------------------------------------------------------------------------- images


def ensure_base_image(client: docker.DockerClient, settings: LabSettings) -> bool:
    """Make the Debian base image: pull the upstream one if a registry answers, else debootstrap + import.

    Returns True if the image was created now.
    """
    try:
        client.images.get(settings.base_image)
        return False
    except docker.errors.ImageNotFound:
        pass
    repo, tag = settings.base_image.rsplit(":", 1)
    progress(f"base image: trying to pull {settings.upstream_base_image}")
    try:
        image = client.images.pull(settings.upstream_base_image)
        image.tag(repo, tag)
        progress(f"base image: pulled {settings.upstream_base_image}, tagged {settings.base_image}")
        return True
    except docker.errors.APIError as exc:
        progress(f"base image: pull failed ({str(exc).splitlines()[0][:120]}); building with debootstrap instead")
    if not shutil.which("debootstrap"):
        raise LabError("no registry answers and debootstrap is not installed: run scripts/engine-bootstrap.sh")
    work = Path(tempfile.mkdtemp(prefix="modelswarm-rootfs-", dir="/var/tmp"))
    try:
        rootfs = work / "rootfs"
        progress(f"base image: debootstrap --variant=minbase {settings.debian_suite} from {settings.debian_mirror}")
        started = time.monotonic()
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", settings.debian_suite, str(rootfs), settings.debian_mirror],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
            raise LabError(f"debootstrap failed (is {settings.debian_mirror} reachable?):\n{tail}")
        progress(f"base image: debootstrap done in {time.monotonic() - started:.0f}s; importing")
        # As Debian's own -slim images do: packages installed later leave out docs, man pages and translations
        # (a third of the lab kit's size, and of the bundle copied to every node).
        (rootfs / "etc/dpkg/dpkg.cfg.d/modelswarm-slim").write_text(
            "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n"
            "path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\n"
        )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        client.api.import_image_from_file(str(tarball), repository=repo, tag=tag, changes=['CMD ["/bin/bash"]'])
        progress(f"base image: imported {settings.base_image}")
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_node_image(client: docker.DockerClient, settings: LabSettings, rebuild: bool = False) -> bool:
    """Build the lab host image (systemd, sshd, python3) unless it exists. Returns True if built now."""
    if not rebuild:
        try:
            client.images.get(settings.node_image)
            return False
        except docker.errors.ImageNotFound:
            pass
    progress(f"node image: building {settings.node_image}")
    build_image(
        client,
        settings.node_image,
        {
            "Dockerfile": render(__package__, "lab-node.Dockerfile.j2", base_image=settings.base_image),
            "lab-ssh-host-keys.service": render(__package__, "lab-ssh-host-keys.service"),
        },
        labels=settings.labels,
    )
    return True


# ------------------------------------------------------------------------------------------------------- ssh + hosts


def ensure_ssh_key(settings: LabSettings) -> tuple[Path, str]:
    """The lab's SSH key pair (made once, kept under the state dir). Returns (private key path, public key line)."""
    key = settings.ssh_key
    pub = key.with_suffix(".pub")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.parent.chmod(0o700)
        private = Ed25519PrivateKey.generate()
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        key.chmod(0o600)
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        pub.write_text(public.decode() + " modelswarm-lab\n")
    return key, pub.read_text().strip()


def _authorized_keys_tar(public_line: str) -> bytes:
    buf = io.BytesIO()
    data = (public_line + "\n").encode()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("authorized_keys")
        info.size, info.mode, info.uid, info.gid = len(data), 0o600, 0, 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure_network(client: docker.DockerClient, settings: LabSettings) -> bool:
    if client.networks.list(names=[settings.network_name], filters={"label": f"{LAB_LABEL}={settings.prefix}"}):
        return False
    ipam = docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=settings.subnet, gateway=settings.gateway)]
    )
    client.networks.create(
        settings.network_name,
        driver="bridge",
        ipam=ipam,
        labels=settings.labels,
    )
    progress(f"network {settings.network_name} ({settings.subnet}) created")
    return True


def key_fingerprint(public_line: str) -> str:
    """SHA256 of the public key's blob, as `ssh-keygen -lf` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _accepts(container, public_line: str) -> bool:
    """Whether a lab host made before the owner labels existed accepts this key (its authorized_keys holds it)."""
    try:
        result = container.exec_run(["cat", "/root/.ssh/authorized_keys"])
    except docker.errors.APIError:
        return True  # not running: nothing to tell; `up` starts it and Ansible will say
    return public_line.split()[1] in result.output.decode(errors="replace")


def find_foreign_lab(client: docker.DockerClient, settings: LabSettings, public_line: str) -> str | None:
    """A sentence naming the lab of this prefix if another checkout (another SSH key) made it, else None."""
    owner = str(REPO_ROOT)
    ours = key_fingerprint(public_line)
    selector = {"label": f"{LAB_LABEL}={settings.prefix}"}
    for container in client.containers.list(all=True, filters=selector):
        labels = container.labels or {}
        known = labels.get(KEY_LABEL)
        if (known == ours) if known else _accepts(container, public_line):
            continue
        maker = labels.get(OWNER_LABEL)
        there = f"`make down` in {maker}" if maker else "`make down` in the checkout that made it"
        return (
            f"the lab {settings.prefix!r} on this machine (hosts on {settings.subnet}) was made by "
            f"{'the checkout ' + maker if maker else 'another checkout'}: its hosts accept that checkout's SSH key, "
            f"not this one's ({settings.ssh_key}), so Ansible would be refused. Nothing was changed. Either remove "
            f"that lab ({there}), or give this checkout a lab of its own, e.g. "
            f"MODELSWARM_LAB_PREFIX={settings.prefix}-{_short(owner)} MODELSWARM_LAB_SUBNET=172.31.99.0/24 make demo"
        )
    return None


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def ensure_node(client: docker.DockerClient, settings: LabSettings, node: str, public_key: str) -> str:
    """Create or start one lab host. Returns what was done: 'created', 'started' or 'unchanged'."""
    name = settings.container_name(node)
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        container = None
    if container is not None:
        if container.status == "running":
            return "unchanged"
        container.start()
        return "started"
    volume = settings.volume_name(node)
    try:
        client.volumes.get(volume)
    except docker.errors.NotFound:
        client.volumes.create(volume, labels=settings.labels)
    api = client.api
    host_config = api.create_host_config(
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}, volume: {"bind": "/var/lib/docker"}},
        restart_policy={"Name": "no"},
        **NODE_HOST_CONFIG,
    )
    # `--security-opt systempaths=unconfined` is a CLI spelling; the API takes it as empty masked/read-only paths.
    host_config["MaskedPaths"] = []
    host_config["ReadonlyPaths"] = []
    networking = api.create_networking_config(
        {settings.network_name: api.create_endpoint_config(ipv4_address=settings.address(node))}
    )
    created = api.create_container(
        settings.node_image,
        name=name,
        hostname=node,
        detach=True,
        labels={
            **settings.labels,
            f"{LAB_LABEL}.node": node,
            OWNER_LABEL: str(REPO_ROOT),
            KEY_LABEL: key_fingerprint(public_key),
        },
        host_config=host_config,
        networking_config=networking,
    )
    api.put_archive(created["Id"], "/root/.ssh", _authorized_keys_tar(public_key))
    api.start(created["Id"])
    return "created"


def _node_of(container) -> str:
    return (container.labels or {}).get(f"{LAB_LABEL}.node", "")


def _in_a_swarm(container) -> str | None:
    """The swarm state of a running lab host's Docker ('active', 'pending', ...), or None when it is in none (or its
    Docker does not answer)."""
    if container.status != "running":
        return None
    result = container.exec_run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"])
    state = result.output.decode().strip() if result.exit_code == 0 else ""
    return state if state in ("active", "pending", "locked", "error") else None


def remove_extra_workers(client: docker.DockerClient, settings: LabSettings) -> list[str]:
    """Remove the worker hosts beyond MODELSWARM_LAB_WORKERS (the highest-numbered ones), with their volumes. A host
    still in the swarm is refused: playbooks/remove-node.yml takes it out first (or, dead, with force=true)."""
    selector = {"label": f"{LAB_LABEL}={settings.prefix}"}
    extra = [
        c for c in client.containers.list(all=True, filters=selector)
        if _node_of(c) and _node_of(c) not in settings.all_nodes
    ]  # fmt: skip
    still_members = [(_node_of(c), state) for c in extra if (state := _in_a_swarm(c))]
    if still_members:
        names = ", ".join(f"{node} ({state})" for node, state in still_members)
        first = still_members[0][0]
        raise LabError(
            f"MODELSWARM_LAB_WORKERS={settings.workers} leaves out lab hosts that are still in the swarm: {names}. "
            f"Take each out first: ansible-playbook -i inventory/lab playbooks/remove-node.yml -e node={first}; "
            "nothing was removed"
        )
    removed = []
    for container in sorted(extra, key=_node_of):
        node = _node_of(container)
        container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(settings.volume_name(node)).remove(force=True)
        removed.append(node)
        progress(f"{node}: removed ({container.name}; MODELSWARM_LAB_WORKERS={settings.workers})")
    return removed


def wait_ready(client: docker.DockerClient, settings: LabSettings) -> dict[str, float]:
    """Wait until every host's systemd has booted and sshd answers; bounded by settings.ready_timeout."""
    deadline = time.monotonic() + settings.ready_timeout
    started = time.monotonic()
    ready: dict[str, float] = {}
    while len(ready) < len(settings.all_nodes):
        for node in settings.all_nodes:
            if node in ready:
                continue
            if _systemd_up(client, settings.container_name(node)) and _ssh_banner(settings.address(node)):
                ready[node] = time.monotonic() - started
                progress(f"{node} ready ({settings.address(node)}, {ready[node]:.1f}s)")
        if len(ready) < len(settings.all_nodes):
            if time.monotonic() > deadline:
                missing = sorted(set(settings.all_nodes) - set(ready))
                raise LabError(
                    f"lab hosts {', '.join(missing)} did not boot within {settings.ready_timeout:.0f}s; "
                    f"see `docker logs {settings.container_name(missing[0])}` and `modelswarm lab status`"
                )
            time.sleep(1)
    return ready


def _systemd_up(client: docker.DockerClient, name: str) -> bool:
    try:
        result = client.containers.get(name).exec_run(["systemctl", "is-system-running"])
    except docker.errors.APIError:
        return False
    return result.output.decode().strip() in ("running", "degraded")


def _ssh_banner(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=2) as sock:
            sock.settimeout(2)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def write_inventory(settings: LabSettings, key: Path) -> bool:
    """Write the lab's Ansible inventory. Returns True if the file changed."""
    hosts = {node: {"ansible_host": settings.address(node)} for node in settings.nodes}
    workers = {node: {"ansible_host": settings.address(node)} for node in settings.worker_nodes}
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            "children": {
                "managers": {"hosts": hosts},
                "leader": {"hosts": {settings.leader: {}}},
                "workers": {"hosts": workers},
            },
        }
    }
    text = (
        "---\n# Generated by `modelswarm lab up`: the local lab hosts. Do not edit; `modelswarm lab down` removes it.\n"
        + yaml.safe_dump(inventory, sort_keys=False)
    )
    path = settings.inventory_file
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def instances(settings: LabSettings, key: Path) -> list[dict[str, object]]:
    """The manager hosts in molecule's instance-config format (a scenario's platforms are the three managers)."""
    return [
        {"instance": node, "address": settings.address(node), "user": "root", "port": 22, "identity_file": str(key)}
        for node in settings.nodes
    ]


# ------------------------------------------------------------------------------------------------------ public verbs


@contextlib.contextmanager
def build_lock(settings: LabSettings, what: str):
    """One builder at a time for what every lab instance shares (the base and node images, the SSH key, the kit
    and its bundle in the state directory): two instances brought up at once (CI builds two) wait in turn instead
    of building the same image or writing the same bundle together. The lock is released when the process ends."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.state_dir / "build.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"{what}: another lab build holds {settings.state_dir / 'build.lock'}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def up(settings: LabSettings, rebuild: bool = False) -> dict[str, object]:
    """Bring the lab up; safe to repeat: a healthy lab is left as it is (changed=False)."""
    client = connect()
    clashes = find_clashes(client, settings)
    if clashes:
        raise LabError("the lab cannot be created here:\n  - " + "\n  - ".join(clashes))
    key, public = ensure_ssh_key(settings)
    foreign = find_foreign_lab(client, settings, public)
    if foreign:
        raise LabError(foreign)
    changed = False
    changed |= ensure_base_image(client, settings)
    changed |= ensure_node_image(client, settings, rebuild=rebuild)
    changed |= ensure_network(client, settings)
    removed = remove_extra_workers(client, settings)
    changed |= bool(removed)
    actions = {node: ensure_node(client, settings, node, public) for node in settings.all_nodes}
    for node, action in actions.items():
        if action != "unchanged":
            changed = True
            progress(f"{node}: {action} ({settings.container_name(node)}, {settings.address(node)})")
    wait_ready(client, settings)
    changed |= write_inventory(settings, key)
    if not changed:
        progress("lab already up; nothing changed")
    return {
        "changed": changed,
        "nodes": actions,
        "removed": removed,
        "inventory": str(settings.inventory_file),
        "instances": instances(settings, key),
    }


def down(settings: LabSettings, purge_images: bool = False) -> dict[str, object]:
    """Remove every container, network and volume the lab made (and its images with purge_images)."""
    client = connect()
    selector = {"label": f"{LAB_LABEL}={settings.prefix}"}
    removed: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": [], "images": []}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
        removed["containers"].append(container.name)
        progress(f"removed container {container.name}")
    for net in client.networks.list(filters=selector):
        net.remove()
        removed["networks"].append(net.name)
        progress(f"removed network {net.name}")
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)
        removed["volumes"].append(volume.name)
        progress(f"removed volume {volume.name}")
    if purge_images:
        for tag in (settings.node_image, settings.base_image):
            try:
                client.images.remove(tag, force=True)
                removed["images"].append(tag)
                progress(f"removed image {tag}")
            except docker.errors.ImageNotFound:
                pass
    if settings.inventory_file.exists():
        settings.inventory_file.unlink()
    changed = any(removed.values())
    if not changed:
        progress("no lab found; nothing to remove")
    return {"changed": changed, "removed": removed}


def status(settings: LabSettings) -> dict[str, object]:
    """What exists of the lab: images, network, hosts (state, address, ssh), volumes, inventory."""
    client = connect()
    selector = {"label": f"{LAB_LABEL}={settings.prefix}"}

    def image_present(tag: str) -> bool:
        try:
            client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    nodes = {}
    for node in settings.all_nodes:
        name = settings.container_name(node)
        try:
            container = client.containers.get(name)
            state = container.status
        except docker.errors.NotFound:
            state = "absent"
        address = settings.address(node)
        nodes[node] = {
            "container": name,
            "state": state,
            "address": address,
            "ssh": state == "running" and _ssh_banner(address),
            "leader": node == settings.leader,
            "role": "worker" if node in settings.worker_nodes else "manager",
        }
    healthy = all(n["state"] == "running" and n["ssh"] for n in nodes.values())
    return {
        "healthy": healthy and settings.inventory_file.exists(),
        "images": {tag: image_present(tag) for tag in (settings.base_image, settings.node_image)},
        "network": [n.name for n in client.networks.list(filters=selector)],
        "subnet": settings.subnet,
        "vip": settings.vip_address,
        "nodes": nodes,
        "volumes": sorted(v.name for v in client.volumes.list(filters=selector)),
        "inventory": str(settings.inventory_file) if settings.inventory_file.exists() else None,
    }
