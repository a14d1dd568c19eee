"""Access control on the real cluster (after test_models.py deployed iris and sentiment):

keys made with the CLI for every role -> the 401/403/200 matrix on every node, on /models/<m>/predict and on
Promote's /<user>/models/<m>/predict -> keys keep working with the console and PostgreSQL scaled to 0, and every
unrevoked key still works after they are back -> a revoked key stops on all three nodes within 10 s while the others
keep working -> a ledger row changed with psql as the database superuser makes `modelswarm ledger verify` fail and
name it.
"""

import base64
import json
import time
import uuid

import pytest
import testinfra

from tests.infra.helpers import call, controller_key, inventory, lab_addresses, run_tool

NODES = sorted(lab_addresses())
IRIS_INPUT = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1}
SUFFIX = uuid.uuid4().hex[:6]  # key names of this run, so that a re-run against the same cluster starts clean
ROLE_NAMES = {role: f"{role}-{SUFFIX}" for role in ("predict", "viewer", "deploy", "admin")}
LIMITED = f"limited-{SUFFIX}"
KEYS: dict[str, str] = {}


def cli(*args: str, timeout: int = 120):
    return run_tool("modelswarm", *args, "-i", inventory(), timeout=timeout)


def leader():
    return testinfra.get_host("ansible://node1", ansible_inventory=inventory())


def basic(name: str, key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{key}".encode()).decode()}


def predict(node: str, key: str | None, model: str = "iris", scheme: str = "http", **kwargs):
    body = IRIS_INPUT if model == "iris" else {"text": "great"}
    return call(node, "POST", f"/models/{model}/predict", key=key, json=body, scheme=scheme, **kwargs)


def promote(node: str, user: str, name: str, key: str, model: str = "iris"):
    """Promote's route and auth: POST /<user>/models/<model>/predict with HTTP Basic (user, key)."""
    return call(node, "POST", f"/{user}/models/{model}/predict", key=None, headers=basic(name, key), json=IRIS_INPUT)


def test_keys_created_with_the_cli_work_at_once_on_every_node():
    for role, name in ROLE_NAMES.items():
        made = cli("keys", "create", name, "--role", role)
        assert made.returncode == 0, made.stderr[-2000:]
        key = made.stdout.strip().splitlines()[-1]  # alone on the last line
        assert key.startswith("msk_") and key not in made.stderr
        KEYS[name] = key
        assert "in force on every node" in made.stderr
        for node in NODES:  # no wait here: `keys create` returned only once every node admits it
            assert predict(node, key).status_code == 200, (role, node)
    made = cli("keys", "create", LIMITED, "--models", "sentiment")
    assert made.returncode == 0, made.stderr[-2000:]
    KEYS[LIMITED] = made.stdout.strip().splitlines()[-1]
    listing = cli("keys", "list", "--json")
    assert listing.returncode == 0
    listed = {k["name"]: k for k in json.loads(listing.stdout)}
    assert listed[LIMITED]["models"] == ["sentiment"] and listed[ROLE_NAMES["viewer"]]["role"] == "viewer"
    assert not any(key in listing.stdout for key in KEYS.values())


@pytest.mark.parametrize("node", NODES)
def test_the_401_403_200_matrix_on_every_node(node):
    missing = predict(node, None)
    assert missing.status_code == 401 and missing.headers["Content-Type"].startswith("application/json")
    assert "Bearer" in missing.headers["WWW-Authenticate"]
    forged_key = "msk_" + "0" * 12 + "_" + "A" * 43
    assert predict(node, forged_key).status_code == 401
    for bad in ("Bearer ", "Bearer " + "x" * 10_000, "Basic !!!", "Bearer msk_tooshort"):
        answer = call(node, "POST", "/models/iris/predict", key=None, headers={"Authorization": bad}, json={})
        assert answer.status_code == 401 and answer.json()["error"], bad
    for name in ROLE_NAMES.values():
        key = KEYS[name]
        assert predict(node, key).status_code == 200, name
        assert predict(node, key, scheme="https").status_code == 200, name  # HTTPS too
        via_basic = call(node, "POST", "/models/iris/predict", key=None, headers=basic(name, key), json=IRIS_INPUT)
        assert via_basic.status_code == 200, name
        answer = promote(node, name, name, key)
        assert answer.status_code == 200 and answer.json()["prediction"]["species"] == "virginica", name
        assert promote(node, "someone-else", name, key).status_code == 403, name  # the path names another user
        assert promote(node, name, "someone-else", key).status_code == 401, name  # Basic user is not the key's
    limited = KEYS[LIMITED]
    assert predict(node, limited, model="sentiment").status_code == 200
    refused = predict(node, limited)
    assert refused.status_code == 403 and "iris" in refused.json()["error"]


@pytest.mark.parametrize(("role", "allowed"), [("predict", False), ("viewer", True), ("deploy", True)])
def test_the_console_api_follows_the_roles(role, allowed):
    key = KEYS[ROLE_NAMES[role]]
    assert call("node2", "GET", "/api/rollouts", key=key).status_code == (200 if allowed else 403)
    assert call("node3", "GET", "/api/keys", key=key).status_code == 403
    assert call("node1", "GET", "/api/keys", key=KEYS[ROLE_NAMES["admin"]]).status_code == 200


def _scale(service: str, replicas: int) -> None:
    leader().check_output(f"docker service scale --detach modelswarm_{service}={int(replicas)}")


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def test_keys_keep_working_without_the_console_and_postgresql():
    _scale("console", 0)
    _scale("postgres", 0)
    try:
        _wait(lambda: call("node2", "GET", "/api/whoami").status_code in (502, 503, 504), 60, "console stopped")
        for node in NODES:
            for name in (*ROLE_NAMES.values(), LIMITED):
                model = "sentiment" if name == LIMITED else "iris"
                assert predict(node, KEYS[name], model=model).status_code == 200, (node, name)
            assert predict(node, None).status_code == 401
    finally:
        _scale("postgres", 1)
        _scale("console", 1)
    _wait(lambda: call("node1", "GET", "/api/whoami").status_code == 200, 180, "console back")
    for node in NODES:
        for name in ROLE_NAMES.values():
            assert predict(node, KEYS[name]).status_code == 200, (node, name)


def test_a_revoked_key_stops_on_every_node_within_10_seconds_while_the_others_keep_working():
    victim, other = KEYS[ROLE_NAMES["viewer"]], KEYS[ROLE_NAMES["predict"]]
    started = time.monotonic()
    revoked = cli("keys", "revoke", ROLE_NAMES["viewer"])
    assert revoked.returncode == 0, revoked.stderr[-2000:]
    stopped = {}
    while len(stopped) < len(NODES) and time.monotonic() - started < 10:
        for node in NODES:
            if node not in stopped and predict(node, victim).status_code == 401:
                stopped[node] = time.monotonic() - started
        time.sleep(0.2)
    assert sorted(stopped) == NODES, f"still admitted after 10 s on {sorted(set(NODES) - set(stopped))}"
    for node in NODES:
        assert predict(node, other).status_code == 200


def test_a_row_changed_as_the_database_superuser_fails_verification_and_is_named():
    assert cli("ledger", "verify").returncode == 0
    entries = call("node1", "GET", "/api/rollouts?model=iris").json()
    target = min(entries, key=lambda e: e["id"])
    postgres = (
        leader()
        .check_output("docker ps -q --filter label=com.docker.swarm.service.name=modelswarm_postgres")
        .splitlines()[0]
    )

    def psql(sql: str) -> None:
        """As the database superuser (the owner `console`), with its password from the container's own secret."""
        leader().check_output(
            "docker exec %s sh -c %s",
            postgres,
            f'PGPASSWORD="$(cat /run/secrets/console_db_password)" psql -U console -d console -v ON_ERROR_STOP=1 '
            f'-c "{sql}"',
        )

    tamper = "ALTER TABLE rollouts DISABLE TRIGGER USER; UPDATE rollouts SET to_version = '{}' WHERE id = {};" \
             " ALTER TABLE rollouts ENABLE TRIGGER USER;"  # fmt: skip
    psql(tamper.format("6.6.6", target["id"]))
    try:
        verify = cli("ledger", "verify")
        assert verify.returncode != 0
        assert f"entry {target['id']}" in verify.stdout + verify.stderr
    finally:
        psql(tamper.format(target["to_version"], target["id"]))
    assert cli("ledger", "verify").returncode == 0


def test_the_controller_admin_key_is_not_the_deploy_key():
    assert controller_key("controller-admin") != controller_key()
    assert call("node1", "GET", "/api/keys", key=controller_key()).status_code == 403
