"""NGINX's entrypoint (roles/platform/templates/nginx-entrypoint.sh.j2), run by /bin/sh on the host with the host's
nginx and a stub console on loopback: the node's grants file (deny-all first), the sync loop, what it refuses, the
console being down, and signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelswarm.apps.console.grants import Grant, render_nginx_grants
from modelswarm.tooling import nginx_harness as harness

if reason := harness.missing_packages():
    pytest.fail(reason, pytrace=False)

TOKEN = "grants-token-for-the-test-0123456789"
INTERVAL = 0.2


class StubConsole:
    """GET /internal/grants as the console serves it: the token required, ETag and If-None-Match honoured.
    `mode`: "ok", or "error" (503 for everything, as with PostgreSQL down)."""

    def __init__(self) -> None:
        self.version, self.body, self.mode = 1, render_nginx_grants(1, []), "ok"
        self.seen: list[dict[str, str]] = []
        console = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                console.seen.append(dict(self.headers))
                if console.mode == "error":
                    return self._send(503, b'{"error": "database unavailable"}')
                if self.path != "/internal/grants":
                    return self._send(404, b"{}")
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, b'{"error": "unauthorized"}')
                if self.headers.get("If-None-Match") == f'"{console.version}"':
                    return self._send(304, b"")
                return self._send(200, console.body.encode(), {"ETag": f'"{console.version}"'})

            def _send(self, status, payload, headers=None):
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/internal/grants"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def publish(self, version: int, body: str) -> None:
        self.version, self.body = version, body

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def default_signals() -> None:
    """In the child: SIGINT and SIGQUIT back to their defaults. A shell cannot trap a signal that was ignored when
    it started, and a test run launched in the background by a non-interactive shell (nohup, `&` in a script)
    inherits both ignored; in the container, dockerd starts the entrypoint with every signal at its default."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


class Entrypoint:
    """The entrypoint as a child process (its own session), stopped by its PID."""

    def __init__(self, server: harness.HostNginx, url: str) -> None:
        self.server = server
        self.script = server.entrypoint(url, INTERVAL)
        self.log = server.root / "entrypoint.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        self.server.dns.__enter__()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["/bin/sh", str(self.script)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=default_signals,
            )  # fmt: skip
        harness.wait_for(lambda: self.version() is not None, 10, "nginx answering")
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.stop(signal.SIGTERM)
        self.server.dns.__exit__()

    def stop(self, sig) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=15)

    def nginx_pids(self) -> set[int]:
        """The NGINX masters the entrypoint runs: the front one and the replica router."""
        return {pid for pid in harness._children(self.process.pid) if _comm(pid) == "nginx"}

    def master(self, conf: Path) -> int:
        """The NGINX master running `conf` (the server's conf or router_conf)."""
        (pid,) = [pid for pid in self.nginx_pids() if str(conf) in _cmdline(pid)]
        return pid

    def version(self) -> int | None:
        try:
            return json.loads(self.server.request("GET", "/auth/version")[2])["grants_version"]
        except (OSError, ValueError):
            return None

    def wait_version(self, version: int, timeout: float = 10) -> None:
        """Until every worker answers with `version`: just after a reload an old worker may still take a
        connection for a moment, so the version must be seen on 5 fresh connections in a row."""
        harness.wait_for(lambda: all(self.version() == version for _ in range(5)), timeout, f"grants version {version}")

    def whoami(self, key: str) -> int:
        return self.server.request("GET", "/auth/whoami", {"Authorization": f"Bearer {key}"})[0]

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith("modelswarm-grants:")]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.fixture
def node(tmp_path):
    """An NGINX configuration (the role's) whose grants file does not exist yet, and the token file."""
    with harness.StubUpstream() as upstream:
        server = harness.HostNginx(tmp_path, grants="", upstream_port=upstream.port, models=["iris"])
        server.grants_file.unlink()
        Path(server.variables["_platform_nginx"]["grants_token"]).write_text(TOKEN + "\n")
        yield server


@pytest.fixture
def keys():
    return {name: harness.new_key() for name in ("alice", "bob")}


def grants(version, keys, *names):
    return render_nginx_grants(version, [Grant(n, "predict", None, keys[n][1]) for n in names])


def test_a_fresh_node_refuses_every_key_until_the_console_answers_then_follows_it(node, keys):
    with StubConsole() as console:
        console.mode = "error"
        console.publish(3, grants(3, keys, "alice"))
        with Entrypoint(node, console.url) as entry:
            assert entry.version() == 0
            assert entry.whoami(keys["alice"][0]) == 401  # fail closed
            harness.wait_for(lambda: len(console.seen) >= 3, 10, "polls while the console fails")
            console.mode = "ok"
            entry.wait_version(3)
            assert entry.whoami(keys["alice"][0]) == 200
            console.publish(4, grants(4, keys, "bob"))  # alice revoked, bob created
            entry.wait_version(4)
            assert entry.whoami(keys["alice"][0]) == 401
            assert entry.whoami(keys["bob"][0]) == 200
            harness.wait_for(lambda: console.seen[-1].get("If-None-Match") == '"4"', 10, "a conditional poll")
            assert all(seen["Authorization"] == f"Bearer {TOKEN}" for seen in console.seen if "Authorization" in seen)
            log = entry.lines()
        assert node.grants_file.read_text() == grants(4, keys, "bob")
    assert log[0].endswith("no grants on this node yet: every key is refused until the console is reached")
    # An outage is logged once, not every poll.
    assert [line for line in log if "no grants from the console" in line] == [
        "modelswarm-grants: no grants from the console (HTTP 503): keeping grants version 0"
    ]
    assert "modelswarm-grants: grants version 0 -> 3" in log
    assert "modelswarm-grants: grants version 3 -> 4" in log
    text = entry.log.read_text()
    assert TOKEN not in text
    assert not any(digest in text for _, digest in keys.values())


def test_keys_keep_working_while_the_console_fails_or_is_gone(node, keys):
    with StubConsole() as console, Entrypoint(node, console.url) as entry:
        console.publish(5, grants(5, keys, "alice"))
        entry.wait_version(5)
        console.mode = "error"  # the console up, PostgreSQL down
        harness.wait_for(lambda: any("(HTTP 503)" in line for line in entry.lines()), 10, "the failure noticed")
        assert entry.whoami(keys["alice"][0]) == 200
        console.__exit__()  # the console gone
        harness.wait_for(lambda: any("unreachable" in line for line in entry.lines()), 10, "the outage noticed")
        time.sleep(5 * INTERVAL)
        assert entry.whoami(keys["alice"][0]) == 200 and entry.version() == 5
    failures = [line for line in entry.lines() if "no grants from the console" in line]
    assert len(failures) == 2 and all(line.endswith("keeping grants version 5") for line in failures)


def test_a_restarted_node_starts_with_its_last_grants_while_the_console_is_down(node, keys, unused_tcp_port):
    node.grants_file.write_text(grants(5, keys, "alice"))
    with Entrypoint(node, f"http://127.0.0.1:{unused_tcp_port}/internal/grants") as entry:  # nothing listens there
        assert entry.version() == 5
        assert entry.whoami(keys["alice"][0]) == 200
    assert entry.lines()[0] == "modelswarm-grants: starting with grants version 5"


BAD_FILES = {
    "an extra directive": lambda keys: grants(6, keys, "bob").replace("}\n", "}\ninclude /etc/passwd;\n", 1),
    "a quote in a grant": lambda keys: grants(6, keys, "bob").replace("bob predict *", 'bob" predict *'),
    "no version map": lambda keys: "\n".join(grants(6, keys, "bob").splitlines()[:-1]) + "\n",
    "versions that differ": lambda keys: grants(6, keys, "bob").replace('default "6"', 'default "7"'),
    "not a grants file": lambda keys: "<html>maintenance</html>\n",
    "a digest twice (nginx -t refuses)": lambda keys: grants(6, keys, "bob").replace(
        '    default "";\n', f'    default "";\n    "{keys["bob"][1]}" "bob admin *";\n'
    ),
}


@pytest.mark.parametrize("bad", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_grants_that_are_not_what_the_console_renders_are_refused(node, keys, bad):
    node.grants_file.write_text(grants(5, keys, "alice"))
    with StubConsole() as console:
        console.publish(6, bad(keys))
        with Entrypoint(node, console.url) as entry:
            harness.wait_for(lambda: any("refused" in line for line in entry.lines()), 10, "refused")
            time.sleep(3 * INTERVAL)  # polled again: the same refusal is not logged again
            assert entry.version() == 5 and entry.whoami(keys["alice"][0]) == 200
            console.publish(7, grants(7, keys, "bob"))  # the next good version is taken
            entry.wait_version(7)
            assert entry.whoami(keys["bob"][0]) == 200
    refusals = [line for line in entry.lines() if "refused" in line]
    assert len(refusals) == 1 and refusals[0].endswith("keeping grants version 5")
    assert keys["bob"][1] not in entry.log.read_text()


def test_without_the_right_token_the_last_grants_stay(node, keys):
    node.grants_file.write_text(grants(5, keys, "alice"))
    token_file = Path(node.variables["_platform_nginx"]["grants_token"])
    with StubConsole() as console:
        console.publish(6, grants(6, keys, "bob"))
        token_file.write_text("not-the-token")
        with Entrypoint(node, console.url) as entry:
            harness.wait_for(lambda: len(console.seen) >= 3, 10, "polls")
            assert entry.version() == 5
            token_file.unlink()
            harness.wait_for(lambda: any("no token" in line for line in entry.lines()), 10, "no token noticed")
            polls = len(console.seen)
            time.sleep(3 * INTERVAL)
            assert len(console.seen) == polls  # no token, no request
            token_file.write_text(TOKEN)  # no newline: read anyway
            entry.wait_version(6)
    log = entry.lines()
    assert sum("refuses the grants token (HTTP 401)" in line for line in log) == 1
    assert "not-the-token" not in entry.log.read_text()


def test_an_unusable_grants_file_on_the_node_is_replaced_by_deny_all(node, keys, unused_tcp_port):
    node.grants_file.write_text("map $modelswarm_key_digest $modelswarm_key_grant {\n")  # cut short
    with Entrypoint(node, f"http://127.0.0.1:{unused_tcp_port}/internal/grants") as entry:
        assert entry.version() == 0
    assert "replaced by a deny-all one" in entry.lines()[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT, signal.SIGINT])
def test_a_signal_stops_nginx_and_the_entrypoint_exits_with_it(node, keys, sig, unused_tcp_port):
    with Entrypoint(node, f"http://127.0.0.1:{unused_tcp_port}/internal/grants") as entry:
        masters = entry.nginx_pids()
        assert masters == {entry.master(node.conf), entry.master(node.router_conf)}
        started = time.monotonic()
        assert entry.stop(sig) == 0
        assert time.monotonic() - started < 5
        harness.wait_for(lambda: not any(_comm(pid) == "nginx" for pid in masters), 5, "nginx gone")


def test_the_entrypoint_exits_when_nginx_dies(node, unused_tcp_port):
    with Entrypoint(node, f"http://127.0.0.1:{unused_tcp_port}/internal/grants") as entry:
        master, router = entry.master(node.conf), entry.master(node.router_conf)
        workers = harness._children(master)
        try:
            os.kill(master, signal.SIGKILL)
            assert entry.process.wait(timeout=10) == 128 + signal.SIGKILL
            harness.wait_for(lambda: _comm(router) != "nginx", 5, "the replica router stopped too")
        finally:
            # A killed master leaves its workers behind (in a container, the container's end takes them along).
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            harness.wait_for(lambda: not any(_comm(pid) == "nginx" for pid in workers), 5, "workers gone")


def test_the_entrypoint_stops_nginx_and_fails_when_the_replica_router_dies(node, unused_tcp_port):
    """Without its router, NGINX would fail every model request on this node: the container ends (status 1) so
    that swarm starts a new one."""
    with Entrypoint(node, f"http://127.0.0.1:{unused_tcp_port}/internal/grants") as entry:
        master, router = entry.master(node.conf), entry.master(node.router_conf)
        workers = harness._children(router)
        try:
            os.kill(router, signal.SIGKILL)
            assert entry.process.wait(timeout=15) == 1
            harness.wait_for(lambda: _comm(master) != "nginx", 5, "NGINX stopped")
        finally:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert any("the replica router stopped" in line for line in entry.lines())
