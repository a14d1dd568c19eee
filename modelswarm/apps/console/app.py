"""The console: a WSGI app (run by gunicorn) on the leader. Who may call what (roles are ordered; see the contract):

  GET  /healthz                      anyone   200 when PostgreSQL answers and the schema is migrated, else 503
  GET  /login, POST /login           anyone   sign-in form (CSRF-protected) -> session cookie
  POST /logout                       user     end the session (CSRF-protected)
  GET  /                             viewer   HTML: nodes, services, models, recent rollouts (browsers: signed in)
  GET  /api/whoami                   predict  the caller's name, role and kind
  GET  /api/cluster                  viewer   nodes and services, from the Docker API (read-only, through the proxy)
  GET  /api/models                   viewer   model services: version, image, replicas running/desired, update state
  GET  /api/rollouts[/<id>]          viewer   ledger, newest first (?model=NAME&limit=N), or one entry
  GET  /api/ledger/export            viewer   the whole ledger as JSON lines in id order, with its hash chain
  POST /api/rollouts                 deploy   record one rollout; its actor is the caller, never the body
  GET/POST /api/keys                 admin    list keys (never a key or digest) / create one (the key is in the answer)
  DELETE /api/keys/<name>            admin    revoke; POST /api/keys/<name>/rotate: a new key, the old one revoked
  GET/POST /api/users                admin    list / create console users (a generated password is in the answer)
  DELETE /api/users/<name>           admin    disable; POST /api/users/<name>/password: a new password
  GET  /internal/grants              NGINX    every working key's digest and grant, as an NGINX map (a shared token)

Callers identify with an API key (`Authorization: Bearer <key>`, or HTTP Basic with the key's name and the key) or
a session cookie; a session's unsafe requests also need its CSRF token (form field `csrf` or header X-CSRF-Token).
Identity is checked before anything in the body is read: no identity -> 401, too little role -> 403.

Settings (environment), each secret a file (docker secrets): PGHOST, PGPORT, PGDATABASE, PGUSER (the owner, used only
to migrate), MODELSWARM_DB_PASSWORD_FILE; the application role's password MODELSWARM_APP_DB_PASSWORD_FILE (requests
run as `console_app`); MODELSWARM_BOOTSTRAP_KEYS_FILE and MODELSWARM_ADMIN_PASSWORD_FILE (what the converge hands
over); MODELSWARM_GRANTS_TOKEN_FILE (NGINX's token); MODELSWARM_MONITORING_TOKEN_FILE (Prometheus' and
Alertmanager's token: the only credential /metrics and /internal/alerts take); DOCKER_HOST: the stack sets the
Docker API proxy (tcp://docker-api-proxy:2375, on the internal network docker-api), which allows the GETs of
/version, /nodes, /services and /tasks that cluster() makes and refuses the rest (403); the default (the local
socket) is for development only.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, quote

from jinja2 import Environment, PackageLoader, select_autoescape

from modelswarm import contract
from modelswarm.apps.console import accounts, ledger, observed
from modelswarm.apps.console.accounts import Identity
from modelswarm.apps.modelserver import httpguard
from modelswarm.apps.modelserver.httpguard import HTTPError

MAX_BODY = 64 * 1024
SESSION_COOKIE = "modelswarm_session"
LOGIN_CSRF_COOKIE = "modelswarm_login_csrf"
APP_DB_ROLE = ledger.APPLICATION_ROLE  # requests run as this database role
# Only Bearer: a Basic challenge would make browsers prompt, cache and replay a key on cross-site requests.
CHALLENGE = 'Bearer realm="modelswarm"'

_pages = Environment(loader=PackageLoader("modelswarm.apps.console", "templates"), autoescape=select_autoescape())


def _when(value: str | None) -> str:
    """A ledger time (canonical UTC) as the pages show every time: to the second, in UTC."""
    if not value:
        return ""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_pages.filters["when"] = _when
_prepared = False


@dataclass
class Response:
    """What a handler answers besides a JSON payload or a page: a redirect, cookies."""

    status: HTTPStatus
    payload: object = None
    headers: list[tuple[str, str]] | None = None


# ------------------------------------------------------------------------------------------------ backends


def _secret(env: str, default: str, required: bool = True) -> str | None:
    path = os.environ.get(env, default)
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError as exc:
        if not required:
            return None
        raise HTTPError(
            HTTPStatus.SERVICE_UNAVAILABLE, "the console is not configured: a secret is missing", internal=f"{exc}"
        ) from exc


# Who connects with which secret: the owner (PGUSER) only migrates; requests run as the application role.
DB_LOGINS = {
    "owner": ("MODELSWARM_DB_PASSWORD_FILE", "/run/secrets/console_db_password"),
    APP_DB_ROLE: ("MODELSWARM_APP_DB_PASSWORD_FILE", "/run/secrets/console_app_db_password"),
}


def db_connect(login: str = "owner"):
    import psycopg2

    password = _secret(*DB_LOGINS[login])
    try:
        return psycopg2.connect(password=password, connect_timeout=3, **({} if login == "owner" else {"user": login}))
    except psycopg2.OperationalError as exc:
        raise HTTPError(
            HTTPStatus.SERVICE_UNAVAILABLE, "database unavailable", internal=f"database: {str(exc).strip()}"
        ) from exc


def prepare_database() -> None:
    """Once per process, as the owner: migrate, give the application role its password, take over what the
    converge handed over (the controller's keys, the first admin). Requests then run as the application role."""
    conn = db_connect()
    try:
        ledger.migrate(conn)
        app_password = _secret(*DB_LOGINS[APP_DB_ROLE])
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ledger.MIGRATION_LOCK,))
        try:
            ledger.set_application_password(conn, app_password)
            accounts.bootstrap(
                conn,
                _secret("MODELSWARM_BOOTSTRAP_KEYS_FILE", "/run/secrets/console_bootstrap_keys", required=False),
                _secret("MODELSWARM_ADMIN_PASSWORD_FILE", "/run/secrets/console_admin_password", required=False),
            )
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (ledger.MIGRATION_LOCK,))
            conn.commit()
    finally:
        conn.close()


def with_db(work: Callable):
    """Run `work(conn)` as the application role on a prepared database; the connection lives for one request."""
    global _prepared
    if not _prepared:
        prepare_database()
        _prepared = True
    conn = db_connect(APP_DB_ROLE)
    try:
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
        "platform": labels.get(contract.LABEL_PLATFORM),
        "declared": int(labels[contract.LABEL_REPLICAS]) if labels.get(contract.LABEL_REPLICAS, "").isdigit() else None,
    }


def models(state: dict) -> list[dict]:
    return [s for s in state["services"] if s["name"].startswith(contract.MODEL_SERVICE_PREFIX)]


# ------------------------------------------------------------------------------------------------ identity


def cookies(environ) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def identify(environ) -> Identity | None:
    """The caller: an API key (Authorization) if one is sent, else a session cookie; None if neither is valid."""
    header = environ.get("HTTP_AUTHORIZATION")
    if header is not None:
        credentials = accounts.parse_authorization(header)
        return with_db(lambda conn: accounts.key_identity(conn, credentials)) if credentials else None
    token = cookies(environ).get(SESSION_COOKIE)
    return with_db(lambda conn: accounts.session_identity(conn, token)) if token else None


def wants_html(environ) -> bool:
    return "text/html" in environ.get("HTTP_ACCEPT", "") and "HTTP_AUTHORIZATION" not in environ


def plain_http(environ) -> bool:
    """Whether the browser reached NGINX over plain HTTP (NGINX sets X-Forwarded-Proto)."""
    return environ.get("HTTP_X_FORWARDED_PROTO", "https") == "http"


def check_csrf(environ, identity: Identity, form: dict[str, str] | None = None) -> None:
    """A session's unsafe requests carry its CSRF token (form field or header); key callers have no cookie to abuse."""
    if identity.kind != "user":
        return
    sent = (form or {}).get("csrf") or environ.get("HTTP_X_CSRF_TOKEN", "")
    if not identity.csrf_token or not hmac.compare_digest(sent.encode(), identity.csrf_token.encode()):
        raise HTTPError(HTTPStatus.FORBIDDEN, "missing or wrong CSRF token: reload the page and try again")


def grants_token_ok(environ) -> bool:
    return _token_ok(environ, "MODELSWARM_GRANTS_TOKEN_FILE", "/run/secrets/nginx_grants_token")


def monitoring_token_ok(environ) -> bool:
    return _token_ok(environ, "MODELSWARM_MONITORING_TOKEN_FILE", "/run/secrets/monitoring_token")


def _token_ok(environ, env: str, default: str) -> bool:
    expected = _secret(env, default, required=False)
    sent = environ.get("HTTP_AUTHORIZATION", "")
    return bool(expected) and hmac.compare_digest(sent.encode(), f"Bearer {expected}".encode())


# ------------------------------------------------------------------------------------------------ handlers


def log_internal(environ, exc: HTTPError) -> None:
    """What an answer leaves out (a refused connection's text, a file's path) goes to the log, under the request id."""
    if exc.internal:
        where = f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO') or '/'}"
        httpguard.log_failure(environ.get(REQUEST_ID_KEY, "-"), f"{exc.status.value} {where}: {exc.internal}")


def health(environ, _identity) -> tuple[HTTPStatus, dict]:
    def probe(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT max(version) FROM schema_migrations")
            return cur.fetchone()[0]

    try:
        version = with_db(probe)
    except HTTPError as exc:
        log_internal(environ, exc)
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "database": exc.message}
    return HTTPStatus.OK, {"status": "ok", "database": "ok", "schema_version": version}


def read_body(environ, content_type: str) -> bytes:
    """415 for another media type; 400, 411 or 413 for a body whose length or framing is wrong (httpguard)."""
    httpguard.require_media_type(environ, content_type)
    return httpguard.read_body(environ, MAX_BODY)


def read_json(environ) -> object:
    """The body as JSON (an empty one is null); 400 past the depth limit, for NaN, bad UTF-8 or a syntax error."""
    body = read_body(environ, "application/json")
    return httpguard.parse_json(body) if body else None


def read_form(environ) -> dict[str, str]:
    body = read_body(environ, "application/x-www-form-urlencoded")
    try:
        return {k: v[-1] for k, v in parse_qs(body.decode(), max_num_fields=20).items()}
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "malformed form: not UTF-8, or more than 20 fields") from exc


def json_object(environ, fields: set[str] | None = None) -> dict:
    """The body as a JSON object; with `fields`, any other field is refused (400 naming it)."""
    body = read_json(environ)
    if not isinstance(body, dict):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "expected a JSON object")
    unknown = sorted(set(body) - fields) if fields is not None else []
    if unknown:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid request", {"body": f"unknown field(s): {', '.join(unknown)}"})
    return body


def post_rollout(environ, identity: Identity) -> tuple[HTTPStatus, dict]:
    check_csrf(environ, identity)
    entry = read_json(environ)
    try:
        ledger.validate(entry)  # fail on bad input before touching the database
    except ledger.InvalidEntry as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid ledger entry", exc.errors) from exc
    if identity.models is not None and entry["model"] not in identity.models:
        raise HTTPError(HTTPStatus.FORBIDDEN, f"{identity.name}'s key is limited to {', '.join(identity.models)}")
    return HTTPStatus.CREATED, with_db(
        lambda conn: ledger.record(conn, entry, actor=identity.name, actor_kind=identity.kind)
    )


def query(environ) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def list_rollouts(environ, _identity) -> tuple[HTTPStatus, object]:
    params = query(environ)
    try:
        limit = int(params.get("limit", "50"))
    except ValueError as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "limit must be a whole number") from exc
    try:
        return HTTPStatus.OK, with_db(lambda conn: ledger.history(conn, params.get("model") or None, limit))
    except ledger.InvalidEntry as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid query", exc.errors) from exc


def get_rollout(_environ, _identity, entry_id: str) -> tuple[HTTPStatus, object]:
    entry = with_db(lambda conn: ledger.get(conn, int(entry_id)))
    if entry is None:
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no ledger entry {entry_id}")
    return HTTPStatus.OK, entry


def ledger_export(_environ, _identity) -> Response:
    """The whole ledger for auditors and `modelswarm ledger verify`: JSON lines in id order, with both hashes."""
    text = with_db(lambda conn: "".join(ledger.export_lines(conn)))
    return Response(HTTPStatus.OK, text.encode(), [("Content-Type", "application/x-ndjson; charset=utf-8")])


def scrape(environ, _identity) -> Response:
    """/metrics for Prometheus (modelswarm.apps.console.metrics): the swarm's state and the database's, now."""
    from modelswarm.apps.console import metrics

    try:
        state = cluster()
    except Exception as exc:  # no quorum (the managers refuse), or the proxy is down: modelswarm_swarm_up 0
        rid = environ[REQUEST_ID_KEY]
        sys.stderr.write(f"request_id={rid} metrics: the swarm did not answer ({type(exc).__name__})\n")
        state = None

    def ping(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone()[0] == 1

    try:
        database_up = bool(with_db(ping))
    except Exception:
        database_up = False
    return Response(HTTPStatus.OK, metrics.render(state, database_up), [("Content-Type", metrics.CONTENT_TYPE)])


ALERT_FIELDS = ("status", "labels", "annotations", "startsAt", "endsAt")


def receive_alerts(environ, _identity) -> tuple[HTTPStatus, object]:
    """Alertmanager's webhook (alertmanager.yml.j2): one JSON line per alert in the console's log (stdout), which
    LogSpout carries to Logstash. The example receiver; platform_alertmanager_webhook_urls adds others."""
    payload = read_json(environ)
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "expected Alertmanager's webhook JSON: an object with a list 'alerts'")
    for alert in alerts:
        line = {"event": "alert", **{k: alert.get(k) for k in ALERT_FIELDS}}
        sys.stdout.write(json.dumps(line, separators=(",", ":"), sort_keys=True) + "\n")
    sys.stdout.flush()
    return HTTPStatus.OK, {"received": len(alerts)}


def api_cluster(_environ, _identity) -> tuple[HTTPStatus, object]:
    return HTTPStatus.OK, cluster()


def api_models(_environ, _identity) -> tuple[HTTPStatus, object]:
    return HTTPStatus.OK, models(cluster())


def whoami(_environ, identity: Identity) -> tuple[HTTPStatus, object]:
    return HTTPStatus.OK, identity.public()


def _accounts_call(work: Callable):
    try:
        return with_db(work)
    except accounts.Refused as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid request", exc.errors) from exc
    except accounts.Conflict as exc:
        raise HTTPError(HTTPStatus.CONFLICT, str(exc)) from exc


def list_keys(environ, _identity) -> tuple[HTTPStatus, object]:
    everything = query(environ).get("all") in ("1", "true", "yes")
    return HTTPStatus.OK, with_db(lambda conn: accounts.list_keys(conn, include_revoked=everything))


def create_key(environ, identity: Identity) -> tuple[HTTPStatus, object]:
    check_csrf(environ, identity)
    body = json_object(environ, {"name", "role", "models"})
    return HTTPStatus.CREATED, _accounts_call(
        lambda conn: accounts.create_key(
            conn, body.get("name"), body.get("role", "predict"), body.get("models"), by=identity.name
        )
    )


def _change_key(environ, identity: Identity, name: str, change: Callable) -> tuple[HTTPStatus, object]:
    check_csrf(environ, identity)
    result = with_db(lambda conn: change(conn, name, by=identity.name))
    if result is None:
        raise HTTPError(HTTPStatus.NOT_FOUND, f"{name} has no working key")
    return HTTPStatus.OK, result


def revoke_key(environ, identity: Identity, name: str) -> tuple[HTTPStatus, object]:
    return _change_key(environ, identity, name, accounts.revoke_key)


def rotate_key(environ, identity: Identity, name: str) -> tuple[HTTPStatus, object]:
    return _change_key(environ, identity, name, accounts.rotate_key)


def list_users(_environ, _identity) -> tuple[HTTPStatus, object]:
    return HTTPStatus.OK, with_db(accounts.list_users)


def create_user(environ, identity: Identity) -> tuple[HTTPStatus, object]:
    check_csrf(environ, identity)
    body = json_object(environ, {"name", "role", "password"})
    return HTTPStatus.CREATED, _accounts_call(
        lambda conn: accounts.create_user(
            conn, body.get("name"), body.get("role", "viewer"), body.get("password"), by=identity.name
        )
    )


def disable_user(environ, identity: Identity, name: str) -> tuple[HTTPStatus, object]:
    check_csrf(environ, identity)
    if not with_db(lambda conn: accounts.disable_user(conn, name)):
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no enabled user {name}")
    return HTTPStatus.OK, {"name": name, "disabled": True}


def reset_password(environ, identity: Identity, name: str) -> tuple[HTTPStatus, object]:
    check_csrf(environ, identity)
    body = json_object(environ) if environ.get("CONTENT_LENGTH") not in (None, "", "0") else {}
    result = _accounts_call(lambda conn: accounts.set_password(conn, name, body.get("password")))
    if result is None:
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no user {name}")
    return HTTPStatus.OK, result


def internal_grants(environ, _identity) -> Response:
    from modelswarm.apps.console import grants

    version, rows = with_db(accounts.grants)
    etag = f'"{version}"'
    if environ.get("HTTP_IF_NONE_MATCH") == etag:
        return Response(HTTPStatus.NOT_MODIFIED, b"", [("ETag", etag)])
    text = grants.render_nginx_grants(
        version, [grants.Grant(name=n, role=r, models=m, digest=d) for n, r, m, d in rows]
    )
    return Response(HTTPStatus.OK, text.encode(), [("ETag", etag), ("Content-Type", "text/plain; charset=utf-8")])


# ------------------------------------------------------------------------------------------------ pages


def _cookie(name: str, value: str, max_age: int | None = None, path: str = "/") -> tuple[str, str]:
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "Secure", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "Set-Cookie", "; ".join(parts)


def login_form(environ, _identity, error: str | None = None, status: HTTPStatus = HTTPStatus.OK) -> Response:
    token = secrets.token_urlsafe(32)
    html = _pages.get_template("login.html.j2").render(csrf=token, error=error, next=query(environ).get("next", "/"))
    return Response(status, html, [_cookie(LOGIN_CSRF_COOKIE, token, max_age=600, path="/login")])


def login(environ, identity) -> Response:
    form = read_form(environ)
    expected = cookies(environ).get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        return login_form(environ, identity, "The form expired: please try again.", HTTPStatus.FORBIDDEN)
    user = with_db(lambda conn: accounts.authenticate_user(conn, form.get("user"), form.get("password")))
    if user is None:
        return login_form(environ, identity, "Wrong user name or password.", HTTPStatus.UNAUTHORIZED)
    token = with_db(lambda conn: accounts.start_session(conn, user))
    target = form.get("next", "/")
    # Only a plain local path: no scheme, host, backslash or control character can make it leave this site.
    target = target if re.fullmatch(r"/(?![/\\])[A-Za-z0-9/_.~?=&%-]*", target) else "/"
    lifetime = int(accounts.SESSION_LIFETIME.total_seconds())
    session, spent = _cookie(SESSION_COOKIE, token, max_age=lifetime), _cookie(LOGIN_CSRF_COOKIE, "", 0, "/login")
    return Response(HTTPStatus.SEE_OTHER, "", [("Location", target), session, spent])


def logout(environ, identity: Identity) -> Response:
    check_csrf(environ, identity, read_form(environ))
    token = cookies(environ).get(SESSION_COOKIE)
    with_db(lambda conn: accounts.end_session(conn, token))
    return Response(HTTPStatus.SEE_OTHER, "", [("Location", "/login"), _cookie(SESSION_COOKIE, "", max_age=0)])


ROLLOUTS_SHOWN = 20
ROLLOUTS_READ = 500  # the newest entries read for a page: real changes among them first, no-op deploys folded


def fold_no_ops(rows: list[dict], shown: int = ROLLOUTS_SHOWN) -> tuple[list[dict], int]:
    """Real changes first: the newest `shown` entries that changed something, and how many no-op deploys (a deploy
    of what already ran) were folded away. They stay in the ledger and in /api/rollouts."""
    real = [r for r in rows if r["result"] != "no_op"]
    return real[:shown], len(rows) - len(real)


def _gather(environ, model: str | None = None) -> dict:
    """What a page shows: the swarm, the ledger (no-ops folded), each model's last hour from Prometheus. A part that
    cannot be read is named in `problems` (the details: in the log, under the request id) and the rest still shows."""
    problems = []
    rid = environ.get(REQUEST_ID_KEY, "-")
    try:
        state = cluster()
    except Exception as exc:
        httpguard.log_failure(rid, "page: the Docker API failed", exc)
        state, problems = {"nodes": [], "services": []}, [f"Docker API unavailable (request id {rid})"]
    try:
        rows = with_db(lambda conn: ledger.history(conn, model, ROLLOUTS_READ))
    except HTTPError as exc:
        log_internal(environ, exc)
        rows, problems = [], [*problems, exc.message]
    rollouts, folded = fold_no_ops(rows)
    now = time.time()
    try:
        traffic = observed.traffic(now)
    except observed.PrometheusUnavailable as exc:
        sys.stderr.write(f"request_id={rid} page: {exc}\n")
        traffic, problems = {}, [*problems, f"metrics unavailable: {exc} (request id {rid})"]
    shown = []
    start = now - observed.WINDOW_SECONDS
    for service in models(state):
        seen = traffic.get(service["model"] or "", observed.Traffic())
        shown.append({
            **service,
            "now": {name: seen.now(name) for name in observed.QUERIES},
            "charts": {
                "rate": observed.chart([seen.series.get("rate", [])], start, now),
                "errors": observed.chart([seen.series.get("errors", [])], start, now),
                "latency": observed.chart([seen.series.get("p50", []), seen.series.get("p99", [])], start, now),
            },
        })  # fmt: skip
    return {
        "nodes": state["nodes"],
        "services": [s for s in state["services"] if not s["name"].startswith(contract.MODEL_SERVICE_PREFIX)],
        "models": shown,
        "rollouts": rollouts,
        "folded": folded,
        "problems": problems,
        "now": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def page(environ, identity: Identity) -> tuple[HTTPStatus, str]:
    html = _pages.get_template("index.html.j2").render(identity=identity, **_gather(environ))
    return HTTPStatus.OK, html


def model_page(environ, identity: Identity, name: str) -> tuple[HTTPStatus, str]:
    """One model: its numbers and larger charts of the last hour, and its own rollouts."""
    seen = _gather(environ, name)
    model = next((m for m in seen["models"] if m["model"] == name), None)
    if model is None:
        raise HTTPError(HTTPStatus.NOT_FOUND, f"no model '{name}' is deployed")
    html = _pages.get_template("model.html.j2").render(identity=identity, model=model, **seen)
    return HTTPStatus.OK, html


# ------------------------------------------------------------------------------------------------ routing

PUBLIC, SESSION_USER, GRANTS_TOKEN, MONITORING_TOKEN = "public", "session", "grants", "monitoring"
REQUEST_ID_KEY = "modelswarm.request_id"  # the request's id, in its WSGI environ
INTERNAL_ERROR = "internal error: the console could not answer; its log has the details under this request id"
PAGES = {page, model_page, login_form, login}
NAME = contract.PRINCIPAL_NAME_PATTERN

# (method, path, handler, who may call it: a role of the contract, PUBLIC, SESSION_USER or GRANTS_TOKEN)
ROUTES: list[tuple[str, re.Pattern, Callable, str]] = [
    ("GET", re.compile(r"^/$"), page, "viewer"),
    ("GET", re.compile(rf"^/model/({contract.MODEL_NAME_PATTERN})$"), model_page, "viewer"),
    ("GET", re.compile(r"^/healthz$"), health, PUBLIC),
    ("GET", re.compile(r"^/login$"), login_form, PUBLIC),
    ("POST", re.compile(r"^/login$"), login, PUBLIC),
    ("POST", re.compile(r"^/logout$"), logout, SESSION_USER),
    ("GET", re.compile(r"^/api/whoami$"), whoami, "predict"),
    ("GET", re.compile(r"^/api/cluster$"), api_cluster, "viewer"),
    ("GET", re.compile(r"^/api/models$"), api_models, "viewer"),
    ("POST", re.compile(r"^/api/rollouts$"), post_rollout, "deploy"),
    ("GET", re.compile(r"^/api/rollouts$"), list_rollouts, "viewer"),
    ("GET", re.compile(r"^/api/rollouts/(\d{1,18})$"), get_rollout, "viewer"),
    ("GET", re.compile(r"^/api/ledger/export$"), ledger_export, "viewer"),
    ("GET", re.compile(r"^/api/keys$"), list_keys, "admin"),
    ("POST", re.compile(r"^/api/keys$"), create_key, "admin"),
    ("DELETE", re.compile(rf"^/api/keys/({NAME})$"), revoke_key, "admin"),
    ("POST", re.compile(rf"^/api/keys/({NAME})/rotate$"), rotate_key, "admin"),
    ("GET", re.compile(r"^/api/users$"), list_users, "admin"),
    ("POST", re.compile(r"^/api/users$"), create_user, "admin"),
    ("DELETE", re.compile(rf"^/api/users/({NAME})$"), disable_user, "admin"),
    ("POST", re.compile(rf"^/api/users/({NAME})/password$"), reset_password, "admin"),
    ("GET", re.compile(r"^/internal/grants$"), internal_grants, GRANTS_TOKEN),
    ("GET", re.compile(r"^/metrics$"), scrape, MONITORING_TOKEN),
    ("POST", re.compile(r"^/internal/alerts$"), receive_alerts, MONITORING_TOKEN),
]


def authorize(environ, handler: Callable, who: str) -> Identity | None:
    """Decide before the handler (and so before any body is read) whether the caller may call it."""
    if who == PUBLIC:
        return None
    if who == GRANTS_TOKEN:
        if not grants_token_ok(environ):
            raise HTTPError(HTTPStatus.UNAUTHORIZED, "this endpoint is for NGINX's grants token only")
        return None
    if who == MONITORING_TOKEN:
        if not monitoring_token_ok(environ):
            raise HTTPError(HTTPStatus.UNAUTHORIZED, "this endpoint is for the monitoring token only")
        return None
    identity = identify(environ)
    if identity is None:
        if handler in PAGES and wants_html(environ):
            target = quote(environ.get("PATH_INFO") or "/")
            raise HTTPError(HTTPStatus.SEE_OTHER, "sign in first", headers=[("Location", f"/login?next={target}")])
        sent = "HTTP_AUTHORIZATION" in environ or SESSION_COOKIE in cookies(environ)
        raise HTTPError(
            HTTPStatus.UNAUTHORIZED,
            "invalid, revoked or expired credentials" if sent else "credentials required: an API key or a session",
            headers=[("WWW-Authenticate", CHALLENGE)],
        )
    if (
        environ["REQUEST_METHOD"] not in ("GET", "HEAD")
        and environ.get("HTTP_AUTHORIZATION", "")[:6].lower() == "basic "
    ):
        # Browsers replay cached Basic credentials on cross-site requests: changes need Bearer (or a session + CSRF).
        raise HTTPError(
            HTTPStatus.UNAUTHORIZED,
            "changes need Authorization: Bearer <key>",
            headers=[("WWW-Authenticate", CHALLENGE)],
        )
    if who == SESSION_USER:
        if identity.kind != "user":
            raise HTTPError(HTTPStatus.FORBIDDEN, "only a signed-in user has a session to end")
        return identity
    if not identity.may(who):
        raise HTTPError(HTTPStatus.FORBIDDEN, f"{identity.name} ({identity.role}) may not do this: it needs {who}")
    return identity


def application(environ, start_response) -> Iterable[bytes]:
    """Every answer carries X-Request-Id; every refusal is JSON {"error", "request_id"[, "details"]}; a failure of
    the console itself is a 500 whose text and traceback go only to the log (stderr), under that id."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
    rid = environ[REQUEST_ID_KEY] = httpguard.request_id(environ)
    status, payload, headers = HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {method} {path}"}, []
    allowed = [m for m, pattern, _, _ in ROUTES if pattern.match(path)]
    try:
        for route_method, pattern, handler, who in ROUTES:
            match = pattern.match(path)
            if match and route_method == method:
                if handler in PAGES and plain_http(environ):
                    # Session cookies are Secure: sign-in and pages need HTTPS (the API works over both).
                    host = environ.get("HTTP_HOST", "").split(":")[0]
                    raise HTTPError(
                        HTTPStatus.PERMANENT_REDIRECT, "use HTTPS", headers=[("Location", f"https://{host}{path}")]
                    )
                identity = authorize(environ, handler, who)
                result = handler(environ, identity, *match.groups())
                if isinstance(result, Response):
                    status, payload, headers = result.status, result.payload, result.headers or []
                else:
                    status, payload = result
                break
        else:
            if allowed:
                status, payload = HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{method} not allowed on {path}"}
                headers = [("Allow", ", ".join(allowed))]
    except HTTPError as exc:
        log_internal(environ, exc)
        status, headers = exc.status, exc.headers
        payload = {"error": exc.message, **({"details": exc.details} if exc.details else {})}
    except Exception as exc:  # a failure of the console (or of what it calls): never its text to the client
        httpguard.log_failure(rid, f"500 {method} {path}: {type(exc).__name__}", exc)
        status, payload, headers = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": INTERNAL_ERROR}, []
    if isinstance(payload, dict) and "error" in payload and status >= 400:
        payload["request_id"] = rid
    if isinstance(payload, bytes):
        body, content_type = payload, "text/plain; charset=utf-8"
    elif isinstance(payload, str):
        body, content_type = payload.encode(), "text/html; charset=utf-8"
    else:
        body, content_type = (json.dumps(payload, indent=1) + "\n").encode(), "application/json"
    names = {name.lower() for name, _ in headers}
    out = [*headers]
    if "content-type" not in names:
        out.append(("Content-Type", content_type))
    out += [("Content-Length", str(len(body))), ("Cache-Control", "no-store"), (httpguard.REQUEST_ID_HEADER, rid)]
    start_response(f"{status.value} {status.phrase}", out)
    return [body]
