"""Benchmarks on a lab of its own: they print figures; they assert nothing (the tests do that).

    .venv/bin/python benchmarks/bench.py all    # or some of: converge hop replicas heartbeat leader frozen rollout auth
                                                # observability
    .venv/bin/python benchmarks/bench.py down    # remove the bench lab

The lab is `modelswarm-bench` on 172.30.95.0/24 unless MODELSWARM_LAB_PREFIX / MODELSWARM_LAB_SUBNET say otherwise.
Figures are printed as they come and written to .lab/benchmarks.json with the date and the machine. Load comes
from `hey` through modelswarm.load, to lab addresses only.

- converge:  cold converge of site.yml on a fresh lab (lab down + up first), then the no-op re-run.
- hop:       NGINX's overhead: p50/p99 through NGINX against the replica on the same node called directly (one
             replica, a host-mode port published for the measurement; both undone after).
- replicas:  predictions per second at full speed with 1 and with 2 replicas.
- heartbeat: a replica's node hard-stopped under load (4 clients, 40 predictions/s through another node): failed
             requests, max latency (what the dead replica cost) and seconds to 2 running replicas again, with the
             default dispatcher heartbeat (5 s) and a tuned one (1 s).
- leader:    the raft leader's node hard-stopped under load (iris at 3 replicas, so the leader runs one): seconds to
             a new raft leader, to the dead node marked down and to 3 running replicas again; failed requests.
- frozen:    a gray failure: one of the two replicas frozen (docker pause) for 60 s while 4 clients send 20 predictions
             per second through another node's NGINX; failed requests and p50/p99/max latency.
- rollout:   duration of a version bump (code-only change) and of a no-op deploy.
- observability: the cost of the model server's metrics and prediction log line: full-speed predictions through
             NGINX with both on, both off and each alone (service environment), in rounds of a balanced order;
             throughput, p50, and the replica's host's CPU per 1,000 predictions.
- auth:      the cost of NGINX's API key checks: the host's nginx + njs on loopback (no lab), the role's own
             nginx.conf, two locations proxying to the same fast upstream (an NGINX `return 200` server), one with
             the key checks (the model route) and one without (the same location minus the checks); p50/p99 of
             each, requests interleaved one by one, then under load with hey (rounds alternating).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MODELSWARM_LAB_PREFIX", "modelswarm-bench")
os.environ.setdefault("MODELSWARM_LAB_SUBNET", "172.30.95.0/24")
# The bench lab's inventory: its own directory, with the lab's group_vars linked in (as molecule does).
BENCH_INVENTORY = REPO / ".lab" / "bench-inventory"
os.environ.setdefault("MODELSWARM_LAB_INVENTORY", str(BENCH_INVENTORY / "hosts.yml"))
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from modelswarm import cluster  # noqa: E402
from modelswarm.apps.console.grants import Grant, render_nginx_grants  # noqa: E402
from modelswarm.lab import LabSettings  # noqa: E402
from modelswarm.tooling import nginx_harness, recap  # noqa: E402
from modelswarm.tooling.loadgen import LoadPlan, percentile, run  # noqa: E402

BIN = Path(sys.executable).parent
SETTINGS = LabSettings.from_env()
INVENTORY = str(SETTINGS.inventory_file.parent)
BODY = json.dumps({"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3})
FIGURES: dict[str, dict] = {}


def say(text: str) -> None:
    print(text, flush=True)


def record(name: str, **figures) -> None:
    FIGURES[name] = figures
    say(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def tool(name: str, *args: str, check: bool = True, **env) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / name), *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    took = time.monotonic() - started
    if check and result.returncode != 0:
        raise SystemExit(f"{name} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return took, result


def address(node: str) -> str:
    return SETTINGS.address(node)


def on_node(node: str, command: str) -> str:
    """A shell command on a lab host (its container), through the build host's Docker."""
    container = docker.from_env().containers.get(SETTINGS.container_name(node))
    code, output = container.exec_run(["sh", "-c", command])
    if code != 0:
        raise SystemExit(f"{node}: {command}: {output.decode()[-2000:]}")
    return output.decode()


def replica_nodes(client: docker.DockerClient | None = None) -> list[str]:
    """The ready nodes running a replica of iris (one per replica), asked through `client` or a new connection."""
    if client is None:
        with cluster.manager(cluster.read_inventory(INVENTORY)) as client:
            return replica_nodes(client)
    ready = (n for n in client.nodes.list() if n.attrs["Status"]["State"] == "ready")
    nodes = {n.id: n.attrs["Description"]["Hostname"] for n in ready}
    tasks = client.services.get("model-iris").tasks(filters={"desired-state": "running"})
    return sorted(nodes[t["NodeID"]] for t in tasks if t["Status"]["State"] == "running" and t["NodeID"] in nodes)


def deploy(bundle: Path) -> tuple[float, subprocess.CompletedProcess]:
    return tool("modelswarm", "deploy", str(bundle), "-i", INVENTORY, "--json", MODELSWARM_NOTE="benchmark")


def load(url: str, requests: int, concurrency: int, rate_per_worker: float = 0.0):
    """Predictions carry the controller's deploy key (NGINX checks it); the direct calls to a replica ignore it."""
    from modelswarm.apiclient import api_key

    key, _ = api_key("predict")
    plan = LoadPlan(url=url, body=BODY, requests=requests, concurrency=concurrency, rate_per_worker=rate_per_worker,
                    headers=(f"Authorization: Bearer {key}",))  # fmt: skip
    return run(plan)


# --------------------------------------------------------------------------------------------------- benchmarks


def bench_converge() -> None:
    say("converge: fresh lab, cold site.yml, then the no-op re-run")
    BENCH_INVENTORY.mkdir(parents=True, exist_ok=True)
    if not (BENCH_INVENTORY / "group_vars").exists():
        (BENCH_INVENTORY / "group_vars").symlink_to(REPO / "inventory" / "lab" / "group_vars")
    tool("modelswarm", "lab", "down")
    up, _ = tool("modelswarm", "lab", "up")
    cold, _ = tool("ansible-playbook", "-i", INVENTORY, "playbooks/site.yml")
    again, result = tool("ansible-playbook", "-i", INVENTORY, "playbooks/site.yml")
    changed = recap.changed_hosts(result.stdout)
    record("converge", lab_up_s=round(up, 1), cold_site_s=round(cold, 1), noop_rerun_s=round(again, 1),
           rerun_hosts_with_changes=len(changed))  # fmt: skip
    took, _ = deploy(REPO / "examples" / "models" / "iris")
    record("first deploy of iris", seconds=round(took, 1))


def bench_hop() -> None:
    say("hop: through NGINX vs the replica on the same node, directly (host port 18000, published for this)")
    tool("modelswarm", "status", "-i", INVENTORY)
    # One replica: NGINX and the direct call reach the same process on the same node (with two, NGINX would send
    # half the requests over the overlay to the other node).
    on_node("node1", "docker service update --quiet --replicas 1 "
                     "--publish-add mode=host,target=8000,published=18000 model-iris")  # fmt: skip
    try:
        node = replica_nodes()[0]
        time.sleep(3)  # every node's replica check has dropped the removed replica
        for _ in range(3):  # warm up both paths
            load(f"http://{address(node)}/models/iris/predict", 200, 4)
            load(f"http://{address(node)}:18000/predict", 200, 4)
        # A steady, unsaturated rate: latency, not throughput, is compared.
        via = load(f"http://{address(node)}/models/iris/predict", 2000, 4, rate_per_worker=25)
        direct = load(f"http://{address(node)}:18000/predict", 2000, 4, rate_per_worker=25)
        record("nginx hop", node=node, via_nginx_p50_ms=round(via.p50_ms, 2), via_nginx_p99_ms=round(via.p99_ms, 2),
               direct_p50_ms=round(direct.p50_ms, 2), direct_p99_ms=round(direct.p99_ms, 2),
               overhead_p50_ms=round(via.p50_ms - direct.p50_ms, 2),
               overhead_p99_ms=round(via.p99_ms - direct.p99_ms, 2), failed=via.failed + direct.failed)  # fmt: skip
    finally:
        on_node("node1", "docker service update --quiet --replicas 2 "
                         "--publish-rm mode=host,target=8000,published=18000 model-iris")  # fmt: skip


def bench_replicas() -> None:
    say("replicas: full-speed predictions through NGINX with 1 and 2 replicas")
    figures = {}
    try:
        for count in (1, 2):
            on_node("node1", f"docker service scale --detach=false model-iris={count} >/dev/null")
            time.sleep(3)
            load(f"http://{address('node2')}/models/iris/predict", 500, 8)  # warm up
            result = load(f"http://{address('node2')}/models/iris/predict", 6000, 16)
            figures[f"replicas_{count}_rps"] = round(result.requests_per_second, 1)
            figures[f"replicas_{count}_p99_ms"] = round(result.p99_ms, 1)
            figures[f"replicas_{count}_failed"] = result.failed
    finally:
        on_node("node1", "docker service scale --detach=false model-iris=2 >/dev/null")
    record("throughput", **figures)


def _background_load(victim: str, seconds: int):
    """4 clients at 40 predictions/s in all through a node other than `victim`, started in a thread 5 s before
    this returns (via, thread, result: the load's outcome under "load" once the thread ends)."""
    from threading import Thread

    via = next(n for n in ("node1", "node2", "node3") if n != victim)
    result: dict = {}
    worker = Thread(target=lambda: result.setdefault(
        "load", load(f"http://{address(via)}/models/iris/predict", 40 * seconds, 4, rate_per_worker=10.0)
    ))  # fmt: skip
    worker.start()
    time.sleep(5)
    return via, worker, result


def node_loss(heartbeat: str, seconds: int = 40) -> dict:
    """A replica's node powered off (its lab container killed) while 4 clients send 40 predictions/s through
    another node's NGINX: what the dead replica cost the requests (failed, max latency: the connect timeout or
    the replica check, whichever first) and the seconds until 2 replicas run again (the node must be marked down:
    the dispatcher heartbeat; then restart delay, start and the first health check)."""
    on_node("node1", f"docker swarm update --dispatcher-heartbeat {heartbeat} >/dev/null")
    time.sleep(15)  # agents learn the new period with their next heartbeat
    victim = next(n for n in replica_nodes() if n != "node1")
    _, worker, result = _background_load(victim, seconds)
    container = docker.from_env().containers.get(SETTINGS.container_name(victim))
    recovery = None
    try:
        # One connection to the leader (node1, never the victim) for the polling: a new one per poll costs a second.
        with cluster.manager(cluster.read_inventory(INVENTORY)) as client:
            container.kill()
            started = time.monotonic()
            while time.monotonic() - started < 300:
                nodes = replica_nodes(client)  # only ready nodes count: the victim drops out when marked down
                if len(nodes) == 2 and victim not in nodes:
                    recovery = time.monotonic() - started
                    break
                time.sleep(0.2)
        worker.join(timeout=seconds + 120)
    finally:
        container.start()
        for _ in range(120):  # bounded: the node rejoins in about 10 s
            if f"{victim} Ready" in on_node("node1", "docker node ls --format '{{.Hostname}} {{.Status}}'"):
                break
            time.sleep(1)
    outcome = result.get("load")
    return {
        "recovery_s": None if recovery is None else round(recovery, 1),
        "failed": None if outcome is None else outcome.failed,
        "p99_ms": None if outcome is None else round(outcome.p99_ms, 1),
        "max_ms": None if outcome is None else round(outcome.max_ms, 1),
    }


def bench_heartbeat() -> None:
    say("heartbeat: a replica's node lost under load, default (5s) vs tuned (1s) dispatcher heartbeat")
    try:
        for heartbeat in ("5s", "1s"):
            record(f"node loss, heartbeat {heartbeat}", **node_loss(heartbeat))
            time.sleep(10)
    finally:
        on_node("node1", "docker swarm update --dispatcher-heartbeat 5s >/dev/null")


def _raft_leader(client: docker.DockerClient) -> str:
    return next(n.attrs["Description"]["Hostname"] for n in client.nodes.list()
                if n.attrs.get("ManagerStatus", {}).get("Leader"))  # fmt: skip


def leader_loss(heartbeat: str, seconds: int = 60) -> dict:
    """The raft leader's node powered off under load (4 clients, 40 predictions/s through another node), with
    iris on 3 replicas so that the leader runs one: seconds until the survivors elect a leader (the API answers
    again), until the dead node is marked down, and until 3 replicas run again on the live nodes."""
    inventory = cluster.read_inventory(INVENTORY)
    on_node("node1", f"docker swarm update --dispatcher-heartbeat {heartbeat} >/dev/null")
    time.sleep(15)  # agents learn the new period with their next heartbeat
    on_node("node1", "docker service scale --detach=false model-iris=3 >/dev/null")
    time.sleep(5)
    with cluster.manager(inventory) as client:
        victim = _raft_leader(client)
    if victim not in replica_nodes():
        raise SystemExit(f"leader: the raft leader {victim} runs no replica of iris ({replica_nodes()})")
    via, worker, result = _background_load(victim, seconds)
    container = docker.from_env().containers.get(SETTINGS.container_name(victim))
    marks: dict[str, float] = {}
    try:
        # One connection to a surviving manager for the polling; it answers "no leader" until the election.
        with cluster.docker_on(inventory.hosts[via]) as client:
            container.kill()
            started = time.monotonic()
            while time.monotonic() - started < 300 and "replicas_back_s" not in marks:
                try:
                    leader = _raft_leader(client)
                    states = {n.attrs["Description"]["Hostname"]: n.attrs["Status"]["State"]
                              for n in client.nodes.list()}  # fmt: skip
                    nodes = replica_nodes(client)
                except (docker.errors.APIError, StopIteration):
                    time.sleep(0.2)
                    continue
                now = round(time.monotonic() - started, 1)
                if leader != victim:
                    marks.setdefault("new_leader_s", now)
                if states.get(victim) == "down":
                    marks.setdefault("marked_down_s", now)
                if len(nodes) == 3 and victim not in nodes:
                    marks["replicas_back_s"] = now
                time.sleep(0.2)
        worker.join(timeout=seconds + 120)
    finally:
        container.start()
        for _ in range(120):  # bounded: the node rejoins in about 10 s
            if f"{victim} Ready" in on_node(via, "docker node ls --format '{{.Hostname}} {{.Status}}'"):
                break
            time.sleep(1)
        on_node(via, "docker service scale --detach=false model-iris=2 >/dev/null")
    outcome = result.get("load")
    return {"victim": victim, **marks, "failed": None if outcome is None else outcome.failed,
            "p99_ms": None if outcome is None else round(outcome.p99_ms, 1),
            "max_ms": None if outcome is None else round(outcome.max_ms, 1)}  # fmt: skip


def bench_leader() -> None:
    say("leader: the raft leader's node lost under load (iris at 3 replicas, one on the leader)")
    try:
        for heartbeat in ("5s", "1s"):
            record(f"leader loss, heartbeat {heartbeat}", **leader_loss(heartbeat))
            time.sleep(20)  # the old leader back as a follower, its tasks settled
    finally:
        on_node("node1", "docker swarm update --dispatcher-heartbeat 5s >/dev/null")


def bench_frozen(seconds: int = 60) -> None:
    say(f"frozen: one of two replicas paused for {seconds} s under load (4 clients, 20 requests/s)")
    victim = replica_nodes()[0]
    via = next(n for n in ("node1", "node2", "node3") if n != victim)
    container = on_node(victim, "docker ps -q --filter label=com.docker.swarm.service.name=model-iris").split()[0]
    from threading import Thread

    from modelswarm.tooling.loadgen import LoadError

    result: dict = {}

    def send() -> None:
        try:
            result["load"] = load(f"http://{address(via)}/models/iris/predict", 20 * seconds, 4, rate_per_worker=5.0)
        except LoadError as error:  # the clients stuck on the frozen replica: hey could not send them all in time
            result["error"] = str(error)

    worker = Thread(target=send)
    worker.start()
    time.sleep(2)
    on_node(victim, f"docker pause {container}")
    worker.join(timeout=seconds + 180)
    on_node(victim, f"docker unpause {container} 2>/dev/null || true")
    if "load" not in result:
        record("one replica frozen", requests=20 * seconds, completed=False, why=result.get("error", "no result"))
        return
    outcome = result["load"]
    record("one replica frozen", requests=outcome.sent, failed=outcome.failed, p50_ms=round(outcome.p50_ms, 1),
           p99_ms=round(outcome.p99_ms, 1), max_ms=round(outcome.max_ms, 1),
           requests_per_second=round(outcome.requests_per_second, 1))  # fmt: skip


def bench_rollout() -> None:
    say("rollout: a version bump (code-only change) and a no-op deploy")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "iris"
        shutil.copytree(REPO / "examples" / "models" / "iris", bundle)
        version = f"1.0.{int(time.time())}"
        manifest = (bundle / "modelswarm.yml").read_text().replace("version: 1.0.0", f"version: {version}")
        (bundle / "modelswarm.yml").write_text(manifest)
        (bundle / "model.py").write_text((bundle / "model.py").read_text() + "\n# benchmark bump\n")
        bump, _ = deploy(bundle)
        noop, _ = deploy(bundle)
    record("rollout", version_bump_s=round(bump, 1), noop_deploy_s=round(noop, 1))


def _unchecked_location(text: str) -> str:
    """The model route exactly as the role renders it (`text`: the server's nginx.conf), under /_unchecked/ (no
    Promote user name starts with "_") and without the key check: the `if` that sends failed checks away and the
    key-name header (all that runs njs)."""
    start = text.index('    location ~ "^/models/(?<model>')
    start = text.index('    location ~ "^/models/(?<model>', start + 1)  # the second: the route, not the redirect
    block = text[start : text.index("\n    }\n", start) + len("\n    }")]
    assert "(?<rest>/.*)$" in block.splitlines()[0]
    cut = block.replace('location ~ "^/models/', 'location ~ "^/_unchecked/models/', 1)
    for removed in (
        "      if ($modelswarm_auth_deny) {\n        rewrite ^ $modelswarm_auth_deny last;\n      }\n",
        "      proxy_set_header X-Modelswarm-Key-Name $modelswarm_key_name;\n",
    ):
        assert removed in cut, removed
        cut = cut.replace(removed, "")
    assert "modelswarm_auth" not in cut and "modelswarm_key" not in cut
    return cut


def _percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return percentile(values, 0.50), percentile(values, 0.99)


def _hey_latencies(url: str, key: str, requests: int, concurrency: int) -> list[float]:
    result = subprocess.run(
        ["hey", "-n", str(requests), "-c", str(concurrency), "-t", "10", "-o", "csv", "-m", "POST",
         "-T", "application/json", "-d", BODY, "-H", f"Authorization: Bearer {key}", url],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    if len(rows) != requests or any(row["status-code"] != "200" for row in rows):
        raise SystemExit(f"hey {url}: {len(rows)} answers of {requests}, not all 200")
    return [float(row["response-time"]) * 1000 for row in rows]


def bench_auth(requests: int = 20000) -> None:
    say(f"auth: NGINX with and without the key checks, {requests} requests each, interleaved (host nginx, loopback)")
    if reason := nginx_harness.missing_packages():
        raise SystemExit(reason)
    key, digest = nginx_harness.new_key()
    grants = render_nginx_grants(1, [Grant("bench", "predict", None, digest)])
    upstream_port = nginx_harness.free_port()
    fast_upstream = (
        f"  server {{\n    listen 127.0.0.1:{upstream_port};\n    access_log off;\n"
        '    location / { return 200 \'{"prediction": "virginica"}\\n\'; }\n  }'
    )
    with tempfile.TemporaryDirectory() as tmp, nginx_harness.HostNginx(
        Path(tmp), grants=grants, upstream_port=upstream_port, models=["iris"],
        extra_locations=_unchecked_location, extra_http=fast_upstream,
    ) as server:  # fmt: skip
        paths = {"checked": "/models/iris/predict", "unchecked": "/_unchecked/models/iris/predict"}
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        connections = {name: http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10) for name in paths}
        # The NGINX hop: the same upstream called directly (the stand-in replica), in the same rotation.
        paths["direct"] = "/predict"
        connections["direct"] = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
        latencies: dict[str, list[float]] = {name: [] for name in paths}

        def once(name: str) -> float:
            started = time.perf_counter_ns()
            connections[name].request("POST", paths[name], body=BODY, headers=headers)
            response = connections[name].getresponse()
            response.read()
            took = (time.perf_counter_ns() - started) / 1e6
            if response.status != 200:
                raise SystemExit(f"{paths[name]}: HTTP {response.status}")
            return took

        for _ in range(1000):  # warm up all three
            once("checked"), once("unchecked"), once("direct")
        # One client, one request at a time, alternating (ABC CBA): the paths see the same moments of the machine.
        for i in range(requests):
            for name in ("checked", "unchecked", "direct") if i % 2 == 0 else ("direct", "unchecked", "checked"):
                latencies[name].append(once(name))
        for connection in connections.values():
            connection.close()
        figures = {}
        for name in paths:
            p50, p99 = _percentiles(latencies[name])
            figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"] = round(p50, 3), round(p99, 3)
        figures["added_p50_ms"] = round(figures["checked_p50_ms"] - figures["unchecked_p50_ms"], 3)
        figures["added_p99_ms"] = round(figures["checked_p99_ms"] - figures["unchecked_p99_ms"], 3)
        direct_p50, direct_p99 = figures.pop("direct_p50_ms"), figures.pop("direct_p99_ms")
        record("key checks, one client", requests_each=requests, **figures)
        # Everything NGINX does for a prediction (TLS aside): the key check, the front NGINX and the replica router.
        record("nginx hop, loopback, one client", direct_p50_ms=direct_p50, direct_p99_ms=direct_p99,
               via_nginx_p50_ms=figures["checked_p50_ms"], via_nginx_p99_ms=figures["checked_p99_ms"],
               overhead_p50_ms=round(figures["checked_p50_ms"] - direct_p50, 3),
               overhead_p99_ms=round(figures["checked_p99_ms"] - direct_p99, 3))  # fmt: skip

        if shutil.which("hey"):
            # Under load: 4 concurrent clients, rounds alternating between the locations (hey takes one URL).
            loaded: dict[str, list[float]] = {name: [] for name in ("checked", "unchecked")}
            for round_ in range(6):
                for name in ("checked", "unchecked") if round_ % 2 == 0 else ("unchecked", "checked"):
                    url = f"http://127.0.0.1:{server.http_port}{paths[name]}"
                    loaded[name] += _hey_latencies(url, key, max(requests // 24 * 4, 100), 4)
            figures = {}
            for name in ("checked", "unchecked"):
                p50, p99 = _percentiles(loaded[name])
                figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"] = round(p50, 2), round(p99, 2)
            record("key checks, 4 clients (hey)", requests_each=len(loaded["checked"]), **figures)
        versions = subprocess.run([nginx_harness.NGINX, "-v"], capture_output=True, text=True, check=False).stderr
        record("key checks, software", nginx=versions.strip().split("/")[-1], njs=_njs_version())


# Each mode of the cost benchmark: the model server's two switches (MODELSWARM_PREDICTION_LOG, MODELSWARM_METRICS).
OBSERVABILITY_MODES = {"on": ("1", "1"), "off": ("0", "0"), "log_only": ("1", "0"), "metrics_only": ("0", "1")}


def _cpu_seconds(container) -> float | None:
    """CPU seconds a lab host's container (dockerd, containerd, every container on it) has used: from Docker's stats,
    else from its cgroup (cgroup v1 cpuacct, or v2 cpu.stat, as the engine's cgroup driver lays it out); None where
    neither tells."""
    used = container.stats(stream=False, one_shot=True)["cpu_stats"]["cpu_usage"].get("total_usage") or 0
    if used:
        return used / 1e9
    cgroups = Path("/sys/fs/cgroup")
    v1 = cgroups / "cpuacct" / "docker" / container.id / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for path in (cgroups / "docker" / container.id / "cpu.stat",
                 cgroups / "system.slice" / f"docker-{container.id}.scope" / "cpu.stat"):  # fmt: skip
        if path.exists():
            fields = dict(line.split() for line in path.read_text().splitlines())
            return int(fields["usage_usec"]) / 1e6
    return None


def _balanced_order(items: list[str], round_: int) -> list[str]:
    """The order of `items` in round `round_` (a Williams design): over len(items) rounds each item runs once in every
    position and, for an even count, follows every other item exactly once, so that what one mode leaves behind (a
    warm cache, a busy log) weighs on every other mode alike."""
    n, first, low, high = len(items), [0], 1, len(items) - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    return [items[(index + round_) % n] for index in first]


def bench_observability(rounds: int = 5, requests: int = 5000) -> None:
    """The cost of the model server's prediction log line and metrics: full-speed predictions through NGINX in four
    modes - both on (the default), both off, and each alone (the service's environment) - in rounds that balance the
    modes' order, on the same lab, so that drift hits every mode alike. One replica, kept on node3 and reached through
    node2's NGINX, so that every round takes the same path (with two, where the update puts them decides the figure
    more than what is measured). Per mode: the median throughput and p50 of the rounds, with the lowest and highest,
    and node3's CPU per 1,000 predictions (all of the replica's host: the server, and Docker's logging of each line),
    which a 2-core machine shared by three lab hosts and the load generator measures more steadily than throughput."""
    modes = list(OBSERVABILITY_MODES)
    say(f"observability: the model server's metrics and prediction log, modes {', '.join(modes)}; {rounds} rounds of "
        f"{requests} predictions per mode, in a balanced order")  # fmt: skip
    url = f"http://{address('node2')}/models/iris/predict"
    results: dict[str, list] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    node3 = docker.from_env().containers.get(SETTINGS.container_name("node3"))

    def switch(mode: str) -> None:
        log, metrics = OBSERVABILITY_MODES[mode]
        on_node("node1", "docker service update --quiet --detach=false "
                         f"--env-add MODELSWARM_PREDICTION_LOG={log} --env-add MODELSWARM_METRICS={metrics} "
                         "model-iris >/dev/null")  # fmt: skip
        time.sleep(3)  # every node's replica check has the new replica
        load(url, 500, 8)  # warm up

    on_node("node1", "docker service update --quiet --detach=false --replicas 1 "
                     "--constraint-add node.hostname==node3 model-iris >/dev/null")  # fmt: skip
    try:
        for round_ in range(rounds):
            for mode in _balanced_order(modes, round_):
                switch(mode)
                before = _cpu_seconds(node3)
                result = load(url, requests, 16)
                after = _cpu_seconds(node3)
                if before is not None and after is not None:
                    cpu[mode].append((after - before) / max(result.ok, 1) * 1000)
                results[mode].append(result)
                used = f"{cpu[mode][-1]:.3f} CPU s per 1,000" if cpu[mode] else "CPU not measurable"
                say(f"    round {round_ + 1} {mode}: {result.requests_per_second:.1f}/s, p50 {result.p50_ms:.1f} ms, "
                    f"node3 {used}, {result.failed} failed")  # fmt: skip
    finally:
        on_node("node1", "docker service update --quiet --detach=false --env-rm MODELSWARM_PREDICTION_LOG "
                         "--env-rm MODELSWARM_METRICS --replicas 2 --constraint-rm node.hostname==node3 "
                         "model-iris >/dev/null")  # fmt: skip

    figures = {}
    for mode, runs in results.items():
        rps = [r.requests_per_second for r in runs]
        figures[f"{mode}_rps_median"] = round(statistics.median(rps), 1)
        figures[f"{mode}_rps_range"] = [round(min(rps), 1), round(max(rps), 1)]
        figures[f"{mode}_p50_ms_median"] = round(statistics.median([r.p50_ms for r in runs]), 2)
        figures[f"{mode}_node3_cpu_s_per_1000"] = round(statistics.median(cpu[mode]), 3) if cpu[mode] else None
        figures[f"{mode}_failed"] = sum(r.failed for r in runs)
    for mode in ("on", "log_only", "metrics_only"):
        figures[f"{mode}_throughput_cost_percent"] = round(
            100 * (1 - figures[f"{mode}_rps_median"] / figures["off_rps_median"]), 1
        )
        if cpu[mode] and cpu["off"]:
            figures[f"{mode}_cpu_cost_percent"] = round(
                100 * (figures[f"{mode}_node3_cpu_s_per_1000"] / figures["off_node3_cpu_s_per_1000"] - 1), 1
            )
    figures["p50_cost_ms"] = round(figures["on_p50_ms_median"] - figures["off_p50_ms_median"], 2)
    record("observability cost", **figures)


def _njs_version() -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-http-js"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def bench_down() -> None:
    """Remove the bench lab (not a benchmark: `make bench` ends with it)."""
    tool("modelswarm", "lab", "down")


BENCHES = {"converge": bench_converge, "hop": bench_hop, "replicas": bench_replicas,
           "heartbeat": bench_heartbeat, "leader": bench_leader, "frozen": bench_frozen, "rollout": bench_rollout,
           "auth": bench_auth, "observability": bench_observability}  # fmt: skip
# Benchmarks that need no lab (they run on the host, on loopback).
NO_LAB = {"auth"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="+", choices=[*BENCHES, "all", "down"])
    parser.add_argument("--auth-requests", type=int, default=20000, help="auth: requests per location (20000)")
    args = parser.parse_args()
    if args.which == ["down"]:
        bench_down()
        return 0
    names = list(BENCHES) if "all" in args.which else args.which
    if "converge" not in names and set(names) - NO_LAB and not SETTINGS.inventory_file.exists():
        raise SystemExit(f"no bench lab ({SETTINGS.inventory_file}): run `bench.py converge` first")
    started = datetime.now(UTC)
    for name in names:
        BENCHES[name](**({"requests": args.auth_requests} if name == "auth" else {}))
    memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    machine = {"cpus": os.cpu_count(), "memory_gb": memory_gb, "kernel": platform.release(),
               "python": platform.python_version()}  # fmt: skip
    path = SETTINGS.state_dir / "benchmarks.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update({"date": started.isoformat(timespec="seconds"), "machine": machine, **FIGURES})
    path.write_text(json.dumps(previous, indent=2) + "\n")
    say(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
