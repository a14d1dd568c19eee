"""The model server's answers, in process: every refusal is JSON with a message and a request id, a model's own
exception never shows its text, the metrics count outcomes. Under gunicorn, with raw sockets: test_modelserver_fuzz."""

import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import wsgi_call

from modelswarm.apps import modelserver

SERVER_DIR = os.path.dirname(modelserver.__file__)
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def server(probe_bundle):
    """server.py loaded as the image loads it, on the probe bundle, with a small body limit."""
    saved_env, saved_path = dict(os.environ), list(sys.path)
    os.environ.update(MODELSWARM_BUNDLE_DIR=str(probe_bundle), MODELSWARM_MAX_BODY=str(MAX_BODY))
    try:
        spec = importlib.util.spec_from_file_location("modelserver_under_test", os.path.join(SERVER_DIR, "server.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path


def call(server, method="POST", path="/predict", body=b"", content_type="application/json", headers=None):
    return wsgi_call(server.application, method, path, body, content_type, headers=headers)


def refused(server, expected_status, **kwargs):
    """The answer is `expected_status`, JSON, with a message and the request id of its header; returns the message."""
    status, headers, body = call(server, **kwargs)
    assert status == expected_status, body
    assert headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert answer["error"] and answer["request_id"] == headers["X-Request-Id"]
    return answer["error"]


def metrics(server) -> dict[tuple, float]:
    """Every sample of /metrics, by (name, its labels as sorted (key, value) pairs)."""
    status, headers, body = call(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            pairs = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels)))
            samples[(name, pairs)] = float(value)
    return samples


def sample(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def counts(server) -> dict[str, int]:
    """Answered predictions by status code, and errors by kind (as 'kind:...')."""
    found: dict[str, int] = {}
    for (name, pairs), value in metrics(server).items():
        labels = dict(pairs)
        if name == "modelswarm_model_requests_total":
            found[labels["code"]] = int(value)
        elif name == "modelswarm_model_errors_total":
            found[f"kind:{labels['kind']}"] = int(value)
    return found


def test_a_prediction_is_200_json_with_a_request_id(server):
    status, headers, body = call(server, body={"x": 1})
    assert status == 200 and json.loads(body)["prediction"] == {"echo": {"x": 1}}
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("0f8a1c2e4b6d8f0a1c2e4b6d8f0a1c2e", True), ("ci-run:42.7", True), ("a b", False), ("x" * 200, False),
     ("id\r\nX-Evil: 1", False), ("", False), ("ünï", False)],
)  # fmt: skip
def test_a_sane_request_id_is_kept_any_other_replaced(server, sent, kept):
    _, headers, _ = call(server, "GET", "/health", headers={"HTTP_X_REQUEST_ID": sent})
    assert (headers["X-Request-Id"] == sent) is kept
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", headers["X-Request-Id"])


def test_unknown_path_is_404_and_wrong_method_405_with_allow(server):
    assert "no such endpoint" in refused(server, 404, path="/nope")
    refused(server, 404, method="GET", path="/predict/")
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, _ = call(server, method)
        assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = call(server, "POST", "/health")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert call(server, "HEAD", "/health")[0] == 200


@pytest.mark.parametrize(
    "content_type",
    ["", "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "application/json; charset=latin-1",
     "multipart/form-data; boundary=x"],
)  # fmt: skip
def test_a_body_that_is_not_json_by_its_content_type_is_415(server, content_type):
    assert "application/json" in refused(server, 415, body={"x": 1}, content_type=content_type)


def test_json_with_a_utf8_charset_or_other_case_is_accepted(server):
    for content_type in ("application/json; charset=utf-8", "Application/JSON", 'application/json;charset="UTF-8"'):
        assert call(server, body={"x": 1}, content_type=content_type)[0] == 200


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "nested deeper than 64"),
        (b"[" * 100_000, "nested deeper than 64"),
        (b"NaN", "NaN is not JSON"),
        (b'{"x": -Infinity}', "Infinity is not JSON"),
        (b"[1e999]", "out of range"),
        (b"1" * 5000, "4300 digits"),
        (b'{"x": "\xff\xfe"}', "not UTF-8"),
        (b'\xef\xbb\xbf{"x": 1}', "malformed JSON"),
        (b'{"x": [1, 2', "malformed JSON"),
        (b'{"x": "abc', "malformed JSON"),
        (b"{} trailing", "malformed JSON"),
        (b"", "empty body"),
        (b" \n\t", "empty body"),
    ],
)
def test_malformed_json_is_400_saying_why(server, body, says):
    assert says in refused(server, 400, body=body)


def test_nesting_up_to_the_limit_is_fine_and_brackets_in_strings_do_not_count(server):
    assert call(server, body=b"[" * 64 + b"]" * 64)[0] == 200
    assert call(server, body=json.dumps({"text": "[" * 1000 + '\\"{' * 100}).encode())[0] == 200


def test_body_size_and_framing(server):
    assert str(MAX_BODY) in refused(server, 413, body=b"[" + b"1," * MAX_BODY + b"1]")
    assert "Content-Length" in refused(server, 400, headers={"CONTENT_LENGTH": "-1"})
    assert "Content-Length" in refused(server, 400, headers={"CONTENT_LENGTH": "12abc"})
    assert str(MAX_BODY) in refused(server, 413, headers={"CONTENT_LENGTH": "9" * 40})
    assert "shorter" in refused(server, 400, body=b"[1]", headers={"CONTENT_LENGTH": "10"})
    assert "Content-Length" in refused(server, 411, headers={"CONTENT_LENGTH": ""})
    assert "chunked" in refused(server, 400, headers={"HTTP_TRANSFER_ENCODING": "gzip"})
    chunked = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}
    assert call(server, body=b'{"x": 2}', headers=chunked)[0] == 200
    assert str(MAX_BODY) in refused(server, 413, body=b" " * (MAX_BODY + 1), headers=chunked)


def test_a_body_the_server_cannot_read_is_400(server):
    class Broken(io.BytesIO):
        def read(self, *_):
            raise OSError("Invalid chunk size")

    status, _, body = call(server, headers={"wsgi.input": Broken(), "HTTP_TRANSFER_ENCODING": "chunked"})
    assert status == 400 and b"could not be read" in body and b"Invalid chunk" not in body


def test_a_refusal_shows_its_own_text_only(server):
    assert refused(server, 422, body={"do": "refuse"}) == "send a number in x"


@pytest.mark.parametrize("legacy", ["value", "type", "key", "index"])
def test_a_plain_valueerror_and_kin_stay_422_but_their_text_is_hidden(server, legacy, capfd):
    status, headers, body = call(server, body={"do": legacy})
    assert status == 422 and b"hunter2" not in body
    assert json.loads(body)["error"] == "the model refused this input"
    log = capfd.readouterr().err
    assert f"request_id={headers['X-Request-Id']}" in log and "hunter2" in log


@pytest.mark.parametrize("failure", ["crash", "nan", "object"])
def test_a_models_failure_is_500_generic_and_its_traceback_goes_to_the_log(server, failure, capfd):
    status, headers, body = call(server, body={"do": failure}, headers={"HTTP_X_REQUEST_ID": "req-0042"})
    assert status == 500 and headers["Content-Type"] == "application/json" and headers["X-Request-Id"] == "req-0042"
    answer = json.loads(body)
    assert answer == {"error": server.MODEL_FAILED, "request_id": "req-0042"}
    log = capfd.readouterr().err
    assert "request_id=req-0042 Traceback (most recent call last):" in log
    if failure == "crash":
        assert "request_id=req-0042 RuntimeError: password=hunter2" in log


def test_a_fault_of_the_server_itself_is_500_json_too(server, monkeypatch, capfd):
    monkeypatch.setattr(server, "_metrics", lambda: 1 / 0)
    status, headers, body = call(server, "GET", "/metrics")
    assert status == 500 and json.loads(body) == {"error": "internal error", "request_id": headers["X-Request-Id"]}
    assert "ZeroDivisionError" in capfd.readouterr().err


def test_metrics_count_each_prediction_by_code_and_each_error_by_kind(server):
    before = counts(server)
    call(server, body={"x": 1})
    call(server, body=b"{")
    call(server, body={"x": 1}, content_type="text/plain")
    call(server, body={"do": "refuse"})
    call(server, body={"do": "value"})
    call(server, body={"do": "crash"})
    call(server, "GET", "/health")  # not a prediction
    call(server, "GET", "/info")
    after = counts(server)
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
        "200": 1, "400": 1, "415": 1, "422": 2, "500": 1,
        "kind:bad_request": 2, "kind:rejected": 2, "kind:model_error": 1,
    }  # fmt: skip


def test_metrics_carry_the_model_and_version_and_time_each_prediction(server):
    before = metrics(server)
    for _ in range(3):
        call(server, body={"x": 1})
    after = metrics(server)
    labels = {"model": server.INFO["name"], "version": server.INFO["version"]}
    count = "modelswarm_model_request_duration_seconds_count"
    assert sample(after, count, **labels) - sample(before, count, **labels) == 3
    inf = sample(after, "modelswarm_model_request_duration_seconds_bucket", le="+Inf", **labels)
    assert inf == sample(after, count, **labels) > 0
    assert sample(after, "modelswarm_model_requests_total", code="200", **labels) >= 3
    assert sample(after, "modelswarm_model_in_flight_requests", **labels) == 0


def test_the_depth_limit_is_a_setting():
    code = "import httpguard; print(httpguard.MAX_JSON_DEPTH)"
    env = {**os.environ, "MODELSWARM_MAX_JSON_DEPTH": "5"}
    out = subprocess.run([sys.executable, "-c", code], cwd=SERVER_DIR, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "5"


def test_the_depth_scan_is_linear_and_skips_strings():
    from modelswarm.apps.modelserver import httpguard

    assert httpguard.json_depth(b'{"a": [1, {"b": "[[[["}]}') == 3
    assert httpguard.json_depth(b'["\\\\", "\\"[[", [[]]]') == 3
    assert httpguard.json_depth(b'"unterminated [[[[') == 0
    assert httpguard.json_depth(b"[" * 1_000_000) == 1_000_000


# ------------------------------------------------------------------------------------------- prediction log


def prediction_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"event":"prediction"')]


def test_each_prediction_logs_one_json_line_with_the_key_name_never_the_key_or_the_body(server, capfd):
    capfd.readouterr()
    marker = "payload-marker-5d41"
    secret_key = "msk_live_never_in_a_log_0123456789"
    status, headers, _ = call(
        server,
        body=json.dumps({"x": 1, "note": marker}).encode(),
        headers={"HTTP_X_REQUEST_ID": "req-0001-abcd", "HTTP_X_MODELSWARM_KEY_NAME": "alice",
                 "HTTP_AUTHORIZATION": f"Bearer {secret_key}"},
    )  # fmt: skip
    call(server, method="GET", path="/health")  # not a prediction: no line
    refused(server, 400, body=b"{not json", headers={"HTTP_X_MODELSWARM_KEY_NAME": "bob"})
    out = capfd.readouterr().out
    lines = prediction_lines(out)
    assert status == 200 and len(lines) == 2, out
    first, second = lines
    assert set(first) == {"event", "time", "request_id", "model", "version", "status", "latency_ms", "key"}
    assert (first["request_id"], first["model"], first["version"], first["status"], first["key"]) == (
        "req-0001-abcd",
        server.INFO["name"],
        server.INFO["version"],
        200,
        "alice",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"]) and first["latency_ms"] >= 0
    assert headers["X-Request-Id"] == "req-0001-abcd"  # the id the client (or NGINX) sent, logged and returned
    assert (second["status"], second["key"]) == (400, "bob") and re.fullmatch(r"[0-9a-f]{32}", second["request_id"])
    assert marker not in out and secret_key not in out


def test_a_key_name_header_that_is_not_a_name_is_logged_as_a_dash(server, capfd):
    capfd.readouterr()
    call(server, body={"x": 1}, headers={"HTTP_X_MODELSWARM_KEY_NAME": 'x" injected="1'})
    call(server, body={"x": 1})
    assert [line["key"] for line in prediction_lines(capfd.readouterr().out)] == ["-", "-"]


def test_the_body_is_logged_only_when_the_model_opts_in(server, capfd, monkeypatch):
    monkeypatch.setattr(server, "LOG_PAYLOAD", True)
    capfd.readouterr()
    call(server, body={"x": 1, "note": "opted-in"})
    (line,) = prediction_lines(capfd.readouterr().out)
    assert json.loads(line["payload"]) == {"x": 1, "note": "opted-in"}


def test_the_log_line_stays_one_json_line_whatever_the_request_carries(server, capfd, monkeypatch):
    """The line is built as text: a request id or key name with quotes or a newline, or a body with quotes, a raw
    newline, U+2028 and bytes that are not UTF-8, must neither break it nor split it."""
    monkeypatch.setattr(server, "LOG_PAYLOAD", True)
    capfd.readouterr()
    body = '{"x": 1,\n "note": "a \\"quoted\\" \u2028 line"}'.encode()
    call(server, body=body, headers={"HTTP_X_REQUEST_ID": 'id"},"x":"', "HTTP_X_MODELSWARM_KEY_NAME": "k\n"})
    call(server, body=b'{"x": "\xff\xfe"}')
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if '"event":"prediction"' in line]
    assert len(lines) == 2, out
    first, second = (json.loads(line) for line in lines)
    assert re.fullmatch(r"[0-9a-f]{32}", first["request_id"]) and first["key"] == "-"
    assert first["payload"] == body.decode() and second["payload"] == '{"x": "\ufffd\ufffd"}'


def test_the_log_lines_time_is_utc_to_the_millisecond_across_a_seconds_turn(server, monkeypatch):
    """The second's text is kept between lines: it must change with the second, and the milliseconds never reach
    1000."""
    turn = 1796634000  # 2026-12-07T09:00:00Z
    for now, text in ((turn - 0.0004, "2026-12-07T08:59:59.999Z"), (turn + 0.0004, "2026-12-07T09:00:00.000Z"),
                      (turn + 0.5, "2026-12-07T09:00:00.500Z"), (turn - 0.75, "2026-12-07T08:59:59.250Z")):  # fmt: skip
        monkeypatch.setattr(server.time, "time", lambda now=now: now)
        assert server._utc_now() == text


def test_the_log_and_the_metrics_each_turn_off(server, capfd, monkeypatch):
    before = counts(server)
    monkeypatch.setattr(server, "PREDICTION_LOG", False)
    monkeypatch.setattr(server, "METRICS", False)
    capfd.readouterr()
    status, _, _ = call(server, body={"x": 1})
    assert status == 200
    assert prediction_lines(capfd.readouterr().out) == []
    assert counts(server) == before


@pytest.mark.parametrize("logged", [True, False])
def test_gunicorn_is_told_to_skip_its_access_line_only_when_the_prediction_logged_its_own(server, monkeypatch, logged):
    """gunicorn_conf.PredictionLogger leaves out the access line of a request whose environ says so: a prediction
    with its JSON line. With the prediction log off, and for any other request, gunicorn's line stays."""
    monkeypatch.setattr(server, "PREDICTION_LOG", logged)
    body = json.dumps({"x": 1}).encode()
    prediction = {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "CONTENT_TYPE": "application/json",
                  "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}  # fmt: skip
    health = {"REQUEST_METHOD": "GET", "PATH_INFO": "/health", "wsgi.input": io.BytesIO(b"")}
    for environ in (prediction, health):
        server.application(environ, lambda status, headers: None)
    assert prediction.get("modelswarm.logged", False) is logged
    assert "modelswarm.logged" not in health


def test_the_latency_objective_is_exported_for_the_alert(server):
    """slo_p99_ms of the manifest (MODELSWARM_SLO_P99_MS; 1000 ms when it sets none), in seconds."""
    objective = sample(metrics(server), "modelswarm_model_latency_objective_seconds", **server._LABELS)
    assert objective == 1.0
