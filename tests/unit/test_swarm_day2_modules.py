"""The swarm role's day-2 modules, on node and task lists as Docker returns them (no daemon): swarm_removal_plan
(remove-node.yml's refusals and plan) and swarm_workload (the waits of remove-node.yml and upgrade.yml)."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "roles" / "swarm" / "library"


def load(name):
    spec = importlib.util.spec_from_file_location(name, LIBRARY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


removal = load("swarm_removal_plan")
workload = load("swarm_workload")


def node(name, state="ready", manager=True, reachable=True, availability="active", labels=None):
    entry = {
        "ID": f"id-{name}",
        "Description": {"Hostname": name},
        "Status": {"State": state},
        "Spec": {"Availability": availability, "Role": "manager" if manager else "worker", "Labels": labels or {}},
    }
    if manager:
        entry["ManagerStatus"] = {"Reachability": "reachable" if reachable else "unreachable"}
    return entry


THREE = [node("node1"), node("node2"), node("node3")]


def plan(nodes, name, force=False):
    return removal.removal_plan(nodes, name, name, "node1", force)


def test_the_designated_leader_is_refused_with_the_way_out():
    result = plan(THREE, "node1")
    assert "node1 is the designated leader" in result["refusal"] and "move-leader.yml" in result["refusal"]
    assert result["plan"] == []


def test_a_live_worker_is_drained_and_leaves():
    result = plan([*THREE, node("node4", manager=False)], "node4")
    assert result["refusal"] == ""
    assert result["plan"] == [
        "node4 (worker, ready): out of rotation, drain it, wait until its tasks run elsewhere, make it leave, "
        "remove its entry."
    ]
    assert result["entries"] == [{"ID": "id-node4", "role": "worker", "state": "ready"}]


def test_a_live_manager_is_demoted_and_the_even_count_left_is_named():
    result = plan(THREE, "node3")
    assert result["refusal"] == "" and result["manager"] is True
    assert "demote it, make it leave" in result["plan"][0]
    assert result["plan"][1] == "2 managers remain: add one (site.yml) to tolerate the loss of one again."


def test_a_manager_whose_removal_breaks_quorum_is_refused():
    nodes = [node("node1"), node("node2", state="down", reachable=False), node("node3")]
    result = plan(nodes, "node3")
    assert result["refusal"].startswith(
        "Removing the manager node3 would leave 2 managers of which 1 are reachable: quorum needs 2."
    )


def test_a_dead_manager_needs_force_and_then_only_its_entry_goes():
    nodes = [node("node1"), node("node2"), node("node3", state="down", reachable=False)]
    refused = plan(nodes, "node3")
    assert "node3 is down in the swarm (down)" in refused["refusal"] and "-e force=true" in refused["refusal"]
    forced = plan(nodes, "node3", force=True)
    assert forced["refusal"] == "" and forced["down"] is True
    assert forced["plan"][0] == "node3 (manager, down): demote it, remove its entry (force)."


def test_a_node_not_in_the_swarm_is_nothing_to_do():
    result = plan(THREE, "node9")
    assert result["refusal"] == "" and result["entries"] == []
    assert result["plan"] == ["node9 (hostname node9) is not in the swarm: nothing to do."]


# ------------------------------------------------------------------------------------------------- swarm_workload


def task(node_id, state="running"):
    return {"NodeID": node_id, "Status": {"State": state}, "UpdatedAt": "2026-12-06T00:00:00Z"}


def service(name, tasks, replicas=None, constraints=None):
    mode = {"Global": {}} if replicas is None else {"Replicated": {"Replicas": replicas}}
    spec = {"Name": name, "Mode": mode, "TaskTemplate": {"Placement": {"Constraints": constraints or []}}}
    return SimpleNamespace(attrs={"Spec": spec}, tasks=lambda filters=None: tasks)


def client(nodes, services):
    return SimpleNamespace(
        nodes=SimpleNamespace(list=lambda: [SimpleNamespace(attrs=n) for n in nodes]),
        services=SimpleNamespace(list=lambda filters=None: services),
    )


NODES = [
    node("node1", labels={"modelswarm.leader": "true"}),
    node("node2"),
    node("node3", availability="drain"),
    node("node4", manager=False),
]


def test_tasks_still_on_the_drained_node_keep_the_wait_going():
    services = [service("model-iris", [task("id-node3"), task("id-node2")], replicas=2)]
    report, problems, on_node, parked = workload.status(client(NODES, services), "node3")
    assert on_node == ["model-iris"] and parked == []
    assert report["model-iris"]["running"] == 1 and problems == ["model-iris: 1/2 running (running)"]


def test_settled_when_replicas_run_elsewhere_and_globals_on_every_usable_node_they_may_use():
    services = [
        service("model-iris", [task("id-node2"), task("id-node4")], replicas=2),
        service("nginx", [task("id-node1"), task("id-node2"), task("id-node4")]),
        service("proxy", [task("id-node1"), task("id-node2")], constraints=["node.role == manager"]),
        service("proxy-workers", [task("id-node4")], constraints=["node.role == worker"]),
    ]
    report, problems, on_node, parked = workload.status(client(NODES, services), "node3")
    assert problems == [] and on_node == [] and parked == []
    assert report["nginx"] == {"mode": "global", "desired": 3, "running": 3}
    assert report["proxy"]["desired"] == 2 and report["proxy-workers"]["desired"] == 1


def test_a_global_service_missing_on_a_usable_node_is_a_problem():
    services = [service("nginx", [task("id-node1"), task("id-node2")])]
    _, problems, _, _ = workload.status(client(NODES, services), "")
    assert problems == ["nginx: 2/3 running (running)"]


def test_a_service_pinned_to_the_drained_leader_is_parked_not_waited_for():
    drained_leader = [node("node1", availability="drain", labels={"modelswarm.leader": "true"}), node("node2")]
    pinned = service("console", [], replicas=1, constraints=["node.labels.modelswarm.leader == true"])
    report, problems, on_node, parked = workload.status(client(drained_leader, [pinned]), "node1")
    assert parked == ["console"] and problems == [] and on_node == [] and report["console"]["parked"] is True


@pytest.mark.parametrize(
    ("constraint", "allowed"),
    [
        ("node.role == worker", ["node4"]),
        ("node.role != worker", ["node1", "node2", "node3"]),
        ("node.labels.modelswarm.leader == true", ["node1"]),
        ("node.hostname == node2", ["node2"]),
        ("engine.labels.x == y", ["node1", "node2", "node3", "node4"]),  # not judged here
    ],
)
def test_placement_constraints(constraint, allowed):
    assert [n["Description"]["Hostname"] for n in NODES if workload.placement_allows(n, [constraint])] == allowed
