"""Evening out a model's placement after a rollout, against a simulated swarm that follows swarmkit's two rules:
a scale-down removes the nth copy on a node before any (n-1)th copy (replicated orchestrator), and a new task goes
to the eligible node with the fewest of the service's tasks (scheduler)."""

from types import SimpleNamespace

import pytest

from modelswarm.lifecycle import rollout


class SimulatedSwarm:
    def __init__(self, tasks: list[str], nodes=("node1", "node2", "node3"), unavailable=()):
        self.tasks_on = list(tasks)  # one entry per running task: the node it runs on
        self.names = list(nodes)
        self.unavailable = set(unavailable)
        self.scaled: list[int] = []
        self.services, self.api = self, self
        self.nodes = SimpleNamespace(list=self._nodes)

    def _nodes(self):
        return [
            SimpleNamespace(
                id=f"id-{name}",
                attrs={
                    "Status": {"State": "down" if name in self.unavailable else "ready"},
                    "Spec": {"Availability": "active"},
                    "Description": {"Hostname": name},
                },
            )
            for name in self.names
        ]

    # client.services.get(...).scale / .attrs
    def get(self, _service_id):
        return SimpleNamespace(id="svc", attrs={"UpdateStatus": {"State": "completed"}}, scale=self._scale)

    def _scale(self, replicas: int) -> None:
        self.scaled.append(replicas)
        while len(self.tasks_on) > replicas:  # the highest copy index goes first; ties: the last such task
            index = {i: self.tasks_on[: i + 1].count(node) for i, node in enumerate(self.tasks_on)}
            self.tasks_on.pop(max(reversed(range(len(self.tasks_on))), key=index.__getitem__))
        eligible = [n for n in self.names if n not in self.unavailable]
        while len(self.tasks_on) < replicas:
            self.tasks_on.append(min(eligible, key=self.tasks_on.count))

    # client.api.tasks
    def tasks(self, filters):
        return [{"NodeID": f"id-{node}", "Status": {"State": "running"}} for node in self.tasks_on]


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(rollout.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    monkeypatch.setattr(rollout.time, "monotonic", lambda: clock["t"])


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 2, "b": 2, "c": 0}, 2),  # what CI saw after a start-first 2 -> 4 update
        ({"a": 2, "b": 1, "c": 1}, 0),
        ({"a": 1, "b": 1, "c": 0}, 0),  # 2 replicas on 3 nodes: one per node is as even as it gets
        ({"a": 2, "b": 0, "c": 0}, 1),
        ({"a": 4, "b": 0, "c": 0}, 3),
        ({"a": 3, "b": 3}, 0),
        ({"a": 0}, 0),
        ({}, 0),
    ],
)
def test_excess_is_what_to_take_off_the_crowded_nodes(counts, expected):
    assert rollout.excess(counts) == expected


@pytest.mark.parametrize(
    "tasks",
    [
        ["node1", "node1", "node2", "node2"],
        ["node1", "node1", "node1", "node1"],
        ["node2", "node2"],
        ["node3", "node3", "node3", "node1", "node1"],
    ],
)
def test_an_uneven_placement_ends_one_per_node_first(tasks):
    swarm = SimulatedSwarm(tasks)
    lines: list[str] = []
    done = rollout.rebalance(swarm, "svc", len(tasks), lines.append)
    counts = [swarm.tasks_on.count(n) for n in swarm.names]
    assert max(counts) - min(counts) <= 1 and sum(counts) == len(tasks)
    extra = rollout.excess({node: tasks.count(node) for node in swarm.names})
    assert swarm.scaled == [len(tasks) - extra, len(tasks)]
    assert done.startswith("placement evened out: ") and lines[0].startswith("placement uneven (node1 ")


def test_an_even_placement_is_left_alone():
    swarm = SimulatedSwarm(["node1", "node2", "node3", "node1"])
    assert rollout.rebalance(swarm, "svc", 4, print) is None
    assert swarm.scaled == []


def test_a_node_that_cannot_take_tasks_is_not_counted():
    """node3 is down: its 0 does not make 2 + 2 uneven (swarm moves what it ran once it is gone)."""
    swarm = SimulatedSwarm(["node1", "node1", "node2", "node2"], unavailable={"node3"})
    assert rollout.rebalance(swarm, "svc", 4, print) is None


def test_the_words_name_the_nodes():
    assert rollout.shape({"id-b": 0, "id-a": 2}, {"id-a": "node1", "id-b": "node2"}) == "node1 2, node2 0"


def test_a_rollout_that_succeeded_evens_out_and_says_so(monkeypatch):
    from test_rollout import TARGET, FakeSwarm, spec

    calls = []
    monkeypatch.setattr(rollout, "rebalance", lambda *a: calls.append(a) or "placement evened out: x -> y")
    swarm = FakeSwarm(["updating", "completed"], [0, 2], existing=spec("old@sha256:1", "1.0.0"))
    outcome = rollout.rollout(swarm, TARGET, report=lambda line: None)
    assert outcome.result == "succeeded" and outcome.message.endswith("; placement evened out: x -> y")
    assert len(calls) == 1

    calls.clear()
    swarm = FakeSwarm(["updating", "rollback_completed"], [0, 2], existing=spec("old@sha256:1", "1.0.0"))
    assert rollout.rollout(swarm, TARGET, report=lambda line: None).result == "rolled_back"
    assert calls == []  # a rolled-back service is not touched again
