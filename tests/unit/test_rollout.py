"""The rollout engine's decisions, against a fake swarm that replays what the Docker API answers."""

from types import SimpleNamespace

import pytest

from modelswarm.lifecycle import rollout

TARGET = rollout.Target(name="iris", version="1.1.0", image="r:5000/models/iris:1.1.0@sha256:" + "a" * 64)


class FakeSwarm:
    """services.get returns successive UpdateStatus states; api.tasks returns successive running counts."""

    def __init__(self, states, running, existing=None, registry_holds=True):
        self.states, self.running, self.existing = list(states), list(running), existing
        self.services = self
        self.api = self
        self.images = self
        self.updated, self.created = None, None
        self.registry_holds, self.asked_registry = registry_holds, []

    # client.images
    def get_registry_data(self, reference):
        import docker.errors

        self.asked_registry.append(reference)
        if not self.registry_holds:
            raise docker.errors.NotFound("manifest unknown")
        return SimpleNamespace(id=reference.split("@")[1])

    # client.services
    def get(self, _name):
        if self.existing is None and self.created is None:
            import docker.errors

            raise docker.errors.NotFound("no such service")
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        attrs = dict(self.existing or {"Spec": {}})
        if state:
            attrs["UpdateStatus"] = {"State": state, "Message": f"update {state}"}
        service = SimpleNamespace(id="svc", attrs=attrs, update=self._update)
        return service

    def create(self, **kwargs):
        self.created = kwargs
        return SimpleNamespace(id="svc")

    def _update(self, **kwargs):
        self.updated = kwargs

    # client.api
    def tasks(self, filters):
        count = self.running.pop(0) if len(self.running) > 1 else self.running[0]
        return [{"Status": {"State": "running"}}] * count


def spec(image, version, replicas=2):
    return {
        "Spec": {
            "Labels": {rollout.LABEL_VERSION: version},
            "TaskTemplate": {"ContainerSpec": {"Image": image}},
            "Mode": {"Replicated": {"Replicas": replicas}},
        }
    }


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(rollout.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    monkeypatch.setattr(rollout.time, "monotonic", lambda: clock["t"])


def run(swarm, timeout=120):
    lines = []
    outcome = rollout.rollout(swarm, TARGET, timeout=timeout, report=lines.append)
    return outcome, lines


def test_same_image_on_all_replicas_is_a_no_op():
    swarm = FakeSwarm([None], [2], existing=spec(TARGET.image, "1.1.0"))
    outcome, _ = run(swarm)
    assert outcome.result == "no_op" and outcome.exit_code == 0
    assert swarm.updated is None


def test_update_that_completes_succeeds_after_the_monitor_window():
    swarm = FakeSwarm(["updating", "updating", "completed"], [0, 1, 2], existing=spec("old@sha256:1", "1.0.0"))
    outcome, lines = run(swarm)
    assert (outcome.result, outcome.from_version, outcome.exit_code) == ("succeeded", "1.0.0", 0)
    assert swarm.updated["image"] == TARGET.image
    assert swarm.updated["update_config"]["FailureAction"] == "rollback"
    assert swarm.updated["update_config"]["Order"] == "start-first"
    assert any("1/2 up-to-date tasks running" in line for line in lines)  # progress is reported


def test_completed_is_not_trusted_while_replicas_are_missing():
    swarm = FakeSwarm(["completed"], [1], existing=spec("old@sha256:1", "1.0.0"))
    outcome, _ = run(swarm, timeout=30)
    assert outcome.result == "failed" and "timed out" in outcome.message and outcome.exit_code == 4


def test_automatic_rollback_exits_3():
    swarm = FakeSwarm(["updating", "rollback_started", "rollback_completed"], [0, 2, 2],
                      existing=spec("old@sha256:1", "1.0.0"))  # fmt: skip
    outcome, _ = run(swarm)
    assert outcome.result == "rolled_back" and outcome.exit_code == 3
    assert outcome.ledger_entry()["image"] == "r:5000/models/iris:1.1.0"


def test_the_ledger_entry_is_what_the_console_accepts():
    """The console takes the actor from the request's identity; the rollout's free text arrives as the note."""
    from modelswarm.apps.console import ledger

    swarm = FakeSwarm(["updating", "completed"], [0, 2], existing=spec("old@sha256:1", "1.0.0"))
    outcome, _ = run(swarm)
    entry = outcome.ledger_entry()
    assert "actor" not in entry and entry["note"] == outcome.note
    assert ledger.validate(entry)["note"] == outcome.note


def test_paused_update_fails():
    swarm = FakeSwarm(["updating", "paused"], [0], existing=spec("old@sha256:1", "1.0.0"))
    outcome, _ = run(swarm)
    assert outcome.result == "failed" and outcome.exit_code == 1 and "paused" in outcome.message


def test_first_deploy_creates_the_full_spec():
    swarm = FakeSwarm([None], [0, 2])
    outcome, _ = run(swarm)
    assert outcome.result == "succeeded" and outcome.from_version is None
    created = swarm.created
    assert created["name"] == "model-iris" and created["maxreplicas"] == 1
    assert created["endpoint_spec"]["Mode"] == "dnsrr"
    assert created["networks"] == ["modelswarm-models"]
    assert f"MODELSWARM_IMAGE={TARGET.image}" in created["env"]


def test_an_image_the_registry_does_not_hold_is_refused_before_anything_changes():
    from modelswarm.lifecycle import modelimage

    swarm = FakeSwarm(["completed"], [2], existing=spec("r:5000/models/iris:1.0.0@sha256:" + "b" * 64, "1.0.0"),
                      registry_holds=False)  # fmt: skip
    with pytest.raises(modelimage.ImageMissing, match="does not exist in the registry: nothing was changed"):
        run(swarm)
    assert swarm.asked_registry == ["r:5000/models/iris@sha256:" + "a" * 64]
    assert swarm.updated is None and swarm.created is None


def test_a_no_op_does_not_need_the_registry():
    swarm = FakeSwarm([None], [2], existing=spec(TARGET.image, "1.1.0"), registry_holds=False)
    outcome, _ = run(swarm)
    assert outcome.result == "no_op" and swarm.asked_registry == []
