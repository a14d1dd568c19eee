"""No Docker socket in the apps: on every node only the Docker API proxy mounts dockerd's socket; the console reaches
the proxy's read-only swarm view on the internal network docker-api (GET /nodes works, POST /containers/create is
refused 403 and creates nothing); LogSpout and Registrator get the proxy's node-local socket, which shows them their own
node's containers and refuses the rest. That the console's cluster view still lists the three nodes and every service
(the proxy's too) is test_platform.py's test_console_answers_through_nginx_on_every_node."""

import json

import pytest
import yaml

from modelswarm import contract
from tests.infra.helpers import REPO, lab_addresses

testinfra_hosts = ["ansible://managers"]
STACK = contract.STACK
PROXY = f"{STACK}_docker-api-proxy"
PROXY_WORKERS = f"{STACK}_docker-api-proxy-workers"  # the same proxy on workers (node-local socket only)
DOCKERD_SOCKETS = {"/var/run/docker.sock", "/run/docker.sock"}
SETTINGS = yaml.safe_load((REPO / "roles/platform/vars/main.yml").read_text())["_platform_docker_api_proxy"]
HOST_DIR, NODE_SOCKET = SETTINGS["host_dir"], SETTINGS["socket"]  # the node's directory; the socket in containers
CONSOLE_DOCKER_HOST = f"tcp://docker-api-proxy:{SETTINGS['port']}"
NODES = sorted(lab_addresses())
# An image that exists nowhere: were the proxy to let the create through, dockerd would still create nothing.
CREATE_BODY = {"Image": "modelswarm/does-not-exist:never"}

# Run with python3 in a container or on a node: `python3 -c PROBE DOCKER_HOST REQUESTS` -> {"METHOD path": [status,
# body]} as JSON. DOCKER_HOST is tcp://host:port or unix:///path; REQUESTS a JSON list of [method, path, body].
PROBE = r"""
import http.client, json, socket, sys
target, requests = sys.argv[1], json.loads(sys.argv[2])
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.settimeout(10); self.sock.connect(target[len("unix://"):])
out = {}
for method, path, body in requests:
    if target.startswith("unix://"):
        connection = Unix("localhost", timeout=10)
    else:
        host, port = target[len("tcp://"):].rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
    data = json.dumps(body) if body is not None else None
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    response = connection.getresponse()
    text = response.read().decode()
    try:
        out[method + " " + path] = [response.status, json.loads(text)]
    except ValueError:  # /_ping answers OK as text
        out[method + " " + path] = [response.status, text]
    connection.close()
print(json.dumps(out))
"""


def probe(host, requests: list, target: str, container: str | None = None) -> dict:
    """The PROBE on `host` itself (container None) or inside `container` there."""
    prefix = f"docker exec {container} " if container else ""
    return json.loads(host.check_output(prefix + "python3 -c %s %s %s", PROBE, target, json.dumps(requests)))


def containers_of(host, service: str) -> list[str]:
    return host.check_output("docker ps -q --filter label=com.docker.swarm.service.name=%s", service).split()


def node_name(host) -> str:
    return host.check_output("hostname").strip()


def test_only_the_proxy_mounts_the_docker_socket_in_any_service(host):
    ids = host.check_output("docker service ls -q").split()
    holders = {}
    for service in json.loads(host.check_output("docker service inspect " + " ".join(ids))):
        for mount in service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Mounts") or []:
            if mount.get("Source") in DOCKERD_SOCKETS:
                holders[service["Spec"]["Name"]] = mount.get("ReadOnly", False)
    assert holders == {PROXY: True, PROXY_WORKERS: True}


def test_only_the_proxys_container_mounts_the_docker_socket_on_this_node(host):
    """What CIS 5.32 looks at: the containers running on each node."""
    ids = host.check_output("docker ps -q").split()
    holders = set()
    for container in json.loads(host.check_output("docker inspect " + " ".join(ids))):
        if any(m.get("Source") in DOCKERD_SOCKETS for m in container["Mounts"]):
            holders.add(container["Config"]["Labels"].get("com.docker.swarm.service.name"))
    assert holders == {PROXY}
    assert len(containers_of(host, PROXY)) == 1  # global: one on every node


def test_the_proxys_directory_and_socket_are_roots_only(host):
    directory = host.file(HOST_DIR)
    assert directory.is_directory and (directory.user, directory.group, directory.mode) == ("root", "root", 0o750)
    socket = host.file(f"{HOST_DIR}/docker.sock")
    assert socket.is_socket and socket.user == "root" and socket.mode == 0o600


def test_the_console_has_no_socket_and_is_pointed_at_the_proxy(host):
    if node_name(host) != "node1":
        pytest.skip("the console runs on the designated leader")
    (container,) = containers_of(host, f"{STACK}_{contract.CONSOLE_SERVICE}")
    inspect = json.loads(host.check_output("docker inspect %s", container))[0]
    assert not [m for m in inspect["Mounts"] if "docker.sock" in m.get("Source", "") + m.get("Destination", "")]
    assert f"DOCKER_HOST={CONSOLE_DOCKER_HOST}" in inspect["Config"]["Env"]
    assert host.run("docker exec %s test -e /var/run/docker.sock", container).rc != 0


def test_from_the_console_get_nodes_passes_and_create_gets_403(host):
    if node_name(host) != "node1":
        pytest.skip("the console runs on the designated leader")
    (container,) = containers_of(host, f"{STACK}_{contract.CONSOLE_SERVICE}")
    before = host.check_output("docker ps -aq | sort")
    answers = probe(
        host,
        [["GET", "/v1.41/nodes", None], ["POST", "/v1.41/containers/create", CREATE_BODY],
         ["GET", "/containers/json", None], ["GET", "/secrets", None], ["GET", "/swarm", None]],
        CONSOLE_DOCKER_HOST,
        container,
    )  # fmt: skip
    status, nodes = answers["GET /v1.41/nodes"]
    assert status == 200 and sorted(n["Description"]["Hostname"] for n in nodes) == NODES
    for refused in ("POST /v1.41/containers/create", "GET /containers/json", "GET /secrets", "GET /swarm"):
        status, body = answers[refused]
        assert status == 403 and body["message"].startswith("docker-api-proxy: "), (refused, answers[refused])
    assert host.check_output("docker ps -aq | sort") == before  # nothing was created


def test_the_docker_api_network_is_internal_with_only_the_proxy_the_console_nginx_and_prometheus(host):
    """NGINX joins it to ask whether a model's service exists while a request waits for a replica; Prometheus to
    find its targets."""
    network = json.loads(host.check_output("docker network inspect %s_docker-api", STACK))[0]
    assert network["Internal"] is True and network["Attachable"] is False
    ids = host.check_output("docker service ls -q").split()
    services = json.loads(host.check_output("docker service inspect " + " ".join(ids)))
    attached = {
        s["Spec"]["Name"] for s in services
        for n in s["Spec"]["TaskTemplate"].get("Networks") or [] if n["Target"] == network["Id"]
    }  # fmt: skip
    # The workers' proxy joins it too, but the name docker-api-proxy resolves to the managers' proxies only.
    assert attached == {
        PROXY, PROXY_WORKERS, f"{STACK}_{contract.CONSOLE_SERVICE}", f"{STACK}_nginx", f"{STACK}_prometheus",
    }  # fmt: skip


@pytest.mark.parametrize("service", ["logspout", "registrator"])
def test_logspout_and_registrator_see_their_own_nodes_containers_through_the_node_socket(host, service):
    """The lab runs placeholders for them: the mount and DOCKER_HOST are what the real images would use."""
    (container,) = containers_of(host, f"{STACK}_{service}")
    inspect = json.loads(host.check_output("docker inspect %s", container))[0]
    assert f"DOCKER_HOST=unix://{NODE_SOCKET}" in inspect["Config"]["Env"]
    assert [(m["Source"], m["RW"]) for m in inspect["Mounts"]] == [(HOST_DIR, False)]
    answers = probe(
        host,
        [["GET", "/v1.41/containers/json", None], ["GET", "/v1.41/nodes", None],
         ["POST", "/v1.41/containers/create", CREATE_BODY], ["GET", f"/containers/{container}/archive?path=/", None]],
        f"unix://{NODE_SOCKET}",
        container,
    )  # fmt: skip
    status, listed = answers["GET /v1.41/containers/json"]
    assert status == 200
    assert sorted(c["Id"][:12] for c in listed) == sorted(host.check_output("docker ps -q").split())
    for refused in ("GET /v1.41/nodes", "POST /v1.41/containers/create", f"GET /containers/{container}/archive?path=/"):
        assert answers[refused][0] == 403, (refused, answers[refused])


def test_the_node_socket_refuses_writes_from_the_node_itself(host):
    answers = probe(
        host,
        [["GET", "/_ping", None], ["POST", "/v1.41/containers/create", CREATE_BODY], ["DELETE", "/containers/x", None]],
        f"unix://{HOST_DIR}/docker.sock",
    )
    assert answers["GET /_ping"][0] == 200
    assert answers["POST /v1.41/containers/create"][0] == 403 and answers["DELETE /containers/x"][0] == 403
