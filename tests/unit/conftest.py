import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# PostgreSQL's server binaries (Debian's postgresql-15 package; bash scripts/test-packages.sh installs them).
PG_BIN = Path(os.environ.get("MODELSWARM_PG_BIN", "/usr/lib/postgresql/15/bin"))


def wsgi_call(application, method, path, body=None, content_type="application/json", query="", headers=None):
    """One request to a WSGI app, in process: (status, headers, body). `body`: bytes as they are, else as JSON;
    `headers`: WSGI environ entries (HTTP_X_..., CONTENT_LENGTH...) that override the defaults."""
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

    def start_response(status, response_headers):
        seen["status"], seen["headers"] = status, dict(response_headers)

    payload = b"".join(application(environ, start_response))
    return int(seen["status"].split()[0]), seen["headers"], payload


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def unused_tcp_port() -> int:
    """A loopback port that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------- real PostgreSQL


@dataclass(frozen=True)
class PostgresServer:
    """A throwaway cluster: reachable only through the unix socket in `host` (a directory), password auth."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    pid: int

    def params(self, dbname: str = "postgres", **override) -> dict:
        """Keyword arguments for psycopg2.connect()."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password, **override,
                "dbname": dbname}  # fmt: skip

    def connect(self, dbname: str = "postgres", **override):
        import psycopg2

        return psycopg2.connect(**self.params(dbname, **override))


@dataclass(frozen=True)
class PostgresDatabase:
    """One empty database on the session's server, for one test."""

    server: PostgresServer
    name: str

    def params(self, **override) -> dict:
        return self.server.params(self.name, **override)

    def connect(self, **override):
        return self.server.connect(self.name, **override)


def _run_as(account, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool as `account` (pwd entry) when we are root (initdb and postgres refuse root)."""
    if account is not None:
        kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    return subprocess.run(args, env=env, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="session")
def postgres():
    """Start a PostgreSQL 15 cluster for the test session: initdb into a temp dir, the server listening on no TCP
    address, only on a unix socket in that dir, run as `nobody` when we are root. Superuser `console` with a random
    password, scram-sha-256 on the socket, so password logins (the application role's) are tested as they run in
    production. Stopped by pg_ctl (fast shutdown) and removed at the end."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not os.access(PG_BIN / tool, os.X_OK):
            pytest.fail(
                f"PostgreSQL server binaries are missing ({PG_BIN / tool}); install them with: "
                "bash scripts/test-packages.sh",
                pytrace=False,
            )
    import pwd

    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="modelswarm-pg-"))
    data, pwfile = root / "data", root / "pwfile"
    password = secrets.token_urlsafe(24)
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    pid = None
    try:
        init = _run_as(
            account,
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "console", f"--pwfile={pwfile}", "-A", "scram-sha-256",
             "-E", "UTF8", "--no-locale", "--no-sync"],
            cwd=root,
        )  # fmt: skip
        if init.returncode != 0:
            pytest.fail(f"initdb failed:\n{init.stdout}\n{init.stderr}", pytrace=False)
        pwfile.unlink()
        options = f"-c listen_addresses='' -c unix_socket_directories='{root}' -c port=5432 -c fsync=off"
        log = root / "log"
        pg_ctl = str(PG_BIN / "pg_ctl")
        start = _run_as(
            account, [pg_ctl, "start", "-D", str(data), "-w", "-t", "60", "-l", str(log), "-o", options], cwd=root
        )
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split("\n", 1)[0])
        if start.returncode != 0:
            text = log.read_text() if log.exists() else ""
            pytest.fail(f"PostgreSQL did not start:\n{start.stdout}\n{start.stderr}\n{text}", pytrace=False)
        yield PostgresServer(host=str(root), port=5432, user="console", password=password, pid=pid)
    finally:
        if pid is not None:
            stop = _run_as(account, [str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"], cwd=root)
            if stop.returncode != 0:  # pg_ctl could not: fast shutdown by signal, to the PID we started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_database(postgres):
    """A fresh, empty database for one test (from template0), dropped afterwards even if connections remain."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = postgres.connect()
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
        yield PostgresDatabase(postgres, name)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def migrated_db(pg_database):
    """A connection (as the owner) to a fresh database with every console migration applied."""
    from modelswarm.apps.console import ledger

    conn = pg_database.connect()
    ledger.migrate(conn)
    yield conn
    conn.close()


# ------------------------------------------------------------------------------------------- model secrets


class FakeSwarmSecrets:
    """A swarm's secrets as the docker SDK shows them: `client.secrets.list(filters)` (label filters, ANDed),
    `client.secrets.create(...)` and `client.api.remove_secret(id)`. It keeps each value it was given (the real API
    never returns one) so a test can check that a value went to the swarm and nowhere else. It is also a client
    with only those (`.secrets`, `.api`)."""

    def __init__(self):
        self.secrets = self.api = self
        self.attrs: list[dict] = []
        self.values: dict[str, bytes] = {}
        self.removed: list[str] = []

    @staticmethod
    def _matches(labels: dict, wanted: str) -> bool:
        key, _, value = wanted.partition("=")
        return key in labels and (not value or labels[key] == value)

    def list(self, filters):
        from types import SimpleNamespace

        wanted = filters.get("label", [])
        wanted = [wanted] if isinstance(wanted, str) else wanted
        return [
            SimpleNamespace(id=a["ID"], attrs=a)
            for a in self.attrs
            if all(self._matches(a["Spec"].get("Labels") or {}, w) for w in wanted)
        ]

    def create(self, name, data, labels=None):
        from types import SimpleNamespace

        import docker.errors

        if any(a["Spec"]["Name"] == name for a in self.attrs):
            raise docker.errors.APIError("conflict", response=SimpleNamespace(status_code=409), explanation="exists")
        secret_id = f"secret{len(self.attrs) + len(self.removed) + 1}"
        self.attrs.append({"ID": secret_id, "CreatedAt": "2025-01-01T00:00:00Z", "Spec": {"Name": name,
                           "Labels": dict(labels or {})}})  # fmt: skip
        self.values[secret_id] = data
        return SimpleNamespace(id=secret_id)

    def remove_secret(self, secret_id):
        self.attrs = [a for a in self.attrs if a["ID"] != secret_id]
        self.removed.append(secret_id)


@pytest.fixture
def fake_secrets() -> FakeSwarmSecrets:
    return FakeSwarmSecrets()


# ------------------------------------------------------------------------------------ a model for the server's tests

PROBE_MODEL = '''"""A model for the model server's tests: what it does depends on the input's "do"."""

from modelswarm_model import RefusedInput

SECRET = "password=hunter2"  # the text no caller may ever see
LEGACY = {"value": ValueError, "type": TypeError, "key": KeyError, "index": IndexError}


def predict(data):
    action = data.get("do") if isinstance(data, dict) else None
    if action == "refuse":
        raise RefusedInput("send a number in x")
    if action in LEGACY:
        raise LEGACY[action](SECRET)
    if action == "crash":
        raise RuntimeError(SECRET)
    if action == "nan":
        return float("nan")
    if action == "object":
        return object()
    return {"echo": data}
'''


@pytest.fixture(scope="session")
def probe_bundle(tmp_path_factory) -> Path:
    """A valid bundle whose model refuses, fails or echoes on demand (see PROBE_MODEL)."""
    root = tmp_path_factory.mktemp("probe-bundle")
    (root / "modelswarm.yml").write_text("---\nname: probe\nversion: 1.0.0\n")
    (root / "model.py").write_text(PROBE_MODEL)
    (root / "requirements.txt").write_text("")
    (root / "examples.json").write_text('[{"x": 1}, [1, 2]]\n')
    return root


def image_layout(bundle_path: Path, opt: Path) -> tuple[list[str], dict[str, str]]:
    """The model image's /opt/model written under `opt` (server files, bundle/): returns the image's CMD, run with
    this interpreter's gunicorn and `opt` for /opt/model, and the environment the image sets for the server."""
    import json as json_module
    import re
    import sys

    from modelswarm.lifecycle import bundle, modelimage

    loaded = bundle.load_bundle(bundle_path)
    files = modelimage.context_files(loaded, "runtime:1")
    for name, content in files.items():
        if name in modelimage.SERVER_FILES or name.startswith("bundle/"):
            (opt / name).parent.mkdir(parents=True, exist_ok=True)
            (opt / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    joined = files["Dockerfile"].replace("\\\n", " ")
    cmd = json_module.loads(re.search(r"^CMD (\[.*\])\s*$", joined, re.MULTILINE).group(1))
    argv = [a.replace("/opt/model/", f"{opt}/") for a in cmd]
    assert argv[0].endswith("/venv/bin/gunicorn") and "--config" in argv
    env = {"MODELSWARM_BUNDLE_DIR": str(opt / "bundle"), "MODELSWARM_EXAMPLES": loaded.examples,
           "MODELSWARM_MODEL": loaded.name, "MODELSWARM_VERSION": loaded.version, "PYTHONUNBUFFERED": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(opt / "metrics")}  # fmt: skip
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/" in joined  # the image sets it too, on its tmpfs
    return [sys.executable, "-m", "gunicorn", *argv[1:]], env


SERVED_MAX_BODY = 256 * 1024  # the body limit of the served model (test_modelserver_fuzz)


@pytest.fixture(scope="module")
def served(probe_bundle, tmp_path_factory):
    """(port, log path) of the probe model served as its image would serve it, from /opt/model's layout (gunicorn
    with the image's workers, the metrics in multiprocess mode)."""
    opt = tmp_path_factory.mktemp("opt-model")
    argv, image_env = image_layout(probe_bundle, opt)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    env = {**os.environ, **image_env, "MODELSWARM_MAX_BODY": str(SERVED_MAX_BODY)}
    log = opt / "gunicorn.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, cwd=opt, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield port, log
    finally:
        process.terminate()
        process.wait(timeout=30)
