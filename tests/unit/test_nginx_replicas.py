"""Gray failures: every node checks the model replicas itself (modelswarm_replicas.js behind NGINX's loopback
listener, installed by the entrypoint) and sends no new request to one that stops answering /health - a frozen
replica (docker pause) or a stuck one. On the host's NGINX+njs, with a stub Docker API proxy (services, tasks) and
stub replicas on loopback addresses 127.0.1.x, all on the model port."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_nginx_entrypoint import Entrypoint, StubConsole

from modelswarm import contract
from modelswarm.apps.console.grants import Grant, render_nginx_grants
from modelswarm.tooling import nginx_harness as harness

if reason := harness.missing_packages():
    pytest.fail(reason, pytrace=False)

KEY, DIGEST = harness.new_key()
GRANTS = render_nginx_grants(1, [Grant("alice", "predict", None, DIGEST)])
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
SETTINGS = {
    "platform_nginx_replica_check_interval": 0.3,
    "platform_nginx_replica_probe_timeout": "500ms",
    "platform_nginx_prediction_timeout": "2s",
}


class StubReplica:
    """A model replica on `address`:`port`: /health and /predict answer 200 with its address, at once - or, frozen,
    never within a client's patience (the connection is accepted and nothing comes back, as with docker pause)."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.frozen, self.predictions = address, threading.Event(), 0
        self.delay = 0.0  # seconds every prediction takes (a slow model, not a frozen one)
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if replica.frozen.is_set():
                    time.sleep(8)  # bounded: longer than any timeout in these tests
                if self.path.startswith("/predict"):
                    time.sleep(replica.delay)
                if self.path.startswith("/predict"):
                    replica.predictions += 1
                payload = json.dumps({"replica": replica.address, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.frozen.clear()
        self.server.shutdown()
        self.server.server_close()


def task(service: str, address: str, state: str = "running", network: str = contract.MODELS_NETWORK) -> dict:
    return {
        "ServiceID": f"id-{service}",
        "Status": {"State": state},
        "NetworksAttachments": [
            {"Network": {"Spec": {"Name": "modelswarm_platform"}}, "Addresses": ["10.9.9.9/24"]},
            {"Network": {"Spec": {"Name": network}}, "Addresses": [f"{address}/24"]},
        ],
    }


@pytest.fixture
def lab(tmp_path):
    """(nginx, docker_api, replicas): iris with three replicas on 127.0.1.1-3 (running tasks), a platform service
    and a task still starting that must be ignored."""
    port = harness.free_port()
    replicas = {n: StubReplica(f"127.0.1.{n}", port) for n in (1, 2, 3)}
    docker_api = harness.StubDockerApi(
        {
            # Queue timeout 0: a request that NGINX cannot route (not in DNS here) is answered 503 at once.
            "model-iris": {contract.LABEL_MODEL: "iris", contract.LABEL_QUEUE_TIMEOUT: "0"},
            "modelswarm_console": {"com.docker.stack.namespace": "x"},
        }
    ).__enter__()
    docker_api.server.tasks = [
        *(task("model-iris", replica.address) for replica in replicas.values()),
        task("model-iris", "127.0.1.9", state="starting"),
        task("modelswarm_console", "127.0.1.8"),
    ]
    nginx = harness.HostNginx(
        tmp_path / "nginx", grants=GRANTS, upstream_port=port, docker_api_port=docker_api.port, settings=SETTINGS
    )
    yield nginx, docker_api, replicas
    nginx.stop()
    docker_api.__exit__()
    for replica in replicas.values():
        replica.close()


def checked(nginx) -> tuple[int, str]:
    status, _, body = nginx.request_to(nginx.control_port, "GET", "/_modelswarm/replicas")
    return status, body.decode()


def servers(text: str) -> list[str]:
    return sorted(line.split()[1].rsplit(":", 1)[0] for line in text.splitlines() if line.startswith("    server "))


def test_the_check_lists_the_running_replicas_that_answer_health(lab):
    nginx, docker_api, replicas = lab
    replicas[3].frozen.set()
    # A service whose model label breaks the contract's name rule is never written into NGINX's configuration.
    docker_api.services["model-bad"] = {contract.LABEL_MODEL: "Bad_Name;"}
    docker_api.server.tasks.append(task("model-bad", "127.0.1.1"))
    with nginx:
        status, text = checked(nginx)
    assert status == 200, text
    assert "Bad_Name" not in text
    assert servers(text) == ["127.0.1.1", "127.0.1.2"]  # not the frozen one, not the starting task, not the console
    assert "upstream modelswarm_model_iris {" in text and "    least_conn;" in text
    assert "    iris modelswarm_model_iris;" in text
    assert "max_fails=1 fail_timeout=10s;" in text


def test_a_model_whose_replicas_all_fail_is_left_to_dns_and_waiting(lab):
    nginx, _, replicas = lab
    for replica in replicas.values():
        replica.frozen.set()
    with nginx:
        status, text = checked(nginx)
    assert status == 200 and servers(text) == [] and "modelswarm_model_iris" not in text


def test_without_the_docker_api_the_check_says_so(lab):
    nginx, docker_api, _ = lab
    docker_api.server.down = True
    with nginx:
        status, text = checked(nginx)
    assert status == 503 and "the Docker API did not answer: HTTP 503" in text


def installed(nginx, expected: list[str]) -> bool:
    """The replicas file lists `expected` and NGINX uses it: 5 predictions in a row answered (just after a reload
    an old worker may still take a connection for a moment)."""
    return servers(nginx.replicas_file.read_text()) == expected and all(
        status == 200 for status, _ in predictions(nginx, 5)
    )


def predictions(nginx, count: int) -> list[tuple[int, str]]:
    answers = []
    for _ in range(count):
        status, _, body = nginx.request("POST", "/models/iris/predict", AUTH, "{}")
        answers.append((status, json.loads(body).get("replica") if status == 200 else body.decode()))
    return answers


def test_a_replica_that_freezes_gets_no_new_request_and_none_fails(lab):
    """The entrypoint installs the checked replicas; one freezes (as with docker pause): within a few checks it is
    out, no request fails meanwhile (a request caught on it is retried on another after the prediction timeout),
    and it is back once it answers again."""
    nginx, _, replicas = lab
    with StubConsole() as console, Entrypoint(nginx, console.url) as entrypoint:
        every = ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
        harness.wait_for(lambda: installed(nginx, every), 10, "the three replicas installed")
        assert {replica for _, replica in predictions(nginx, 12)} == {"127.0.1.1", "127.0.1.2", "127.0.1.3"}
        replicas[2].frozen.set()
        harness.wait_for(lambda: servers(nginx.replicas_file.read_text()) == ["127.0.1.1", "127.0.1.3"],
                         10, "the frozen replica taken out")  # fmt: skip
        time.sleep(1)  # the reload's old workers gone
        before = replicas[2].predictions
        answers = predictions(nginx, 20)
        assert [status for status, _ in answers] == [200] * 20
        assert "127.0.1.2" not in {replica for _, replica in answers} and replicas[2].predictions == before
        replicas[2].frozen.clear()
        harness.wait_for(lambda: "127.0.1.2" in servers(nginx.replicas_file.read_text()), 15, "the replica back")
        log = "\n".join(entrypoint.lines())
    assert "model replicas: 2 healthy in 1 model(s)" in log and "model replicas: 3 healthy in 1 model(s)" in log


def test_requests_caught_on_a_replica_that_hangs_are_answered_by_another(lab):
    """Before any check notices (no entrypoint here: the checked list is installed by hand), a replica hangs:
    requests sent to it are retried on the next one after the prediction timeout - none fails - and least_conn
    sends it few, as its stuck requests count against it."""
    nginx, _, replicas = lab
    with nginx:
        nginx.reload_router(checked(nginx)[1])
        replicas[1].frozen.set()
        results = []
        threads = [threading.Thread(target=lambda: results.extend(predictions(nginx, 6))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(results) == 24 and {status for status, _ in results} == {200}
    assert "127.0.1.1" not in {replica for _, replica in results}


def test_reloads_of_the_router_fail_no_request_on_the_kept_alive_connections(lab):
    """The front NGINX keeps its connections to the router alive; a router reload closes the idle ones, possibly
    just as the front sends a request on one. 4 clients keep predicting while the router is reloaded 30 times, a
    few milliseconds apart (no wait for the old workers): every prediction is answered 200. (Waiting is off in
    this fixture - queue timeout 0 - so a request the front could not send again would be a 503 here.)"""
    import signal

    nginx = lab[0]
    with nginx:
        nginx.reload_router(checked(nginx)[1])
        stop, results = threading.Event(), []

        def client() -> None:
            for _ in range(2000):  # bounded: stops by itself
                if stop.is_set():
                    break
                results.extend(predictions(nginx, 1))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the front has kept-alive connections to the router by now
        for _ in range(30):
            nginx.router.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    statuses = [status for status, _ in results]
    assert len(statuses) > 100 and set(statuses) == {200}, [a for a in results if a[0] != 200][:5]


def test_a_model_with_a_timeout_of_its_own_gets_its_own_router_locations(lab):
    """The manifest's timeout reaches NGINX as the service label: the check renders the router's locations for the
    model (route and retry) with it; a label out of the contract's range, or not a number, is ignored."""
    nginx, docker_api, _ = lab
    docker_api.services["model-iris"][contract.LABEL_TIMEOUT] = "7"
    docker_api.services["model-slow"] = {contract.LABEL_MODEL: "slow", contract.LABEL_TIMEOUT: "56"}
    docker_api.services["model-odd"] = {contract.LABEL_MODEL: "odd", contract.LABEL_TIMEOUT: "7; return 200"}
    with nginx:
        status, text = checked(nginx)
    assert status == 200, text
    routes = text[text.index("# modelswarm model routes: ") :]
    assert 'location ~ "^/(?<model>iris)(?<rest>/.*)$" {' in routes
    assert 'location ~ "^/_retry/(?<model>iris)(?<rest>/.*)$" {' in routes
    assert routes.count("    proxy_read_timeout 7s;") == 2 and routes.count("    proxy_send_timeout 7s;") == 2
    assert "slow" not in routes and "odd" not in routes and "return 200" not in text


def test_a_slow_model_with_a_longer_timeout_is_answered_by_its_replica(lab):
    """A replica that takes 3 s, over the platform's prediction timeout here (2 s): without a timeout of its own the
    router gives up on each replica in turn and the client gets an error; with `timeout: 5` the first replica's answer
    comes back, and no other replica was asked. The entrypoint installs the routes with the upstreams."""
    nginx, docker_api, replicas = lab
    for replica in replicas.values():
        replica.delay = 3.0
    with StubConsole() as console, Entrypoint(nginx, console.url) as entrypoint:
        every = ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
        harness.wait_for(lambda: servers(nginx.replicas_file.read_text()) == every, 10, "the replicas installed")
        status, _, body = nginx.request("POST", "/models/iris/predict", AUTH, "{}")
        assert status in (503, 504), body  # every replica given up on (then, queue timeout 0: no waiting)
        docker_api.services["model-iris"][contract.LABEL_TIMEOUT] = "5"
        harness.wait_for(lambda: "proxy_read_timeout 5s;" in nginx.routes_file.read_text(), 10, "the route installed")
        time.sleep(1)  # the reload's old workers gone
        before = sum(replica.predictions for replica in replicas.values())
        status, _, body = nginx.request("POST", "/models/iris/predict", AUTH, "{}")
        assert status == 200, body
        assert sum(replica.predictions for replica in replicas.values()) == before + 1
        log = "\n".join(entrypoint.lines())
    assert "1 with a timeout of their own" in log
