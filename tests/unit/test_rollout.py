"""The rollout engine's decisions, against a fake swarm that replays what the Docker API answers."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from modelswarm import contract
from modelswarm.lifecycle import modelsecrets, rollout

TARGET = rollout.Target(name="iris", version="1.1.0", image="r:5000/models/iris:1.1.0@sha256:" + "a" * 64)


class FakeSwarm:
    """services.get returns successive UpdateStatus states; api.tasks returns successive running counts."""

    def __init__(self, states, running, existing=None, registry_holds=True, secrets=None):
        self.states, self.running, self.existing = list(states), list(running), existing
        self.secrets = secrets  # client.secrets: a FakeSwarmSecrets
        self.services = self
        self.api = self
        self.images = self
        self.nodes = SimpleNamespace(list=list)  # no node information: placement is not evened out
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

    def service_logs(self, service_id, **kwargs):
        return [b"a replica's log line\n"]  # no example failed


def spec(image, version, replicas=2, secrets=(), spec_hash=None):
    """A service as the swarm shows it; by default, with the spec hash that TARGET's spec would have."""
    if spec_hash is None:
        spec_hash = rollout.service_kwargs(TARGET)["labels"][rollout.LABEL_SPEC_HASH]
    return {
        "Spec": {
            "Labels": {rollout.LABEL_VERSION: version, rollout.LABEL_SPEC_HASH: spec_hash},
            "TaskTemplate": {"ContainerSpec": {"Image": image, "Secrets": list(secrets) or None}},
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


@pytest.mark.parametrize("spec_hash", ["", "0" * 64])
def test_same_image_with_another_spec_is_updated(spec_hash):
    """A service made before the spec changed (e.g. by an older modelswarm, without the hardening) is updated to the
    current spec even though its image and replica count are the ones asked for."""
    swarm = FakeSwarm(["completed"], [2], existing=spec(TARGET.image, "1.1.0", spec_hash=spec_hash))
    outcome, _ = run(swarm)
    assert outcome.result == "succeeded" and swarm.updated is not None
    assert (
        swarm.updated["labels"][rollout.LABEL_SPEC_HASH]
        == rollout.service_kwargs(TARGET)["labels"][rollout.LABEL_SPEC_HASH]
    )


def test_the_spec_hash_follows_every_part_of_the_spec():
    from dataclasses import replace

    base = rollout.service_kwargs(TARGET)["labels"][rollout.LABEL_SPEC_HASH]
    assert rollout.service_kwargs(TARGET)["labels"][rollout.LABEL_SPEC_HASH] == base  # stable
    for change in ({"memory": "2G"}, {"environment": {"A": "1"}}, {"replicas": 3}, {"endpoint_mode": "vip"}):
        assert rollout.service_kwargs(replace(TARGET, **change))["labels"][rollout.LABEL_SPEC_HASH] != base, change


def test_replicas_run_hardened():
    kwargs = rollout.service_kwargs(TARGET)
    assert kwargs["user"] == "10001:10001" and kwargs["read_only"] is True and kwargs["cap_drop"] == ["ALL"]
    assert [(m["Type"], m["Target"]) for m in kwargs["mounts"]] == [("tmpfs", "/tmp")]
    limits = kwargs["resources"]["Limits"]
    assert limits["Pids"] == 256 and limits["MemoryBytes"] == 1 << 30  # the default when the manifest sets none
    assert rollout.resources(rollout.Target("m", "1", "i", memory="300M"))["Limits"]["MemoryBytes"] == 300 << 20


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
    assert created["name"] == "model-iris" and "maxreplicas" not in created  # no per-node maximum
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


# ------------------------------------------------------------------------------------------------ model secrets

WITH_SECRET = replace(TARGET, secrets=("token",))


def run_with_secret(swarm, timeout=120):
    lines = []
    return rollout.rollout(swarm, WITH_SECRET, timeout=timeout, report=lines.append), lines


def test_the_newest_version_of_each_declared_secret_is_mounted_for_the_model_user_only(fake_secrets):
    modelsecrets.store(fake_secrets, "iris", "token", b"first")
    modelsecrets.store(fake_secrets, "iris", "token", b"second")
    modelsecrets.store(fake_secrets, "other", "token", b"another model's")
    swarm = FakeSwarm([None], [0, 2], secrets=fake_secrets)
    outcome, lines = run_with_secret(swarm)
    assert outcome.result == "succeeded"
    assert swarm.created["secrets"] == [
        {"SecretID": "secret2", "SecretName": "model-iris-token-v2",
         "File": {"Name": "token", "UID": "10001", "GID": "10001", "Mode": 0o400}}
    ]  # fmt: skip
    assert str(contract.MODEL_UID) == "10001"
    assert any("secret token v2" in line for line in lines)
    entry = json.dumps(outcome.ledger_entry())
    assert "token v2" in entry and "second" not in entry and "first" not in entry


def test_a_secret_never_set_stops_the_rollout_before_the_service_or_the_registry_is_asked(fake_secrets):
    modelsecrets.store(fake_secrets, "iris", "other", b"x")
    swarm = FakeSwarm(["completed"], [2], existing=spec("old@sha256:1", "1.0.0"), secrets=fake_secrets)
    with pytest.raises(modelsecrets.SecretMissing, match=r"needs secret\(s\) that are not set: token.*"
                       r"`modelswarm secrets set iris token`.*nothing was changed"):  # fmt: skip
        run_with_secret(swarm)
    assert swarm.updated is None and swarm.created is None and swarm.asked_registry == []


def test_a_new_secret_version_alone_is_rolled_out_not_a_no_op(fake_secrets):
    v1, _ = modelsecrets.store(fake_secrets, "iris", "token", b"old value")
    mounted = modelsecrets.references({"token": v1})
    with_v1 = rollout.service_kwargs(WITH_SECRET, {"token": v1})["labels"][rollout.LABEL_SPEC_HASH]
    existing = spec(TARGET.image, "1.1.0", secrets=mounted, spec_hash=with_v1)
    swarm = FakeSwarm([None], [2], existing=existing, secrets=fake_secrets)
    assert run_with_secret(swarm)[0].result == "no_op" and swarm.updated is None  # same image, same version

    modelsecrets.store(fake_secrets, "iris", "token", b"rotated value")
    swarm = FakeSwarm(["updating", "completed"], [0, 2], existing=existing, secrets=fake_secrets)
    outcome, lines = run_with_secret(swarm)
    assert (outcome.result, outcome.from_version, outcome.to_version) == ("succeeded", "1.1.0", "1.1.0")
    assert [ref["SecretName"] for ref in swarm.updated["secrets"]] == ["model-iris-token-v2"]
    assert "updating model-iris: 1.1.0 -> 1.1.0, secret token v2" in lines


def test_a_version_that_declares_no_secret_drops_the_mounts_and_asks_no_secret(fake_secrets):
    v1, _ = modelsecrets.store(fake_secrets, "iris", "token", b"value")
    existing = spec("old@sha256:1", "1.0.0", secrets=modelsecrets.references({"token": v1}))
    swarm = FakeSwarm(["updating", "completed"], [0, 2], existing=existing, secrets=None)  # never asked
    assert run(swarm)[0].result == "succeeded"
    assert swarm.updated["secrets"] == []  # an update replaces the spec: no secret mounted any more


def test_describe_names_the_mounted_secrets(fake_secrets):
    v1, _ = modelsecrets.store(fake_secrets, "iris", "token", b"value")
    service = SimpleNamespace(attrs=spec(TARGET.image, "1.1.0", secrets=modelsecrets.references({"token": v1})))
    assert rollout.describe(service)["secrets"] == {"token": "model-iris-token-v1"}


def test_the_queue_timeout_is_a_service_label_for_nginx():
    labels = rollout.service_kwargs(replace(TARGET, queue_timeout=7))["labels"]
    assert labels[contract.LABEL_QUEUE_TIMEOUT] == "7"
    assert rollout.service_kwargs(TARGET)["labels"][contract.LABEL_QUEUE_TIMEOUT] == "30"
    assert rollout.Target.for_serving("m", "1", "i", "", {"queue_timeout": 0}).queue_timeout == 0


def test_a_models_own_timeout_is_a_service_label_only_when_set():
    """Without one, the service has no label (its spec is the same as before timeouts existed: no update)."""
    assert contract.LABEL_TIMEOUT not in rollout.service_kwargs(TARGET)["labels"]
    assert rollout.service_kwargs(replace(TARGET, timeout=20))["labels"][contract.LABEL_TIMEOUT] == "20"
    assert rollout.Target.for_serving("m", "1", "i", "", {"timeout": 12}).timeout == 12
    assert rollout.Target.for_serving("m", "1", "i", "", {}).timeout is None


def test_the_declared_replicas_are_a_service_label_that_a_scale_does_not_change():
    """The console's /metrics compares the running tasks with this label (ModelReplicasBelowSpec), not with the
    spec's count, which `docker service scale` changes."""
    kwargs = rollout.service_kwargs(replace(TARGET, replicas=3))
    assert kwargs["labels"][contract.LABEL_REPLICAS] == "3" and kwargs["mode"]["replicated"]["Replicas"] == 3
