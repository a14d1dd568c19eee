"""The console's HTTP layer: routing, status codes and error bodies, with the database replaced by a fake."""

import io
import json

import pytest

from modelswarm.apps.console import app, ledger


def call(method, path, body=None, content_type="application/json", query=""):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
    }
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    payload = b"".join(app.application(environ, start_response))
    return int(seen["status"].split()[0]), seen["headers"], payload


@pytest.fixture
def fake_db(monkeypatch):
    stored = {}

    def with_db(work):
        return work(stored)

    monkeypatch.setattr(app, "with_db", with_db)
    monkeypatch.setattr(
        ledger, "record", lambda conn, entry, **identity: {"id": 1, **entry, **identity, "duration_s": 1.0}
    )
    monkeypatch.setattr(ledger, "get", lambda conn, entry_id: {"id": entry_id} if entry_id == 1 else None)
    return stored


def test_unknown_path_is_404_json():
    status, headers, body = call("GET", "/nope")
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": "no such endpoint: GET /nope"}


def test_wrong_method_is_405_with_allow():
    status, headers, _ = call("DELETE", "/api/rollouts")
    assert status == 405 and headers["Allow"] == "POST, GET"


def test_malformed_json_is_400(fake_db):
    status, _, body = call("POST", "/api/rollouts", body=b"{not json")
    assert status == 400 and "malformed JSON" in json.loads(body)["error"]


def test_non_json_content_type_is_415(fake_db):
    status, _, _ = call("POST", "/api/rollouts", body=b"model=x", content_type="application/x-www-form-urlencoded")
    assert status == 415


def test_invalid_entry_is_400_with_details_and_never_reaches_the_database(monkeypatch):
    monkeypatch.setattr(app, "with_db", lambda work: pytest.fail("the database was touched"))
    status, _, body = call("POST", "/api/rollouts", body={"model": "iris"})
    assert status == 400
    assert {"to_version", "image", "result"} <= set(json.loads(body)["details"])


def test_valid_entry_is_201(fake_db):
    entry = {
        "model": "iris",
        "to_version": "2",
        "image": "r/iris:2",
        "note": "ci",
        "started_at": "2026-11-22T10:00:00Z",
        "finished_at": "2026-11-22T10:00:01Z",
        "result": "succeeded",
    }
    status, _, body = call("POST", "/api/rollouts", body=entry)
    assert status == 201 and json.loads(body)["id"] == 1


def test_missing_entry_is_404(fake_db):
    assert call("GET", "/api/rollouts/2")[0] == 404
    assert call("GET", "/api/rollouts/1")[0] == 200


def test_bad_limit_is_400(fake_db):
    status, _, body = call("GET", "/api/rollouts", query="limit=ten")
    assert status == 400 and "whole number" in json.loads(body)["error"]


def test_database_down_makes_health_503(monkeypatch):
    def down(_work):
        raise app.HTTPError(app.HTTPStatus.SERVICE_UNAVAILABLE, "database unavailable: connection refused")

    monkeypatch.setattr(app, "with_db", down)
    status, _, body = call("GET", "/healthz")
    assert status == 503
    assert json.loads(body) == {"status": "unavailable", "database": "database unavailable: connection refused"}
