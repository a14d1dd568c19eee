"""The platform's NGINX on loopback, for the unit tests and the key-check benchmark (not for production).

It renders the platform role's own templates (nginx.conf.j2, nginx-entrypoint.sh.j2) with the role's defaults and
the contract's values, as Ansible does, with only the file paths and listen addresses pointed at a scratch
directory and 127.0.0.1, and runs the host's nginx with the role's own njs file (Debian's nginx-light and
libnginx-mod-http-js: `scripts/test-packages.sh`). Model services and the console are found as in the swarm: by
name, through NGINX's resolver, here a stub DNS server on loopback that knows the names it is given (the stub
upstream's port stands in for the contract's model and console ports).

Processes are children of the caller, tracked and stopped by their PID; every wait is bounded.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jinja2
import yaml

from modelswarm import contract

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "platform"
AUTH_JS = ROLE / "files" / "nginx" / "modelswarm_auth.js"
WAIT_JS = ROLE / "files" / "nginx" / "modelswarm_wait.js"
REPLICAS_JS = ROLE / "files" / "nginx" / "modelswarm_replicas.js"
METRICS_JS = ROLE / "files" / "nginx" / "modelswarm_metrics.js"
# What the entrypoint writes before NGINX starts (no model replica checked yet).
NO_REPLICAS = (
    '# modelswarm model replicas: none checked yet\nmap $model $modelswarm_model_upstream {\n    default "";\n}\n'
)
# The line modelswarm_replicas.js puts before the models' own router locations (the entrypoint splits there).
ROUTES_MARKER = "# modelswarm model routes: "
NO_ROUTES = ROUTES_MARKER + "none yet\n"
NGINX = "/usr/sbin/nginx"
JS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")


def missing_packages() -> str | None:
    """Why the host cannot run the harness, or None."""
    if not Path(NGINX).exists() or not JS_MODULE.exists():
        return "the host lacks nginx or its njs module: run scripts/test-packages.sh (make unit does)"
    if shutil.which("openssl") is None:
        return "the host lacks openssl (for a throwaway TLS certificate)"
    return None


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not given before in this process: a port is only bound later (by NGINX or a
    stub), so the kernel may offer the same one twice meanwhile ("a duplicate listen")."""
    for _ in range(1000):  # bounded
        # Below the ephemeral range (32768-60999), where outgoing connections take theirs; not bind(0), which tends to
        # offer the same port again once it is closed.
        port = 20000 + secrets.randbelow(32768 - 20000)
        if port in _GIVEN_PORTS:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN_PORTS.add(port)
        return port
    raise RuntimeError("no free loopback port not given before")


def new_key() -> tuple[str, str]:
    """A key in the contract's format and its SHA-256 hex digest (as the console makes them)."""
    key = f"{contract.API_KEY_PREFIX}_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    return key, hashlib.sha256(key.encode()).hexdigest()


HARNESS_CERTIFICATE_NOT_AFTER = 1893456000  # 2030-01-01: the expiry the rendered configuration states


def role_vars(**overrides) -> dict:
    """The variables the role's templates see: the contract's, the role's defaults, its NGINX and Docker API proxy
    settings."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    internal = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    variables = {
        **copy.deepcopy(contract.ANSIBLE_VARS),
        **defaults,
        "_platform_nginx": internal["_platform_nginx"],
        "_platform_registry_gateway": internal["_platform_registry_gateway"],
        "_platform_docker_api_proxy": internal["_platform_docker_api_proxy"],
        "_platform_prometheus": internal["_platform_prometheus"],
        "ansible_managed": "Rendered by modelswarm.tooling.nginx_harness (a test); Ansible renders the real one.",
        # What the platform role reads from the served certificate (tasks/metrics.yml): its notAfter, Unix time.
        "_platform_certificate_not_after": HARNESS_CERTIFICATE_NOT_AFTER,
    }
    variables.update(overrides)
    return variables


def render(template: str, variables: dict) -> str:
    """A role template rendered as Ansible renders it (trim_blocks on, undefined variables are errors)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # NGINX configuration and shell, not HTML  # noqa: S701
    )
    return env.get_template(template).render(**variables)


def render_with_ansible(templates: Iterable[str], workdir: Path) -> dict[str, str]:
    """The role's templates rendered by Ansible itself (its template lookup, as tasks/deploy.yml calls it, with the
    contract's variables, the role's defaults and vars), for comparison with `render`: template -> text."""
    import sys

    names = list(templates)
    playbook = workdir / "render.yml"
    task = {
        "ansible.builtin.copy": {
            "content": "{{ lookup('ansible.builtin.template', templates ~ item) }}",
            "dest": f"{workdir}/{{{{ item }}}}",
            "mode": "0600",
        },
        "loop": names,
    }
    vars_files = [str(REPO / contract.ANSIBLE_VARS_FILE), str(ROLE / "defaults/main.yml"), str(ROLE / "vars/main.yml")]
    play = {"hosts": "localhost", "gather_facts": False, "vars_files": vars_files,
            "vars": {"templates": f"{ROLE}/templates/"}, "tasks": [task]}  # fmt: skip
    playbook.write_text(json.dumps([play]))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}",
         "-e", f"_platform_certificate_not_after={HARNESS_CERTIFICATE_NOT_AFTER}", str(playbook)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"ansible-playbook failed: {result.stdout[-3000:]}")
    return {name: (workdir / name).read_text() for name in names}


# ------------------------------------------------------------------------------------------------ the upstream


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        document = {
            "method": self.command,
            "path": self.path,
            "key_name": self.headers.get("X-Modelswarm-Key-Name"),
            "authorization": self.headers.get("Authorization"),
            "request_id": self.headers.get("X-Request-Id"),
            "body": body.decode("utf-8", "replace"),
        }
        payload = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        # An id of its own, as a model server or the console may send: NGINX must answer with one id, its own.
        self.send_header("X-Request-Id", "the-upstreams-own-id")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format, *args) -> None:  # quiet
        pass


class _LoopbackHTTP:
    """An HTTP server on 127.0.0.1 (a free port) with `handler`, served from a thread while in its `with` block."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class StubUpstream(_LoopbackHTTP):
    """A model replica and console stand-in on 127.0.0.1: answers every request with what it received (JSON)."""

    def __init__(self) -> None:
        super().__init__(_Echo)


class _Services(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(self.path)
        filters = json.loads(parse_qs(url.query).get("filters", ["{}"])[0])
        services = self.server.services
        if self.server.down:
            status, document = 503, {"message": "rpc error: code = Unknown desc = The swarm does not have a leader"}
        elif url.path == "/services":
            wanted = filters.get("label", [])
            status, document = 200, [
                {"ID": f"id-{name}", "Spec": {"Name": name, "Labels": labels}}
                for name, labels in services.items() if all(key in labels for key in wanted)
            ]  # fmt: skip
        elif url.path == "/tasks":
            status, document = 200, list(self.server.tasks)
        elif url.path.startswith("/services/") and url.path.rsplit("/", 1)[-1] in services:
            name = url.path.rsplit("/", 1)[-1]
            status, document = 200, {"ID": f"id-{name}", "Spec": {"Name": name, "Labels": services[name]}}
        else:
            status, document = 404, {"message": f"{url.path} not found"}
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args) -> None:  # quiet
        pass


class StubDockerApi(_LoopbackHTTP):
    """The Docker API proxy as NGINX asks it. `services`: name -> labels (changeable while it runs), served as
    GET /services (filtered by label key), GET /services/<name> (404 for any other name), each with ID "id-<name>";
    `tasks`: the list GET /tasks answers (as the test sets it); `down`: every answer is 503 (quorum lost)."""

    def __init__(self, services: dict[str, dict[str, str]] | None = None) -> None:
        super().__init__(_Services)
        self.server.services = services if services is not None else {}
        self.server.tasks = []
        self.server.down = False
        self.services = self.server.services


class StubDNS:
    """A DNS server on 127.0.0.1 (UDP) that answers A queries for the names it knows with 127.0.0.1, and NXDOMAIN
    for any other: Docker's embedded DNS for the swarm's service names, as NGINX asks it."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = {n.lower() for n in names}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        labels, at = [], 12
        while at < len(query) and query[at] != 0:
            length = query[at]
            labels.append(query[at + 1 : at + 1 + length].decode("ascii", "replace"))
            at += 1 + length
        question = query[12 : at + 5]  # the name, its terminating zero, type and class
        qtype = int.from_bytes(query[at + 1 : at + 3], "big")
        known = ".".join(labels).lower() in self.names and qtype == 1
        header = (
            query[:2] + (b"\x81\x80" if known else b"\x81\x83") + b"\x00\x01" + (b"\x00\x01" if known else b"\x00\x00")
        )
        header += b"\x00\x00\x00\x00"
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton("127.0.0.1")
        return header + question + (record if known else b"")

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            response = self.answer(query)
            if response is not None:
                self.sock.sendto(response, peer)

    def __enter__(self) -> StubDNS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


# ----------------------------------------------------------------------------------------------------- NGINX


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


def exchange(
    connection: http.client.HTTPConnection, method: str, path: str, headers: dict | None, body: bytes | str | None
) -> tuple[int, dict[str, str], bytes]:
    """One request on `connection`, which is closed after: (status, headers with lower-case names, body)."""
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def terminate(process: subprocess.Popen | None) -> None:
    """SIGTERM to a child that still runs, SIGKILL if it has not exited 10 s later."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _run_nginx(server, port: int, what: str) -> None:
    """Start the host's nginx on `server.conf` (logging to `server.error_log`), its stub DNS first, and wait until it
    listens on `port`; on failure, stop it again and raise with its error log."""
    server.dns.__enter__()
    server.process = subprocess.Popen(
        [NGINX, "-e", str(server.error_log), "-c", str(server.conf), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: server.process.poll() is not None or _port_open(port), 10, what)
        if server.process.poll() is not None:
            raise RuntimeError(f"nginx exited ({server.process.returncode}): {server.errors()[-2000:]}")
    except BaseException:
        server.stop()
        raise


def _install(path: Path, text: str) -> None:
    """`text` as `path`, replaced in one step (as the entrypoint moves a checked file into place)."""
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def _reload(master: subprocess.Popen | None, what: str) -> None:
    """SIGHUP to a running NGINX master; returns once the workers that ran the old configuration are gone."""
    assert master is not None and master.poll() is None
    old = _children(master.pid)
    master.send_signal(signal.SIGHUP)
    wait_for(lambda: not (old & _children(master.pid)) and _children(master.pid), 10, what)


class HostNginx:
    """The platform's nginx.conf (the role's template) on loopback, run by the host's nginx.

    `models`: the model names that have a running replica (their service names resolve; change `dns.names` to
    add or remove one): each, and the console, is the stub upstream on `upstream_port`. `docker_api_port`: where
    the Docker API proxy answers (a StubDockerApi; default: a port nothing listens on). `settings`: role variables
    to set (e.g. platform_nginx_auth_rate);
    `extra_locations`: NGINX text added to the main server (or a function of the rendered configuration that
    gives it), `extra_http` to the http block (the benchmark's unchecked location and its upstream).
    """

    def __init__(
        self,
        root: Path,
        *,
        grants: str,
        upstream_port: int,
        models: Iterable[str] = (),
        settings: dict | None = None,
        extra_locations: str | Callable[[str], str] = "",
        extra_http: str = "",
        docker_api_port: int | None = None,
    ) -> None:
        self.root = root
        self.http_port = free_port()
        self.https_port = free_port()
        self.access_log = root / "access.log"
        self.error_log = root / "error.log"
        self.grants_file = root / "grants" / "grants.conf"
        self.conf = root / "nginx.conf"
        self.pid_file = root / "nginx.pid"
        self.process: subprocess.Popen | None = None
        prometheus = role_vars()["_platform_prometheus"]
        self.dns = StubDNS(
            [contract.CONSOLE_SERVICE, prometheus["service"], *(contract.MODEL_SERVICE_PREFIX + m for m in models)]
        )
        root.mkdir(parents=True, exist_ok=True)
        self.grants_file.parent.mkdir(exist_ok=True)
        self.grants_file.write_text(grants)
        shutil.copyfile(AUTH_JS, root / "modelswarm_auth.js")
        shutil.copyfile(WAIT_JS, root / "modelswarm_wait.js")
        shutil.copyfile(REPLICAS_JS, root / "modelswarm_replicas.js")
        shutil.copyfile(METRICS_JS, root / "modelswarm_metrics.js")
        self.replicas_file = root / "replicas.conf"
        self.replicas_file.write_text(NO_REPLICAS)
        self.control_port = free_port()
        self.status_port = free_port()
        # The replica router's socket: a short path (a Unix socket's path has at most 107 bytes; tmp_path is long).
        self.socket_dir = Path(tempfile.mkdtemp(prefix="msr-"))
        self.socket_dir.chmod(0o755)  # NGINX's workers (not root) connect to it, and look for the maintenance flag
        self.router_conf = root / "router.conf"
        self.router_error_log = root / "router-error.log"
        self.router: subprocess.Popen | None = None
        self._certificate()
        paths = {
            **role_vars()["_platform_nginx"],
            "binary": NGINX,
            "conf": str(self.conf),
            "pid": str(self.pid_file),
            "temp_dir": str(root),
            "access_log": str(self.access_log),
            "error_log": str(self.error_log),
            "listen_address": "127.0.0.1",
            "resolver": f"127.0.0.1:{self.dns.port}",
            "tls_certificate": str(root / "server.crt"),
            "tls_certificate_key": str(root / "server.key"),
            "js_module": str(JS_MODULE),
            "auth_js": str(root / "modelswarm_auth.js"),
            "wait_js": str(root / "modelswarm_wait.js"),
            "replicas_js": str(root / "modelswarm_replicas.js"),
            "metrics_js": str(root / "modelswarm_metrics.js"),
            "replicas_file": str(self.replicas_file),
            "router_conf": str(self.router_conf),
            "router_socket": str(self.socket_dir / "router.sock"),
            "router_pid": str(root / "router.pid"),
            "router_route": str(root / "router-route.conf"),
            "routes_file": str(root / "routes.conf"),
            "control_port": self.control_port,
            "docker_api_host": "127.0.0.1",
            "grants_dir": str(self.grants_file.parent),
            "grants_file": str(self.grants_file),
            "grants_token": str(root / "grants-token"),
            "maintenance_dir": str(self.socket_dir),
        }
        proxy = {**role_vars()["_platform_docker_api_proxy"], "port": docker_api_port or free_port()}
        self.variables = role_vars(
            _platform_nginx=paths,
            _platform_docker_api_proxy=proxy,
            platform_http_port=self.http_port,
            platform_https_port=self.https_port,
            platform_nginx_status_port=self.status_port,
            modelswarm_model_port=upstream_port,
            modelswarm_console_port=upstream_port,
            _platform_prometheus={**prometheus, "port": upstream_port},  # Prometheus is the echoing stub too
            **(settings or {}),
        )
        text = render("nginx.conf.j2", self.variables)
        if callable(extra_locations):  # made from this very configuration (e.g. a copy of one of its locations)
            extra_locations = extra_locations(text)
        if extra_locations:
            marker = "    location / {\n      set $console_upstream"
            assert text.count(marker) == 1
            text = text.replace(marker, extra_locations + "\n" + marker, 1)
        if extra_http:
            assert text.endswith("\n}\n")
            text = text[: -len("}\n")] + extra_http + "\n}\n"
        self.conf.write_text(text)
        self.router_conf.write_text(render("nginx-router.conf.j2", self.variables))
        (root / "router-route.conf").write_text(render("nginx-router-route.conf.j2", self.variables))
        self.routes_file = root / "routes.conf"
        self.routes_file.write_text(NO_ROUTES)

    def _certificate(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=localhost", "-days", "1", "-keyout", str(self.root / "server.key"),
             "-out", str(self.root / "server.crt")],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    # --- life cycle

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [NGINX, "-t", "-q", "-e", str(self.error_log), "-c", str(self.conf)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def start(self) -> HostNginx:
        """The replica router, then NGINX (as the entrypoint starts them)."""
        socket_path = Path(self.variables["_platform_nginx"]["router_socket"])
        self.router = subprocess.Popen(
            [NGINX, "-e", str(self.router_error_log), "-c", str(self.router_conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(lambda: self.router.poll() is not None or socket_path.is_socket(), 10, "the replica router")
            if self.router.poll() is not None:
                raise RuntimeError(f"the replica router exited ({self.router.returncode}): {self.router_errors()}")
        except BaseException:
            self.stop()
            raise
        _run_nginx(self, self.http_port, "nginx listening")
        try:
            wait_for(lambda: _port_open(self.https_port), 10, "nginx listening on https")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        terminate(self.process)
        terminate(self.router)
        if self.dns._thread.is_alive():
            self.dns.__exit__()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> HostNginx:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reload(self, grants: str | None = None) -> None:
        """New grants (if given), then SIGHUP; returns once the workers that ran the old configuration are gone."""
        if grants is not None:
            _install(self.grants_file, grants)
        _reload(self.process, "nginx reload")

    def reload_router(self, replicas: str) -> None:
        """A new answer of the replica check installed as the entrypoint does (the upstreams and the models' own
        routes), then SIGHUP to the router; returns once its old workers are gone."""
        upstreams, _, routes = replicas.partition(ROUTES_MARKER)
        _install(self.replicas_file, upstreams)
        _install(self.routes_file, ROUTES_MARKER + routes if routes else NO_ROUTES)
        _reload(self.router, "router reload")

    def router_errors(self) -> str:
        return self.router_error_log.read_text(errors="replace")[-2000:] if self.router_error_log.exists() else ""

    def entrypoint(self, url: str, interval: float) -> Path:
        """The role's NGINX entrypoint for this configuration (not started), polling `url` every `interval` s."""
        paths = {**self.variables["_platform_nginx"], "grants_url": url}
        variables = {**self.variables, "_platform_nginx": paths, "platform_nginx_grants_poll_interval": interval}
        path = self.root / "entrypoint.sh"
        path.write_text(render("nginx-entrypoint.sh.j2", variables))
        return path

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    # --- clients

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: str | None = None,
        source: str = "127.0.0.1",
        https: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection from `source` (any 127.x.y.z: each is its own client address)."""
        if https:
            import ssl

            context = ssl.create_default_context(cafile=str(self.root / "server.crt"))
            context.check_hostname = False
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.https_port, timeout=10, source_address=(source, 0), context=context
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10, source_address=(source, 0))
        return exchange(connection, method, path, headers, body)

    def request_to(self, port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """One request to another of NGINX's loopback listeners (e.g. the replicas check on control_port)."""
        return exchange(http.client.HTTPConnection("127.0.0.1", port, timeout=10), method, path, None, None)

    def raw(self, data: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
        """Send `data` as it is (a request with any bytes in it) and read the answer until NGINX closes."""
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=10, source_address=(source, 0)) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, body


class RegistryGateway:
    """The registry gateway (the role's registry-gateway.conf.j2) on loopback, run by the host's nginx, in front of
    `upstream_port` (a stand-in for the registry, found as `registry` through the stub DNS). `htpasswd`: the
    accounts file's text, as the role writes it."""

    def __init__(self, root: Path, *, htpasswd: str, upstream_port: int, settings: dict | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.error_log = root / "error.log"
        self.conf = root / "registry-gateway.conf"
        self.process: subprocess.Popen | None = None
        self.dns = StubDNS(["registry"])
        root.mkdir(parents=True, exist_ok=True)
        (root / "htpasswd").write_text(htpasswd)
        # NGINX's workers (not root) read the accounts file at each request, as they read /run/secrets (0444).
        (root / "htpasswd").chmod(0o644)
        for directory in (root, *root.parents):
            if directory == Path(tempfile.gettempdir()):
                break
            directory.chmod(directory.stat().st_mode | 0o011)
        HostNginx._certificate(self)  # the same throwaway certificate
        paths = {
            **role_vars()["_platform_registry_gateway"],
            "pid": str(root / "nginx.pid"),
            "temp_dir": str(root),
            "access_log": str(root / "access.log"),
            "error_log": str(self.error_log),
            "listen_address": "127.0.0.1",
            "port": self.port,
            "resolver": f"127.0.0.1:{self.dns.port}",
            "tls_certificate": str(root / "server.crt"),
            "tls_certificate_key": str(root / "server.key"),
            "htpasswd": str(root / "htpasswd"),
            "upstream": f"registry:{upstream_port}",
        }
        self.variables = role_vars(_platform_registry_gateway=paths, **(settings or {}))
        self.conf.write_text(render("registry-gateway.conf.j2", self.variables))

    def start(self) -> RegistryGateway:
        _run_nginx(self, self.port, "gateway listening")
        return self

    def stop(self) -> None:
        terminate(self.process)
        if self.dns._thread.is_alive():
            self.dns.__exit__()

    errors = HostNginx.errors

    def __enter__(self) -> RegistryGateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def request(
        self, method: str, path: str, user: str | None = None, password: str | None = None, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTPS request on a new connection, with HTTP Basic credentials when `user` is given."""
        import base64
        import ssl

        context = ssl.create_default_context(cafile=str(self.root / "server.crt"))
        context.check_hostname = False
        headers = {}
        if user is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=context)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()
