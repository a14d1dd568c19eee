"""The registry gateway (roles/platform/templates/registry-gateway.conf.j2) run by the host's NGINX on loopback, in
front of a stand-in registry that echoes what reached it, with accounts made by the role's own module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelswarm import contract
from modelswarm.tooling import nginx_harness

pytestmark = pytest.mark.skipif(bool(nginx_harness.missing_packages()), reason=str(nginx_harness.missing_packages()))

MODULE = Path(__file__).resolve().parents[2] / "roles" / "platform" / "library" / "registry_accounts.py"
PUSH, PULL = contract.REGISTRY_USERS["push"], contract.REGISTRY_USERS["pull"]


def make_accounts(directory: Path, rounds: int = 6) -> dict:
    """Run the role's registry_accounts module as Ansible would (arguments as JSON on the command line's file)."""
    args = directory.parent / "args.json"
    arguments = {"dir": str(directory), "users": [PUSH, PULL], "rounds": rounds}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": arguments}))
    result = subprocess.run([sys.executable, str(MODULE), str(args)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    make_accounts(root / "accounts")
    passwords = {user: (root / "accounts" / f"{user}.password").read_text().strip() for user in (PUSH, PULL)}
    with nginx_harness.StubUpstream() as upstream:
        gateway = nginx_harness.RegistryGateway(
            root / "nginx", htpasswd=(root / "accounts" / "htpasswd").read_text(), upstream_port=upstream.port
        )
        with gateway:
            yield gateway, passwords


def passed(body: bytes) -> dict | None:
    """What the stand-in registry received (None: the request never reached it)."""
    document = json.loads(body) if body.startswith(b"{") else {}
    return document if "method" in document else None


ANONYMOUS = [
    ("GET", "/v2/"),
    ("GET", "/v2/_catalog"),
    ("HEAD", "/v2/models/iris/manifests/1"),
    ("POST", "/v2/models/iris/blobs/uploads/"),
    ("DELETE", "/v2/models/iris/manifests/sha256:00"),
]


@pytest.mark.parametrize("method,path", ANONYMOUS)
def test_anonymous_requests_are_refused_before_the_registry(gateway, method, path):
    gw, _ = gateway
    status, headers, body = gw.request(method, path)
    expected = 403 if method == "DELETE" else 401
    assert status == expected, (status, body)
    assert headers.get("docker-distribution-api-version") == "registry/2.0"
    if expected == 401:
        assert headers["www-authenticate"].startswith("Basic ")
    assert passed(body) is None


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_pull_account_reads(gateway, method):
    gw, passwords = gateway
    status, _, body = gw.request(method, "/v2/models/iris/manifests/1.0.0", PULL, passwords[PULL])
    assert status == 200
    if method == "GET":
        seen = passed(body)
        assert seen == {**seen, "method": "GET", "path": "/v2/models/iris/manifests/1.0.0"}
        assert seen["authorization"] is None  # the registry never sees the credentials


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_the_pull_account_cannot_change_anything(gateway, method):
    gw, passwords = gateway
    status, headers, body = gw.request(method, "/v2/models/iris/blobs/uploads/", PULL, passwords[PULL], body=b"x")
    assert status == 403 and passed(body) is None
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["errors"][0]["code"] == "DENIED"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH"])
def test_the_push_account_pushes(gateway, method):
    gw, passwords = gateway
    status, _, body = gw.request(method, "/v2/models/iris/blobs/uploads/", PUSH, passwords[PUSH], body=b"layer")
    assert status == 200
    if method != "HEAD":
        assert passed(body)["method"] == method


def test_nobody_deletes(gateway):
    gw, passwords = gateway
    status, _, body = gw.request("DELETE", "/v2/models/iris/manifests/sha256:00", PUSH, passwords[PUSH])
    assert status == 403 and passed(body) is None


@pytest.mark.parametrize("user", [PUSH, PULL, "someone"])
def test_a_wrong_password_is_refused(gateway, user):
    gw, passwords = gateway
    status, _, body = gw.request("GET", "/v2/_catalog", user, "not-the-password")
    assert status == 401 and passed(body) is None
    status, _, body = gw.request("GET", "/v2/_catalog", user, passwords.get(PUSH if user == PULL else PULL, "x"))
    assert status == 401 and passed(body) is None  # the other account's password is not this one's


def test_only_registry_paths_are_served(gateway):
    gw, passwords = gateway
    assert gw.request("GET", "/healthz")[0] == 200
    status, _, body = gw.request("GET", "/debug/vars", PUSH, passwords[PUSH])
    assert status == 404 and passed(body) is None


def test_accounts_module_is_idempotent_and_private(tmp_path):
    first = make_accounts(tmp_path / "accounts")
    htpasswd = tmp_path / "accounts" / "htpasswd"
    before = htpasswd.read_bytes()
    assert first["changed"] is True and first["users"] == [PUSH, PULL]
    second = make_accounts(tmp_path / "accounts")
    assert second["changed"] is False and htpasswd.read_bytes() == before  # same bytes: the swarm secret stays
    for path in [tmp_path / "accounts", *(tmp_path / "accounts").iterdir()]:
        assert path.stat().st_mode & 0o077 == 0, path
    lines = before.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == [PUSH, PULL]
    assert all(line.split(":", 1)[1].startswith("$2b$06$") for line in lines)
    password = (tmp_path / "accounts" / f"{PUSH}.password").read_text().strip()
    assert password not in json.dumps(first) and password not in before.decode()
    # Another cost rewrites the hashes (and only then); a changed password file is followed.
    assert make_accounts(tmp_path / "accounts", rounds=7)["changed"] is True
    assert all(line.split(":", 1)[1].startswith("$2b$07$") for line in htpasswd.read_text().splitlines())
    (tmp_path / "accounts" / f"{PULL}.password").write_text("A" * 32 + "\n")
    assert make_accounts(tmp_path / "accounts", rounds=7)["changed"] is True
    import bcrypt

    pull_hash = dict(line.split(":", 1) for line in htpasswd.read_text().splitlines())[PULL]
    assert bcrypt.checkpw(b"A" * 32, pull_hash.encode())


def test_accounts_module_refuses_a_malformed_password_file(tmp_path):
    (tmp_path / "accounts").mkdir(mode=0o700)
    (tmp_path / "accounts" / f"{PUSH}.password").write_text("short\n")
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"dir": str(tmp_path / "accounts"), "users": [PUSH, PULL]}}))
    result = subprocess.run([sys.executable, str(MODULE), str(args)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "left as it is" in result.stdout
    assert (tmp_path / "accounts" / f"{PUSH}.password").read_text() == "short\n"


def test_the_stack_publishes_the_gateway_on_the_leader_and_the_registry_nowhere():
    import yaml

    variables = nginx_harness.role_vars(
        _platform_endpoint_mode="dnsrr",
        _platform_leader_constraint="node.labels.x == true",
        platform_overlay_encrypted=False,
        _platform_configs={"registry_gateway_conf": "c1", "registry_tls_cert": "c2"},
        _platform_secrets={"registry_tls_key": "s1", "registry_htpasswd": "s2"},
    )
    stack = yaml.safe_load(nginx_harness.render("stack.yml.j2", variables))
    registry, gateway = stack["services"]["registry"], stack["services"]["registry-gateway"]
    paths = variables["_platform_registry_gateway"]
    assert "ports" not in registry
    assert registry["environment"]["REGISTRY_STORAGE_DELETE_ENABLED"] == "false"
    assert not any(key.startswith("REGISTRY_AUTH") for key in registry["environment"])  # the gateway decides
    # Its metrics on the debug listener Prometheus scrapes (prometheus.yml.j2's registry job), not on a published port.
    metrics_port = variables["_platform_prometheus"]["registry_metrics_port"]
    assert registry["environment"]["REGISTRY_HTTP_DEBUG_ADDR"] == f"0.0.0.0:{metrics_port}"
    assert registry["environment"]["REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED"] == "true"
    assert registry["environment"]["REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH"] == "/metrics"
    assert gateway["ports"] == [{"target": paths["port"], "published": 5000, "protocol": "tcp", "mode": "host"}]
    assert gateway["secrets"] == ["registry_tls_key", "registry_htpasswd"]
    assert {"source": "registry_gateway_conf", "target": paths["conf"]} in gateway["configs"]
    assert paths["htpasswd"] == "/run/secrets/registry_htpasswd"
    for service in (registry, gateway, stack["services"][contract.CONSOLE_SERVICE]):
        assert service["deploy"]["placement"]["constraints"] == ["node.labels.x == true"]
    assert "placement" not in stack["services"]["consul"]["deploy"]
