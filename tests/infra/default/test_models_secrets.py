"""Model secrets on the lab, as one story (after test_models.py; the tests run in order):

a model whose secret was never set is refused, no service made -> `secrets set` from stdin, deploy: every replica
reads it (the model answers its length and SHA-256, never the value), from a file of the model user's, mode 0400 ->
the same value again creates nothing -> the value is in no `docker inspect` (service, containers, image, secret),
no image layer, no log, no CLI output and no ledger entry -> a new value (--from-file) rolls out on the same version
-> a version declaring a secret never set is refused without touching the service -> `secrets prune`.
The model's service and secrets are removed at the end (and before, if a run against this cluster left them).
"""

import hashlib
import json
import secrets as random
import textwrap

import pytest
import testinfra

from tests.infra.helpers import call, inventory, lab_addresses, modelswarm
from tests.infra.helpers import leaked as controller_secrets_in

NODES = sorted(lab_addresses())
MODEL, SECRET = "secret-probe", "probe_token"
SERVICE = f"model-{MODEL}"
# Random per run, so that a value found anywhere can only have come from this run's `secrets set`.
FIRST, SECOND = f"first-{random.token_urlsafe(24)}", f"second-{random.token_urlsafe(24)}"
OUTPUTS: list[str] = []  # everything the CLI printed in this story


def node(name: str):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory())


def write_bundle(path, version: str, secrets: list[str]):
    path.mkdir()
    (path / "modelswarm.yml").write_text(
        f"name: {MODEL}\nversion: {version}\nreplicas: 2\nresources: {{memory: 128M}}\nsecrets: {json.dumps(secrets)}\n"
    )
    (path / "requirements.txt").write_text("")
    (path / "examples.json").write_text('[{"any": "input"}]\n')  # answered with the secret's digest, never its value
    (path / "model.py").write_text(
        textwrap.dedent(f'''\
            """Answers the length and SHA-256 of its secret: never the value."""
            import hashlib

            from modelswarm_model import secret


            def load():
                secret("{SECRET}")  # a replica without its secret never becomes healthy


            def predict(data):
                value = secret("{SECRET}")
                return {{"length": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()}}
            ''')
    )
    return path


def cleanup():
    leader = node("node1")
    leader.run("docker service rm %s", SERVICE)
    running = f"docker ps -q --filter label=com.docker.swarm.service.name={SERVICE} | grep -q ."
    leader.run(f"timeout 60 sh -c 'while {running}; do sleep 1; done'")
    leader.run(f"docker secret ls -q --filter label=io.modelswarm.model={MODEL} | xargs -r docker secret rm")


@pytest.fixture(scope="module", autouse=True)
def clean_cluster():
    cleanup()
    yield
    cleanup()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("secret-bundles")
    return {
        "1.0.0": write_bundle(root / "v1", "1.0.0", [SECRET]),
        "needs-more": write_bundle(root / "v2", "1.0.1", [SECRET, "probe_other"]),
    }


def cli(*args: str, stdin: str | None = None):
    code, result, log = modelswarm(*args, stdin=stdin)
    OUTPUTS.append(json.dumps(result) + log)
    return code, result, log


def service_inspect() -> dict | None:
    found = node("node1").run("docker service inspect %s", SERVICE)
    return json.loads(found.stdout)[0] if found.rc == 0 else None


def answers(value: str) -> dict:
    return {"length": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()}


def predict_everywhere() -> list[dict]:
    return [call(n, "POST", f"/models/{MODEL}/predict", json={}).json().get("prediction") for n in NODES]


def containers(host) -> list[str]:
    return host.check_output("docker ps -q --filter label=com.docker.swarm.service.name=%s", SERVICE).split()


def test_a_model_whose_secret_was_never_set_is_refused_and_no_service_is_made(bundles):
    code, _, log = cli("deploy", str(bundles["1.0.0"]))
    assert code == 2, log[-2000:]
    assert f"`modelswarm secrets set {MODEL} {SECRET}`" in log and "nothing was changed" in log
    assert service_inspect() is None


def test_a_secret_set_from_stdin_is_read_by_every_replica(bundles):
    code, result, log = cli("secrets", "set", MODEL, SECRET, stdin=FIRST + "\n")
    assert code == 0, log[-2000:]
    assert (result["created"], result["version"], result["secret"]) == (True, 1, f"{SERVICE}-{SECRET}-v1")
    code, result, log = cli("deploy", str(bundles["1.0.0"]))
    assert code == 0 and result["result"] == "succeeded", log[-3000:]
    assert f"secret {SECRET} v1" in result["message"]
    assert predict_everywhere() == [answers(FIRST)] * len(NODES)  # one trailing newline stripped by the helper


def test_the_secret_file_belongs_to_the_model_user_and_only_it_may_read_it():
    found = []
    for name in NODES:
        host = node(name)
        for container in containers(host):
            found.append(host.check_output("docker exec %s stat -c '%%u %%g %%a' /run/secrets/%s", container, SECRET))
    assert found == ["10001 10001 400"] * 2


def test_setting_the_same_value_again_creates_nothing():
    code, result, log = cli("secrets", "set", MODEL, SECRET, stdin=FIRST + "\n")
    assert code == 0 and result["created"] is False and result["version"] == 1, log[-2000:]
    code, rows, _ = cli("secrets", "list", MODEL)
    assert [(r["version"], r["current"], r["in_use"]) for r in rows] == [(1, True, True)]


def test_the_value_is_in_no_inspect_no_image_no_log_and_no_ledger_entry():
    spec = service_inspect()
    mounts = spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert [(m["SecretName"], m["File"]["Name"]) for m in mounts] == [(f"{SERVICE}-{SECRET}-v1", SECRET)]
    name, digest = spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")
    image = f"{name.rsplit(':', 1)[0]}@{digest}"  # repository@sha256:..., staged on every node
    seen = {"service inspect": json.dumps(spec)}
    leader = node("node1")
    seen["secret inspect"] = leader.check_output(
        f"docker secret inspect $(docker secret ls -q --filter label=io.modelswarm.model={MODEL})"
    )
    seen["service logs"] = leader.check_output("docker service logs --raw %s 2>&1", SERVICE)
    for name in NODES:
        host = node(name)
        seen[f"{name} image"] = host.check_output("docker image inspect %s", image)
        seen[f"{name} history"] = host.check_output("docker history --no-trunc %s", image)
        for container in containers(host):
            seen[f"{name} container"] = host.check_output("docker inspect %s", container)
            seen[f"{name} env"] = host.check_output("docker exec %s env", container)
    seen["ledger"] = call("node2", "GET", f"/api/rollouts?model={MODEL}").text
    seen["CLI output"] = "\n".join(OUTPUTS)
    leaked = [where for where, text in seen.items() if FIRST in text]
    assert not leaked, f"the secret's value appears in: {leaked}"
    # Nor any of the controller's own (API keys, registry accounts used by the deploys' builds and pulls, ...).
    assert controller_secrets_in(seen["CLI output"]) == [], "controller secrets appear in the deploys' output"


def test_a_new_value_from_a_file_rolls_out_on_the_same_version(bundles, tmp_path):
    (tmp_path / "value").write_text(SECOND)
    code, result, log = cli("secrets", "set", MODEL, SECRET, "--from-file", str(tmp_path / "value"))
    assert code == 0 and (result["created"], result["version"]) == (True, 2), log[-2000:]
    code, rows, _ = cli("secrets", "list", MODEL)
    assert [(r["version"], r["current"], r["in_use"]) for r in rows] == [(1, False, True), (2, True, False)]

    code, result, log = cli("deploy", str(bundles["1.0.0"]))
    assert code == 0, log[-3000:]
    assert (result["result"], result["from_version"], result["to_version"]) == ("succeeded", "1.0.0", "1.0.0")
    assert predict_everywhere() == [answers(SECOND)] * len(NODES)
    code, result, _ = cli("deploy", str(bundles["1.0.0"]))
    assert code == 0 and result["result"] == "no_op"
    assert SECOND not in "\n".join(OUTPUTS) + call("node1", "GET", f"/api/rollouts?model={MODEL}").text


def test_a_version_declaring_a_secret_never_set_is_refused_without_touching_the_service(bundles):
    before = service_inspect()
    code, _, log = cli("deploy", str(bundles["needs-more"]))
    assert code == 2, log[-2000:]
    assert f"`modelswarm secrets set {MODEL} probe_other`" in log
    after = service_inspect()
    assert after["Version"]["Index"] == before["Version"]["Index"] and after["UpdatedAt"] == before["UpdatedAt"]
    assert predict_everywhere() == [answers(SECOND)] * len(NODES)


def test_prune_keeps_the_current_the_mounted_and_the_rollback_versions_only():
    for value in (f"third-{random.token_urlsafe(8)}", f"fourth-{random.token_urlsafe(8)}"):  # set, not rolled out
        code, _, log = cli("secrets", "set", MODEL, SECRET, stdin=value)
        assert code == 0, log[-2000:]
    code, result, log = cli("secrets", "prune", MODEL)
    assert code == 0, log[-2000:]
    # v1: what swarm's rollback (the previous spec) mounts; v2: in use; v4: the newest. v3 is none of these.
    assert result["removed"] == [f"{SERVICE}-{SECRET}-v3"]
    code, rows, _ = cli("secrets", "list", MODEL)
    assert [(r["version"], r["current"], r["in_use"]) for r in rows] == [(1, False, False), (2, False, True),
                                                                          (4, True, False)]  # fmt: skip
