"""The Docker API proxy's allow-lists, on the host's real HAProxy: the platform role's own docker-api-proxy.cfg.j2
(rendered as Ansible does, pointed at loopback and a scratch directory) in front of a fake dockerd on a unix socket
that records every request reaching it. What is allowed passes unchanged; everything else is answered 403 JSON by the
proxy and never reaches dockerd; streams pass chunk by chunk and outlive the short timeouts."""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import time

import pytest
import yaml

from modelswarm import contract
from modelswarm.apps.console import app
from modelswarm.lab import kit
from modelswarm.tooling import docker_api_proxy_harness as harness
from modelswarm.tooling import nginx_harness

if reason := harness.missing_packages():
    pytest.fail(reason, pytrace=False)

VERSIONS = ["", "/v1.41", "/v1.24"]
# What each listener lets through (GET and HEAD, with or without a version prefix); ids are names too.
ALLOWED = {
    "tcp": [
        "/_ping", "/version", "/info", "/nodes", "/nodes/3x7kq0node", "/nodes/node-1.example", "/services",
        "/services/console", "/tasks", "/tasks/9w2task", "/tasks?filters=%7B%22service%22%3A%5B%22s%22%5D%7D",
        "/networks", "/networks?filters=%7B%7D",  # Prometheus' swarm discovery names the tasks' networks
    ],
    "local": [
        "/_ping", "/version", "/info", "/events", "/events?since=0&filters=%7B%7D", "/containers/json",
        "/containers/json?all=1", "/containers/0123abcdef/json", "/containers/modelswarm_nginx.1.k3j9/json",
        "/containers/0123abcdef/logs?stdout=1&stderr=1&follow=1&tail=all",
    ],
}  # fmt: skip
# "METHOD path" that each listener refuses, one a line: those of BOTH are refused by either.
BOTH = """
POST /containers/create
POST /v1.41/containers/create
DELETE /containers/abc
POST /containers/abc/exec
POST /exec/abc/start
POST /containers/abc/attach
GET /containers/abc/attach/ws
GET /containers/abc/archive
HEAD /containers/abc/archive
PUT /containers/abc/archive
GET /containers/abc/export
POST /containers/abc/kill
GET /containers/abc/top
GET /secrets
GET /v1.41/secrets/abc
GET /configs
GET /configs/abc
GET /images/json
GET /images/abc/get
POST /images/create
POST /build
GET /swarm
GET /swarm/unlockkey
POST /swarm/leave
GET /networks/abc
GET /volumes
GET /plugins
GET /system/df
POST /session
POST /services/create
POST /services/abc/update
DELETE /services/abc
POST /nodes/abc/update
DELETE /nodes/abc
GET /services/abc/logs
GET /tasks/abc/logs
POST /_ping
PUT /info
OPTIONS /_ping
PATCH /version
DELETE /version
GET /v1.41/../swarm
GET /_ping/../swarm
GET /%2E%2E/swarm
GET /version%2F..%2Fswarm
GET //_ping
GET /_ping/
GET /V1.41/_ping
GET /v2.0/_ping
GET /v1.41/v1.41/_ping
GET /v1.41_ping
GET /PING
GET /_ping;x
GET /_ping%00
"""
REFUSED_TEXT = {
    "tcp": BOTH
    + """
POST /networks/create
GET /containers/json
GET /containers/abc/json
GET /containers/abc/logs
GET /events
POST /nodes
PATCH /nodes/abc
DELETE /tasks/abc
GET /nodes/../swarm
GET /nodes/abc/../../swarm
GET /nodes/%2E%2E/swarm
GET /nodes/..%2Fswarm
GET /services/abc%2Fupdate
GET /nodes/abc/
GET /nodes/.hidden
GET /nodes/-x
GET /nodes/..
GET /NODES
""",
    "local": BOTH
    + """
GET /nodes
GET /services
GET /tasks
GET /nodes/abc
POST /events
POST /containers/json
POST /containers/abc/logs
DELETE /containers/json
POST /containers/abc/stop
GET /containers/abc/stats
GET /containers/abc/changes
GET /containers/../json
GET /containers/../../json
GET /containers/abc/../../secrets
GET /containers/..%2F..%2Fsecrets/json
GET /containers/%2e%2e/json
GET /containers/abc%2Fjson
GET /containers//json
GET /containers/abc/json/../../create
GET /containers/abc/logs/
""",
}
REFUSED = {
    listener: [tuple(line.split(" ")) for line in text.split("\n") if line] for listener, text in REFUSED_TEXT.items()
}
# An allowed endpoint asking to switch protocols (as attach and exec do).
UPGRADE = {"tcp": "/nodes", "local": "/containers/abc/logs"}


@pytest.fixture(scope="module")
def module_proxy():
    with harness.HostProxy() as proxy:
        yield proxy


@pytest.fixture
def proxy(module_proxy):
    """The proxy with the role's own settings; its fake dockerd has seen nothing yet."""
    module_proxy.dockerd.requests.clear()
    module_proxy.dockerd.answers.clear()
    return module_proxy


SHORT = {"timeout_client": "1s", "timeout_server": "1s", "timeout_stream": "3s", "hard_stop_after": "1s"}


@pytest.fixture(scope="module")
def short_proxy():
    """The same configuration with short timeouts, so that the tests can outlast them."""
    with harness.HostProxy(SHORT) as proxy:
        yield proxy


def test_the_configuration_is_valid_and_haproxy_says_nothing_about_it():
    proxy = harness.HostProxy()
    try:
        checked = proxy.check_config()
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "WARNING" not in checked.stdout + checked.stderr  # e.g. no missing timeout
    finally:
        proxy.stop()


# --------------------------------------------------------------------------------------------------- the tables


def _allowed():
    for listener, paths in ALLOWED.items():
        for path in paths:
            for version in VERSIONS:
                for method in ("GET", "HEAD"):
                    yield pytest.param(listener, method, version + path, id=f"{listener} {method} {version}{path}")


@pytest.mark.parametrize(("listener", "method", "path"), list(_allowed()))
def test_each_allowed_endpoint_reaches_dockerd_unchanged(proxy, listener, method, path):
    if method == "GET" and harness.is_stream(path):
        proxy.dockerd.stream.put(harness.STREAM_END)  # a stream that ends at once
    status, _, body = proxy.request(listener, method, path)
    assert status == 200, body
    assert proxy.dockerd.requests == [(method, path)]


def _refused():
    for listener, cases in REFUSED.items():
        for method, path in cases:
            yield pytest.param(listener, method, path, {}, id=f"{listener} {method} {path}")
    for listener, path in UPGRADE.items():
        upgrade = {"Connection": "Upgrade", "Upgrade": "tcp"}
        yield pytest.param(listener, "GET", path, upgrade, id=f"{listener} GET {path} Upgrade")


@pytest.mark.parametrize(("listener", "method", "path", "headers"), list(_refused()))
def test_everything_else_gets_403_json_and_never_reaches_dockerd(proxy, listener, method, path, headers):
    status, answer_headers, body = proxy.request(listener, method, path, headers)
    assert status == 403, body
    assert answer_headers["content-type"] == "application/json"
    if method != "HEAD":
        message = json.loads(body)["message"]
        assert message.startswith(f"docker-api-proxy: {method} ") and path in message
    assert proxy.dockerd.requests == []


@pytest.mark.parametrize("size", [20, 64 * 1024])
@pytest.mark.parametrize("listener", ["tcp", "local"])
def test_a_refused_post_with_a_body_gets_its_403_not_a_closed_socket(proxy, listener, size):
    """The proxy reads the body before answering: a client sending one sees the 403 JSON, not a broken pipe."""
    body = json.dumps({"Image": "x" * size}).encode()
    headers = {"Content-Type": "application/json"}
    status, _, answer = proxy.request(listener, "POST", "/v1.41/containers/create", headers, body)
    assert status == 403 and "read-only" in json.loads(answer)["message"]
    assert proxy.dockerd.requests == []


def test_the_tables_cover_each_allowed_endpoint_refused_on_the_other_listener():
    """Least privilege both ways: the swarm endpoints are not on the node socket, the containers' not on TCP."""
    assert {"/nodes", "/services", "/tasks"} <= {path for _, path in REFUSED["local"]}
    assert {"/containers/json", "/events", "/containers/abc/logs"} <= {path for _, path in REFUSED["tcp"]}


def test_the_node_socket_is_the_owners_only(proxy):
    assert stat.S_IMODE(os.stat(proxy.socket).st_mode) == 0o600


# ------------------------------------------------------------------------------------------- streams, timeouts


@pytest.mark.parametrize("path", ["/v1.41/events", "/containers/0123abcdef/logs?follow=1&stdout=1"])
def test_a_stream_passes_chunk_by_chunk_and_outlives_the_short_timeouts(short_proxy, path):
    """Each chunk reaches the client before dockerd sends the next; pauses longer than the client and server
    timeouts (1 s here) do not end the stream: only the stream timeout would."""
    connection = short_proxy.connection("local", timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        for n in range(3):
            chunk = json.dumps({"status": "start", "id": f"c{n}"}).encode() + b"\n"
            short_proxy.dockerd.stream.put(chunk)
            assert response.read1(65536) == chunk
            time.sleep(1.5)
        short_proxy.dockerd.stream.put(harness.STREAM_END)
        assert response.read() == b""
    finally:
        connection.close()


def test_a_stream_silent_for_longer_than_the_stream_timeout_is_closed(short_proxy):
    connection = short_proxy.connection("local", timeout=10)
    try:
        connection.request("GET", "/events")
        response = connection.getresponse()
        short_proxy.dockerd.stream.put(b'{"status": "start"}\n')
        assert response.read1(65536) == b'{"status": "start"}\n'
        started = time.monotonic()
        with pytest.raises(http.client.IncompleteRead):  # closed without the last chunk
            response.read()
        assert 2.5 < time.monotonic() - started < 6  # timeout_stream: 3s
    finally:
        connection.close()
        short_proxy.dockerd.stream.put(harness.STREAM_END)


def test_a_slow_answer_outside_the_streams_gets_504_json(short_proxy):
    started = time.monotonic()
    status, headers, body = short_proxy.request("tcp", "GET", "/info?delay=2")
    assert time.monotonic() - started < 1.9
    assert (status, headers["content-type"]) == (504, "application/json")
    assert json.loads(body) == {"message": "docker-api-proxy: dockerd did not answer in time"}


def test_a_soft_stop_with_an_open_stream_ends_within_hard_stop_after():
    """The images' stop signal (SIGUSR1) is a soft stop, which would wait forever for an event stream."""
    with harness.HostProxy(SHORT) as proxy:
        connection = proxy.connection("local", timeout=10)
        connection.request("GET", "/events")
        assert connection.getresponse().status == 200
        started = time.monotonic()
        proxy.signal(signal.SIGUSR1)
        assert proxy.process.wait(timeout=10) == 0
        assert time.monotonic() - started < 3  # hard_stop_after: 1s
        connection.close()


def test_dockerd_down_gets_503_json():
    with harness.HostProxy() as proxy:
        proxy.dockerd.__exit__()
        status, headers, body = proxy.request("tcp", "GET", "/_ping")
        assert (status, headers["content-type"]) == (503, "application/json")
        assert json.loads(body) == {"message": "docker-api-proxy: dockerd is not reachable"}


def test_a_socket_left_behind_by_a_killed_proxy_is_replaced():
    with harness.HostProxy(stale_socket=True) as proxy:
        assert proxy.request("local", "GET", "/_ping")[0] == 200


# --------------------------------------------------------------------------------------------------- its clients

NODE = {
    "ID": "n1",
    "Description": {"Hostname": "node1", "Engine": {"EngineVersion": "20.10.24"}},
    "Spec": {"Role": "manager", "Availability": "active", "Labels": {contract.LEADER_LABEL: "true"}},
    "Status": {"State": "ready", "Addr": "10.0.0.1"},
    "ManagerStatus": {"Reachability": "reachable", "Leader": True},
}
SERVICES = [
    {"ID": "s1", "Spec": {"Name": "modelswarm_nginx", "Mode": {"Global": {}}, "Labels": {},
                          "TaskTemplate": {"ContainerSpec": {"Image": "nginx:1.27.3"}}}},
    {"ID": "s2", "Spec": {"Name": "model-iris", "Mode": {"Replicated": {"Replicas": 2}},
                          "Labels": {contract.LABEL_MODEL: "iris", contract.LABEL_VERSION: "1.0.0"},
                          "TaskTemplate": {"ContainerSpec": {"Image": "r:5000/iris:1.0.0@sha256:" + "a" * 64}}}},
]  # fmt: skip


def test_the_consoles_cluster_view_works_through_the_proxy(proxy, monkeypatch):
    """The console's own Docker client (docker-py), pointed at the TCP listener as the stack points it: every call
    that cluster() makes is on the allow-list."""
    proxy.dockerd.answers.update(
        {
            "/version": {"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10.24"},
            "/nodes": [NODE, {**NODE, "ID": "n2", "Description": {**NODE["Description"], "Hostname": "node2"}}],
            "/services": SERVICES,
            "/tasks": [{"ID": "t1", "Status": {"State": "running"}}, {"ID": "t2", "Status": {"State": "running"}}],
        }
    )
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{proxy.port}")
    state = app.cluster()
    assert [n["hostname"] for n in state["nodes"]] == ["node1", "node2"]
    assert [(s["name"], s["running"]) for s in state["services"]] == [("model-iris", 2), ("modelswarm_nginx", 2)]
    assert state["services"][0]["version"] == "1.0.0"
    reached = {(method, path.split("?")[0].replace("/v1.41", "")) for method, path in proxy.dockerd.requests}
    assert reached <= {("GET", "/version"), ("GET", "/nodes"), ("GET", "/services"), ("GET", "/tasks")}
    assert {("GET", "/nodes"), ("GET", "/services"), ("GET", "/tasks")} <= reached


def test_the_console_reading_the_node_socket_is_refused(proxy, monkeypatch):
    """Had the console the node's socket, it still could not list the swarm through it (nor anything else)."""
    import docker.errors

    monkeypatch.setenv("DOCKER_HOST", f"unix://{proxy.socket}")
    proxy.dockerd.answers["/version"] = {"ApiVersion": "1.41"}
    with pytest.raises(docker.errors.APIError) as refused:
        app.cluster()
    assert refused.value.status_code == 403 and "docker-api-proxy" in str(refused.value)


# --------------------------------------------------------------------------------------------------- what deploys it


def test_the_harness_renders_the_configuration_as_ansible_does(tmp_path):
    by_ansible = nginx_harness.render_with_ansible([harness.TEMPLATE], tmp_path)[harness.TEMPLATE]
    by_harness = nginx_harness.render(harness.TEMPLATE, nginx_harness.role_vars())
    assert by_ansible.splitlines()[1:] == by_harness.splitlines()[1:]


def _stack() -> dict:
    variables = nginx_harness.role_vars(
        _platform_endpoint_mode="dnsrr",
        _platform_leader_constraint="node.labels.x == true",
        platform_overlay_encrypted=False,
        _platform_configs={"docker_api_proxy_cfg": "c1"},
        _platform_secrets={},
    )
    return yaml.safe_load(nginx_harness.render("stack.yml.j2", variables))


def test_only_the_proxy_mounts_the_docker_socket_and_read_only():
    settings = harness.proxy_settings()
    stack = _stack()
    mounts = {name: service.get("volumes", []) for name, service in stack["services"].items()}
    socket = settings["docker_socket"]
    holders = {name for name, volumes in mounts.items() if any(socket in v or "docker.sock" in v for v in volumes)}
    # One proxy, as two services: the swarm view on managers, the node-local socket alone on workers.
    assert holders == {"docker-api-proxy", "docker-api-proxy-workers"}
    for name, role in (("docker-api-proxy", "manager"), ("docker-api-proxy-workers", "worker")):
        proxy = stack["services"][name]
        assert f"{socket}:{socket}:ro" in proxy["volumes"]
        assert f"{settings['host_dir']}:{settings['socket_dir']}" in proxy["volumes"]
        assert proxy["deploy"]["mode"] == "global" and proxy["networks"] == ["docker-api"]
        assert proxy["deploy"]["placement"]["constraints"] == [f"node.role == {role}"]
        assert proxy["command"] == ["haproxy", "-W", "-db", "-f", settings["conf"]]
        assert {"source": "docker_api_proxy_cfg", "target": settings["conf"]} in proxy["configs"]
        assert "ports" not in proxy  # reachable on the internal network only
        assert proxy["read_only"] is True and proxy["deploy"]["resources"]["limits"]["memory"]


def test_the_console_talks_to_the_proxy_on_the_internal_network():
    settings = harness.proxy_settings()
    stack = _stack()
    console = stack["services"][contract.CONSOLE_SERVICE]
    assert console["environment"]["DOCKER_HOST"] == f"tcp://docker-api-proxy:{settings['port']}"
    assert "docker-api" in console["networks"]
    assert console["volumes"] == [{"type": "tmpfs", "target": "/tmp"}]  # no socket, only its scratch tmpfs
    network = stack["networks"]["docker-api"]
    assert network["internal"] is True and not network.get("attachable")
    on_it = {name for name, service in stack["services"].items() if "docker-api" in service["networks"]}
    # NGINX asks it whether a model's service exists while a request waits for a replica (modelswarm_wait.js);
    # Prometheus finds its targets through it. The workers' proxy is on it too; NGINX, the console and Prometheus
    # ask for docker-api-proxy, which is the managers' only.
    assert on_it == {"docker-api-proxy", "docker-api-proxy-workers", contract.CONSOLE_SERVICE, "nginx", "prometheus"}
    role = harness.role_vars()
    nginx_conf = harness.render("nginx.conf.j2", role)
    assert f"set $modelswarm_docker_api docker-api-proxy:{settings['port']};" in nginx_conf


@pytest.mark.parametrize("service", ["logspout", "registrator"])
def test_logspout_and_registrator_get_the_node_socket(service):
    settings = harness.proxy_settings()
    spec = _stack()["services"][service]
    assert spec["environment"]["DOCKER_HOST"] == f"unix://{settings['socket']}"
    assert spec["volumes"] == [f"{settings['host_dir']}:{settings['socket_dir']}:ro"]
    assert settings["socket"].startswith(settings["socket_dir"] + "/")


def test_the_proxy_image_is_a_platform_image_and_a_kit_image():
    defaults = yaml.safe_load((nginx_harness.ROLE / "defaults" / "main.yml").read_text())
    assert "docker_api_proxy" in defaults["platform_images"] and "docker-api-proxy" in defaults["platform_resources"]
    image = next(i for i in kit.KIT if i.key == "docker_api_proxy")
    assert not image.placeholder and "docker_api_proxy" not in contract.LEADER_PINNED_SERVICES
    dockerfile = kit.context_files(image, "debian:bookworm")["Dockerfile"]
    assert "haproxy" in dockerfile and "STOPSIGNAL SIGUSR1" in dockerfile
