"""API key checks in NGINX, on the host's real nginx + njs on loopback: the platform role's own nginx.conf.j2 and
njs file (modelswarm.tooling.nginx_harness renders them as Ansible does, pointed at a scratch directory), a stub DNS
for the swarm's service names and a stub upstream that echoes what it received."""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket

import pytest

from modelswarm import contract
from modelswarm.apps.console.grants import Grant, render_nginx_grants
from modelswarm.tooling import nginx_harness as harness

if reason := harness.missing_packages():
    pytest.fail(reason, pytrace=False)

MODELS = ("iris", "sentiment", "churn")
# name -> (role, models): one key per role, two of them limited to some models.
SPECS = {
    "alice": ("predict", None),
    "vera": ("viewer", None),
    "ci": ("deploy", ("iris", "sentiment")),
    "ada": ("admin", None),
    "paul": ("predict", ("sentiment",)),
}
CHALLENGE = 'Bearer realm="modelswarm", Basic realm="modelswarm"'
BODY = json.dumps({"sepal_length": 6.7})
_sources = (f"127.0.{a}.{b}" for a, b in itertools.product(range(10, 250), range(1, 250)))


@pytest.fixture
def source() -> str:
    """A client address of its own for each test (127.0.0.0/8 is all loopback): failed checks are rate limited per
    address, so one test's failures never count against another's."""
    return next(_sources)


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, str]]:
    return {name: harness.new_key() for name in SPECS}


def grants_for(keys: dict[str, tuple[str, str]], version: int, names=None) -> str:
    rows = [Grant(n, SPECS[n][0], SPECS[n][1], keys[n][1]) for n in (names or SPECS)]
    return render_nginx_grants(version, rows)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory, keys):
    services = {contract.service_name(m): {} for m in MODELS}  # what the Docker API proxy knows
    with (
        harness.StubUpstream() as upstream,
        harness.StubDockerApi(services) as docker_api,
        harness.HostNginx(
            tmp_path_factory.mktemp("nginx"),
            grants=grants_for(keys, 1),
            upstream_port=upstream.port,
            models=MODELS,
            docker_api_port=docker_api.port,
        ) as server,
    ):
        yield server


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(user: str, key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def assert_unauthorized(status, headers, body):
    assert status == 401, body
    assert headers["content-type"] == "application/json"
    assert headers["www-authenticate"] == CHALLENGE
    assert "valid API key is required" in json.loads(body)["error"]


# --------------------------------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
@pytest.mark.parametrize("route", ["models", "promote"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", SPECS)
def test_each_role_may_predict_on_its_models_on_both_routes(nginx, keys, source, name, model, route, scheme):
    key = keys[name][0]
    path = f"/models/{model}/predict" if route == "models" else f"/{name}/models/{model}/predict"
    headers = bearer(key) if scheme == "bearer" else basic(name, key)
    status, answer_headers, body = nginx.request(
        "POST", path, {**headers, "X-Modelswarm-Key-Name": "mallory"}, BODY, source
    )
    allowed = SPECS[name][1] is None or model in SPECS[name][1]
    if allowed:
        assert status == 200, body
        echoed = json.loads(body)
        assert echoed["path"] == "/predict"
        assert echoed["key_name"] == name  # checked by NGINX; the client's own value is replaced
        assert echoed["authorization"] is None  # the model never sees the key
        assert echoed["body"] == BODY
    else:
        assert status == 403, body
        assert answer_headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": f"this API key has no rights on model '{model}'"}


@pytest.mark.parametrize("route", ["models", "promote"])
@pytest.mark.parametrize("credentials", ["none", "unknown bearer", "unknown basic"])
def test_no_key_or_an_unknown_key_gets_401_json_with_a_challenge(nginx, source, route, credentials):
    key, _ = harness.new_key()  # well formed, never granted
    headers = {"none": {}, "unknown bearer": bearer(key), "unknown basic": basic("alice", key)}[credentials]
    path = "/models/iris/predict" if route == "models" else "/alice/models/iris/predict"
    assert_unauthorized(*nginx.request("POST", path, headers, BODY, source))


def test_promote_route_needs_the_path_user_to_be_the_key_name(nginx, keys, source):
    for headers in (bearer(keys["alice"][0]), basic("alice", keys["alice"][0])):
        status, _, body = nginx.request("POST", "/vera/models/iris/predict", headers, BODY, source)
        assert status == 403
        assert json.loads(body) == {"error": "the path's user is not this key's name"}


def test_basic_with_a_user_that_is_not_the_key_name_is_401(nginx, keys, source):
    assert_unauthorized(*nginx.request("POST", "/models/iris/predict", basic("vera", keys["alice"][0]), BODY, source))
    path = "/vera/models/iris/predict"
    assert_unauthorized(*nginx.request("POST", path, basic("vera", keys["alice"][0]), BODY, source))


def test_the_scheme_is_case_insensitive(nginx, keys, source):
    key = keys["alice"][0]
    for header in (f"bearer {key}", f"BEARER {key}", "basic " + base64.b64encode(f"alice:{key}".encode()).decode()):
        status, _, body = nginx.request("POST", "/models/iris/predict", {"Authorization": header}, BODY, source)
        assert status == 200, (header[:10], body)


def test_https_checks_keys_the_same_way(nginx, keys, source):
    key = keys["paul"][0]
    assert nginx.request("POST", "/models/sentiment/predict", bearer(key), BODY, source, https=True)[0] == 200
    assert nginx.request("POST", "/models/iris/predict", bearer(key), BODY, source, https=True)[0] == 403
    assert_unauthorized(*nginx.request("POST", "/models/iris/predict", {}, BODY, source, https=True))


# ---------------------------------------------------------------------------------------------- malformed input

KEY = "msk_0123456789ab_" + "A" * 43  # well formed; never granted


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


MALFORMED = {
    "scheme alone": b"Bearer",
    "empty bearer": b"Bearer ",
    "bearer of spaces": b"Bearer    ",
    "10 kB bearer": b"Bearer " + b"x" * 10240,
    "10 kB key-like bearer": b"Bearer msk_0123456789ab_" + b"A" * 10240,
    "10 kB basic": b"Basic " + b64(b"alice:" + b"A" * 7600),
    "non-ASCII bearer": b"Bearer \xc3\xa9\xff\xfe\x80",
    "key with a non-ASCII byte": b"Bearer " + KEY.encode()[:-1] + b"\xff",
    "key then garbage": b"Bearer " + KEY.encode() + b" extra",
    "key too short": b"Bearer " + KEY.encode()[:-1],
    "key too long": b"Bearer " + KEY.encode() + b"A",
    "wrong prefix": b"Bearer " + KEY.replace("msk_", "sk_x").encode(),
    "tab for a space": b"Bearer\t" + KEY.encode(),
    "no scheme": KEY.encode(),
    "unknown scheme": b"Token " + KEY.encode(),
    "digest scheme": b'Digest username="alice", realm="modelswarm"',
    "basic not base64": b"Basic !!!!",
    "basic bad padding": b"Basic " + b64(b"alice:" + KEY.encode()).rstrip(b"="),
    "basic only padding": b"Basic ====",
    "basic without a colon": b"Basic " + b64(b"alice"),
    "basic with the key alone": b"Basic " + b64(KEY.encode()),
    "basic with an empty user": b"Basic " + b64(b":" + KEY.encode()),
    "basic with a non-ASCII user": b"Basic " + b64("alicé:".encode() + KEY.encode()),
    "basic with binary": b"Basic " + b64(bytes(range(256))),
    "basic with a user breaking the name rule": b"Basic " + b64(b"Alice:" + KEY.encode()),
    "basic with the key as the user": b"Basic " + b64(KEY.encode() + b":alice"),
    "two schemes": b"Bearer " + KEY.encode() + b", Basic " + b64(b"alice:" + KEY.encode()),
}


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_authorization_header_gets_401_json_never_an_error(nginx, source, value):
    request = (
        b"POST /models/iris/predict HTTP/1.1\r\nHost: node1\r\nAuthorization: " + value + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    before = nginx.errors()
    assert_unauthorized(*nginx.raw(request, source))
    new_errors = nginx.errors()[len(before) :]
    assert "js exception" not in new_errors and "[alert]" not in new_errors and "[crit]" not in new_errors


def test_a_header_too_long_for_nginx_is_refused_with_400_not_an_error(nginx, source):
    request = b"GET /models/iris/predict HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer " + b"x" * 20000 + b"\r\n\r\n"
    status, _, _ = nginx.raw(request + b"Connection: close\r\n\r\n", source)
    assert status == 400


def test_whoami_with_a_malformed_key_is_401(nginx, source):
    assert_unauthorized(*nginx.request("GET", "/auth/whoami", {"Authorization": "Bearer \t"}, None, source))
    assert_unauthorized(*nginx.request("GET", "/auth/whoami", {"Authorization": "Bearer " + "é" * 3000}, None, source))


# ------------------------------------------------------------------------------------------------- rate limit


def test_many_bad_keys_from_one_address_get_429_while_valid_keys_still_pass(nginx, keys, source):
    burst = nginx.variables["platform_nginx_auth_burst"]
    statuses, bodies = [], []
    for _ in range(burst + 30):  # bounded: a few ms each
        status, headers, body = nginx.request(
            "POST", "/models/iris/predict", bearer(harness.new_key()[0]), BODY, source
        )
        statuses.append(status)
        bodies.append((headers, body))
    assert statuses[:burst] == [401] * burst  # the burst is answered as usual
    assert set(statuses) == {401, 429}
    assert statuses[-10:] == [429] * 10
    headers, body = bodies[-1]
    assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
    assert "too many requests" in json.loads(body)["error"]
    # The same address, at once: valid keys are neither counted nor limited (nor is a 403).
    for _ in range(50):
        assert nginx.request("POST", "/models/iris/predict", bearer(keys["alice"][0]), BODY, source)[0] == 200
        assert nginx.request("POST", "/models/iris/predict", bearer(keys["paul"][0]), BODY, source)[0] == 403
    assert nginx.request("GET", "/auth/whoami", bearer(keys["ada"][0]), None, source)[0] == 200
    # Bad keys from it are still limited (once the few refilled since are spent), on every checked path; another
    # address is not.
    again = [nginx.request("POST", "/models/iris/predict", {}, BODY, source)[0] for _ in range(burst)]
    assert set(again) <= {401, 429} and again[-1] == 429
    assert nginx.request("GET", "/auth/whoami", {}, None, source)[0] == 429
    assert_unauthorized(*nginx.request("POST", "/models/iris/predict", {}, BODY, next(_sources)))


def test_a_valid_key_at_full_speed_is_never_limited(nginx, keys, source):
    key = keys["ci"][0]
    statuses = [nginx.request("POST", "/models/iris/predict", bearer(key), BODY, source)[0] for _ in range(200)]
    assert statuses == [200] * 200


# -------------------------------------------------------------------------------------------- /auth endpoints


@pytest.mark.parametrize("name", SPECS)
def test_whoami_names_the_key(nginx, keys, source, name):
    role, models = SPECS[name]
    expected = {
        "name": name,
        "role": role,
        "models": "*" if models is None else list(models),
        "node": socket.gethostname(),
    }
    for headers in (bearer(keys[name][0]), basic(name, keys[name][0])):
        status, answer_headers, body = nginx.request("GET", "/auth/whoami", headers, None, source)
        assert status == 200, body
        assert answer_headers["content-type"] == "application/json"
        assert json.loads(body) == expected


def test_whoami_without_a_key_is_401(nginx, source):
    assert_unauthorized(*nginx.request("GET", "/auth/whoami", {}, None, source))
    assert_unauthorized(*nginx.request("GET", "/auth/whoami", bearer(harness.new_key()[0]), None, source))


def test_auth_version_is_public(nginx, source):
    status, headers, body = nginx.request("GET", "/auth/version", {}, None, source)
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"grants_version": 1, "node": socket.gethostname()}


@pytest.mark.parametrize(
    "path", ["/internal/grants", "/internal/", "/_modelswarm/unauthorized", "/_modelswarm/forbidden"]
)
def test_internal_paths_are_not_found_from_outside(nginx, keys, source, path):
    status, _, body = nginx.request("GET", path, bearer(keys["ada"][0]), None, source)
    assert status == 404
    assert b"grants" not in body


# ------------------------------------------------------------------------------------------- routing unchanged


def test_routing_redirects_errors_and_the_console_still_work(nginx, keys, source):
    key = keys["alice"][0]
    status, headers, _ = nginx.request("GET", "/models/iris", bearer(key), None, source)
    assert status == 308 and headers["location"].endswith("/models/iris/")
    # Query strings and any path under the model reach the replica.
    status, _, body = nginx.request("GET", "/models/iris/healthz?verbose=1", bearer(key), None, source)
    assert status == 200 and json.loads(body)["path"] == "/healthz?verbose=1"
    # A model without a service: the check comes first, then 404 JSON at once.
    assert_unauthorized(*nginx.request("POST", "/models/ghost/predict", {}, BODY, source))
    status, headers, body = nginx.request("POST", "/models/ghost/predict", bearer(key), BODY, source)
    assert status == 404 and json.loads(body)["error"] == "no model 'ghost' is deployed"
    # The console checks its own keys: it gets the Authorization header, never a client's key name.
    headers = {**bearer(key), "X-Modelswarm-Key-Name": "mallory"}
    status, _, body = nginx.request("GET", "/api/rollouts", headers, None, source)
    echoed = json.loads(body)
    assert status == 200 and echoed["path"] == "/api/rollouts"
    assert echoed["authorization"] == f"Bearer {key}" and echoed["key_name"] is None
    # Not a model name: the console's.
    assert (
        json.loads(nginx.request("GET", "/models/Iris/predict", {}, None, source)[2])["path"] == "/models/Iris/predict"
    )
    assert nginx.request("GET", "/healthz", {}, None, source)[0] == 200


def test_the_access_log_names_the_key_and_never_shows_it(nginx, keys, source):
    alice, ada = keys["alice"][0], keys["ada"][0]
    nginx.request("POST", "/models/iris/predict", bearer(alice), BODY, source)
    nginx.request("POST", "/ada/models/iris/predict", basic("ada", ada), BODY, source)
    nginx.request("POST", "/models/iris/predict", basic(alice, "x"), BODY, source)  # a key pasted as the user
    nginx.request("POST", "/models/iris/predict", basic("alice", alice[:-1]), BODY, source)
    nginx.request("GET", "/api/keys", bearer(ada), None, source)

    def lines_of_this_test() -> list[str]:
        return [line for line in nginx.access_log.read_text().splitlines() if line.startswith(source + " ")]

    # NGINX writes a request's log line as it finishes the request, just after the answer: wait for all five.
    harness.wait_for(lambda: len(lines_of_this_test()) >= 5, 5, "five access log lines")
    log, mine = nginx.access_log.read_text(), lines_of_this_test()
    assert [line.split()[2] for line in mine] == ["alice", "ada", "-", "-", "ada"]
    everything = log + nginx.errors()
    for key, digest in keys.values():
        assert key not in everything and key[: len(key) // 2] not in everything
        assert digest not in everything
    assert "Bearer" not in everything and "Basic" not in everything
    assert base64.b64encode(f"ada:{ada}".encode()).decode()[:20] not in everything


# ---------------------------------------------------------------------------------------------------- reloads


def test_a_reload_with_new_grants_revokes_a_key_and_admits_a_new_one(tmp_path, keys, source):
    with (
        harness.StubUpstream() as upstream,
        harness.HostNginx(
            tmp_path, grants=grants_for(keys, 1, ["alice", "vera"]), upstream_port=upstream.port, models=MODELS
        ) as server,
    ):
        alice, vera, ci = (bearer(keys[n][0]) for n in ("alice", "vera", "ci"))
        assert server.request("POST", "/models/iris/predict", alice, BODY, source)[0] == 200
        assert_unauthorized(*server.request("POST", "/models/iris/predict", ci, BODY, source))
        server.reload(grants_for(keys, 2, ["vera", "ci"]))  # alice revoked, ci created
        assert_unauthorized(*server.request("POST", "/models/iris/predict", alice, BODY, source))
        assert_unauthorized(*server.request("GET", "/auth/whoami", alice, None, source))
        assert server.request("POST", "/models/iris/predict", ci, BODY, source)[0] == 200
        assert server.request("POST", "/models/iris/predict", vera, BODY, source)[0] == 200
        assert json.loads(server.request("GET", "/auth/version")[2])["grants_version"] == 2


def test_with_the_deny_all_grants_no_key_works(tmp_path, keys, source):
    deny_all = render_nginx_grants(0, [])
    with (
        harness.StubUpstream() as upstream,
        harness.HostNginx(tmp_path, grants=deny_all, upstream_port=upstream.port, models=MODELS) as server,
    ):
        for name in SPECS:
            assert_unauthorized(*server.request("POST", "/models/iris/predict", bearer(keys[name][0]), BODY, source))
        assert json.loads(server.request("GET", "/auth/version")[2])["grants_version"] == 0


# ----------------------------------------------------------------------------------------------- the settings


def test_http_redirect_sends_port_80_to_https_but_keeps_healthz(tmp_path, keys, source):
    with (
        harness.StubUpstream() as upstream,
        harness.HostNginx(
            tmp_path,
            grants=grants_for(keys, 1),
            upstream_port=upstream.port,
            models=MODELS,
            settings={"platform_http_redirect": True},
        ) as server,
    ):
        status, headers, _ = server.request("POST", "/models/iris/predict?a=1", bearer(keys["alice"][0]), BODY, source)
        assert status == 308
        assert headers["location"] == f"https://127.0.0.1:{server.https_port}/models/iris/predict?a=1"
        assert server.request("GET", "/", {}, None, source)[0] == 308
        assert server.request("GET", "/healthz", {}, None, source)[0] == 200
        assert (
            server.request("POST", "/models/iris/predict", bearer(keys["alice"][0]), BODY, source, https=True)[0] == 200
        )


def test_the_production_rendering_loads_njs_and_includes_the_node_grants():
    text = harness.render("nginx.conf.j2", harness.role_vars())
    assert text.startswith("# Rendered by")
    assert "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;" in text
    assert "js_import modelswarm_auth from /etc/nginx/modelswarm_auth.js;" in text
    assert "include /var/lib/modelswarm-nginx/grants.conf;" in text
    assert "    listen 80;\n    listen 443 ssl;\n" in text
    assert "rate=5r/s;" in text and "burst=20 nodelay;" in text
    assert "{{" not in text and "{%" not in text


def test_the_njs_rules_are_the_contract_rules():
    source_text = harness.AUTH_JS.read_text()
    assert f"var KEY = /^{contract.API_KEY_PATTERN}$/;" in source_text
    assert f"var NAME = /^{contract.PRINCIPAL_NAME_PATTERN}$/;" in source_text
    # The njs file never logs: no key, digest or header can reach the error log from it.
    assert not re.search(r"\br\.(log|warn|error)\(|ngx\.log", source_text)


def test_the_harness_renders_the_templates_as_ansible_does(tmp_path):
    """The tests above run what Ansible deploys: the same templates give the same text through Ansible's template
    lookup (as tasks/deploy.yml calls it) and through the harness, but for the `ansible_managed` line."""
    by_ansible = harness.render_with_ansible(
        [
            "nginx.conf.j2",
            "nginx-entrypoint.sh.j2",
            "nginx-router.conf.j2",
            "nginx-router-route.conf.j2",
            "registry-gateway.conf.j2",
            "prometheus.yml.j2",
            "alertmanager.yml.j2",
        ],
        tmp_path,
    )
    for name, text in by_ansible.items():
        by_harness = harness.render(name, harness.role_vars()).splitlines()
        assert text.splitlines()[1:] == by_harness[1:], name


def test_the_stack_runs_the_entrypoint_with_the_grants_volume_token_and_configs():
    import yaml

    variables = harness.role_vars(
        _platform_endpoint_mode="dnsrr",
        _platform_leader_constraint="node.labels.x == true",
        platform_overlay_encrypted=False,
        _platform_configs={"nginx_conf": "c1", "nginx_auth_js": "c2", "nginx_entrypoint": "c3"},
        _platform_secrets={"nginx_grants_token": "s1"},
    )
    stack = yaml.safe_load(harness.render("stack.yml.j2", variables))
    nginx, console = stack["services"]["nginx"], stack["services"][contract.CONSOLE_SERVICE]
    paths = variables["_platform_nginx"]
    assert nginx["command"] == ["/bin/sh", paths["entrypoint"]]
    assert {"source": "nginx_entrypoint", "target": paths["entrypoint"]} in nginx["configs"]
    assert {"source": "nginx_auth_js", "target": paths["auth_js"]} in nginx["configs"]
    assert "nginx_grants_token" in nginx["secrets"] and "nginx_grants_token" in console["secrets"]
    assert nginx["volumes"] == [
        f"nginx-grants:{paths['grants_dir']}",
        f"{contract.MAINTENANCE_DIR}:{paths['maintenance_dir']}:ro",  # the day-2 maintenance flag, read-only
        {"type": "tmpfs", "target": "/tmp"},
    ]
    assert nginx["healthcheck"]["test"][-1].endswith("/livez")  # not /healthz: the flag must not restart NGINX
    assert nginx["read_only"] is True and nginx["cap_drop"] == ["ALL"]
    assert "nginx-grants" in stack["volumes"]
    assert paths["grants_file"].startswith(paths["grants_dir"] + "/")


def test_the_maintenance_flag_takes_the_node_out_of_rotation_but_not_out_of_service(nginx, keys, source):
    """Day-2 playbooks set the node's maintenance flag before draining it: /healthz (the VIP's and load balancers'
    check) answers 503, /livez (the container's own health check) stays 200, and predictions sent straight to the
    node are still served."""
    flag = harness.Path(nginx.variables["_platform_nginx"]["maintenance_dir"]) / contract.MAINTENANCE_FLAG
    assert json.loads(nginx.request("GET", "/healthz")[2])["status"] == "ok"
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text("playbooks/upgrade.yml\n")
    try:
        status, _, body = nginx.request("GET", "/healthz")
        assert (status, json.loads(body)["status"]) == (503, "draining")
        assert nginx.request("GET", "/healthz", https=True)[0] == 503
        assert nginx.request("GET", "/livez")[0] == 200
        predicted = nginx.request("POST", "/models/iris/predict", bearer(keys["alice"][0]), BODY, source)
        assert predicted[0] == 200, predicted
    finally:
        flag.unlink()
    assert nginx.request("GET", "/healthz")[0] == 200


# ------------------------------------------------------------------------------------------------- request ids


def request_ids(nginx, path, headers, source) -> tuple[int, list[str], dict]:
    """(status, every X-Request-Id header of the answer, the JSON body) of one request (http.client keeps repeats)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=10, source_address=(source, 0))
    try:
        connection.request("POST", path, body=BODY, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, response.msg.get_all("X-Request-Id") or [], json.loads(body)
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("sent", "kept"),
    [(None, False), ("client-trace-0042", True), ("bad id with spaces", False), ("x" * 129, False)],
    ids=["absent", "a token", "not a token", "too long"],
)
def test_the_request_id_is_set_when_absent_passed_on_and_returned_once(nginx, keys, source, sent, kept):
    headers = {**bearer(keys["alice"][0]), **({"X-Request-Id": sent} if sent else {})}
    status, ids, echoed = request_ids(nginx, "/models/iris/predict", headers, source)
    assert status == 200 and len(ids) == 1, ids  # NGINX's id only: the upstream's own copy is hidden
    assert echoed["request_id"] == ids[0]  # the model got the id the client gets back
    if kept:
        assert ids[0] == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", ids[0]), ids


def test_refusals_carry_the_request_id_too_and_the_access_log_ends_with_it(nginx, keys, source):
    status, ids, _ = request_ids(nginx, "/models/iris/predict", {"X-Request-Id": "refused-0001"}, source)
    assert status == 401 and ids == ["refused-0001"]
    status, ids, _ = request_ids(nginx, "/models/iris/predict", {**bearer(keys["paul"][0])}, source)
    assert status == 403 and len(ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", ids[0])
    forbidden_id = ids[0]

    def mine() -> list[str]:
        return [line for line in nginx.access_log.read_text().splitlines() if line.startswith(source + " ")]

    harness.wait_for(lambda: len(mine()) >= 2, 5, "two access log lines")
    assert [line.rsplit(" ", 1)[1] for line in mine()] == ["request_id=refused-0001", f"request_id={forbidden_id}"]


# ------------------------------------------------------------------------------------------------ status listener


def status_metrics(nginx) -> dict[str, float]:
    """The samples of the status listener's /metrics, by name as Prometheus stores them (every one has # TYPE)."""
    status, headers, body = nginx.request_to(nginx.status_port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), body
    lines = body.decode().splitlines()
    samples = dict(line.split(" ") for line in lines if line and not line.startswith("#"))
    typed = {line.split()[2] for line in lines if line.startswith("# TYPE ")}
    assert typed == set(samples), lines
    return {name: float(value) for name, value in samples.items()}


def test_the_status_listener_gives_prometheus_nginxs_counts_and_the_certificates_expiry(nginx, keys, source):
    before = status_metrics(nginx)
    for _ in range(5):
        nginx.request("POST", "/models/iris/predict", bearer(keys["alice"][0]), BODY, source)
    after = status_metrics(nginx)
    assert before["nginx_up"] == after["nginx_up"] == 1
    # Five predictions and the second scrape itself (stub_status counts every request, subrequests excepted).
    assert after["nginx_http_requests_total"] - before["nginx_http_requests_total"] == 6
    assert after["nginx_connections_accepted"] >= before["nginx_connections_accepted"] + 5
    assert after["nginx_connections_active"] >= 1
    assert after["modelswarm_tls_certificate_not_after_seconds"] == harness.HARNESS_CERTIFICATE_NOT_AFTER


def test_the_status_listener_serves_nothing_else_and_its_stub_status_is_internal(nginx):
    assert nginx.request_to(nginx.status_port, "GET", "/_modelswarm/stub_status")[0] == 404
    assert nginx.request_to(nginx.status_port, "GET", "/models/iris/predict")[0] == 404
    assert b"nginx_up" not in nginx.request("GET", "/metrics")[2]  # the public listener has no NGINX status


# ---------------------------------------------------------------------------------------------------- Prometheus


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_prometheus_opens_to_admin_keys_only_and_never_sees_the_key(nginx, keys, source, scheme):
    path = "/prometheus/api/v1/alerts"
    for name in SPECS:
        key = keys[name][0]
        headers = bearer(key) if scheme == "bearer" else basic(name, key)
        status, _, body = nginx.request("GET", path, headers, None, source)
        if SPECS[name][0] == "admin":
            echoed = json.loads(body)
            assert status == 200 and echoed["path"] == path, body  # Prometheus' own route prefix, unchanged
            assert echoed["authorization"] is None and echoed["key_name"] is None
        else:
            assert status == 403, (name, body)
            assert json.loads(body) == {"error": "only an admin key may open Prometheus"}
    assert_unauthorized(*nginx.request("GET", path, {}, None, source))
