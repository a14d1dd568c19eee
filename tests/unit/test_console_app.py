"""The console's HTTP layer: routing, who may call what, status codes and error bodies, with the database replaced
by a fake (the identity checks themselves run on a real PostgreSQL in test_accounts.py)."""

import json

import pytest
from conftest import wsgi_call

from modelswarm import contract
from modelswarm.apps.console import app, ledger
from modelswarm.apps.console.accounts import Identity


def call(method, path, body=None, content_type="application/json", query="", headers=None):
    return wsgi_call(app.application, method, path, body, content_type, query, headers)


ROLE_KEYS = {role: f"{role}-key" for role in contract.ROLES}  # stand-ins: the fake resolves them by name


@pytest.fixture(autouse=True)
def identities(monkeypatch):
    """Requests carry `Authorization: Bearer <role>-key`; anything else is no identity."""

    def identify(environ):
        sent = environ.get("HTTP_AUTHORIZATION", "")
        for role, key in ROLE_KEYS.items():
            if sent == f"Bearer {key}":
                return Identity(name=f"{role}-user", role=role, kind="key")
        return None

    monkeypatch.setattr(app, "identify", identify)


@pytest.fixture(autouse=True)
def no_prometheus(monkeypatch):
    """Pages read Prometheus (observed.traffic): here it has nothing (test_console_pages.py covers it)."""
    monkeypatch.setattr(app.observed, "traffic", lambda now, timeout=3.0: {})


def as_role(role):
    return {"HTTP_AUTHORIZATION": f"Bearer {ROLE_KEYS[role]}"}


@pytest.fixture
def fake_db(monkeypatch):
    stored = {}

    def with_db(work):
        return work(stored)

    def record(conn, entry, actor, actor_kind):
        stored["recorded"] = (entry, actor, actor_kind)
        return {"id": 1, **entry, "actor": actor, "duration_s": 1.0}

    monkeypatch.setattr(app, "with_db", with_db)
    monkeypatch.setattr(ledger, "record", record)
    monkeypatch.setattr(ledger, "get", lambda conn, entry_id: {"id": entry_id} if entry_id == 1 else None)
    monkeypatch.setattr(ledger, "history", lambda conn, model, limit: [])
    return stored


def test_unknown_path_is_404_json():
    status, headers, body = call("GET", "/nope")
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": "no such endpoint: GET /nope", "request_id": headers["X-Request-Id"]}


def test_wrong_method_is_405_with_allow():
    status, headers, _ = call("DELETE", "/api/rollouts")
    assert status == 405 and headers["Allow"] == "POST, GET"


def test_malformed_json_is_400(fake_db):
    status, _, body = call("POST", "/api/rollouts", body=b"{not json", headers=as_role("deploy"))
    assert status == 400 and "malformed JSON" in json.loads(body)["error"]


def test_non_json_content_type_is_415(fake_db):
    status, _, _ = call(
        "POST",
        "/api/rollouts",
        body=b"model=x",
        content_type="application/x-www-form-urlencoded",
        headers=as_role("deploy"),
    )
    assert status == 415


def test_invalid_entry_is_400_with_details_and_never_reaches_the_database(monkeypatch):
    monkeypatch.setattr(app, "with_db", lambda work: pytest.fail("the database was touched"))
    status, _, body = call("POST", "/api/rollouts", body={"model": "iris"}, headers=as_role("deploy"))
    assert status == 400
    assert {"to_version", "image", "result"} <= set(json.loads(body)["details"])


ENTRY = {
    "model": "iris",
    "to_version": "2",
    "image": "r/iris:2",
    "note": "https://ci.example/job/7",
    "started_at": "2026-11-22T10:00:00Z",
    "finished_at": "2026-11-22T10:00:01Z",
    "result": "succeeded",
}


def test_valid_entry_is_201_and_its_actor_is_the_caller(fake_db):
    status, _, body = call("POST", "/api/rollouts", body=ENTRY, headers=as_role("deploy"))
    assert status == 201 and json.loads(body)["id"] == 1
    entry, actor, kind = fake_db["recorded"]
    assert (actor, kind) == ("deploy-user", "key") and entry["note"] == ENTRY["note"]


def test_an_actor_in_the_body_is_refused(fake_db):
    status, _, body = call("POST", "/api/rollouts", body={**ENTRY, "actor": "someone-else"}, headers=as_role("admin"))
    assert status == 400 and "actor" in json.dumps(json.loads(body)["details"])
    assert "recorded" not in fake_db


def test_missing_entry_is_404(fake_db):
    assert call("GET", "/api/rollouts/2", headers=as_role("viewer"))[0] == 404
    assert call("GET", "/api/rollouts/1", headers=as_role("viewer"))[0] == 200


def test_bad_limit_is_400(fake_db):
    status, _, body = call("GET", "/api/rollouts", query="limit=ten", headers=as_role("viewer"))
    assert status == 400 and "whole number" in json.loads(body)["error"]


def test_database_down_makes_health_503(monkeypatch):
    def down(_work):
        raise app.HTTPError(app.HTTPStatus.SERVICE_UNAVAILABLE, "database unavailable: connection refused")

    monkeypatch.setattr(app, "with_db", down)
    status, _, body = call("GET", "/healthz")
    assert status == 503
    assert json.loads(body) == {"status": "unavailable", "database": "database unavailable: connection refused"}


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/api/whoami", "predict"),
        ("GET", "/api/rollouts", "viewer"),
        ("GET", "/api/rollouts/1", "viewer"),
        ("POST", "/api/rollouts", "deploy"),
        ("GET", "/api/keys", "admin"),
        ("POST", "/api/keys", "admin"),
        ("DELETE", "/api/keys/alice", "admin"),
        ("POST", "/api/keys/alice/rotate", "admin"),
        ("GET", "/api/users", "admin"),
        ("POST", "/api/users", "admin"),
        ("DELETE", "/api/users/alice", "admin"),
    ],
)
def test_each_route_needs_its_role_and_says_so_before_reading_the_body(monkeypatch, method, path, needed):
    monkeypatch.setattr(app, "read_body", lambda *a: pytest.fail("the body was read before the identity check"))
    monkeypatch.setattr(app, "with_db", lambda work: pytest.fail("the database was touched"))
    status, headers, body = call(method, path, body={"x": 1})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "credentials required" in json.loads(body)["error"]
    status, _, _ = call(method, path, body={"x": 1}, headers={"HTTP_AUTHORIZATION": "Bearer forged"})
    assert status == 401
    weaker = [r for r in contract.ROLES if not contract.role_includes(r, needed)]
    for role in weaker:
        status, _, body = call(method, path, body={"x": 1}, headers=as_role(role))
        assert status == 403, role
        assert f"needs {needed}" in json.loads(body)["error"]


def test_health_and_the_login_form_are_public(monkeypatch):
    monkeypatch.setattr(app, "with_db", lambda work: 7 if work.__name__ == "probe" else pytest.fail("db"))
    assert call("GET", "/healthz")[0] == 200
    status, headers, body = call("GET", "/login", headers={"HTTP_X_FORWARDED_PROTO": "https"})
    assert status == 200 and b'name="csrf"' in body
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie


def test_pages_over_plain_http_move_to_https():
    status, headers, _ = call("GET", "/login", headers={"HTTP_X_FORWARDED_PROTO": "http", "HTTP_HOST": "10.0.0.11"})
    assert status == 308 and headers["Location"] == "https://10.0.0.11/login"


def test_a_browser_without_a_session_is_sent_to_sign_in():
    status, headers, _ = call("GET", "/", headers={"HTTP_ACCEPT": "text/html", "HTTP_X_FORWARDED_PROTO": "https"})
    assert status == 303 and headers["Location"] == "/login?next=/"


def test_a_login_without_the_forms_csrf_cookie_is_refused(monkeypatch):
    monkeypatch.setattr(app, "with_db", lambda work: pytest.fail("the database was touched"))
    status, _, body = call(
        "POST",
        "/login",
        body=b"user=admin&password=x&csrf=abc",
        content_type="application/x-www-form-urlencoded",
        headers={"HTTP_X_FORWARDED_PROTO": "https", "HTTP_COOKIE": "modelswarm_login_csrf=other"},
    )
    assert status == 403 and b"expired" in body


def test_a_session_needs_its_csrf_token_for_unsafe_requests(fake_db, monkeypatch):
    user = Identity(name="ann", role="admin", kind="user", csrf_token="t0k3n")
    monkeypatch.setattr(app, "identify", lambda environ: user)
    status, _, body = call("POST", "/api/rollouts", body=ENTRY)
    assert status == 403 and "CSRF" in json.loads(body)["error"]
    status, _, _ = call("POST", "/api/rollouts", body=ENTRY, headers={"HTTP_X_CSRF_TOKEN": "t0k3n"})
    assert status == 201 and fake_db["recorded"][1:] == ("ann", "user")


def test_the_grants_endpoint_wants_nginxs_token(monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    monkeypatch.setenv("MODELSWARM_GRANTS_TOKEN_FILE", str(token))
    monkeypatch.setattr(app, "with_db", lambda work: pytest.fail("the database was touched"))
    assert call("GET", "/internal/grants")[0] == 401
    assert call("GET", "/internal/grants", headers=as_role("admin"))[0] == 401
    assert call("GET", "/internal/grants", headers={"HTTP_AUTHORIZATION": "Bearer wrong"})[0] == 401


# ------------------------------------------------------------------------------------------------ error hygiene


def test_every_answer_has_a_request_id_a_sane_one_is_kept(fake_db):
    _, headers, _ = call("GET", "/api/rollouts", headers={**as_role("viewer"), "HTTP_X_REQUEST_ID": "0f8a1c2e4b6d"})
    assert headers["X-Request-Id"] == "0f8a1c2e4b6d"
    _, headers, body = call("GET", "/api/nope", headers={"HTTP_X_REQUEST_ID": "no\r\nway"})
    assert headers["X-Request-Id"] != "no\r\nway" and json.loads(body)["request_id"] == headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("body", "extra", "status", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, {}, 413, "at most"),
        (b"[" * 30_000, {}, 400, "nested deeper than 64"),
        (b'{"model": "iris", "note": NaN}', {}, 400, "NaN"),
        (b'{"model": "\xff"}', {}, 400, "not UTF-8"),
        (b'{"model": 1e999}', {}, 400, "out of range"),
        (b"{}", {"CONTENT_LENGTH": "-1"}, 400, "Content-Length"),
        (b"{}", {"CONTENT_LENGTH": "1e3"}, 400, "Content-Length"),
        (b"{}", {"CONTENT_LENGTH": "9" * 30}, 413, "at most"),
        (b"{}", {"CONTENT_LENGTH": "80"}, 400, "shorter"),
        (b"{}", {"CONTENT_LENGTH": ""}, 411, "Content-Length"),
        (b"{}", {"HTTP_TRANSFER_ENCODING": "gzip"}, 400, "chunked"),
        (b"{}", {"CONTENT_TYPE": "application/json; charset=latin-1"}, 415, "application/json"),
        (b"{}", {"CONTENT_TYPE": "application/jsonp"}, 415, "application/json"),
    ],
)
def test_json_bodies_are_limited_and_refused_as_json(fake_db, body, extra, status, says):
    got, headers, answer = call("POST", "/api/rollouts", body=body, headers={**as_role("deploy"), **extra})
    assert got == status and headers["Content-Type"] == "application/json"
    assert says in json.loads(answer)["error"] and "recorded" not in fake_db


def test_a_failure_is_500_json_without_its_text_and_logged_with_the_request_id(fake_db, monkeypatch, capfd):
    def broken(conn, model, limit):
        raise RuntimeError("password=hunter2")

    monkeypatch.setattr(ledger, "history", broken)
    status, headers, body = call("GET", "/api/rollouts", headers={**as_role("viewer"), "HTTP_X_REQUEST_ID": "req-7"})
    assert status == 500 and headers["Content-Type"] == "application/json" and headers["X-Request-Id"] == "req-7"
    assert json.loads(body) == {"error": app.INTERNAL_ERROR, "request_id": "req-7"}
    log = capfd.readouterr().err
    assert "request_id=req-7 Traceback (most recent call last):" in log
    assert "request_id=req-7 RuntimeError: password=hunter2" in log


def test_the_databases_and_secrets_own_words_stay_in_the_log(monkeypatch, tmp_path, capfd):
    import psycopg2

    monkeypatch.setattr(app, "_prepared", True)
    monkeypatch.setenv("MODELSWARM_APP_DB_PASSWORD_FILE", str(tmp_path / "missing"))
    status, _, body = call("GET", "/healthz", headers={"HTTP_X_REQUEST_ID": "req-8"})
    assert status == 503 and json.loads(body)["database"] == "the console is not configured: a secret is missing"
    assert "request_id=req-8 503 GET /healthz: [Errno 2]" in capfd.readouterr().err

    (tmp_path / "password").write_text("pw\n")
    monkeypatch.setenv("MODELSWARM_APP_DB_PASSWORD_FILE", str(tmp_path / "password"))

    def refuse(**_):
        raise psycopg2.OperationalError('FATAL:  password authentication failed for user "console_app" at 10.0.0.5')

    monkeypatch.setattr(psycopg2, "connect", refuse)
    status, _, body = call("GET", "/api/rollouts", headers={**as_role("viewer"), "HTTP_X_REQUEST_ID": "req-9"})
    assert status == 503 and json.loads(body) == {"error": "database unavailable", "request_id": "req-9"}
    assert "request_id=req-9 503 GET /api/rollouts: database: FATAL:  password authentication failed" in (
        capfd.readouterr().err
    )


def test_the_page_says_what_failed_but_not_how(fake_db, monkeypatch, capfd):
    def docker_down():
        raise ConnectionError("unix:///var/run/docker.sock: Permission denied (uid 1000)")

    monkeypatch.setattr(app, "cluster", docker_down)
    status, headers, body = call("GET", "/", headers={**as_role("viewer"), "HTTP_X_REQUEST_ID": "req-10"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"Docker API unavailable (request id req-10)" in body and b"Permission denied" not in body
    assert "request_id=req-10 ConnectionError: unix:///var/run/docker.sock" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/api/nope", 404), ("PUT", "/api/keys", 405), ("GET", "/internal/grants", 401),
     ("GET", "/internal/x", 404), ("POST", "/api/whoami", 405), ("GET", "/api/keys", 401)],
)  # fmt: skip
def test_api_and_internal_refusals_are_json_with_a_message(method, path, status):
    got, headers, body = call(method, path)
    assert got == status and headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert answer["error"] and answer["request_id"] == headers["X-Request-Id"]


def test_the_console_image_carries_the_guard_it_imports(tmp_path):
    import subprocess
    import sys

    from modelswarm.lab import kit

    for name, content in kit._console_source().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    code = "import modelswarm.apps.console.app as a; print(a.httpguard.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(tmp_path))


# ------------------------------------------------------------------------------------------------ /metrics


class FakeService:
    def __init__(self, name, labels, replicas, running, mode="replicated"):
        modes = {"replicated": {"Replicated": {"Replicas": replicas}}, "global": {"Global": {}}}
        self.attrs = {
            "Spec": {
                "Name": name, "Labels": labels, "Mode": modes[mode],
                "TaskTemplate": {"ContainerSpec": {"Image": f"{name}:1@sha256:{'0' * 64}"}},
            },
        }  # fmt: skip
        self._tasks = [{"Status": {"State": "running"}}] * running + [{"Status": {"State": "starting"}}]

    def tasks(self, filters=None):
        return self._tasks


class FakeNode:
    def __init__(self, hostname, role, state, reachability=None):
        self.attrs = {
            "Description": {"Hostname": hostname, "Engine": {"EngineVersion": "20.10.24"}},
            "Spec": {"Role": role, "Availability": "active", "Labels": {}},
            "Status": {"State": state, "Addr": "10.0.0.1"},
            "ManagerStatus": {"Reachability": reachability, "Leader": False} if role == "manager" else None,
        }


class FakeDocker:
    def __init__(self, nodes, services):
        self.nodes = type("Nodes", (), {"list": lambda _self: nodes})()
        self.services = type("Services", (), {"list": lambda _self: services})()

    def close(self):
        pass


def scrape_with(monkeypatch, tmp_path, docker=None, database=True, token="scrape-s3cret"):
    """(status, headers, {series: value}) of one GET /metrics with `token`."""
    from prometheus_client.parser import text_string_to_metric_families

    path = tmp_path / "monitoring-token"
    path.write_text("scrape-s3cret\n")
    monkeypatch.setenv("MODELSWARM_MONITORING_TOKEN_FILE", str(path))

    def client():
        if docker is None:
            raise RuntimeError("the swarm does not have a leader")
        return docker

    def with_db(work):
        if not database:
            raise app.HTTPError(503, "database down")
        return work(FakeConnection())

    monkeypatch.setattr(app, "docker_client", client)
    monkeypatch.setattr(app, "with_db", with_db)
    status, headers, body = call("GET", "/metrics", headers={"HTTP_AUTHORIZATION": f"Bearer {token}"})
    if status != 200:
        return status, headers, {}
    series = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return status, headers, series


class FakeConnection:
    def cursor(self):
        outer = self

        class Cursor:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def execute(self, sql):
                outer.sql = sql

            def fetchone(self):
                return (1,)

        return Cursor()


CLUSTER = FakeDocker(
    nodes=[
        FakeNode("node1", "manager", "ready", "reachable"),
        FakeNode("node2", "manager", "down", "unreachable"),
        FakeNode("node3", "manager", "ready", "reachable"),
        FakeNode("node4", "worker", "ready"),
    ],
    services=[
        FakeService("model-iris", {contract.LABEL_MODEL: "iris", contract.LABEL_REPLICAS: "3"}, 1, 1),
        FakeService("model-old", {contract.LABEL_MODEL: "old"}, 2, 2),  # deployed before the label existed
        FakeService("modelswarm_registry", {contract.LABEL_PLATFORM: "registry"}, 1, 0),
    ],
)


def test_metrics_take_the_monitoring_token_only(monkeypatch, tmp_path):
    assert scrape_with(monkeypatch, tmp_path, CLUSTER, token="wrong")[0] == 401
    assert scrape_with(monkeypatch, tmp_path, CLUSTER, token=ROLE_KEYS["admin"])[0] == 401
    status, headers, _ = scrape_with(monkeypatch, tmp_path, CLUSTER)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_metrics_show_the_swarm_the_models_declared_replicas_and_the_database(monkeypatch, tmp_path):
    _, _, series = scrape_with(monkeypatch, tmp_path, CLUSTER)

    def value(name, **labels):
        return series[(name, tuple(sorted(labels.items())))]

    assert value("modelswarm_swarm_up") == 1 and value("modelswarm_console_database_up") == 1
    assert [value("modelswarm_swarm_node_ready", node=n, role=r) for n, r in
            [("node1", "manager"), ("node2", "manager"), ("node4", "worker")]] == [1, 0, 1]  # fmt: skip
    assert [value("modelswarm_swarm_manager_reachable", node=n) for n in ("node1", "node2", "node3")] == [1, 0, 1]
    assert ("modelswarm_swarm_manager_reachable", (("node", "node4"),)) not in series  # a worker is no manager
    # iris was scaled to 1 below the 3 it declares; a service from before the label counts its spec's replicas.
    assert (value("modelswarm_model_replicas_declared", model="iris"), value("modelswarm_model_replicas_running",
            model="iris")) == (3, 1)  # fmt: skip
    assert value("modelswarm_model_replicas_declared", model="old") == 2
    registry = {"service": "modelswarm_registry", "platform": "registry"}
    assert (value("modelswarm_swarm_service_replicas_desired", **registry),
            value("modelswarm_swarm_service_tasks_running", **registry)) == (1, 0)  # fmt: skip
    assert value("modelswarm_swarm_service_tasks_running", service="model-iris", platform="") == 1


def test_metrics_without_quorum_or_database_still_answer_with_those_at_0(monkeypatch, tmp_path, capfd):
    status, _, series = scrape_with(monkeypatch, tmp_path, docker=None, database=False)
    assert status == 200
    assert series == {("modelswarm_swarm_up", ()): 0, ("modelswarm_console_database_up", ()): 0}
    assert "metrics: the swarm did not answer (RuntimeError)" in capfd.readouterr().err


def test_alerts_from_alertmanager_become_one_log_line_each(monkeypatch, tmp_path, capfd):
    token = tmp_path / "monitoring-token"
    token.write_text("mon-s3cret\n")
    monkeypatch.setenv("MODELSWARM_MONITORING_TOKEN_FILE", str(token))
    webhook = {
        "version": "4", "status": "firing", "receiver": "platform",
        "alerts": [
            {"status": "firing", "labels": {"alertname": "ModelReplicasBelowSpec", "model": "iris"},
             "annotations": {"summary": "Model iris: only 1 replica(s) run"}, "startsAt": "2026-12-07T04:50:00Z",
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "/prometheus/graph"},
            {"status": "resolved", "labels": {"alertname": "NodeDown", "node": "node2"}, "annotations": {},
             "startsAt": "2026-12-07T04:40:00Z", "endsAt": "2026-12-07T04:45:00Z"},
        ],
    }  # fmt: skip
    assert call("POST", "/internal/alerts", webhook, headers=as_role("admin"))[0] == 401  # a key is not the token
    capfd.readouterr()
    status, _, body = call("POST", "/internal/alerts", webhook, headers={"HTTP_AUTHORIZATION": "Bearer mon-s3cret"})
    assert status == 200 and json.loads(body) == {"received": 2}
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith('{"annotations"')]
    assert [(a["event"], a["status"], a["labels"]["alertname"]) for a in lines] == [
        ("alert", "firing", "ModelReplicasBelowSpec"), ("alert", "resolved", "NodeDown"),
    ]  # fmt: skip
    status, _, body = call(
        "POST", "/internal/alerts", {"alerts": "x"}, headers={"HTTP_AUTHORIZATION": "Bearer mon-s3cret"}
    )
    assert status == 400 and "webhook JSON" in json.loads(body)["error"]
