"""Model server: a WSGI app that gunicorn runs with several workers inside each model image.

  POST /predict   JSON in -> {"prediction": ...}; errors below, always JSON {"error": ..., "request_id": ...}
  GET  /health    200 once the model is loaded (the image HEALTHCHECK and swarm's rollout gate use it)
  GET  /info      name, version, image (with digest), source hash
  GET  /metrics   Prometheus text: client predictions by status code, their duration, in flight, errors by kind -
                  exact across gunicorn's workers (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR)

Client errors: 400 a body that is not UTF-8 or not JSON, nests deeper than MODELSWARM_MAX_JSON_DEPTH (64), holds
NaN/Infinity or an out-of-range number, a bad Content-Length or transfer coding, a body cut short; 404 unknown path;
405 wrong method (with Allow); 411 no length; 413 over MODELSWARM_MAX_BODY; 415 not application/json; 422 input
the model refuses. A model's own exception is 500 with a generic message: its text and traceback go only to stderr,
tagged with the request id (X-Request-Id from NGINX if sane, else a new one; echoed on every answer).

The refusal the caller may read is modelswarm_model.RefusedInput (its text is the answer's message). ValueError,
TypeError, KeyError and IndexError still give 422, as before, but with a generic message: their text is logged only.

Each worker imports the bundle's entry point, runs its optional load() and then answers each of the bundle's example
inputs (MODELSWARM_EXAMPLES) before it accepts requests: a model that cannot load, or that answers an example with
anything but JSON (an exception, a refusal, NaN), stops the worker's boot, so gunicorn exits and swarm rolls the
rollout back. The log then holds one line `modelswarm-example-failed {json}` (which example, the status a caller
would have got, the exception's class, never its text) and the traceback. `python server.py` does the same checks
and prints `modelswarm-examples-passed {json}` (`modelswarm validate` runs it in the built image).
gunicorn finishes in-flight requests on SIGTERM (graceful timeout).
The standard library and prometheus_client only (pinned in the image's venv next to gunicorn and the model's own
requirements); httpguard.py and modelswarm_model.py sit next to it (the model imports the latter), gunicorn_conf.py
makes gunicorn's own refusals JSON and keeps the metrics of workers that exit.

Metrics count client predictions only (POST /predict): health checks, /info, /metrics and the example inputs a
worker answers at boot (the rollout gate) are not predictions.

Each prediction also writes one JSON line to stdout (the container's log, which LogSpout carries to Logstash):
{"event": "prediction", "time", "request_id", "model", "version", "status", "latency_ms", "key"}, where "key" is
the name of the API key NGINX checked (X-Modelswarm-Key-Name), never the key. The request's body is in it
("payload") only when the model opts in (MODELSWARM_LOG_PAYLOAD=1, from `log_payload: true` in modelswarm.yml).
MODELSWARM_PREDICTION_LOG=0 and MODELSWARM_METRICS=0 turn each off (the cost benchmark compares them).
"""

import importlib.util
import json
import os
import re
import sys
import time
from http import HTTPStatus

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # the modules next to this file, for the server and for the model's own imports

import httpguard  # noqa: E402
from httpguard import HTTPError  # noqa: E402
from modelswarm_model import RefusedInput  # noqa: E402

BUNDLE_DIR = os.environ.get("MODELSWARM_BUNDLE_DIR", "/opt/model/bundle")
ENTRYPOINT = os.environ.get("MODELSWARM_ENTRYPOINT", "model.py")
MAX_BODY = int(os.environ.get("MODELSWARM_MAX_BODY", str(8 * 1024 * 1024)))
INFO = {
    "name": os.environ.get("MODELSWARM_MODEL", "unknown"),
    "version": os.environ.get("MODELSWARM_VERSION", "unknown"),
    "image": os.environ.get("MODELSWARM_IMAGE", ""),
    "source_hash": os.environ.get("MODELSWARM_SOURCE_HASH", ""),
}
METHODS = {"/predict": ("POST",), "/health": ("GET", "HEAD"), "/info": ("GET", "HEAD"), "/metrics": ("GET", "HEAD")}
PREDICTION_LOG = os.environ.get("MODELSWARM_PREDICTION_LOG", "1") != "0"
LOG_PAYLOAD = os.environ.get("MODELSWARM_LOG_PAYLOAD", "0") == "1"
METRICS = os.environ.get("MODELSWARM_METRICS", "1") != "0"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")  # a key's name as NGINX sends it; anything else is "-"
LEGACY_REFUSALS = (ValueError, TypeError, KeyError, IndexError)  # 422 before RefusedInput existed: text now hidden
MODEL_FAILED = "the model failed on this input; its operators find the details in the log under this request id"


def _load_model():
    sys.path.insert(0, BUNDLE_DIR)
    spec = importlib.util.spec_from_file_location("model", os.path.join(BUNDLE_DIR, ENTRYPOINT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "load"):
        module.load()
    return module


class ExampleFailed(RuntimeError):
    """An example input got an answer other than 200 with JSON: this version must not serve."""


EXAMPLES = os.environ.get("MODELSWARM_EXAMPLES", "")  # the bundle's examples file ("" in images built before)
EXAMPLE_FAILED = "modelswarm-example-failed"
EXAMPLES_PASSED = "modelswarm-examples-passed"


def _answer_example(model, example):
    """None when predict answers `example` with JSON; else (the status a caller would get, the exception raised,
    what went wrong in words without the exception's text)."""
    try:
        result = model.predict(example)
    except RefusedInput as exc:
        return HTTPStatus.UNPROCESSABLE_ENTITY, exc, "the model refused it"
    except LEGACY_REFUSALS as exc:
        return HTTPStatus.UNPROCESSABLE_ENTITY, exc, "the model refused it"
    except Exception as exc:
        return HTTPStatus.INTERNAL_SERVER_ERROR, exc, "the model raised an exception"
    try:
        json.dumps(result, allow_nan=False)
    except Exception as exc:
        return HTTPStatus.INTERNAL_SERVER_ERROR, exc, "the answer is not JSON"
    return None


def _run_examples(model):
    """Answer every example input; raise ExampleFailed at the first one that fails. Returns how many passed."""
    if not EXAMPLES:
        return 0
    with open(os.path.join(BUNDLE_DIR, EXAMPLES), encoding="utf-8") as handle:
        examples = json.load(handle)
    for number, example in enumerate(examples, start=1):
        failed = _answer_example(model, example)
        if failed is None:
            continue
        status, exc, what = failed
        report = {
            "model": INFO["name"], "version": INFO["version"], "example": number, "of": len(examples),
            "file": EXAMPLES, "status": status.value, "exception": type(exc).__name__, "what": what,
        }  # fmt: skip
        httpguard.log_failure(f"example-{number}", f"example {number} of {len(examples)}: {what}", exc)
        sys.stderr.write(f"{EXAMPLE_FAILED} {json.dumps(report)}\n")
        sys.stderr.flush()
        raise ExampleFailed(f"example {number} of {len(examples)} in {EXAMPLES} failed: {status.value}, {what}")
    return len(examples)


MODEL = _load_model()  # at import: a worker that cannot load the model fails to boot
EXAMPLES_ANSWERED = _run_examples(MODEL)  # ... and so does one that cannot answer its own examples
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)  # before prometheus_client is imported: it writes its files there

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# This module's own registry (a second load of the module, as the unit tests do, registers its own). With
# PROMETHEUS_MULTIPROC_DIR, every worker writes its values to files there and /metrics adds them all up.
REGISTRY = CollectorRegistry()
_LABELS = {"model": INFO["name"], "version": INFO["version"]}
REQUESTS = Counter(
    "modelswarm_model_requests", "Client predictions answered, by HTTP status code.",
    ["model", "version", "code"], registry=REGISTRY,
)  # fmt: skip
DURATION = Histogram(
    "modelswarm_model_request_duration_seconds", "Seconds from a prediction's arrival to its answer.",
    ["model", "version"], registry=REGISTRY,
)  # fmt: skip
IN_FLIGHT = Gauge(
    "modelswarm_model_in_flight_requests", "Client predictions being answered now.",
    ["model", "version"], registry=REGISTRY, multiprocess_mode="livesum",
)  # fmt: skip
OBJECTIVE = Gauge(
    "modelswarm_model_latency_objective_seconds", "The model's p99 latency objective (slo_p99_ms in modelswarm.yml).",
    ["model", "version"], registry=REGISTRY, multiprocess_mode="max",
)  # fmt: skip
OBJECTIVE.labels(**_LABELS).set(int(os.environ.get("MODELSWARM_SLO_P99_MS", "1000")) / 1000)
ERRORS = Counter(
    "modelswarm_model_errors", "Predictions not answered 200, by kind: bad_request (the request), rejected (the "
    "model refused the input), model_error (the model failed).",
    ["model", "version", "kind"], registry=REGISTRY,
)  # fmt: skip


# This model's and version's series, looked up once (a labels() call per request costs more than the increment).
_IN_FLIGHT = IN_FLIGHT.labels(**_LABELS)
_DURATION = DURATION.labels(**_LABELS)
_ANSWERED: dict[int, object] = {}


def _answered(code: int):
    child = _ANSWERED.get(code)
    if child is None:
        child = _ANSWERED[code] = REQUESTS.labels(code=str(code), **_LABELS)
    return child


def _error(kind):
    ERRORS.labels(kind=kind, **_LABELS).inc()


def _predict(environ, rid):
    """(status, JSON text) of one prediction."""
    try:
        httpguard.require_media_type(environ, "application/json")
        body = environ["modelswarm.body"] = httpguard.read_body(environ, MAX_BODY)
        data = httpguard.parse_json(body)
    except HTTPError:
        _error("bad_request")
        raise
    try:
        result = MODEL.predict(data)
    except RefusedInput as exc:
        _error("rejected")
        raise HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc) or "the model refused this input") from exc
    except LEGACY_REFUSALS as exc:
        _error("rejected")
        httpguard.log_failure(rid, f"422: the model raised {type(exc).__name__}, not RefusedInput: text not shown", exc)
        raise HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, "the model refused this input") from exc
    except Exception as exc:  # the model failed: log it, answer without its text, keep serving
        _error("model_error")
        httpguard.log_failure(rid, f"500: the model raised {type(exc).__name__}", exc)
        raise HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, MODEL_FAILED) from exc
    try:  # an answer JSON cannot carry (NaN, objects) is the model's error, not the client's
        text = json.dumps({"prediction": result, "model": INFO["name"], "version": INFO["version"]}, allow_nan=False)
    except Exception as exc:
        _error("model_error")
        httpguard.log_failure(rid, "500: the model's answer is not JSON", exc)
        raise HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, MODEL_FAILED) from exc
    return HTTPStatus.OK, text


# The prediction log line's fixed part (model, version), JSON-encoded once; the other fields are numbers or tokens that
# need no escaping: the request id (httpguard.request_id keeps only [A-Za-z0-9._:-]) and the key name (_KEY_NAME).
_LOG_FIXED = json.dumps({"model": INFO["name"], "version": INFO["version"]}, separators=(",", ":"))[1:-1]
_log_second = (-1, "")  # (the whole second, its UTC text): formatted once a second, not once a line


def _utc_now() -> str:
    """Now, in UTC, to the millisecond (truncated): 2026-12-07T08:00:02.123Z."""
    global _log_second
    now = time.time()
    second = int(now)
    cached = _log_second  # one read of one tuple: a thread that swaps it meanwhile cannot mix two seconds
    if cached[0] != second:
        cached = _log_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{min(int((now - second) * 1000), 999):03d}Z"


def _log_prediction(environ, rid, status, seconds, body):
    """One JSON line per prediction, written in one call: the workers share stdout, a pipe, and a write of up to
    PIPE_BUF (4 KiB; every line without a payload) is never interleaved with another's. A longer line (a logged
    payload) is written whole, but may interleave with another worker's at a 4 KiB boundary. Built from text rather
    than json.dumps of a dict: it is written for every prediction (the cost benchmark)."""
    key = environ.get("HTTP_X_MODELSWARM_KEY_NAME", "")
    if not _KEY_NAME.fullmatch(key):
        key = "-"
    payload = ""
    if LOG_PAYLOAD and body is not None:
        payload = ',"payload":' + json.dumps(body.decode("utf-8", "replace"))
    line = (
        f'{{"event":"prediction","time":"{_utc_now()}","request_id":"{rid}",{_LOG_FIXED},"status":{status.value},'
        f'"latency_ms":{round(seconds * 1000, 2)},"key":"{key}"{payload}}}\n'
    )
    data = line.encode()
    while data:  # a blocking pipe takes it all at once unless a signal interrupts the write
        data = data[os.write(1, data) :]


def _metrics():
    """Prometheus text of every worker's values (multiprocess mode), or of this process's alone."""
    if not MULTIPROC_DIR:
        return generate_latest(REGISTRY).decode()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
    return generate_latest(registry).decode()


def _answer(environ, rid):
    """(status, body text, content type, extra headers) for one request; raises HTTPError for every refusal."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
    allowed = METHODS.get(path)
    if allowed is None:
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
    if method not in allowed:
        raise HTTPError(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"{path} answers {' or '.join(allowed)}",
            headers=[("Allow", ", ".join(allowed))],
        )
    if path == "/predict":
        status, text = _predict(environ, rid)
        return status, text, "application/json"
    if path == "/metrics":
        return HTTPStatus.OK, _metrics(), CONTENT_TYPE_LATEST
    payload = {"status": "ok", **INFO} if path == "/health" else {**INFO, "pid": os.getpid()}
    return HTTPStatus.OK, json.dumps(payload), "application/json"


def application(environ, start_response):
    rid = httpguard.request_id(environ)
    headers = []
    prediction = environ.get("PATH_INFO") == "/predict" and environ["REQUEST_METHOD"] == "POST"
    counted = prediction and METRICS
    started = time.perf_counter()
    if counted:
        _IN_FLIGHT.inc()
    try:
        status, text, content_type = _answer(environ, rid)
    except HTTPError as exc:
        status, headers, content_type = exc.status, exc.headers, "application/json"
        text = json.dumps({"error": exc.message, "request_id": rid})
    except Exception as exc:  # a fault of the server itself: the same generic, logged answer
        httpguard.log_failure(rid, "500: the model server failed", exc)
        status, content_type = HTTPStatus.INTERNAL_SERVER_ERROR, "application/json"
        text = json.dumps({"error": "internal error", "request_id": rid})
    seconds = time.perf_counter() - started
    if counted:
        _IN_FLIGHT.dec()
        _answered(status.value).inc()
        _DURATION.observe(seconds)
    if prediction and PREDICTION_LOG:
        _log_prediction(environ, rid, status, seconds, environ.get("modelswarm.body"))
        environ["modelswarm.logged"] = True  # gunicorn_conf.PredictionLogger: no access line besides this one
    body = (text + "\n").encode()
    headers = [*headers, ("Content-Type", content_type), ("Content-Length", str(len(body)))]
    start_response(f"{status.value} {status.phrase}", [*headers, (httpguard.REQUEST_ID_HEADER, rid)])
    return [body]


if __name__ == "__main__":  # `modelswarm validate`: the import above loaded the model and answered the examples
    print(f"{EXAMPLES_PASSED} {json.dumps({**INFO, 'examples': EXAMPLES_ANSWERED, 'file': EXAMPLES})}", flush=True)
