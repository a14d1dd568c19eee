"""Day-2 operations on the HA lab, after the fault cases (tests/infra/ha/test_ha.py) and in this order:

1. a worker joins (`MODELSWARM_LAB_WORKERS=1 modelswarm lab up`, then site.yml with the lab's inventory);
2. `playbooks/upgrade.yml` restarts the engine of every node, one at a time, under load spread over the four nodes
   by a health-checking balancer on the controller (HAProxy, modelswarm.tooling.balancer): 0 failed requests, and
   the model's replicas run on the worker while managers are drained;
3. `playbooks/remove-node.yml` refuses the designated leader and a missing name, plans in --check, then takes the
   worker out under load (0 failed) and says so again, changing nothing, when run a second time;
4. the lab drops the extra host once it is out of the swarm.

The figures go into .lab/ha-results.json with the fault cases' (docs/benchmarks.md records a run).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace

import pytest
import requests

from modelswarm import contract
from modelswarm.lab import LabSettings
from modelswarm.tooling.balancer import ClientBalancer
from modelswarm.tooling.loadgen import LoadPlan, LoadRun, allowed_target
from tests.infra.ha import helpers as ha
from tests.infra.helpers import bearer, controller_key, playbook_failure, run_playbook, run_tool, swarm_nodes

VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
WORKER = "node4"
RESULTS: dict[str, dict] = {}


def settings(workers: int = 1) -> LabSettings:
    return replace(LabSettings.from_env(), workers=workers)


def lab_inventory() -> str:
    """The lab's own inventory (it has the workers group; molecule's has only the managers)."""
    return str(settings().inventory_file)


def day2_playbook(*args: str, timeout: int = 1200):
    """A playbook against the scenario's hosts and the lab's inventory together (the worker is only in the latter)."""
    return run_playbook("-i", lab_inventory(), *args, timeout=timeout)


def balanced_load(balancer: ClientBalancer, seconds: int, rate: int = 20) -> LoadRun:
    """`rate` predictions per second for `seconds` through the balancer (bounded in count and time)."""
    plan = LoadPlan(
        url=f"http://{balancer.address}/models/iris/predict",
        body=json.dumps(VIRGINICA),
        requests=rate * seconds,
        concurrency=4,
        rate_per_worker=rate / 4,
        timeout=10,
        headers=(f"Authorization: Bearer {controller_key()}",),
    )
    allowed_target(plan.url, [])
    return LoadRun(plan).start()


class LoadWhile:
    """Load through the balancer for as long as something runs: back-to-back runs of `chunk` seconds until stop(),
    every request counted (a run is never cut short, so no request is lost from the count)."""

    def __init__(self, balancer: ClientBalancer, chunk: int = 30, limit: int = 1800) -> None:
        self.balancer, self.chunk, self.limit = balancer, chunk, limit
        self.results: list = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.limit:  # bounded
            try:
                self.results.append(balanced_load(self.balancer, self.chunk).result())
            except Exception as exc:  # reported, never hidden
                self.errors.append(repr(exc))
                return

    def __enter__(self) -> LoadWhile:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.chunk + 120)

    def figures(self) -> dict:
        failures: dict[str, int] = {}
        for result in self.results:
            for kind, n in result.failures.items():
                failures[kind] = failures.get(kind, 0) + n
        stats = self.balancer.stats()
        return {
            "requests": sum(r.sent for r in self.results),
            "failed": sum(r.failed for r in self.results),
            "failures": failures,
            "p99_ms_worst_run": max((r.p99_ms or 0 for r in self.results), default=0),
            "max_ms": max((r.max_ms or 0 for r in self.results), default=0),
            "per_node": {name: s.sent for name, s in stats.items()},
            "balancer_retries": sum(s.retries + s.redispatched for s in stats.values()),
            "load_errors": self.errors,
        }


def balancer_over(nodes) -> ClientBalancer:
    addresses = {n: settings().address(n) for n in settings().all_nodes}
    return ClientBalancer({n: f"{addresses[n]}:80" for n in nodes}, check_interval_ms=500)


def figures(result, balancer: ClientBalancer) -> dict:
    stats = balancer.stats()
    return {
        "requests": result.sent,
        "failed": result.failed,
        "failures": result.failures,
        "p50_ms": round(result.p50_ms, 1),
        "p99_ms": round(result.p99_ms, 1),
        "max_ms": round(result.max_ms, 1),
        "per_node": {name: s.sent for name, s in stats.items()},
        "balancer_retries": sum(s.retries + s.redispatched for s in stats.values()),
    }


def roles(via: str = ha.DESIGNATED_LEADER) -> dict[str, str]:
    """hostname -> 'manager' or 'worker', as the swarm sees it."""
    return {n["Description"]["Hostname"]: n["Spec"]["Role"] for n in swarm_nodes(ha.host(via))}


def availability(via: str = ha.DESIGNATED_LEADER) -> dict[str, str]:
    return {
        n["Description"]["Hostname"]: f"{n['Status']['State']}/{n['Spec']['Availability']}"
        for n in swarm_nodes(ha.host(via))
    }


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    path = LabSettings.from_env().state_dir / "ha-results.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**earlier, **RESULTS}, indent=2) + "\n")
    print("\n=== day-2 figures (also in", path, ")")
    for case, values in RESULTS.items():
        print(f"  {case}: {json.dumps(values)}")


def test_day2_1_a_worker_joins_and_serves():
    up = run_tool("modelswarm", "lab", "up", "--json", timeout=600, MODELSWARM_LAB_WORKERS="1")
    assert up.returncode == 0, up.stderr[-2000:]
    assert json.loads(up.stdout)["nodes"][WORKER] in ("created", "started", "unchanged")
    started = time.monotonic()
    converge = day2_playbook("playbooks/site.yml", timeout=1500)
    took = time.monotonic() - started
    assert converge.returncode == 0, playbook_failure(converge)
    assert roles() == {"node1": "manager", "node2": "manager", "node3": "manager", WORKER: "worker"}
    view = ha.nodes_view(ha.DESIGNATED_LEADER)
    assert view["node1"]["labels"].get(contract.LEADER_LABEL) == "true"
    assert contract.LEADER_LABEL not in view[WORKER]["labels"]
    # The global services run there (the proxy's worker flavour, not the manager one); the leader's stay put.
    containers = ha.host("node1").check_output(
        "docker service ps --filter desired-state=running --format '{{.Name}} {{.Node}}' "
        "modelswarm_nginx modelswarm_logspout modelswarm_registrator modelswarm_docker-api-proxy "
        "modelswarm_docker-api-proxy-workers modelswarm_console"
    )
    on_worker = sorted(line.split(".")[0] for line in containers.splitlines() if line.endswith(f" {WORKER}"))
    assert on_worker == [
        "modelswarm_docker-api-proxy-workers", "modelswarm_logspout", "modelswarm_nginx", "modelswarm_registrator",
    ]  # fmt: skip
    answer = requests.post(
        f"http://{settings().address(WORKER)}/models/iris/predict",
        json=VIRGINICA,
        headers=bearer(controller_key()),
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["prediction"]["species"] == "virginica"
    RESULTS["day-2 a worker joins (site.yml)"] = {"seconds": round(took, 1)}


def test_day2_2_rolling_engine_restart_under_load_fails_no_request():
    nodes = settings().all_nodes
    plan = day2_playbook("playbooks/upgrade.yml", "--check")
    assert plan.returncode == 0, playbook_failure(plan)
    assert f"One node at a time: {' -> '.join(nodes)}." in plan.stdout
    assert "restarted at the same version" not in plan.stdout and "Check mode: nothing is changed." in plan.stdout

    placements: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:  # where the model runs while managers are drained (bounded by the run)
        while not stop.wait(3):
            try:
                placements.append(ha.running_on(ha.DESIGNATED_LEADER, ha.MODEL_SERVICE))
            except Exception:  # a manager restarting: look again next time
                continue

    with balancer_over(nodes) as balancer:
        with LoadWhile(balancer) as load:
            time.sleep(3)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            started = time.monotonic()
            upgrade = day2_playbook("playbooks/upgrade.yml", timeout=1500)
            took = time.monotonic() - started
            stop.set()
        load_figures = load.figures()  # every run ended, the balancer still up for its counters
    RESULTS["day-2 upgrade.yml, every engine restarted under load"] = {
        "nodes": len(nodes), "playbook_seconds": round(took, 1), **load_figures,
    }  # fmt: skip
    assert upgrade.returncode == 0, playbook_failure(upgrade)
    restarted = [line for line in upgrade.stdout.splitlines() if "restarted at the same version" in line]
    assert len(restarted) == len(nodes), upgrade.stdout[-3000:]
    assert load_figures["requests"] > 0 and not load_figures["load_errors"], load_figures
    assert load_figures["failed"] == 0, load_figures
    assert all(state == "ready/active" for state in availability().values()), availability()
    for node in nodes:  # no flag left: every node back in rotation
        assert requests.get(f"http://{settings().address(node)}/healthz", timeout=5).status_code == 200
    assert any(WORKER in nodes_now for nodes_now in placements), placements  # models ran on the worker


def test_day2_3_remove_node_refuses_the_leader_and_a_missing_name_and_plans_in_check_mode():
    before = availability()
    # A failure's message is on stderr under molecule (its ansible.cfg sets display_failed_stderr), else on stdout.
    leader = day2_playbook("playbooks/remove-node.yml", "-e", "node=node1")
    said = leader.stdout + leader.stderr
    assert leader.returncode != 0
    assert "node1 is the designated leader" in said and "Nothing was changed." in said
    unnamed = day2_playbook("playbooks/remove-node.yml")
    assert unnamed.returncode != 0 and "Name the node to remove: -e node=" in unnamed.stdout + unnamed.stderr
    check = day2_playbook("playbooks/remove-node.yml", "-e", f"node={WORKER}", "--check")
    assert check.returncode == 0, playbook_failure(check)
    assert f"{WORKER} (worker, ready): out of rotation, drain it" in check.stdout
    assert "Check mode: nothing is changed." in check.stdout
    assert availability() == before


def test_day2_4_the_worker_is_removed_under_load_and_the_lab_drops_its_host():
    managers = ("node1", "node2", "node3")
    with balancer_over((*managers, WORKER)) as balancer:
        load = balanced_load(balancer, seconds=60)
        time.sleep(3)
        started = time.monotonic()
        removal = day2_playbook("playbooks/remove-node.yml", "-e", f"node={WORKER}")
        took = time.monotonic() - started
        result = load.result()
        RESULTS["day-2 remove-node.yml, the worker under load"] = {
            "playbook_seconds": round(took, 1), **figures(result, balancer),
        }  # fmt: skip
    assert removal.returncode == 0, playbook_failure(removal)
    assert f"take {WORKER} out of the inventory" in removal.stdout
    assert result.failed == 0, result.summary()
    assert sorted(roles()) == list(managers)
    assert len(ha.running_on(ha.DESIGNATED_LEADER, ha.MODEL_SERVICE)) == 2
    again = day2_playbook("playbooks/remove-node.yml", "-e", f"node={WORKER}")
    assert again.returncode == 0 and f"{WORKER} (hostname {WORKER}) is not in the swarm: nothing to do." in again.stdout
    down = run_tool("modelswarm", "lab", "up", "--json", timeout=600, MODELSWARM_LAB_WORKERS="0")
    assert down.returncode == 0, down.stderr[-2000:]
    assert json.loads(down.stdout)["removed"] == [WORKER]
    assert os.environ.get("MODELSWARM_LAB_WORKERS", "0") == "0"  # the rest of the run sees three hosts
    ha.wait_healthy()
