"""The console: a WSGI app (run by gunicorn) on the leader.

  GET  /                      HTML: nodes, services, models (version, replicas, health), recent rollouts
  GET  /healthz               200 when PostgreSQL answers and the schema is migrated, else 503
  GET  /api/cluster           nodes and services, from the Docker API (the leader is a manager)
  GET  /api/models            model services: version, image, replicas running/desired, update state
  POST /api/rollouts          record one rollout in the ledger (JSON) -> 201, or 400 with one message per field
  GET  /api/rollouts          ledger, newest first (?model=NAME&limit=N)
  GET  /api/rollouts/<id>     one ledger entry

Settings (environment): PGHOST, PGPORT, PGUSER, PGDATABASE, MODELSWARM_DB_PASSWORD_FILE (a docker secret),
DOCKER_HOST (default: the mounted socket).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from http import HTTPStatus

from jinja2 import Environment, PackageLoader, select_autoescape

from modelswarm import contract
from modelswarm.apps.console import ledger

MAX_BODY = 64 * 1024

_pages = Environment(loader=PackageLoader("modelswarm.apps.console", "templates"), autoescape=select_autoescape())
_migrated = False


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str, details: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


# ------------------------------------------------------------------------------------------------ backends


def db_connect():
    import psycopg2

    password_file = os.environ.get("MODELSWARM_DB_PASSWORD_FILE", "/run/secrets/console_db_password")
    try:
        with open(password_file) as handle:
            password = handle.read().strip()
    except OSError as exc:
        raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, f"database password file unreadable: {exc}") from exc
    try:
        return psycopg2.connect(password=password, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, f"database unavailable: {str(exc).strip()}") from exc


def with_db(work: Callable):
    """Run `work(conn)` on a migrated database; the connection lives for one request."""
    global _migrated
    conn = db_connect()
    try:
        if not _migrated:
            ledger.migrate(conn)
            _migrated = True
        return work(conn)
    finally:
        conn.close()


def docker_client():
    import docker

    return docker.DockerClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=10)


def cluster() -> dict:
    client = docker_client()
    try:
        nodes = [
            {
                "hostname": n.attrs["Description"]["Hostname"],
                "role": n.attrs["Spec"]["Role"],
                "state": n.attrs["Status"]["State"],
                "availability": n.attrs["Spec"]["Availability"],
                "address": n.attrs["Status"].get("Addr"),
                "manager": (n.attrs.get("ManagerStatus") or {}).get("Reachability"),
                "raft_leader": bool((n.attrs.get("ManagerStatus") or {}).get("Leader")),
                "labels": n.attrs["Spec"].get("Labels") or {},
                "engine": n.attrs["Description"]["Engine"]["EngineVersion"],
            }
            for n in client.nodes.list()
        ]
        services = [_service_summary(client, s) for s in client.services.list()]
    finally:
        client.close()
    nodes.sort(key=lambda n: n["hostname"])
    services.sort(key=lambda s: s["name"])
    return {"nodes": nodes, "services": services}


def _service_summary(client, service) -> dict:
    spec = service.attrs["Spec"]
    mode = "global" if "Global" in spec["Mode"] else "replicated"
    tasks = service.tasks(filters={"desired-state": "running"})
    running = sum(1 for t in tasks if t["Status"]["State"] == "running")
    labels = spec.get("Labels") or {}
    image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    return {
        "name": spec["Name"],
        "mode": mode,
        "image": image.split("@")[0],
        "image_digest": image.split("@")[1] if "@" in image else None,
        "desired": spec["Mode"]["Replicated"]["Replicas"] if mode == "replicated" else len(tasks),
        "running": running,
        "update_state": (service.attrs.get("UpdateStatus") or {}).get("State"),
        "model": labels.get(contract.LABEL_MODEL),
        "version": labels.get(contract.LABEL_VERSION),
    }


def models(state: dict) -> list[dict]:
    return [s for s in state["services"] if s["name"].startswith(contract.MODEL_SERVICE_PREFIX)]


# ------------------------------------------------------------------------------------------------ handlers


def health(_environ) -> tuple[HTTPStatus, dict]:
    def probe(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT max(version) FROM schema_migrations")
            return cur.fetchone()[0]

    try:
        version = with_db(probe)
    except HTTPError as exc:
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "database": exc.message}
    return HTTPStatus.OK, {"status": "ok", "database": "ok", "schema_version": version}


def read_json(environ) -> object:
    if not environ.get("CONTENT_TYPE", "").startswith("application/json"):
        raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the entry as JSON (Content-Type: application/json)")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from exc
    if length > MAX_BODY:
        raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
    body = environ["wsgi.input"].read(length)
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"malformed JSON: {exc}") from exc


def post_rollout(environ) -> tuple[HTTPStatus, dict]:
    entry = read_json(environ)
    try:
        ledger.validate(entry)  # fail on bad input before touching the database
    except ledger.InvalidEntry as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid ledger entry", exc.errors) from exc
    # TODO(main): identity — the authenticated key's or user's name and kind replace this stand-in.
    return HTTPStatus.CREATED, with_db(lambda conn: ledger.record(conn, entry, actor="anonymous", actor_kind="legacy"))


def query(environ) -> dict[str, str]:
    from urllib.parse import parse_qs

    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def list_rollouts(environ) -> tuple[HTTPStatus, object]:
    params = query(environ)
    try:
        limit = int(params.get("limit", "50"))
    except ValueError as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "limit must be a whole number") from exc
    try:
        return HTTPStatus.OK, with_db(lambda conn: ledger.history(conn, params.get("model") or None, limit))
    except ledger.InvalidEntry as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid query", exc.errors) from exc


def get_rollout(_environ, entry_id: str) -> tuple[HTTPStatus, object]:
    entry = with_db(lambda conn: ledger.get(conn, int(entry_id)))
    if entry is None:
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no ledger entry {entry_id}")
    return HTTPStatus.OK, entry


def api_cluster(_environ) -> tuple[HTTPStatus, object]:
    return HTTPStatus.OK, cluster()


def api_models(_environ) -> tuple[HTTPStatus, object]:
    return HTTPStatus.OK, models(cluster())


def page(_environ) -> tuple[HTTPStatus, str]:
    problems = []
    try:
        state = cluster()
    except Exception as exc:  # the page still renders, saying what it could not read
        state, problems = {"nodes": [], "services": []}, [f"Docker API: {exc}"]
    try:
        rollouts = with_db(lambda conn: ledger.history(conn, None, 20))
    except HTTPError as exc:
        rollouts, problems = [], [*problems, exc.message]
    html = _pages.get_template("index.html.j2").render(
        nodes=state["nodes"],
        services=[s for s in state["services"] if not s["name"].startswith(contract.MODEL_SERVICE_PREFIX)],
        models=models(state),
        rollouts=rollouts,
        problems=problems,
        now=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    return HTTPStatus.OK, html


ROUTES: list[tuple[str, re.Pattern, Callable]] = [
    ("GET", re.compile(r"^/$"), page),
    ("GET", re.compile(r"^/healthz$"), health),
    ("GET", re.compile(r"^/api/cluster$"), api_cluster),
    ("GET", re.compile(r"^/api/models$"), api_models),
    ("POST", re.compile(r"^/api/rollouts$"), post_rollout),
    ("GET", re.compile(r"^/api/rollouts$"), list_rollouts),
    ("GET", re.compile(r"^/api/rollouts/(\d{1,18})$"), get_rollout),
]


def application(environ, start_response) -> Iterable[bytes]:
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
    status, payload = HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {method} {path}"}
    allowed = [m for m, pattern, _ in ROUTES if pattern.match(path)]
    try:
        for route_method, pattern, handler in ROUTES:
            match = pattern.match(path)
            if match and route_method == method:
                status, payload = handler(environ, *match.groups())
                break
        else:
            if allowed:
                status, payload = HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{method} not allowed on {path}"}
    except HTTPError as exc:
        status, payload = exc.status, {"error": exc.message, **({"details": exc.details} if exc.details else {})}
    if isinstance(payload, str):
        body, content_type = payload.encode(), "text/html; charset=utf-8"
    else:
        body, content_type = (json.dumps(payload, indent=1) + "\n").encode(), "application/json"
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        headers.append(("Allow", ", ".join(allowed)))
    start_response(f"{status.value} {status.phrase}", headers)
    return [body]
