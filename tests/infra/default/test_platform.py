"""The platform stack: placement of every service, NGINX and the console on every node, the ledger, the registry."""

import ipaddress
import json
import uuid

import pytest
import requests
import testinfra

from modelswarm.apps.console import ledger
from tests.infra.helpers import call, inventory, lab_addresses, leaked, secrets_dir, service_tasks

testinfra_hosts = ["ansible://node1"]
STACK = "modelswarm"
GLOBAL = ["nginx", "docker-api-proxy", "logspout", "registrator", "node-exporter"]
SINGLE = ["consul", "logstash", "elasticsearch", "alertmanager"]
PLACEHOLDERS = ["consul", "logstash", "elasticsearch", "logspout", "registrator"]
ON_LEADER = ["console", "postgres", "registry", "registry-gateway", "prometheus"]
NODES = sorted(lab_addresses())


@pytest.mark.parametrize("service", GLOBAL)
def test_global_service_runs_once_on_every_node(host, service):
    tasks = service_tasks(host, f"{STACK}_{service}")
    assert sorted(t["node"] for t in tasks if t["state"] == "Running") == NODES


@pytest.mark.parametrize("service", SINGLE)
def test_single_service_runs_exactly_once(host, service):
    tasks = service_tasks(host, f"{STACK}_{service}")
    assert [t["state"] for t in tasks] == ["Running"]


@pytest.mark.parametrize("service", ON_LEADER)
def test_leader_service_runs_once_on_the_leader(host, service):
    tasks = service_tasks(host, f"{STACK}_{service}")
    assert [(t["node"], t["state"]) for t in tasks] == [("node1", "Running")]


@pytest.mark.parametrize("node", NODES)
def test_nginx_answers_healthz_on_every_node(node):
    response = requests.get(f"http://{lab_addresses()[node]}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "node": node}  # this node's own NGINX answered


@pytest.mark.parametrize("node", NODES)
def test_nginx_serves_tls_with_the_cluster_certificate(node):
    response = requests.get(
        f"https://{lab_addresses()[node]}/healthz", timeout=5, verify=str(secrets_dir() / "pki" / "ca.crt")
    )
    assert response.status_code == 200


@pytest.mark.parametrize("node", NODES)
def test_console_answers_through_nginx_on_every_node(node):
    response = call(node, "GET", "/api/cluster")
    assert response.status_code == 200, response.text
    cluster = response.json()
    assert sorted(n["hostname"] for n in cluster["nodes"]) == NODES
    assert {f"{STACK}_{s}" for s in GLOBAL + SINGLE + ON_LEADER} <= {s["name"] for s in cluster["services"]}
    page = call(node, "GET", "/")
    assert page.status_code == 200 and "<h1>modelswarm console</h1>" in page.text
    assert "Signed in as <strong>controller-deploy</strong>" in page.text


def test_console_is_healthy_and_its_schema_migrated(host):
    container = host.check_output(
        "docker ps -q --filter label=com.docker.swarm.service.name=%s_console", STACK
    ).splitlines()[0]
    assert host.check_output("docker inspect --format '{{.State.Health.Status}}' %s", container) == "healthy"
    health = json.loads(
        host.check_output(
            'docker exec %s python3 -c "import urllib.request; '
            "print(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=5).read().decode())\"",
            container,
        )
    )
    assert health == {"status": "ok", "database": "ok", "schema_version": len(ledger.migrations())}


def test_ledger_entry_round_trips_through_postgresql_across_nodes():
    entry = {
        "model": "probe-model",
        "from_version": "1.0.0",
        "to_version": f"1.0.{uuid.uuid4().int % 10000}",
        "image": "registry.example:5000/models/probe:1",
        "image_digest": "sha256:" + "ab" * 32,
        "note": "testinfra",
        "started_at": "2026-01-01T10:00:00Z",
        "finished_at": "2026-01-01T10:00:42Z",
        "result": "succeeded",
        "message": "written through node2, read through node3",
    }
    for node in NODES:  # no identity, or an actor in the body: refused on every node, nothing stored
        refused = call(node, "POST", "/api/rollouts", key=None, json=entry)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer"), refused.text
        forged = call(node, "POST", "/api/rollouts", json={**entry, "actor": "someone-else"})
        assert forged.status_code == 400 and "actor" in forged.text
    written = call("node2", "POST", "/api/rollouts", json=entry)
    assert written.status_code == 201, written.text
    stored = written.json()
    assert stored["duration_s"] == 42.0
    assert (stored["actor"], stored["actor_kind"], stored["note"]) == ("controller-deploy", "key", "testinfra")
    read = call("node3", "GET", f"/api/rollouts/{stored['id']}")
    assert read.status_code == 200
    assert {k: read.json()[k] for k in ("model", "to_version", "image_digest", "result")} == {
        k: entry[k] for k in ("model", "to_version", "image_digest", "result")
    }
    history = call("node1", "GET", "/api/rollouts?model=probe-model").json()
    assert stored["id"] in [h["id"] for h in history]
    assert [h["to_version"] for h in history].count(entry["to_version"]) == 1


def test_bad_ledger_entry_gets_one_message_per_field():
    response = call(
        "node1",
        "POST",
        "/api/rollouts",
        json={"model": "Bad Name", "to_version": "", "result": "maybe", "started_at": "yesterday"},
    )
    assert response.status_code == 400
    details = response.json()["details"]
    assert {"model", "to_version", "result", "started_at", "image", "finished_at"} <= set(details)


def test_image_pushed_on_one_node_is_pulled_over_tls_on_another(host):
    node2 = testinfra.get_host("ansible://node2", ansible_inventory=inventory())
    registry = f"{lab_addresses()['node1']}:5000"
    probe = f"{registry}/probe/runtime:{uuid.uuid4().hex[:12]}"
    source = json.loads(host.check_output("docker image inspect modelswarm/python-runtime:3.11-bookworm"))[0]
    host.check_output("docker tag %s %s", source["Id"], probe)
    try:
        # The leader's push account is in its own Docker client configuration; the default one holds the pull account.
        host.check_output("DOCKER_CONFIG=/etc/modelswarm/registry-push docker push %s", probe)
        refused = host.run("docker push %s", probe)
        assert refused.rc != 0 and "denied" in refused.stderr, refused.stderr
        pulled = node2.run("docker pull %s", probe)
        assert pulled.rc == 0, pulled.stderr
        assert json.loads(node2.check_output("docker image inspect %s", probe))[0]["Id"] == source["Id"]
    finally:
        host.run("docker rmi %s", probe)
        node2.run("docker rmi %s", probe)
    # Trusted through certs.d, not by declaring the registry insecure.
    assert node2.file(f"/etc/docker/certs.d/{registry}/ca.crt").exists
    registry_config = json.loads(node2.check_output("docker info --format '{{json .RegistryConfig}}'"))
    node1 = ipaddress.ip_address(lab_addresses()["node1"])
    assert not any(node1 in ipaddress.ip_network(c) for c in registry_config["InsecureRegistryCIDRs"])
    assert registry_config["IndexConfigs"].get(registry, {}).get("Secure", True) is True


def test_no_secret_appears_in_service_inspect(host):
    """Not a key, password, token, TLS key or htpasswd hash of the controller's (models' registry credentials
    included: the engine never shows the pull account it stores in a service's spec)."""
    inspect = host.check_output("docker service inspect $(docker service ls -q)")
    assert leaked(inspect) == [], "secrets appear in docker service inspect output"


def test_lab_placeholders_are_labelled_as_such(host):
    for service in PLACEHOLDERS:
        image = json.loads(host.check_output("docker service inspect %s_%s", STACK, service))[0]["Spec"][
            "TaskTemplate"
        ]["ContainerSpec"]["Image"]
        labels = json.loads(host.check_output("docker image inspect %s", image.split("@")[0]))[0]["Config"]["Labels"]
        assert labels.get("io.modelswarm.placeholder") == service


def test_the_platform_publishes_what_deploys_need(host):
    """The deploy facts: read back from the swarm exactly as the CLI reads them; the runtime by digest is pullable."""
    import base64

    data = json.loads(host.check_output("docker config inspect modelswarm_deploy_facts"))[0]["Spec"]["Data"]
    facts = json.loads(base64.b64decode(data))
    registry = f"{lab_addresses()['node1']}:5000"
    assert facts["registry"] == registry
    assert facts["models_network"] == "modelswarm-models" and facts["endpoint_mode"] == "dnsrr"
    assert facts["runtime_image"].startswith(f"{registry}/modelswarm/python-runtime@sha256:")
    assert facts["ca_certificate"] == (secrets_dir() / "pki" / "ca.crt").read_text().strip()
    node3 = testinfra.get_host("ansible://node3", ansible_inventory=inventory())
    pulled = node3.run("docker pull %s", facts["runtime_image"])
    assert pulled.rc == 0, pulled.stderr
    # The mirror holds the same image the kit built (same config digest, so the same bytes).
    local = json.loads(host.check_output("docker image inspect modelswarm/python-runtime:3.11-bookworm"))[0]["Id"]
    assert json.loads(node3.check_output("docker image inspect %s", facts["runtime_image"]))[0]["Id"] == local


def test_leader_pinned_images_reach_the_leader_only(host):
    pinned = ["modelswarm/console:0.1.0", "modelswarm/lab-postgres:15-bookworm", "modelswarm/lab-registry:2.8-bookworm"]
    everywhere = [
        "modelswarm/lab-nginx:1.22-bookworm",
        "modelswarm/lab-haproxy:2.6-bookworm",
        "modelswarm/placeholder-consul:lab",
    ]
    for node in NODES:
        other = testinfra.get_host(f"ansible://{node}", ansible_inventory=inventory())
        present = {image: other.run("docker image inspect %s", image).rc == 0 for image in pinned + everywhere}
        assert all(present[image] for image in everywhere), (node, present)
        assert all(present[image] is (node == "node1") for image in pinned), (node, present)
