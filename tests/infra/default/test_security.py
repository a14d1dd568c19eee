"""Hardening on the running cluster: the registry behind its gateway (no anonymous access, pull-only nodes, every
node pulls with the credentials the service spec carries), and model replicas that run as a fixed non-root user on
a read-only root filesystem, without capabilities, with pids and memory limits."""

import base64
import json

import pytest
import requests
import testinfra

from modelswarm import contract
from tests.infra.helpers import inventory, lab_addresses, secrets_dir, service_tasks

testinfra_hosts = ["ansible://node1"]
NODES = ["node1", "node2", "node3"]
PUSH, PULL = contract.REGISTRY_USERS["push"], contract.REGISTRY_USERS["pull"]


def registry() -> str:
    return f"{lab_addresses()['node1']}:5000"


def password(kind: str) -> str:
    return (secrets_dir() / "registry" / f"{contract.REGISTRY_USERS[kind]}.password").read_text().strip()


def node(name: str):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory())


def gateway(method: str, path: str, kind: str = "", secret: str | None = None, address: str = "") -> int:
    """The HTTP status of one request to the registry gateway (verified with the cluster CA); `kind` names the
    account whose password is sent (or `secret`, when given)."""
    auth = (contract.REGISTRY_USERS[kind], secret if secret is not None else password(kind)) if kind else None
    response = requests.request(
        method, f"https://{address or registry()}{path}", auth=auth, timeout=10,
        verify=str(secrets_dir() / "pki" / "ca.crt"),
    )  # fmt: skip
    return response.status_code


def test_anonymous_requests_are_refused():
    assert gateway("POST", "/v2/models/probe/blobs/uploads/") == 401  # an anonymous push
    assert gateway("GET", "/v2/_catalog") == 401
    assert gateway("GET", "/v2/models/iris/tags/list") == 401
    assert gateway("GET", "/v2/_catalog", "pull") == 200
    assert gateway("POST", "/v2/models/probe/blobs/uploads/", "pull") == 403
    assert gateway("GET", "/v2/_catalog", "push", secret="wrong") == 401
    assert gateway("PATCH", "/v2/models/probe/blobs/uploads/x", "pull", secret="wrong") == 403  # no change, anyway


@pytest.mark.parametrize("name", NODES[1:])
def test_no_other_node_publishes_a_registry_port(name):
    with pytest.raises(requests.ConnectionError):
        requests.get(f"https://{lab_addresses()[name]}:5000/v2/", timeout=5, verify=False)


def test_the_registry_is_published_only_through_its_gateway(host):
    registry_service = json.loads(host.check_output("docker service inspect modelswarm_registry"))[0]
    assert not registry_service["Endpoint"].get("Ports")
    gateway = json.loads(host.check_output("docker service inspect modelswarm_registry-gateway"))[0]
    assert [(p["PublishedPort"], p["PublishMode"]) for p in gateway["Endpoint"]["Ports"]] == [(5000, "host")]


@pytest.mark.parametrize("name", NODES)
def test_the_public_nginx_does_not_lead_to_the_registry(name):
    """The entry points (80/443 on every node) route /v2/ to the console, never to the registry."""
    response = requests.get(
        f"https://{lab_addresses()[name]}/v2/_catalog", timeout=5, verify=str(secrets_dir() / "pki" / "ca.crt")
    )
    assert response.status_code in (401, 404), response.text
    assert "repositories" not in response.text


def test_deletes_are_refused_to_the_push_account_too():
    digest = f"sha256:{'0' * 64}"
    assert gateway("DELETE", f"/v2/models/iris/manifests/{digest}", "push") == 403


def test_every_node_is_logged_in_with_the_pull_account_only(host):
    for name in NODES:
        config = json.loads(node(name).file("/root/.docker/config.json").content_string)
        assert set(config["auths"]) == {registry()}, name
        assert node(name).file("/root/.docker/config.json").mode == 0o600
        encoded = config["auths"][registry()]["auth"]
        assert base64.b64decode(encoded).decode().split(":", 1)[0] == PULL, name
    push_config = host.file("/etc/modelswarm/registry-push/config.json")
    assert push_config.mode == 0o600 and push_config.user == "root"
    for name in NODES[1:]:
        assert not node(name).file("/etc/modelswarm/registry-push").exists, name


def test_a_node_without_the_image_or_a_login_pulls_with_the_service_credentials(host, monkeypatch):
    """What a restarted or replaced node does: it has neither the image nor a registry login of its own, and its
    replica still starts, pulling with the pull account the swarm keeps in the service's spec (as the CLI sends it)."""
    from modelswarm import cluster, registryauth
    from modelswarm.lifecycle import rollout

    monkeypatch.setenv("MODELSWARM_SECRETS_DIR", str(secrets_dir()))  # the verifier runs from the scenario's directory

    image = json.loads(host.check_output("docker service inspect model-iris"))[0]["Spec"]["TaskTemplate"][
        "ContainerSpec"
    ]["Image"]
    by_tag, digest = image.split("@")
    by_digest = f"{by_tag.rsplit(':', 1)[0]}@{digest}"
    running_on = {t["node"] for t in service_tasks(host, "model-iris") if t["state"] == "Running"}
    bare = next(name for name in NODES if name not in running_on)
    target = node(bare)
    target.check_output("docker logout %s", registry())
    try:
        target.run("docker rmi -f %s %s", by_tag, by_digest)
        assert target.run("docker image inspect %s", by_digest).rc != 0, "the image is still on the bare node"
        with cluster.manager(cluster.read_inventory(inventory())) as client:
            registryauth.login(client, registry(), "pull")
            outcome = rollout.rollout(
                client, rollout.Target(name="pullprobe", version="1", image=image, replicas=3), timeout=300,
                report=lambda line: None,
            )  # fmt: skip
        assert outcome.result == "succeeded", outcome.message
        tasks = service_tasks(host, contract.service_name("pullprobe"))
        assert (bare, "Running") in [(t["node"], t["state"]) for t in tasks], tasks
        assert target.run("docker image inspect %s", by_digest).rc == 0
    finally:
        host.run("docker service rm %s", contract.service_name("pullprobe"))
        target.ansible(
            "community.docker.docker_login",
            f"registry_url={registry()} username={PULL} password={password('pull')}",
            check=False,
        )


def test_model_replicas_run_non_root_read_only_without_capabilities():
    seen = 0
    for name in NODES:
        target = node(name)
        for container in target.check_output(
            "docker ps -q --filter label=com.docker.swarm.service.name=model-iris"
        ).split():
            seen += 1
            assert target.check_output("docker exec %s id -u", container) == str(contract.MODEL_UID)
            attrs = json.loads(target.check_output("docker inspect %s", container))[0]
            config = attrs["HostConfig"]
            assert config["ReadonlyRootfs"] is True
            assert config["CapDrop"] == ["ALL"]
            assert config["PidsLimit"] == contract.MODEL_PIDS_LIMIT
            assert config["Memory"] > 0
            assert attrs["Config"]["User"] == f"{contract.MODEL_UID}:{contract.MODEL_UID}"
            assert [(m["Type"], m["Destination"]) for m in attrs["Mounts"]] == [("tmpfs", "/tmp")]
            write = target.run("docker exec %s touch /opt/model/intruder", container)
            assert write.rc != 0 and "Read-only file system" in write.stderr
            assert target.run("docker exec %s touch /tmp/scratch", container).rc == 0
            status = target.check_output("docker exec %s cat /proc/1/status", container)
            assert "NoNewPrivs:\t1" in status and "CapBnd:\t0000000000000000" in status
    assert seen == 2
