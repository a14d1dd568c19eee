"""A health-checking load balancer on the controller, for the day-2 tests and benchmarks: what ops put in front of a
cluster (an F5, a cloud balancer, HAProxy), so that load can be spread over every node while nodes are taken out.

It is HAProxy (Debian's `haproxy` package, installed by scripts/test-packages.sh) on a loopback port, with one server
per node's NGINX. Every `check_interval_ms` it asks each node's `/healthz`; a node answering anything but 200 twice in
a row (`fall`) gets no new request, and it is taken back after two 200s (`rise`). A node's NGINX answers 503 there
while the day-2 playbooks' maintenance flag is set, so the balancer stops sending to a node before it is drained.
Like any such balancer, it sends a request again to another node when the connection to the first one fails before
an answer (`retry-on conn-failure empty-response`, two retries); how many it sent again is reported (`retries`), so
a run that needed them shows it.

Started and stopped by its own PID (a pidfile in its scratch directory); nothing else is signalled.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from modelswarm.tooling.nginx_harness import free_port

HAPROXY = "/usr/sbin/haproxy"

CONFIG = """\
global
    stats socket {stats} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response
    option http-keep-alive

frontend cluster
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter {interval}ms fall 2 rise 2
{servers}
"""


class BalancerError(RuntimeError):
    """The balancer cannot run as asked; the message says why."""


@dataclass
class ServerStats:
    status: str  # UP, DOWN, ...
    sent: int  # requests answered through this server (HAProxy's stot: sessions)
    retries: int  # requests sent again after a connection failure (wretr)
    redispatched: int  # requests that moved to another server (wredis)


class ClientBalancer:
    """HAProxy over `servers` ({name: "address:port"}), listening on 127.0.0.1:<port>."""

    def __init__(self, servers: dict[str, str], check_interval_ms: int = 500) -> None:
        if not servers:
            raise BalancerError("the balancer needs at least one server")
        if not Path(HAPROXY).exists():
            raise BalancerError("the controller lacks haproxy: run scripts/test-packages.sh (make unit does)")
        self.servers = dict(servers)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="balancer-"))
        self.stats_socket = self.root / "stats.sock"
        self.pidfile = self.root / "haproxy.pid"
        self.conf = self.root / "haproxy.cfg"
        self.log = self.root / "haproxy.log"
        lines = [f"    server {name} {address} check" for name, address in self.servers.items()]
        self.conf.write_text(
            CONFIG.format(stats=self.stats_socket, port=self.port, interval=check_interval_ms, servers="\n".join(lines))
        )
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> ClientBalancer:
        """Start HAProxy and wait until it listens and every server's first check is done."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.conf), "-p", str(self.pidfile)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded
            if self.process.poll() is not None:
                raise BalancerError(f"haproxy exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            if self._listening() and all(s.status in ("UP", "DOWN") for s in self.stats().values()):
                return self
            time.sleep(0.2)
        self.stop()
        raise BalancerError(f"haproxy did not listen on {self.address} within {timeout:.0f}s")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, ServerStats]:
        """Each server's state and counters, from HAProxy's `show stat` (CSV)."""
        try:
            text = self._command("show stat")
        except OSError:
            return {}
        rows = [line for line in text.splitlines() if line]
        header = rows[0].lstrip("# ").split(",")
        result = {}
        for row in rows[1:]:
            fields = dict(zip(header, row.split(","), strict=False))
            if fields.get("pxname") != "nodes" or fields.get("svname") in ("FRONTEND", "BACKEND"):
                continue
            result[fields["svname"]] = ServerStats(
                status=fields["status"].split()[0],
                sent=int(fields["stot"] or 0),
                retries=int(fields["wretr"] or 0),
                redispatched=int(fields["wredis"] or 0),
            )
        return result

    def stop(self) -> None:
        """Stop this balancer's HAProxy, by its own PID."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ClientBalancer:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
