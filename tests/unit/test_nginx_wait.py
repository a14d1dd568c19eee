"""Requests that wait for a model replica: the role's nginx.conf and modelswarm_wait.js on the host's NGINX (njs),
with a stub DNS (a model has a replica when its service name resolves), a stub Docker API proxy (which services
exist, with which queue-timeout label) and a stub replica that echoes what it received.

Seed 001: "if no replica is available the request will queue until the model becomes available". Here: a request
for a deployed model with no reachable replica is sent again as soon as one answers, for at most the model's queue
timeout, then 503 JSON with Retry-After; a model that does not exist gets 404 at once; a node holds a bounded
number of waiting requests."""

import base64
import json
import threading
import time

import pytest

from modelswarm import contract
from modelswarm.apps.console.grants import Grant, render_nginx_grants
from modelswarm.tooling import nginx_harness as harness

if reason := harness.missing_packages():
    pytest.fail(reason, pytrace=False)

KEY, DIGEST = harness.new_key()
GRANTS = render_nginx_grants(1, [Grant("alice", "predict", None, DIGEST)])
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
BODY = json.dumps({"sepal_length": 6.7, "petal_width": 2.3})
LABEL = contract.LABEL_QUEUE_TIMEOUT


@pytest.fixture
def cluster(tmp_path):
    """(nginx, docker_api, dns names): no model has a replica yet; `docker_api.services` says which exist."""

    def start(**settings):
        upstream = harness.StubUpstream().__enter__()
        docker_api = harness.StubDockerApi().__enter__()
        server = harness.HostNginx(
            tmp_path / "nginx", grants=GRANTS, upstream_port=upstream.port, docker_api_port=docker_api.port,
            settings=settings,
        ).start()  # fmt: skip
        started.append((server, docker_api, upstream))
        return server, docker_api

    started = []
    yield start
    for server, docker_api, upstream in started:
        server.stop()
        docker_api.__exit__()
        upstream.__exit__()


def in_background(call):
    """Run `call` in a thread; returns a function that waits (bounded) for its result."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", call()), daemon=True)
    thread.start()

    def result():
        thread.join(timeout=30)
        assert not thread.is_alive(), "the request never ended"
        return box["result"]

    return result


def answered_json(status, headers, body, expected_status):
    assert status == expected_status, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def test_a_request_waits_for_a_replica_and_is_answered_when_one_comes(cluster):
    nginx, docker_api = cluster()
    docker_api.services["model-iris"] = {LABEL: "20"}
    started = time.monotonic()
    pending = in_background(lambda: nginx.request("POST", "/models/iris/predict?trace=1", AUTH, BODY))
    time.sleep(1.5)
    nginx.dns.names.add("model-iris")  # a replica starts
    status, headers, body = pending()
    echoed = answered_json(status, headers, body, 200)
    assert time.monotonic() - started >= 1.5  # it waited; it did not fail at once
    # The replica got the same request: method, path with its query, body, the key's name and never the key.
    assert (echoed["method"], echoed["path"], echoed["body"]) == ("POST", "/predict?trace=1", BODY)
    assert echoed["key_name"] == "alice" and echoed["authorization"] is None


def test_a_request_through_the_promote_route_waits_too(cluster):
    nginx, docker_api = cluster()
    docker_api.services["model-iris"] = {LABEL: "20"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"alice:{KEY}".encode()).decode()}
    pending = in_background(lambda: nginx.request("POST", "/alice/models/iris/predict", basic, BODY))
    time.sleep(1)
    nginx.dns.names.add("model-iris")
    status, headers, body = pending()
    echoed = answered_json(status, headers, body, 200)
    assert (echoed["path"], echoed["body"], echoed["key_name"]) == ("/predict", BODY, "alice")


def test_past_the_models_queue_timeout_the_answer_is_503_with_retry_after(cluster):
    nginx, docker_api = cluster()
    docker_api.services["model-iris"] = {LABEL: "2"}
    started = time.monotonic()
    status, headers, body = nginx.request("POST", "/models/iris/predict", AUTH, BODY)
    waited = time.monotonic() - started
    answer = answered_json(status, headers, body, 503)
    assert answer["error"] == "model 'iris' has no healthy replica; waited 2 s"
    assert headers["retry-after"] == "5"
    assert waited >= 1.5  # it did wait (its own label's timeout), and it ended by itself
    # One error line for the request (why no replica answered), not one for each of its retries.
    assert nginx.errors().count("could not be resolved") == 1


def test_a_model_with_queue_timeout_0_is_not_waited_for(cluster):
    nginx, docker_api = cluster()
    docker_api.services["model-iris"] = {LABEL: "0"}
    status, headers, body = nginx.request("POST", "/models/iris/predict", AUTH, BODY)
    assert answered_json(status, headers, body, 503)["error"] == "model 'iris' has no healthy replica; waited 0 s"


def test_a_model_that_does_not_exist_gets_404_at_once(cluster):
    nginx, _ = cluster()
    status, headers, body = nginx.request("POST", "/models/ghost/predict", AUTH, BODY)
    assert answered_json(status, headers, body, 404) == {"error": "no model 'ghost' is deployed"}


def test_when_the_docker_api_cannot_say_the_contracts_default_timeout_applies(cluster):
    """The proxy does not answer (here: nothing listens): the request waits the default, then 503 - never 404."""
    nginx, docker_api = cluster(modelswarm_default_queue_timeout=1)
    docker_api.__exit__()
    status, headers, body = nginx.request("POST", "/models/iris/predict", AUTH, BODY)
    assert answered_json(status, headers, body, 503)["error"] == "model 'iris' has no healthy replica; waited 1 s"


def test_a_node_holds_a_bounded_number_of_waiting_requests(cluster):
    nginx, docker_api = cluster(platform_nginx_max_waiting=2)
    docker_api.services["model-iris"] = {LABEL: "4"}
    waiting = [in_background(lambda: nginx.request("POST", "/models/iris/predict", AUTH, BODY)) for _ in range(2)]
    time.sleep(1)
    status, headers, body = nginx.request("POST", "/models/iris/predict", AUTH, BODY)  # the third
    answer = answered_json(status, headers, body, 503)
    assert "too many requests are waiting" in answer["error"] and headers["retry-after"] == "5"
    nginx.dns.names.add("model-iris")
    assert [pending()[0] for pending in waiting] == [200, 200]  # the two that waited are answered
    # Their places are free again: the next request that has to wait is accepted (and answered).
    nginx.dns.names.discard("model-iris")
    time.sleep(2.5)  # NGINX's resolver forgets the replica's address (platform_nginx_resolver_valid: 2s)
    pending = in_background(lambda: nginx.request("POST", "/models/iris/predict", AUTH, BODY))
    time.sleep(1)
    nginx.dns.names.add("model-iris")
    assert pending()[0] == 200


def test_a_key_check_still_comes_first(cluster):
    nginx, docker_api = cluster()
    docker_api.services["model-iris"] = {LABEL: "20"}
    status, _, _ = nginx.request("POST", "/models/iris/predict", {"Content-Type": "application/json"}, BODY)
    assert status == 401  # at once: a request without a key never waits
