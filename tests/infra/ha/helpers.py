"""Fault injection and observation for the HA scenario: lab hosts are hard-stopped and started through the build
host's Docker (the lab hosts are its containers); the swarm is observed through a live manager. Every wait is
bounded and fails with what it last saw."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import docker
import testinfra

from modelswarm.lab import LabSettings
from tests.infra.helpers import bearer, controller_key, inventory, lab_addresses

NODES = ("node1", "node2", "node3")
DESIGNATED_LEADER = "node1"
MODEL_SERVICE = "model-iris"
PINNED = (
    "modelswarm_console", "modelswarm_postgres", "modelswarm_registry", "modelswarm_registry-gateway",
    "modelswarm_prometheus",
)  # fmt: skip


def host(node: str):
    return testinfra.get_host(f"ansible://{node}", ansible_inventory=inventory())


def lab_container(node: str):
    return docker.from_env().containers.get(LabSettings.from_env().container_name(node))


def hard_stop(node: str) -> None:
    """SIGKILL the host: its Docker engine, NGINX and replicas die at once, with no goodbye to the swarm."""
    lab_container(node).kill()


def power_on(node: str) -> None:
    lab_container(node).start()


def diagnose(node: str) -> str:
    """What a lab host that does not come back says of itself (through the build host's Docker, not SSH): its
    container state, its Docker engine's unit and last log lines, its swarm view. For a failed wait's message."""
    try:
        container = lab_container(node)
        lines = [f"--- {node}: container {container.status}"]
        for command in (
            "systemctl is-active docker containerd keepalived",
            "journalctl -u docker --no-pager -n 40 -o cat",
            "docker info --format 'swarm {{.Swarm.LocalNodeState}} {{.Swarm.Error}}'",
        ):
            code, output = container.exec_run(["sh", "-c", command])
            lines.append(f"$ {command} (exit {code})\n{output.decode(errors='replace')[-4000:]}")
        return "\n".join(lines)
    except docker.errors.DockerException as exc:
        return f"--- {node}: cannot be inspected: {exc}"


def wait_for(what: str, probe: Callable[[], object], timeout: float, interval: float = 1.0):
    """Call probe() until it returns something truthy; return (value, seconds). Fails after `timeout` seconds."""
    started, last = time.monotonic(), None
    while time.monotonic() - started < timeout:
        try:
            last = probe()
        except Exception as exc:  # a node may be down or electing: note it and retry
            last = exc
        if last and not isinstance(last, Exception):
            return last, time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s (last seen: {last!r})")


def nodes_view(via: str) -> dict[str, dict]:
    """hostname -> {id, state, reachability, leader, labels} as manager `via` sees the swarm."""
    target = host(via)
    ids = target.check_output("docker node ls -q").split()
    view = {}
    for node in json.loads(target.check_output("docker node inspect " + " ".join(ids))):
        manager = node.get("ManagerStatus") or {}
        # An entry without a host (a join that never completed) is listed under its ID, so that checks see it.
        name = (node.get("Description") or {}).get("Hostname") or f"no host ({node['ID']})"
        view[name] = {
            "id": node["ID"],
            "state": node["Status"]["State"],
            "reachability": manager.get("Reachability"),
            "leader": bool(manager.get("Leader")),
            "labels": node["Spec"].get("Labels") or {},
        }
    return view


def raft_leader(via: str) -> str | None:
    return next((name for name, n in nodes_view(via).items() if n["leader"]), None)


def running_on(via: str, service: str) -> list[str]:
    """Nodes where `service` has a task running, counting only nodes the swarm sees as ready."""
    target = host(via)
    view = nodes_view(via)
    ready = {n["id"] for n in view.values() if n["state"] == "ready"}
    names = {n["id"]: name for name, n in view.items()}
    task_ids = target.check_output(f"docker service ps -q --filter desired-state=running {service}").split()
    if not task_ids:
        return []
    tasks = json.loads(target.check_output("docker inspect " + " ".join(task_ids)))
    return sorted(
        names.get(t["NodeID"], "?") for t in tasks if t["Status"]["State"] == "running" and t["NodeID"] in ready
    )


def all_managers_ready(via: str) -> bool:
    view = nodes_view(via)
    return sorted(view) == list(NODES) and all(
        n["state"] == "ready" and n["reachability"] == "reachable" for n in view.values()
    )


def wait_healthy(via: str = DESIGNATED_LEADER, timeout: float = 240) -> float:
    """Three ready, reachable managers (and no other node entry), the model on 2 nodes, the pinned services
    running, the console answering through NGINX and every node's NGINX answering. Returns the seconds it took."""
    import requests

    started = time.monotonic()
    wait_for("three ready managers", lambda: all_managers_ready(via), timeout)
    wait_for(f"{MODEL_SERVICE} on 2 nodes", lambda: len(running_on(via, MODEL_SERVICE)) == 2, timeout)
    for service in PINNED:
        wait_for(f"{service} running", lambda s=service: running_on(via, s) == [DESIGNATED_LEADER], timeout)
    wait_for(
        "the console through NGINX",
        lambda: (
            requests.get(
                f"http://{lab_addresses()[via]}/api/rollouts", headers=bearer(controller_key()), timeout=5
            ).status_code
            == 200
        ),
        timeout,
    )
    # A node that came back is healthy only when its own NGINX answers: the next case may send its load there.
    for node in NODES:
        wait_for(f"NGINX answering on {node}", lambda n=node: nginx_answers(via, n), timeout)
    return time.monotonic() - started


def nginx_answers(via: str, node: str) -> bool:
    """True when NGINX on `node` answers its health check; otherwise raises with what the swarm says of its task."""
    import requests

    try:
        code = requests.get(f"http://{lab_addresses()[node]}/healthz", timeout=3).status_code
    except requests.RequestException as exc:
        code = type(exc).__name__
    if code == 200:
        return True
    task = host(via).check_output(
        "docker service ps --filter node=%s --filter desired-state=running "
        "--format '{{.CurrentState}} {{.Error}}' modelswarm_nginx",
        node,
    )
    raise AssertionError(f"/healthz: {code}; its NGINX task: {task or 'none'}")


def pinned_states(via: str) -> dict[str, str]:
    """The state of each pinned service's task that should be running, e.g. 'Pending 3 seconds ago no suitable node'."""
    found = {}
    for service in PINNED:
        states = host(via).check_output(
            "docker service ps --filter desired-state=running --format '{{.CurrentState}} {{.Error}}' %s", service
        )
        found[service] = states.splitlines()[0] if states else ""
    return found


def pinned_pending(via: str) -> dict[str, str] | None:
    found = pinned_states(via)
    return found if all(state.startswith("Pending") for state in found.values()) else None
