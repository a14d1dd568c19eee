"""Reaching the cluster: hosts from the Ansible inventory, the Docker API of a manager through SSH.

The Ansible inventory is the one list of hosts: `ansible-inventory --list` gives each host's address, user, port,
key and SSH options. The Docker API of a manager is reached by forwarding its socket over SSH (the same thing
`docker -H ssh://` does), so the controller needs neither Docker nor an exposed Docker port.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from modelswarm import contract
from modelswarm.tooling.progress import progress


class ClusterError(RuntimeError):
    """The cluster cannot be reached or used; the message says which host and why."""


class QuorumLost(ClusterError):
    """Managers answer, but none can reach a majority of the managers: the swarm cannot be changed."""


def _no_leader(exc: Exception) -> bool:
    return "does not have a leader" in str(exc) or "not have a valid cluster leader" in str(exc)


def _reachable_managers(nodes: list[dict]) -> tuple[int, int]:
    """(reachable, all) raft members in a manager's node list. A raft leader whose followers died keeps answering
    for a while as if it still led; its list shows them unreachable."""
    members = [node["ManagerStatus"] for node in nodes if node.get("ManagerStatus")]
    return sum(1 for m in members if m.get("Reachability") == "reachable"), len(members)


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    user: str = "root"
    port: int = 22
    key: str | None = None
    ssh_args: tuple[str, ...] = ()
    lab_profile: bool = False  # the inventory sets preflight_lab_profile: a lab host, not a real server


@dataclass(frozen=True)
class Inventory:
    hosts: dict[str, Host]
    groups: dict[str, list[str]]

    @property
    def leader(self) -> Host:
        names = self.groups.get("leader", [])
        if len(names) != 1:
            raise ClusterError(f"the inventory must put exactly one host in group 'leader' (found {names})")
        return self.hosts[names[0]]

    @property
    def managers(self) -> list[Host]:
        return [self.hosts[n] for n in self.groups.get("managers", [])]


def read_inventory(path: str | Path) -> Inventory:
    """Hosts and groups as Ansible sees them (group_vars and host_vars applied)."""
    if not Path(path).exists():
        raise ClusterError(f"the inventory {path} does not exist (give -i or set MODELSWARM_INVENTORY)")
    tool = Path(sys.executable).parent / "ansible-inventory"
    command = [str(tool) if tool.exists() else "ansible-inventory", "-i", str(path), "--list"]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "ANSIBLE_VERBOSITY": "0"}
    )
    if result.returncode != 0:
        raise ClusterError(f"cannot read the inventory {path}: {result.stderr.strip().splitlines()[-1:]}")
    data = json.loads(result.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    groups: dict[str, list[str]] = {}

    def collect(group: str) -> list[str]:
        node = data.get(group, {})
        members = list(node.get("hosts", []))
        for child in node.get("children", []):
            members += collect(child)
        return members

    for group in data:
        if group != "_meta":
            groups[group] = sorted(set(collect(group)))
    hosts = {}
    for name, values in hostvars.items():
        hosts[name] = Host(
            name=name,
            address=str(values.get("ansible_host", name)),
            user=str(values.get("ansible_user", "root")),
            port=int(values.get("ansible_port", 22)),
            # Both spellings are Ansible's; molecule writes the short one.
            key=values.get("ansible_ssh_private_key_file") or values.get("ansible_private_key_file"),
            ssh_args=tuple(shlex.split(str(values.get("ansible_ssh_common_args", "")))),
            lab_profile=str(values.get("preflight_lab_profile", False)).lower() in ("true", "yes", "1"),
        )
    return Inventory(hosts=hosts, groups=groups)


def ssh_command(host: Host, remote: str = "", options: tuple[str, ...] = (), timeout: float = 15.0) -> list[str]:
    """The ssh command line that reaches `host` as the inventory says (address, user, port, key, options), never
    prompting; `options` go before the destination, `remote` (one shell command line) after it."""
    return [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={int(timeout)}",
        "-p",
        str(host.port),
        *(["-i", host.key] if host.key else []),
        *host.ssh_args,
        *options,
        f"{host.user}@{host.address}",
        *([remote] if remote else []),
    ]


@contextlib.contextmanager
def docker_on(host: Host, timeout: float = 15.0) -> Iterator[docker.DockerClient]:
    """A Docker client for `host`'s daemon, through an SSH-forwarded socket; the tunnel ends with the block."""
    workdir = Path(tempfile.mkdtemp(prefix="modelswarm-ssh-"))
    socket_path = workdir / "docker.sock"
    command = ssh_command(
        host, options=("-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{socket_path}:/var/run/docker.sock"),
        timeout=timeout,
    )  # fmt: skip
    tunnel = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not socket_path.exists():
            if tunnel.poll() is not None:
                error = tunnel.stderr.read().decode().strip() if tunnel.stderr else ""
                raise ClusterError(f"cannot reach {host.name} ({host.address}) over SSH: {error or 'ssh exited'}")
            if time.monotonic() > deadline:
                raise ClusterError(f"SSH to {host.name} ({host.address}) did not forward Docker's socket in time")
            time.sleep(0.1)
        client = docker.DockerClient(base_url=f"unix://{socket_path}", timeout=120)
        try:
            client.ping()
            yield client
        finally:
            client.close()
    finally:
        tunnel.terminate()
        try:
            tunnel.wait(timeout=5)
        except subprocess.TimeoutExpired:
            tunnel.kill()
        with contextlib.suppress(OSError):
            socket_path.unlink()
        with contextlib.suppress(OSError):
            workdir.rmdir()


@contextlib.contextmanager
def manager(inventory: Inventory) -> Iterator[docker.DockerClient]:
    """The first manager that answers and can manage the swarm: the designated leader first, then the others."""
    candidates = [inventory.leader] + [h for h in inventory.managers if h.name != inventory.leader.name]
    failures, without_quorum = [], []
    for host in candidates:
        stack = contextlib.ExitStack()
        try:
            client = stack.enter_context(docker_on(host))
            manages = client.info().get("Swarm", {}).get("ControlAvailable")
            # Needs a raft leader: fails when the swarm has lost quorum (and a stale leader shows it by reachability).
            reachable, members = _reachable_managers(client.api.nodes()) if manages else (0, 0)
        except docker.errors.APIError as exc:
            stack.close()
            if not _no_leader(exc):
                raise
            without_quorum.append(host.name)
            failures.append(f"{host.name}: answers, but the swarm has no leader")
            progress(f"manager {host.name} answers but sees no raft leader, trying the next one")
            continue
        except (ClusterError, docker.errors.DockerException) as exc:
            stack.close()
            failures.append(f"{host.name}: {exc}")
            progress(f"manager {host.name} unavailable, trying the next one")
            continue
        if not manages:
            stack.close()
            failures.append(f"{host.name}: not a swarm manager")
            continue
        if members and reachable * 2 <= members:
            stack.close()
            without_quorum.append(host.name)
            failures.append(f"{host.name}: answers, but only {reachable} of {members} managers are reachable from it")
            progress(f"manager {host.name} reaches only {reachable} of {members} managers, trying the next one")
            continue
        # Only connection failures move on to the next manager; errors of the caller's work propagate.
        with stack:
            yield client
        return
    if without_quorum:
        raise QuorumLost(
            f"the swarm has lost quorum: {len(without_quorum)} of {len(candidates)} managers answer "
            f"({', '.join(without_quorum)}) and none of them has a raft leader, so nothing can be deployed or changed. "
            "Running models keep serving on the nodes that are up. Bring the other managers back, or recover from a "
            "survivor: ansible-playbook -i <inventory> playbooks/recover-quorum.yml -e recover_survivor=<host> "
            f"(details: {'; '.join(failures)})"
        )
    raise ClusterError("no swarm manager answered: " + "; ".join(failures))


@dataclass(frozen=True)
class DeployFacts:
    """What a deploy needs to know about this cluster, as its platform published it at converge."""

    registry: str  # host:port of the cluster registry, trusted by every node's Docker
    models_network: str  # the overlay network model services join
    endpoint_mode: str  # dnsrr (no IPVS) or vip
    runtime_image: str  # the Python base of model images, by digest, in the cluster registry
    ca_certificate: str = ""  # PEM of the cluster CA (the registry's and NGINX's certificates chain to it)

    FIELDS = ("registry", "models_network", "endpoint_mode", "runtime_image")


def parse_deploy_facts(encoded: str) -> DeployFacts:
    """The published config's data (base64 JSON, as the Docker API returns it) -> DeployFacts; ClusterError names
    what is wrong with it."""
    try:
        data = json.loads(base64.b64decode(encoded))
    except (binascii.Error, ValueError) as exc:
        raise ClusterError(f"the swarm config {contract.DEPLOY_FACTS_CONFIG} is not JSON: {exc}") from exc
    missing = [key for key in DeployFacts.FIELDS if not isinstance(data, dict) or not data.get(key)]
    if missing:
        raise ClusterError(
            f"the swarm config {contract.DEPLOY_FACTS_CONFIG} lacks {', '.join(missing)}: "
            "run playbooks/site.yml again (the platform role writes it)"
        )
    return DeployFacts(**{key: data[key] for key in DeployFacts.FIELDS}, ca_certificate=data.get("ca_certificate", ""))


def deploy_facts(client: docker.DockerClient) -> DeployFacts:
    """Read the deploy facts the platform published into the swarm (a swarm config) through a manager."""
    # The API's name filter matches prefixes: keep the exact name only.
    listed = client.configs.list(filters={"name": contract.DEPLOY_FACTS_CONFIG})
    found = [c for c in listed if c.name == contract.DEPLOY_FACTS_CONFIG]
    if not found:
        raise ClusterError(
            f"this swarm has no {contract.DEPLOY_FACTS_CONFIG} config: the platform is not deployed yet, or was "
            "deployed by an older modelswarm. Run playbooks/site.yml (the platform role publishes the registry, the "
            "models network and the runtime image there)"
        )
    return parse_deploy_facts(found[0].attrs["Spec"]["Data"])
