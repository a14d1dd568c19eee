"""The console's HTTP layer: routing, who may call what, status codes and error bodies, with the database replaced
by a fake (the identity checks themselves run on a real PostgreSQL in test_accounts.py)."""

import io
import json

import pytest

from modelswarm import contract
from modelswarm.apps.console import app, ledger
from modelswarm.apps.console.accounts import Identity


def call(method, path, body=None, content_type="application/json", query="", headers=None):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
        **(headers or {}),
    }
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    payload = b"".join(app.application(environ, start_response))
    return int(seen["status"].split()[0]), seen["headers"], payload


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
    assert json.loads(body) == {"error": "no such endpoint: GET /nope"}


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
