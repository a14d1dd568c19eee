"""The platform's Docker API proxy on loopback, for the unit tests (not for production).

It renders the platform role's own template (docker-api-proxy.cfg.j2) with the role's values, as Ansible does, with
only the file paths, the listen address and (where a test says so) the timeouts changed, and runs the host's
HAProxy (Debian's `haproxy` package: `scripts/test-packages.sh`) in front of a fake dockerd: an HTTP server on a
unix socket that records every request that reached it, answers canned JSON (or an echo of the request), and
streams chunks the test hands it for the event stream and followed logs.

Processes are children of the caller, tracked and stopped by their PID; every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from modelswarm.tooling.nginx_harness import (
    ROLE,
    exchange,
    free_port,
    render,
    role_vars,
    terminate,
    wait_for,
)

HAPROXY = "/usr/sbin/haproxy"
TEMPLATE = "docker-api-proxy.cfg.j2"
STREAM_END = None  # hand this to FakeDockerd.stream to end the current stream


def missing_packages() -> str | None:
    """Why the host cannot run the harness, or None."""
    if not Path(HAPROXY).exists():
        return "the host lacks haproxy: run scripts/test-packages.sh (make unit does)"
    return None


def proxy_settings() -> dict:
    """The role's `_platform_docker_api_proxy` (vars/main.yml)."""
    return dict(yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["_platform_docker_api_proxy"])


# ------------------------------------------------------------------------------------------------ a fake dockerd


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client gone mid-answer is no news here
        pass


def is_stream(path: str) -> bool:
    parts = urlsplit(path).path.split("/")
    return parts[-1] == "events" or parts[-1] == "logs"


class FakeDockerd:
    """dockerd's API on a unix socket, as far as the proxy's tests need it.

    `requests`: (method, path with query) of every request that reached it, in order. `answers`: path without the
    /v1.NN prefix -> JSON document to answer with (default: an echo of the method and path). A query `delay=S`
    makes it wait S seconds first. GET /events and GET /containers/<id>/logs stream: each item put on `stream`
    is sent as one chunk, at once; STREAM_END ends the response."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[tuple[str, str]] = []
        self.answers: dict[str, object] = {}
        self.stream: queue.Queue[bytes | None] = queue.Queue()
        self.streaming = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                fake.requests.append((self.command, self.path))
                url = urlsplit(self.path)
                delay = parse_qs(url.query).get("delay")
                if delay:
                    time.sleep(float(delay[0]))
                if self.command == "GET" and is_stream(self.path):
                    return self._stream()
                unversioned = re.sub(r"^/v1\.[0-9]+(?=/)", "", url.path)
                document = fake.answers.get(unversioned, {"method": self.command, "path": self.path})
                payload = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Api-Version", "1.41")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                fake.streaming.set()
                while True:
                    try:
                        chunk = fake.stream.get(timeout=60)
                    except queue.Empty:
                        chunk = STREAM_END
                    if chunk is STREAM_END:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    try:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    except OSError:  # the proxy closed the stream
                        self.close_connection = True
                        return

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

            def log_message(self, format, *args) -> None:  # quiet
                pass

        self.server = _UnixHTTPServer(str(path), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> FakeDockerd:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stream.put(STREAM_END)
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ clients


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the proxy's node-local listener)."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


# ------------------------------------------------------------------------------------------------ HAProxy


class HostProxy:
    """The role's docker-api-proxy.cfg on loopback and a unix socket in a scratch directory, run by the host's
    HAProxy in front of a FakeDockerd (started and stopped with it). `settings`: values of
    `_platform_docker_api_proxy` to change (timeouts); the paths and the address are always the scratch ones."""

    def __init__(self, settings: dict | None = None, stale_socket: bool = False) -> None:
        # Unix socket paths are limited to 108 bytes: a short directory of its own, not pytest's tmp_path.
        self.root = Path(tempfile.mkdtemp(prefix="dap-", dir="/tmp"))
        self.port = free_port()
        self.socket = self.root / "proxy" / "docker.sock"
        self.socket.parent.mkdir(mode=0o750)
        if stale_socket:  # left behind by a proxy that was killed: the new one must replace it
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(str(self.socket))
            stale.close()
        self.conf = self.root / "haproxy.cfg"
        self.log = self.root / "haproxy.log"
        self.dockerd = FakeDockerd(self.root / "dockerd.sock")
        self.settings = {
            **proxy_settings(),
            **(settings or {}),
            "conf": str(self.conf),
            "docker_socket": str(self.dockerd.path),
            "listen_address": "127.0.0.1",
            "port": self.port,
            "socket_dir": str(self.socket.parent),
            "socket": str(self.socket),
        }
        self.conf.write_text(render(TEMPLATE, role_vars(_platform_docker_api_proxy=self.settings)))
        self.process: subprocess.Popen | None = None

    def check_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [HAPROXY, "-c", "-f", str(self.conf)], capture_output=True, text=True, timeout=30, check=False
        )

    def start(self) -> HostProxy:
        self.dockerd.__enter__()
        with self.log.open("wb") as log:
            # As the stack runs it (the upstream image's entrypoint adds -W -db too): master-worker, foreground.
            self.process = subprocess.Popen(
                [HAPROXY, "-W", "-db", "-f", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            wait_for(
                lambda: self.process.poll() is not None or (self._listening() and self._master_ready()),
                10,
                "haproxy listening, its master process handling signals",
            )
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited ({self.process.returncode}): {self.output()[-2000:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.socket))
            return True
        except OSError:
            return False

    def _master_ready(self) -> bool:
        """Whether the master process catches the stop signals: after starting its worker it re-executes itself, and a
        signal that arrives before it has set up its handlers again is lost (a test's, never a stack's concern)."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        caught, blocked = int(fields["SigCgt"], 16), int(fields["SigBlk"], 16)
        wanted = (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGTERM - 1))
        return caught & wanted == wanted and blocked & wanted == 0

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        terminate(self.process)  # SIGTERM: a hard stop
        if self.dockerd._thread.is_alive():
            self.dockerd.__exit__()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HostProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # --- clients

    def connection(self, listener: str, timeout: float = 10) -> http.client.HTTPConnection:
        """A new connection to `listener`: "tcp" (the docker-api network's) or "local" (the node's socket)."""
        if listener == "tcp":
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        return UnixHTTPConnection(self.socket, timeout=timeout)

    def request(
        self,
        listener: str,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection; the path is sent exactly as given."""
        return exchange(self.connection(listener, timeout), method, path, headers, body)
