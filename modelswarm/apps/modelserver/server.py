"""Model server: a WSGI app that gunicorn runs with several workers inside each model image.

  POST /predict   JSON in -> {"prediction": ...}; 400 malformed JSON, 422 input the model refuses, 500 model error
  GET  /health    200 once the model is loaded (the image HEALTHCHECK and swarm's rollout gate use it)
  GET  /info      name, version, image (with digest), source hash
  GET  /metrics   Prometheus text: requests by outcome, prediction latency (per worker process)

Each worker imports the bundle's entry point and runs its optional load() before it accepts requests, so a model
that cannot load never reports healthy. gunicorn finishes in-flight requests on SIGTERM (graceful timeout).
Standard library only: the image's Python runs it next to the model's own requirements.
"""

import importlib.util
import json
import os
import sys
import threading
import time

BUNDLE_DIR = os.environ.get("MODELSWARM_BUNDLE_DIR", "/opt/model/bundle")
ENTRYPOINT = os.environ.get("MODELSWARM_ENTRYPOINT", "model.py")
MAX_BODY = int(os.environ.get("MODELSWARM_MAX_BODY", str(8 * 1024 * 1024)))
INFO = {
    "name": os.environ.get("MODELSWARM_MODEL", "unknown"),
    "version": os.environ.get("MODELSWARM_VERSION", "unknown"),
    "image": os.environ.get("MODELSWARM_IMAGE", ""),
    "source_hash": os.environ.get("MODELSWARM_SOURCE_HASH", ""),
}


def _load_model():
    sys.path.insert(0, BUNDLE_DIR)
    spec = importlib.util.spec_from_file_location("model", os.path.join(BUNDLE_DIR, ENTRYPOINT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "load"):
        module.load()
    return module


MODEL = _load_model()  # at import: a worker that cannot load the model fails to boot
_lock = threading.Lock()
_counts = {"ok": 0, "bad_request": 0, "rejected": 0, "error": 0}
_latency = {"sum": 0.0, "count": 0}


def _count(outcome, seconds=None):
    with _lock:
        _counts[outcome] += 1
        if seconds is not None:
            _latency["sum"] += seconds
            _latency["count"] += 1


def _json(start_response, status, payload):
    body = (json.dumps(payload) + "\n").encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _predict(environ, start_response):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0 or length > MAX_BODY:
        _count("bad_request")
        return _json(start_response, "413 Payload Too Large", {"error": f"send at most {MAX_BODY} bytes of JSON"})
    raw = environ["wsgi.input"].read(length)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        _count("bad_request")
        return _json(start_response, "400 Bad Request", {"error": f"malformed JSON: {exc}"})
    started = time.perf_counter()
    try:
        result = MODEL.predict(data)
        body = {"prediction": result, "model": INFO["name"], "version": INFO["version"]}
        json.dumps(body)  # a result JSON cannot carry is the model's error, not the client's
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        _count("rejected")
        return _json(start_response, "422 Unprocessable Entity", {"error": f"{type(exc).__name__}: {exc}"})
    except Exception as exc:  # the model failed: report it, keep serving
        _count("error")
        return _json(start_response, "500 Internal Server Error", {"error": f"model failed: {type(exc).__name__}"})
    _count("ok", time.perf_counter() - started)
    return _json(start_response, "200 OK", body)


def _metrics(start_response):
    lines = ["# TYPE modelswarm_requests_total counter"]
    with _lock:
        for outcome, value in sorted(_counts.items()):
            lines.append(f'modelswarm_requests_total{{model="{INFO["name"]}",outcome="{outcome}"}} {value}')
        lines += [
            "# TYPE modelswarm_prediction_seconds summary",
            f'modelswarm_prediction_seconds_sum{{model="{INFO["name"]}"}} {_latency["sum"]:.6f}',
            f'modelswarm_prediction_seconds_count{{model="{INFO["name"]}"}} {_latency["count"]}',
        ]
    body = ("\n".join(lines) + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    if path == "/predict":
        if method != "POST":
            return _json(start_response, "405 Method Not Allowed", {"error": "POST JSON to /predict"})
        return _predict(environ, start_response)
    if path == "/health" and method == "GET":
        return _json(start_response, "200 OK", {"status": "ok", **INFO})
    if path == "/info" and method == "GET":
        return _json(start_response, "200 OK", {**INFO, "pid": os.getpid()})
    if path == "/metrics" and method == "GET":
        return _metrics(start_response)
    return _json(start_response, "404 Not Found", {"error": f"no such endpoint: {method} {path}"})
