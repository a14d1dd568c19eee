"""The controller-side balancer of the day-2 tests (HAProxy on loopback) follows each node's /healthz: a node that
answers 503 there (the maintenance flag) gets no new request, and gets them again once it answers 200."""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections import Counter

import pytest

from modelswarm.tooling import balancer
from modelswarm.tooling.nginx_harness import free_port

if not balancer.Path(balancer.HAPROXY).exists():
    pytest.fail("the host lacks haproxy: run scripts/test-packages.sh (make unit does)", pytrace=False)


class Node:
    """A stand-in for one node's NGINX: /healthz answers 200 or, while draining, 503; anything else names the node."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.draining = False
        node = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path == "/healthz":
                    status, body = (503, b"draining") if node.draining else (200, b"ok")
                else:
                    status, body = 200, node.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *_args) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def spread(lb: balancer.ClientBalancer, requests: int) -> Counter:
    counts: Counter = Counter()
    for _ in range(requests):
        connection = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=5)
        connection.request("POST", "/models/iris/predict", body=b"{}")
        answer = connection.getresponse()
        assert answer.status == 200
        counts[answer.read().decode()] += 1
        connection.close()
    return counts


def wait_until(probe, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_draining_node_gets_no_new_request_until_it_answers_200_again():
    nodes = [Node("node1"), Node("node2")]
    try:
        with balancer.ClientBalancer({n.name: f"127.0.0.1:{n.port}" for n in nodes}, check_interval_ms=100) as lb:
            wait_until(lambda: all(s.status == "UP" for s in lb.stats().values()))
            assert spread(lb, 20) == Counter({"node1": 10, "node2": 10})
            nodes[1].draining = True
            wait_until(lambda: lb.stats()["node2"].status == "DOWN")
            assert spread(lb, 20) == Counter({"node1": 20})
            nodes[1].draining = False
            wait_until(lambda: lb.stats()["node2"].status == "UP")
            assert spread(lb, 20) == Counter({"node1": 10, "node2": 10})
            figures = lb.stats()
            assert figures["node1"].sent == 40 and figures["node2"].sent == 20
            assert figures["node1"].retries == figures["node2"].retries == 0
            pid = lb.process.pid
        assert lb.process.poll() is not None and not lb.root.exists()  # stopped by its own PID, scratch removed
        assert pid > 0
    finally:
        for node in nodes:
            node.close()


def test_no_server_is_refused():
    with pytest.raises(balancer.BalancerError, match="at least one server"):
        balancer.ClientBalancer({})
