"""CIS Docker Benchmark v1.6, sections 5 (container runtime) and 7 (Docker swarm configuration), on a cluster node.

Each check mirrors what docker-bench-security (github.com/docker/docker-bench-security, tests/5_container_runtime.sh
and tests/7_docker_swarm_configuration.sh, the script written for v1.6.0) inspects and when it warns; where this
tool reads something differently, the check's docstring says how and why. Check 4.1 (a user for the container) is
added because it too is a property of the running containers.

The checks are pure functions of a `Snapshot`: the Docker API's inspect data of one node (`docker info`, the running
containers, and on a manager the nodes, services, networks and secrets' metadata), the process list of each
container (`docker top`: ps run by dockerd on the host, nothing runs inside the container), and two things only
the host can tell, read with one SSH command that changes nothing: the `NoNewPrivs` line of each container's main
process (`/proc/<State.Pid>/status`, world-readable) and the host's listening TCP sockets (`/proc/net/tcp{,6}`).

A warning is excused by docs/cis-exceptions.yml (check id, the services or networks it covers, the conditions under
which it holds, the reason, and whether it is `accepted` or `to-fix`). The exit code is 0 when every warning is
excused, 1 when one is not, 2 when the checks could not run.

    python -m modelswarm.tooling.cis -i inventory/lab [--node node1|all] [--json] [--strict]
    python -m modelswarm.tooling.cis --write-docs     # the exceptions table in docs/security.md
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EXCEPTIONS_FILE = REPO / "docs" / "cis-exceptions.yml"
SECURITY_DOC = REPO / "docs" / "security.md"
DOC_BEGIN = (
    "<!-- cis-exceptions: generated from docs/cis-exceptions.yml by python -m modelswarm.tooling.cis --write-docs -->"
)
DOC_END = "<!-- cis-exceptions: end -->"

PASS, WARN, INFO, NOTE = "PASS", "WARN", "INFO", "NOTE"
ACCEPTED, TO_FIX = "accepted", "to-fix"
# Conditions an exception may require (all of them): see `conditions`.
CONDITIONS = {
    "lab": "the inventory is the lab's (preflight_lab_profile: true)",
    "no-apparmor": "the Docker daemon reports no AppArmor (docker info: SecurityOptions)",
}
SERVICE_LABEL = "com.docker.swarm.service.name"
SERVICE_ID_LABEL = "com.docker.swarm.service.id"
EXIT_OK, EXIT_WARN, EXIT_ERROR = 0, 1, 2


# ------------------------------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class Snapshot:
    """What the checks read, as the Docker API (and the host) gave it."""

    info: dict
    containers: list[dict]  # inspect of each running container (`docker ps` + `docker inspect`)
    networks: list[dict] = field(default_factory=list)
    services: list[dict] = field(default_factory=list)
    nodes: list[dict] | None = None  # None: this node is not a manager
    secrets: list[dict] | None = None  # metadata only (the API never returns a secret's value)
    processes: dict[str, list[str] | None] = field(default_factory=dict)  # container id -> ps lines; None: unreadable
    no_new_privs: dict[str, bool | None] = field(default_factory=dict)  # container id -> NoNewPrivs; None: unread
    listeners: list[tuple[str, int]] | None = None  # the host's listening TCP sockets; None: not read
    host_error: str = ""  # why the host could not be read, if it could not


@dataclass(frozen=True)
class Offender:
    """What makes a check warn: a container (named by its swarm service when it is a task) or a network."""

    subject: str  # the service, or the container when it belongs to none, or the network
    kind: str = "container"  # container | network
    container: str = ""
    detail: str = ""

    def label(self) -> str:
        return f"{self.subject} ({self.detail})" if self.detail else self.subject


@dataclass(frozen=True)
class Result:
    id: str
    title: str
    level: str
    offenders: tuple[Offender, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    run: Callable[[Snapshot], Result]

    @property
    def section(self) -> str:
        return self.id.split(".")[0]


CHECKS: dict[str, Check] = {}


def check(check_id: str, title: str) -> Callable:
    """Register a check: a pure function Snapshot -> (level, offenders, note) becomes CHECKS[check_id]."""

    def register(function: Callable[[Snapshot], tuple]) -> Callable[[Snapshot], tuple]:
        def run(snapshot: Snapshot) -> Result:
            level, offenders, note = function(snapshot)
            return Result(check_id, title, level, tuple(offenders), note)

        CHECKS[check_id] = Check(check_id, title, run)
        return function

    return register


Finding = Callable[[dict, Snapshot], "str | None"]


def container_check(check_id: str, title: str, level: str = WARN) -> Callable[[Finding], Finding]:
    """Register the most common shape of section 5: a pure function of one running container (and the snapshot)
    that returns what is wrong with it, or None. Any container with a finding makes the check give `level`.
    docker-bench skips these checks when no container runs: here they pass, with a note."""

    def register(finding: Finding) -> Finding:
        def every_container(snapshot: Snapshot) -> tuple:
            if not snapshot.containers:
                return PASS, [], "no running containers"
            offenders = [
                Offender(subject_of(container), container=_name(container), detail=detail)
                for container in snapshot.containers
                if (detail := finding(container, snapshot)) is not None
            ]
            return (level if offenders else PASS), offenders, ""

        check(check_id, title)(every_container)
        return finding

    return register


def swarm_check(check_id: str, title: str) -> Callable:
    """Register a section 7 check: without swarm mode it passes ("Swarm mode not enabled"), as in docker-bench."""

    def register(function: Callable[[Snapshot], tuple]) -> Callable[[Snapshot], tuple]:
        check(check_id, title)(
            lambda snapshot: function(snapshot) if _swarm_active(snapshot) else (PASS, [], "swarm mode not enabled")
        )
        return function

    return register


# -------------------------------------------------------------------------------------------- shared readers
def _name(container: dict) -> str:
    return container.get("Name", "").lstrip("/") or container.get("Id", "")[:12]


def subject_of(container: dict) -> str:
    """The swarm service a container is a task of, else the container's own name."""
    return (container.get("Config", {}).get("Labels") or {}).get(SERVICE_LABEL) or _name(container)


def _hc(container: dict) -> dict:
    return container.get("HostConfig") or {}


def _security_opts(container: dict) -> list[str]:
    return list(_hc(container).get("SecurityOpt") or [])


def _host_ports(container: dict, addresses: Iterable[str] | None = None) -> list[int]:
    """The host ports a container publishes (as `docker port` lists them), only those bound to `addresses` if
    given."""
    ports = (container.get("NetworkSettings") or {}).get("Ports") or {}
    return sorted(
        {
            int(binding["HostPort"])
            for bound in ports.values()
            for binding in bound or []
            if str(binding.get("HostPort", "")).isdigit()
            and (addresses is None or binding.get("HostIp", "") in addresses)
        }
    )


def _ports_text(ports: list[int]) -> str | None:
    return "host port " + ",".join(map(str, ports)) if ports else None


def _swarm_active(snapshot: Snapshot) -> bool:
    return (snapshot.info.get("Swarm") or {}).get("LocalNodeState") == "active"


def _cluster_spec(snapshot: Snapshot) -> dict:
    return ((snapshot.info.get("Swarm") or {}).get("Cluster") or {}).get("Spec") or {}


# --------------------------------------------------------------------------------------- 4.1 (on containers)
@container_check("4.1", "Ensure that a user for the container has been created (Automated)")
def root_user(container: dict, _: Snapshot) -> str | None:
    """Config.User empty, 0 or root. docker-bench compares the whole value; here the user part before ':' counts,
    so '0:0' and 'root:root' warn too."""
    user = str((container.get("Config") or {}).get("User") or "").split(":")[0]
    return "runs as root" if user in ("", "0", "root") else None


# ------------------------------------------------------------------------------------- 5 container runtime
@check("5.1", "Ensure swarm mode is not Enabled, if not needed (Automated)")
def swarm_mode(snapshot: Snapshot) -> tuple:
    """PASS only when `docker info` says Swarm: inactive."""
    state = (snapshot.info.get("Swarm") or {}).get("LocalNodeState", "inactive")
    return (PASS, [], "") if state == "inactive" else (WARN, [], f"swarm: {state}")


@container_check("5.2", "Ensure that, if applicable, an AppArmor Profile is enabled (Automated)")
def no_apparmor(container: dict, _: Snapshot) -> str | None:
    """AppArmorProfile empty or unconfined."""
    return "no AppArmor profile" if container.get("AppArmorProfile", "") in ("", "unconfined") else None


@container_check("5.3", "Ensure that, if applicable, SELinux security options are set (Automated)")
def no_security_options(container: dict, _: Snapshot) -> str | None:
    """HostConfig.SecurityOpt empty (docker-bench looks for any security option, not for SELinux labels)."""
    return None if _security_opts(container) else "no security options"


_DEFAULTS = "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE NET_RAW SETFCAP SETGID SETPCAP"
DEFAULT_CAPABILITIES = frozenset([*_DEFAULTS.split(), "SETUID", "SYS_CHROOT"])  # Docker's default set


@container_check("5.4", "Ensure that Linux kernel capabilities are restricted within containers (Automated)")
def added_capabilities(container: dict, _: Snapshot) -> str | None:
    """HostConfig.CapAdd holds a capability beyond Docker's default set (dropping is not checked)."""
    caps = [str(c).upper().removeprefix("CAP_") for c in _hc(container).get("CapAdd") or []]
    extra = [c for c in caps if c not in DEFAULT_CAPABILITIES]
    return "adds " + ",".join(extra) if extra else None


@container_check("5.5", "Ensure that privileged containers are not used (Automated)")
def privileged(container: dict, _: Snapshot) -> str | None:
    return "privileged" if _hc(container).get("Privileged") else None


SENSITIVE_DIRECTORIES = ("/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr")


@container_check("5.6", "Ensure sensitive host system directories are not mounted on containers (Automated)")
def sensitive_mounts(container: dict, _: Snapshot) -> str | None:
    """A read-write mount whose source or destination is one of the sensitive directories itself."""
    found = sorted(
        {
            path
            for mount in container.get("Mounts") or []
            if mount.get("RW")
            for path in (mount.get("Source"), mount.get("Destination"))
            if path in SENSITIVE_DIRECTORIES
        }
    )
    return "mounts " + ",".join(found) + " read-write" if found else None


@container_check("5.7", "Ensure sshd is not run within containers (Automated)")
def sshd(container: dict, snapshot: Snapshot) -> str | None:
    """An sshd process in the container. docker-bench runs `ps -el` inside each container (docker exec); here
    the process list comes from `docker top` (ps on the host), which needs nothing in the image and runs nothing in
    the container. A container whose processes cannot be listed warns, as a failing exec does there."""
    lines = snapshot.processes.get(container.get("Id", ""))
    if lines is None:
        return "process list unreadable"
    return "runs sshd" if any("sshd" in line for line in lines) else None


@container_check("5.8", "Ensure privileged ports are not mapped within containers (Automated)")
def privileged_ports(container: dict, _: Snapshot) -> str | None:
    """A host port below 1025."""
    return _ports_text([p for p in _host_ports(container) if p < 1025])


@container_check("5.9", "Ensure that only needed ports are open on the container (Manual)")
def open_ports(container: dict, _: Snapshot) -> str | None:
    """Any published port (docker-bench warns on each; which are needed is for the exceptions to say)."""
    return _ports_text(_host_ports(container))


def _host_namespace(key: str, what: str) -> Finding:
    return lambda container, _: f"host {what} namespace" if _hc(container).get(key) == "host" else None


container_check("5.10", "Ensure that the host's network namespace is not shared (Automated)")(
    _host_namespace("NetworkMode", "network")
)


@container_check("5.11", "Ensure that the memory usage for containers is limited (Automated)")
def no_memory_limit(container: dict, _: Snapshot) -> str | None:
    """HostConfig.Memory is 0 (a swarm service's memory limit lands there)."""
    return None if _hc(container).get("Memory") else "no memory limit"


@container_check("5.12", "Ensure that CPU priority is set appropriately on containers (Automated)")
def no_cpu_limit(container: dict, _: Snapshot) -> str | None:
    """Neither CpuShares nor NanoCpus set."""
    return None if _hc(container).get("CpuShares") or _hc(container).get("NanoCpus") else "no CPU limit or shares"


@container_check("5.13", "Ensure that the container's root filesystem is mounted as read only (Automated)")
def writable_root(container: dict, _: Snapshot) -> str | None:
    return None if _hc(container).get("ReadonlyRootfs") else "root filesystem writable"


WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")  # noqa: S104 - compared with, never bound


@container_check("5.14", "Ensure that incoming container traffic is bound to a specific host interface (Automated)")
def unbound_ports(container: dict, _: Snapshot) -> str | None:
    """A published port bound to the wildcard address: 0.0.0.0 as in docker-bench, and also :: (IPv6)."""
    ports = _host_ports(container, WILDCARD_ADDRESSES)
    return "all interfaces, port " + ",".join(map(str, ports)) if ports else None


@container_check("5.15", "Ensure that the 'on-failure' container restart policy is set to '5' (Automated)")
def restart_attempts(container: dict, snapshot: Snapshot) -> str | None:
    """More than 5 restart attempts: the container's RestartPolicy.MaximumRetryCount (what docker-bench ends up
    reading) or its swarm service's RestartPolicy.MaxAttempts (what it means to read). 0, unlimited, passes in
    both, as in docker-bench."""
    service_id = (container.get("Config", {}).get("Labels") or {}).get(SERVICE_ID_LABEL)
    services = [s for s in snapshot.services if s.get("ID") == service_id]
    policies = [((s.get("Spec") or {}).get("TaskTemplate") or {}).get("RestartPolicy") or {} for s in services]
    attempts = [int(p.get("MaxAttempts") or 0) for p in policies]
    attempts.append(int((_hc(container).get("RestartPolicy") or {}).get("MaximumRetryCount") or 0))
    return f"{max(attempts)} restart attempts" if max(attempts) > 5 else None


container_check("5.16", "Ensure that the host's process namespace is not shared (Automated)")(
    _host_namespace("PidMode", "PID")
)
container_check("5.17", "Ensure that the host's IPC namespace is not shared (Automated)")(
    _host_namespace("IpcMode", "IPC")
)


@container_check("5.18", "Ensure that host devices are not directly exposed to containers (Manual)", level=INFO)
def devices(container: dict, _: Snapshot) -> str | None:
    """HostConfig.Devices not empty: INFO, as in docker-bench."""
    exposed = [str(d.get("PathOnHost", "?")) for d in _hc(container).get("Devices") or []]
    return "devices " + ",".join(exposed) if exposed else None


@container_check("5.19", "Ensure that the default ulimit is overwritten at runtime if needed (Manual)", level=INFO)
def default_ulimits(container: dict, _: Snapshot) -> str | None:
    """No ulimit set on the container: INFO, as in docker-bench (the daemon's defaults apply)."""
    return None if _hc(container).get("Ulimits") else "daemon default ulimits"


@container_check("5.20", "Ensure mount propagation mode is not set to shared (Automated)")
def shared_propagation(container: dict, _: Snapshot) -> str | None:
    """A mount whose propagation is shared or rshared."""
    found = [
        str(m.get("Destination")) for m in container.get("Mounts") or [] if "shared" in (m.get("Propagation") or "")
    ]
    return "shared propagation " + ",".join(found) if found else None


container_check("5.21", "Ensure that the host's UTS namespace is not shared (Automated)")(
    _host_namespace("UTSMode", "UTS")
)


@container_check("5.22", "Ensure the default seccomp profile is not Disabled (Automated)")
def seccomp_unconfined(container: dict, _: Snapshot) -> str | None:
    unconfined = any(o.replace("=", ":") == "seccomp:unconfined" for o in _security_opts(container))
    return "seccomp unconfined" if unconfined else None


def practice(check_id: str, title: str, level: str, note: str, swarm: bool = False) -> None:
    """Register a check docker-bench only reports, as NOTE or INFO: a practice the inspect data cannot show."""
    (swarm_check if swarm else check)(check_id, title)(lambda _: (level, [], note))


EXEC_NOTE = "a practice: what people run with docker exec is not in the inspect data"
practice(
    "5.23", "Ensure that docker exec commands are not used with the privileged option (Automated)", NOTE, EXEC_NOTE
)
practice("5.24", "Ensure that docker exec commands are not used with the user=root option (Manual)", NOTE, EXEC_NOTE)


@container_check("5.25", "Ensure that cgroup usage is confirmed (Automated)")
def cgroup_parent(container: dict, _: Snapshot) -> str | None:
    """HostConfig.CgroupParent set."""
    parent = _hc(container).get("CgroupParent")
    return f"cgroup parent {parent}" if parent else None


def _declares_no_new_privileges(container: dict) -> bool:
    for option in _security_opts(container):
        name, _, value = option.replace("=", ":").partition(":")
        if name == "no-new-privileges" and value.lower() in ("", "true"):
            return True
    return False


@container_check("5.26", "Ensure that the container is restricted from acquiring additional privileges (Automated)")
def new_privileges(container: dict, snapshot: Snapshot) -> str | None:
    """Passes for a container that declares no-new-privileges in HostConfig.SecurityOpt, or whose main process has
    `NoNewPrivs: 1` in /proc/<State.Pid>/status on the host. The process status is the effective state: it also
    shows dockerd's daemon-wide `no-new-privileges` setting, which docker-bench reads from dockerd's command line
    or daemon.json instead, and which Docker 20.10's service specs cannot set per service. The status is read on the
    host over SSH (a world-readable file), not with an exec into the container: nothing runs inside the container,
    and images without `cat` or a shell are read the same way."""
    if _declares_no_new_privileges(container):
        return None
    state = snapshot.no_new_privs.get(container.get("Id", ""))
    if state:
        return None
    return "NoNewPrivs: 0" if state is False else "no-new-privileges not declared, process status unread"


@container_check("5.27", "Ensure that container health is checked at runtime (Automated)")
def no_health_check(container: dict, _: Snapshot) -> str | None:
    """No State.Health: the container has no health check."""
    return None if (container.get("State") or {}).get("Health") else "no health check"


practice(
    "5.28",
    "Ensure that Docker commands always make use of the latest version of their image (Manual)",
    INFO,
    "a practice: the deploys pin image digests",
)


@container_check("5.29", "Ensure that the PIDs cgroup limit is used (Automated)")
def no_pids_limit(container: dict, _: Snapshot) -> str | None:
    """HostConfig.PidsLimit unset, 0 or -1."""
    return "no PIDs limit" if _hc(container).get("PidsLimit") in (None, 0, -1) else None


@container_check("5.30", "Ensure that Docker's default bridge 'docker0' is not used (Manual)", level=INFO)
def on_docker0(container: dict, snapshot: Snapshot) -> str | None:
    """A container attached to the network whose bridge is docker0: INFO, as in docker-bench."""
    docker0 = {
        n.get("Id")
        for n in snapshot.networks
        if (n.get("Options") or {}).get("com.docker.network.bridge.name") == "docker0"
    }
    attached = ((container.get("NetworkSettings") or {}).get("Networks") or {}).values()
    return "on docker0" if any(a.get("NetworkID") in docker0 for a in attached) else None


@container_check("5.31", "Ensure that the host's user namespaces are not shared (Automated)")
def host_userns(container: dict, _: Snapshot) -> str | None:
    return "host user namespace" if "host" in str(_hc(container).get("UsernsMode") or "").lower() else None


@container_check("5.32", "Ensure that the Docker socket is not mounted inside any containers (Automated)")
def docker_socket(container: dict, _: Snapshot) -> str | None:
    """A mount whose source, destination or name holds `docker.sock`."""
    found = [
        str(m.get("Destination"))
        for m in container.get("Mounts") or []
        if any("docker.sock" in str(m.get(key) or "") for key in ("Source", "Destination", "Name"))
    ]
    return "mounts " + ",".join(found) if found else None


# ---------------------------------------------------------------------------------------------- 7 swarm
@swarm_check("7.1", "Ensure that the minimum number of manager nodes have been created in a swarm (Automated)")
def one_leader(snapshot: Snapshot) -> tuple:
    """Exactly one node is Leader (what docker-bench counts); the number of managers is shown."""
    if snapshot.nodes is None:
        return INFO, [], "not a manager: the nodes cannot be listed here"
    leaders = [n for n in snapshot.nodes if (n.get("ManagerStatus") or {}).get("Leader")]
    managers = [n for n in snapshot.nodes if n.get("ManagerStatus")]
    return (PASS if len(leaders) == 1 else WARN), [], f"{len(managers)} managers, {len(leaders)} leader"


def swarm_port(info: dict) -> int:
    """The port this node's swarm listens on (from its own manager address), 2377 when unknown."""
    swarm = info.get("Swarm") or {}
    for manager in swarm.get("RemoteManagers") or []:
        if manager.get("NodeID") == swarm.get("NodeID") and ":" in str(manager.get("Addr", "")):
            return int(str(manager["Addr"]).rsplit(":", 1)[1])
    return 2377


@swarm_check("7.2", "Ensure that swarm services are bound to a specific host interface (Automated)")
def swarm_listens_everywhere(snapshot: Snapshot) -> tuple:
    """The swarm management port listens on the wildcard address (docker-bench: netstat -lnt, port 2377; here the
    host's /proc/net/tcp{,6} and this node's own manager port)."""
    port = swarm_port(snapshot.info)
    if snapshot.listeners is None:
        return WARN, [], f"the host's listening sockets were not read ({snapshot.host_error or 'no host data'})"
    wildcard = sorted({a for a, p in snapshot.listeners if p == port and a in WILDCARD_ADDRESSES})
    if wildcard:
        return WARN, [], f"port {port} listens on all interfaces ({', '.join(wildcard)})"
    return PASS, [], ""


@check("7.3", "Ensure that all Docker swarm overlay networks are encrypted (Automated)")
def unencrypted_overlays(snapshot: Snapshot) -> tuple:
    """Every overlay network (ingress included) without the `encrypted` option."""
    offenders = [
        Offender(n.get("Name", "?"), kind="network", detail="not encrypted")
        for n in snapshot.networks
        if n.get("Driver") == "overlay" and "encrypted" not in (n.get("Options") or {})
    ]
    return (WARN if offenders else PASS), offenders, ""


@swarm_check(
    "7.4", "Ensure that Docker's secret management commands are used for managing secrets in a swarm cluster (Manual)"
)
def swarm_secrets(snapshot: Snapshot) -> tuple:
    """At least one swarm secret: PASS; none: INFO."""
    if snapshot.secrets is None:
        return INFO, [], "not a manager: the secrets cannot be listed here"
    return (PASS if snapshot.secrets else INFO), [], f"{len(snapshot.secrets)} swarm secrets"


@swarm_check("7.5", "Ensure that swarm manager is run in auto-lock mode (Automated)")
def autolock(snapshot: Snapshot) -> tuple:
    """The cluster spec's EncryptionConfig.AutoLockManagers (from `docker info`). docker-bench asks for the unlock
    key and greps it; the spec says the same without fetching the key."""
    locked = (_cluster_spec(snapshot).get("EncryptionConfig") or {}).get("AutoLockManagers")
    return (PASS, [], "") if locked else (WARN, [], "autolock off")


practice(
    "7.6",
    "Ensure that the swarm manager auto-lock key is rotated periodically (Manual)",
    NOTE,
    "a practice: rotate with docker swarm unlock-key --rotate",
    swarm=True,
)


NODE_CERT_EXPIRY_PASS = 48 * 3600 * 10**9  # docker-bench passes "Expiry Duration: 2 days" only


@swarm_check("7.7", "Ensure that node certificates are rotated as appropriate (Manual)")
def node_cert_expiry(snapshot: Snapshot) -> tuple:
    expiry = (_cluster_spec(snapshot).get("CAConfig") or {}).get("NodeCertExpiry")
    if expiry == NODE_CERT_EXPIRY_PASS:
        return PASS, [], "node certificates expire after 2 days"
    return INFO, [], f"node certificates expire after {expiry / 86400e9:g} days" if expiry else "expiry unknown"


practice(
    "7.8",
    "Ensure that CA certificates are rotated as appropriate (Manual)",
    INFO,
    "a practice: rotate with docker swarm ca --rotate",
    swarm=True,
)
practice(
    "7.9",
    "Ensure that management plane traffic is separated from data plane traffic (Manual)",
    INFO,
    "a practice: --data-path-addr on a second interface",
    swarm=True,
)


def run_checks(snapshot: Snapshot) -> list[Result]:
    return [c.run(snapshot) for c in CHECKS.values()]


# ---------------------------------------------------------------------------------------------- exceptions
class ExceptionsError(ValueError):
    """The exceptions file is not what this tool reads; the message says where."""


@dataclass(frozen=True)
class Exemption:
    id: str
    status: str
    reason: str
    services: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    when: tuple[str, ...] = ()

    def applies(self, conditions: set[str]) -> bool:
        return set(self.when) <= conditions

    def covers(self, offender: Offender) -> bool:
        patterns = self.networks if offender.kind == "network" else self.services
        if not self.services and not self.networks:
            return True
        return any(fnmatch.fnmatchcase(offender.subject, p) for p in patterns)

    def scope(self) -> str:
        covered = [*self.services, *self.networks]
        return ", ".join(covered) if covered else "the whole check"


_EXCEPTION_KEYS = {"id", "status", "reason", "services", "networks", "when"}


def parse_exceptions(data: object, source: str = "the exceptions file") -> list[Exemption]:
    """The `exceptions:` list of the file's YAML, checked: known check ids, a status, a reason, known conditions."""
    entries = data.get("exceptions") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ExceptionsError(f"{source}: a mapping with a list `exceptions:` is expected")
    parsed = []
    for number, entry in enumerate(entries, 1):
        where = f"{source}, exception {number}"
        if not isinstance(entry, dict):
            raise ExceptionsError(f"{where}: a mapping is expected")
        unknown = set(entry) - _EXCEPTION_KEYS
        if unknown:
            raise ExceptionsError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_EXCEPTION_KEYS)})")
        check_id = str(entry.get("id", ""))
        if check_id not in CHECKS:
            raise ExceptionsError(f"{where}: id {check_id!r} is not a check of this tool ({', '.join(CHECKS)})")
        if entry.get("status") not in (ACCEPTED, TO_FIX):
            raise ExceptionsError(f"{where} ({check_id}): status must be {ACCEPTED} or {TO_FIX}")
        if not str(entry.get("reason") or "").strip():
            raise ExceptionsError(f"{where} ({check_id}): a reason is required")
        lists = {}
        for key in ("services", "networks", "when"):
            value = entry.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ExceptionsError(f"{where} ({check_id}): {key} must be a list of names")
            lists[key] = tuple(value)
        bad = set(lists["when"]) - set(CONDITIONS)
        if bad:
            raise ExceptionsError(
                f"{where} ({check_id}): unknown conditions {sorted(bad)} (known: {sorted(CONDITIONS)})"
            )
        parsed.append(Exemption(check_id, entry["status"], " ".join(str(entry["reason"]).split()), **lists))
    return parsed


def load_exceptions(path: Path) -> list[Exemption]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExceptionsError(f"cannot read the exceptions file {path}: {exc}") from exc
    return parse_exceptions(data, str(path))


def conditions(snapshot: Snapshot, lab: bool) -> set[str]:
    """The conditions of CONDITIONS that hold on this node."""
    held = {"lab"} if lab else set()
    if not any("name=apparmor" in str(o) for o in snapshot.info.get("SecurityOptions") or []):
        held.add("no-apparmor")
    return held


@dataclass(frozen=True)
class Assessed:
    """A result with its exceptions applied: `outcome` is PASS, INFO, NOTE, WARN (something is not excused), or
    `excused` (every offender, or the whole check, is covered by `excused_by`)."""

    result: Result
    outcome: str
    excused_by: tuple[Exemption, ...] = ()
    unexcused: tuple[Offender, ...] = ()


def assess(results: list[Result], exceptions: list[Exemption], held: set[str], strict: bool = False) -> list[Assessed]:
    """Apply the exceptions that hold here (`strict`: only the accepted ones) to the warnings."""
    usable = [e for e in exceptions if e.applies(held) and not (strict and e.status == TO_FIX)]
    assessed = []
    for result in results:
        if result.level != WARN:
            assessed.append(Assessed(result, result.level))
            continue
        mine = [e for e in usable if e.id == result.id]
        if not result.offenders:
            whole = [e for e in mine if not e.services and not e.networks]
            assessed.append(Assessed(result, "excused", tuple(whole)) if whole else Assessed(result, WARN))
            continue
        used: list[Exemption] = []
        unexcused = []
        for offender in result.offenders:
            covering = [e for e in mine if e.covers(offender)]
            used += [e for e in covering if e not in used]
            if not covering:
                unexcused.append(offender)
        outcome = WARN if unexcused else "excused"
        assessed.append(Assessed(result, outcome, tuple(used), tuple(unexcused)))
    return assessed


def unused_exceptions(assessed: list[Assessed], exceptions: list[Exemption], held: set[str]) -> list[Exemption]:
    """Exceptions that hold here but excused nothing: fixed, or covering what does not run on this node."""
    used = {e for a in assessed for e in a.excused_by}
    return [e for e in exceptions if e.applies(held) and e not in used]


# ----------------------------------------------------------------------------------------- reading a node
def host_probe_script(pids: Iterable[int]) -> str:
    """One read-only shell command: NoNewPrivs of each pid, then the listening sockets' tables."""
    listed = " ".join(str(int(p)) for p in pids)
    return (
        f"for p in {listed}; do "
        "printf 'pid %s %s\\n' \"$p\" \"$(grep -s '^NoNewPrivs:' /proc/$p/status | tr -dc 0-9)\"; done; "
        "echo '--- tcp'; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null"
    )


def _hex_address(text: str) -> str:
    """/proc/net/tcp's address: 8 hex digits (IPv4) or 32 (IPv6), in 32-bit words of host (little-endian) order."""
    raw = bytes.fromhex(text)
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(ordered))


def parse_host_probe(output: str) -> tuple[dict[int, bool | None], list[tuple[str, int]]]:
    """(pid -> NoNewPrivs, listening (address, port)) from `host_probe_script`'s output."""
    statuses: dict[int, bool | None] = {}
    listeners: list[tuple[str, int]] = []
    head, _, tcp = output.partition("--- tcp")
    for line in head.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "pid" and parts[1].isdigit():
            statuses[int(parts[1])] = (parts[2] == "1") if len(parts) > 2 else None
    for line in tcp.splitlines():
        parts = line.split()
        if len(parts) < 4 or ":" not in parts[1] or parts[3] != "0A":  # 0A: LISTEN
            continue
        address, port = parts[1].rsplit(":", 1)
        try:
            listeners.append((_hex_address(address), int(port, 16)))
        except ValueError:
            continue
    return statuses, listeners


def probe_host(host, pids: list[int], timeout: float = 30.0) -> tuple[dict[int, bool | None], list, str]:
    """Run the probe over SSH on `host`; (statuses, listeners, error) with error "" when it worked."""
    from modelswarm import cluster

    command = cluster.ssh_command(host, host_probe_script(pids), timeout=timeout)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 15, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, [], f"ssh to {host.name}: {exc}"
    if "--- tcp" not in done.stdout:
        return {}, [], f"ssh to {host.name} exited {done.returncode}: {done.stderr.strip()[-300:]}"
    statuses, listeners = parse_host_probe(done.stdout)
    return statuses, listeners, ""


def _running(api, container_id: str) -> dict | None:
    """The container's inspect data, or None when it stopped or went away while the node was being read."""
    import docker.errors

    try:
        attrs = api.inspect_container(container_id)
    except docker.errors.NotFound:
        return None
    return attrs if (attrs.get("State") or {}).get("Running") else None


def _processes(api, container_id: str) -> list[str] | None:
    import docker.errors

    try:
        return [" ".join(map(str, row)) for row in api.top(container_id).get("Processes") or []]
    except docker.errors.APIError:
        return None


def collect(client, host=None) -> Snapshot:
    """Everything the checks read, from one node's Docker API (`client`) and, when `host` is given, its host.
    A container that stops while it is being read is left out, as if it had stopped before."""
    api = client.api
    info = client.info()
    containers = [a for a in (_running(api, c["Id"]) for c in api.containers()) if a]
    processes = {c["Id"]: _processes(api, c["Id"]) for c in containers}
    manager = bool((info.get("Swarm") or {}).get("ControlAvailable"))
    snapshot = Snapshot(
        info=info,
        containers=containers,
        networks=api.networks(),
        services=api.services() if manager else [],
        nodes=api.nodes() if manager else None,
        secrets=api.secrets() if manager else None,
        processes=processes,
    )
    if host is None:
        return dataclasses.replace(snapshot, host_error="the host was not read")
    pids = {c["Id"]: int((c.get("State") or {}).get("Pid") or 0) for c in containers}
    statuses, listeners, error = probe_host(host, [p for p in pids.values() if p])
    if error:
        return dataclasses.replace(snapshot, host_error=error)
    unread = {cid for cid, pid in pids.items() if statuses.get(pid) is None or processes[cid] is None}
    gone = {cid for cid in unread if _running(api, cid) is None}
    return dataclasses.replace(
        snapshot,
        containers=[c for c in containers if c["Id"] not in gone],
        processes={cid: lines for cid, lines in processes.items() if cid not in gone},
        no_new_privs={cid: statuses.get(pid) for cid, pid in pids.items() if cid not in gone},
        listeners=listeners,
    )


def _without_values(env: list | None) -> list[str]:
    return [f"{str(item).partition('=')[0]}=<removed>" for item in env or []]


def _service_summary(service: dict) -> dict:
    task = (service.get("Spec") or {}).get("TaskTemplate") or {}
    spec = {"Name": service.get("Spec", {}).get("Name"), "TaskTemplate": {"RestartPolicy": task.get("RestartPolicy")}}
    return {"ID": service.get("ID"), "Spec": spec}


def _node_summary(node: dict) -> dict:
    return {
        "ID": node.get("ID"),
        "Spec": {"Role": (node.get("Spec") or {}).get("Role")},
        "ManagerStatus": node.get("ManagerStatus"),
        "Description": {"Hostname": (node.get("Description") or {}).get("Hostname")},
    }


def snapshot_to_json(snapshot: Snapshot) -> dict:
    """A snapshot as JSON, without what could be secret: environment values (names kept), swarm TLS material, and of
    services and nodes only what the checks read."""
    data = json.loads(json.dumps(dataclasses.asdict(snapshot), default=str))
    for container in data["containers"]:
        config = container.get("Config") or {}
        config["Env"] = _without_values(config.get("Env"))
    ((data["info"].get("Swarm") or {}).get("Cluster") or {}).pop("TLSInfo", None)
    for proxy in ("HttpProxy", "HttpsProxy", "NoProxy"):  # a proxy address can carry a password
        data["info"].pop(proxy, None)
    data["services"] = [_service_summary(x) for x in data["services"]]
    if data["nodes"] is not None:
        data["nodes"] = [_node_summary(x) for x in data["nodes"]]
    if data["secrets"] is not None:
        data["secrets"] = [
            {"ID": x.get("ID"), "Spec": {"Name": x.get("Spec", {}).get("Name")}} for x in data["secrets"]
        ]
    return data


def snapshot_from_json(data: dict) -> Snapshot:
    listeners = data.get("listeners")
    return Snapshot(
        **{**data, "listeners": None if listeners is None else [(str(a), int(p)) for a, p in listeners]},
    )


# ------------------------------------------------------------------------------------------------- report
def summary(assessed: list[Assessed]) -> dict[str, dict[str, int]]:
    """Per section: how many checks PASS, WARN (as run), INFO, NOTE, and how many warnings are excused or not."""
    sections: dict[str, dict[str, int]] = {}
    for a in assessed:
        counts = sections.setdefault(
            CHECKS[a.result.id].section, dict.fromkeys((PASS, WARN, INFO, NOTE, "excused", "unexcused"), 0)
        )
        counts[a.result.level] += 1
        if a.result.level == WARN:
            counts["excused" if a.outcome == "excused" else "unexcused"] += 1
    return sections


def report(node: str, assessed: list[Assessed], unused: list[Exemption], snapshot: Snapshot) -> dict:
    """The JSON form of one node's run."""
    return {
        "benchmark": "CIS Docker Benchmark v1.6.0 (sections 5 and 7, and 4.1), after docker-bench-security",
        "node": node,
        "server_version": snapshot.info.get("ServerVersion"),
        "containers": len(snapshot.containers),
        "host_read": not snapshot.host_error,
        "host_error": snapshot.host_error,
        "results": [
            {
                "id": a.result.id,
                "title": a.result.title,
                "level": a.result.level,
                "outcome": a.outcome,
                "note": a.result.note,
                "offenders": [dataclasses.asdict(o) for o in a.result.offenders],
                "unexcused": [dataclasses.asdict(o) for o in a.unexcused],
                "excused_by": [{"status": e.status, "covers": e.scope(), "reason": e.reason} for e in a.excused_by],
            }
            for a in assessed
        ],
        "summary": summary(assessed),
        "unexcused": [a.result.id for a in assessed if a.outcome == WARN],
        "unused_exceptions": [{"id": e.id, "status": e.status, "covers": e.scope()} for e in unused],
    }


_STYLE = {PASS: "green", WARN: "bold red", INFO: "cyan", NOTE: "blue", "excused": "yellow"}


def print_report(data: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from modelswarm.tooling.progress import out

    table = Table(title=f"CIS Docker Benchmark v1.6 on {data['node']} ({data['containers']} containers)")
    for column in ("id", "result", "check", "offenders / note"):
        table.add_column(column, overflow="fold")
    for r in data["results"]:
        outcome = r["outcome"]
        shown = (
            f"excused ({', '.join(sorted({e['status'] for e in r['excused_by']}))})"
            if outcome == "excused"
            else outcome
        )
        text = escape("; ".join(sorted({Offender(**o).label() for o in r["offenders"]})) or r["note"])
        if r["unexcused"]:
            text += (
                "  [bold red]not excused: " + escape(", ".join(sorted({o["subject"] for o in r["unexcused"]}))) + "[/]"
            )
        table.add_row(r["id"], f"[{_STYLE[outcome]}]{shown}[/]", escape(r["title"]), text)
    out.print(table)
    for section, counts in data["summary"].items():
        out.print(
            f"section {section}: {counts[PASS]} PASS, {counts[WARN]} WARN ({counts['excused']} excused, "
            f"{counts['unexcused']} not), {counts[INFO]} INFO, {counts[NOTE]} NOTE"
        )
    if data["host_error"]:
        out.print(f"[yellow]the host was not read ({escape(data['host_error'])}): 5.26 and 7.2 warn without it[/]")
    if data["unused_exceptions"]:
        listed = ", ".join(f"{e['id']} ({e['covers']})" for e in data["unused_exceptions"])
        out.print(f"exceptions that excused nothing here (fixed, or not running on this node): {escape(listed)}")
    verdict = ", ".join(data["unexcused"])
    out.print(f"[bold red]not excused: {verdict}[/]" if verdict else "[green]every warning is excused[/]")


# ------------------------------------------------------------------------------------------------- the docs
def exceptions_markdown(exceptions: list[Exemption]) -> str:
    """The table docs/security.md shows, one row per exception, in the file's order."""
    lines = [
        DOC_BEGIN,
        "",
        "| check | status | covers | where | reason |",
        "|---|---|---|---|---|",
    ]
    for e in exceptions:
        cells = [f"{e.id} {CHECKS[e.id].title}", e.status, e.scope(), ", ".join(e.when) or "everywhere", e.reason]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Where: " + "; ".join(f"`{name}`, {meaning}" for name, meaning in CONDITIONS.items()) + "."]
    return "\n".join([*lines, "", DOC_END])


def docs_with_exceptions(doc: str, exceptions: list[Exemption]) -> str:
    """`doc` with its generated block replaced by the current table."""
    before, found, rest = doc.partition(DOC_BEGIN)
    _, found_end, after = rest.partition(DOC_END)
    if not found or not found_end:
        raise ExceptionsError(f"{SECURITY_DOC} lacks the markers of the generated CIS table")
    return before + exceptions_markdown(exceptions) + after


# ------------------------------------------------------------------------------------------------ the runner
def _hosts(inventory, node: str, source: str) -> list:
    """The hosts to check: `node` by name, all of them for 'all', else the leader."""
    from modelswarm import cluster

    if node == "all":
        return list(inventory.hosts.values())
    if node and node not in inventory.hosts:
        raise cluster.ClusterError(f"{node} is not a host of {source}")
    return [inventory.hosts[node]] if node else [inventory.leader]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelswarm.tooling.cis",
        description="CIS Docker Benchmark v1.6 sections 5 and 7 on a cluster node (read-only). Exit 0: every "
        "warning excused by the exceptions file; 1: a warning is not; 2: the checks could not run.",
    )
    parser.add_argument("-i", "--inventory", default=os.environ.get("MODELSWARM_INVENTORY", "inventory/lab"))
    parser.add_argument("--node", default="", help="a host of the inventory, or 'all' (default: the leader)")
    parser.add_argument("--exceptions", type=Path, default=EXCEPTIONS_FILE, help="default: %(default)s")
    parser.add_argument("--strict", action="store_true", help="to-fix exceptions excuse nothing")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite the exceptions table in {SECURITY_DOC}")
    parser.add_argument("--save-snapshot", type=Path, metavar="FILE", help="also write what was read (redacted)")
    parser.add_argument("--snapshot", type=Path, metavar="FILE", help="check a saved snapshot instead of a node")
    parser.add_argument("--lab", action="store_true", help="with --snapshot: the condition `lab` holds")
    args = parser.parse_args(argv)

    import docker.errors

    from modelswarm import cluster

    try:
        exceptions = load_exceptions(args.exceptions)
        if args.write_docs:
            SECURITY_DOC.write_text(docs_with_exceptions(SECURITY_DOC.read_text(), exceptions))
            print(f"wrote the CIS exceptions table into {SECURITY_DOC}")
            return EXIT_OK
        snapshots = []
        if args.snapshot:
            snapshots.append((str(args.snapshot), snapshot_from_json(json.loads(args.snapshot.read_text())), args.lab))
        else:
            for host in _hosts(cluster.read_inventory(args.inventory), args.node, args.inventory):
                with cluster.docker_on(host) as client:
                    snapshots.append((host.name, collect(client, host), host.lab_profile))
        reports = []
        for name, snapshot, lab in snapshots:
            if args.save_snapshot:
                path = args.save_snapshot if len(snapshots) == 1 else args.save_snapshot.with_suffix(f".{name}.json")
                path.write_text(json.dumps(snapshot_to_json(snapshot), indent=1, sort_keys=True) + "\n")
            held = conditions(snapshot, lab)
            assessed = assess(run_checks(snapshot), exceptions, held, args.strict)
            reports.append(report(name, assessed, unused_exceptions(assessed, exceptions, held), snapshot))
    except (OSError, ValueError, cluster.ClusterError, docker.errors.DockerException) as exc:
        print(f"cis: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        for data in reports:
            print_report(data)
    return EXIT_WARN if any(r["unexcused"] for r in reports) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
