"""The one model pipeline (used by the CLI and pyinfra), the deploy facts it reads from the cluster, the ledger
client, `modelswarm rollback` end to end against fakes, and the air-gapped bundle writer."""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

from modelswarm import cli, cluster, contract, registryauth
from modelswarm.apiclient import Api
from modelswarm.lab import kit
from modelswarm.lifecycle import ledger, modelimage, pipeline, rollout

FACTS = {
    "registry": "10.0.0.11:5000",
    "models_network": contract.MODELS_NETWORK,
    "endpoint_mode": "dnsrr",
    "runtime_image": "10.0.0.11:5000/modelswarm/python-runtime@sha256:" + "c" * 64,
    "ca_certificate": "-----BEGIN CERTIFICATE-----\n...",
}


def encoded(data) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


# ------------------------------------------------------------------------------------------------ deploy facts


class FakeConfigs:
    def __init__(self, configs):
        self.configs, self.asked = configs, []

    def list(self, filters):
        self.asked.append(filters)
        return self.configs


def config(name, data):
    return SimpleNamespace(name=name, attrs={"Spec": {"Name": name, "Data": encoded(data)}})


def test_deploy_facts_are_read_from_the_exact_config():
    client = SimpleNamespace(
        configs=FakeConfigs(
            [config(contract.DEPLOY_FACTS_CONFIG + "_old", {}), config(contract.DEPLOY_FACTS_CONFIG, FACTS)]
        )
    )
    facts = cluster.deploy_facts(client)
    assert facts.registry == "10.0.0.11:5000"
    assert facts.runtime_image.endswith("@sha256:" + "c" * 64)
    assert client.configs.asked == [{"name": contract.DEPLOY_FACTS_CONFIG}]


def test_a_cluster_without_deploy_facts_says_to_run_the_converge():
    with pytest.raises(cluster.ClusterError, match=r"has no modelswarm_deploy_facts config.*playbooks/site.yml"):
        cluster.deploy_facts(SimpleNamespace(configs=FakeConfigs([])))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "is not JSON"),
        ({**FACTS, "runtime_image": ""}, "lacks runtime_image"),
        ({"registry": "r:5000"}, "lacks models_network, endpoint_mode, runtime_image"),
        ([], "lacks registry"),
    ],
)
def test_broken_deploy_facts_are_named(data, message):
    raw = base64.b64encode(data.encode()).decode() if isinstance(data, str) else encoded(data)
    with pytest.raises(cluster.ClusterError, match=message):
        cluster.parse_deploy_facts(raw)


def test_explicit_overrides_win_over_published_facts(monkeypatch):
    monkeypatch.setattr(cluster, "deploy_facts", lambda client: cluster.parse_deploy_facts(encoded(FACTS)))
    facts = pipeline.facts(None, pipeline.Overrides(registry="mirror:5000", endpoint_mode="vip"))
    assert (facts.registry, facts.endpoint_mode) == ("mirror:5000", "vip")
    assert facts.runtime_image == FACTS["runtime_image"]  # not overridden: published
    assert pipeline.facts(None).registry == "10.0.0.11:5000"


# ---------------------------------------------------------------------------------------------- rollback choice

DIGEST = "sha256:" + "d" * 64
HISTORY = [  # newest first, as the ledger answers
    {"to_version": "1.2.0", "result": "rolled_back", "image": "r/models/iris:1.2.0", "image_digest": DIGEST},
    {"to_version": "1.1.0", "result": "succeeded", "image": "r/models/iris:1.1.0", "image_digest": DIGEST},
    {"to_version": "1.0.0", "result": "no_op", "image": "r/models/iris:1.0.0", "image_digest": DIGEST},
    {"to_version": "0.9.0", "result": "succeeded", "image": "r/models/iris:0.9.0", "image_digest": None},
]


@pytest.mark.parametrize(
    ("current", "to", "chosen"),
    [
        ("1.1.0", None, "1.0.0"),  # the newest good version other than the current one
        ("1.0.0", None, "1.1.0"),
        ("1.1.0", "1.0.0", "1.0.0"),
        ("1.1.0", "1.2.0", None),  # rolled back: never a rollback target
        ("1.1.0", "0.9.0", None),  # no digest recorded: cannot be pinned
        ("1.1.0", "7.0.0", None),
    ],
)
def test_rollback_target_choice(current, to, chosen):
    found = pipeline.choose_rollback(HISTORY, current, to)
    assert (found and found["to_version"]) == chosen


# ------------------------------------------------------------------------------------------- the CLI, end to end


class FakeService:
    def __init__(self):
        self.attrs = {
            "Spec": {
                "Labels": {contract.LABEL_VERSION: "1.1.0"},
                "TaskTemplate": {"ContainerSpec": {"Image": "r/models/iris:1.1.0@" + DIGEST}},
                "Mode": {"Replicated": {"Replicas": 3}},
                "EndpointSpec": {"Mode": "dnsrr"},
            }
        }


# How iris 1.0.0's image says it is served (its manifest at build time); the running service has 3 replicas.
SERVING_1_0_0 = {
    "replicas": 2,
    "cpus": "0.5",
    "memory": "256M",
    "environment": {"LOG_LEVEL": "info"},
    "secrets": ["token"],
}


@pytest.fixture
def fake_cluster(monkeypatch):
    """Everything `modelswarm rollback` touches, recorded: the ledger, the manager, the registry and the rollout."""
    seen = {"recorded": [], "staged": [], "rolled": [], "logins": []}
    service = FakeService()

    class Manager:
        def __enter__(self):
            return SimpleNamespace(services=SimpleNamespace(get=lambda name: service))

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cluster, "manager", lambda inventory: Manager())
    monkeypatch.setattr(cluster, "deploy_facts", lambda client: cluster.parse_deploy_facts(encoded(FACTS)))
    monkeypatch.setenv(contract.API_KEY_ENV, KEY)
    monkeypatch.setattr(ledger, "history", lambda api, model: HISTORY)
    monkeypatch.setattr(ledger, "record", lambda api, entry: seen["recorded"].append(entry) or {"id": 42})
    monkeypatch.setattr(modelimage, "existing", lambda client, repo, tag: (DIGEST, "hash-of-" + tag))
    monkeypatch.setattr(modelimage, "ensure_in_registry", lambda client, ref: None)
    monkeypatch.setattr(modelimage, "stage", lambda inventory, ref: seen["staged"].append(ref))
    monkeypatch.setattr(registryauth, "login", lambda client, registry, kind: seen["logins"].append((registry, kind)))
    monkeypatch.setattr(
        modelimage,
        "serving_spec",
        lambda client, ref: (SERVING_1_0_0, True) if "1.0.0" in ref else ({"secrets": []}, False),
    )

    def fake_rollout(client, target, timeout, report, note):
        seen["rolled"].append(target)
        return rollout.Outcome(
            target.name, "1.1.0", target.version, target.image, DIGEST, "succeeded", "ok", "t0", "t1", note
        )

    monkeypatch.setattr(rollout, "rollout", fake_rollout)
    return seen


def test_cli_rollback_restores_the_chosen_version_and_records_it(fake_cluster, repo, capsys):
    code = cli.main(
        ["rollback", "iris", "--to", "1.0.0", "-i", str(repo / "tests/unit/inventories/good.yml"), "--json"]
    )
    assert code == contract.Exit.OK
    # The service spec is sent by a client logged in with the pull account (nodes pull with it, never with push).
    assert fake_cluster["logins"] == [(FACTS["registry"], "pull")]
    target = fake_cluster["rolled"][0]
    # The ledger recorded another registry address (a cluster restored onto new hosts): the same path, tag and
    # digest are taken from this cluster's registry.
    assert (target.version, target.image) == ("1.0.0", f"{FACTS['registry']}/models/iris:1.0.0@{DIGEST}")
    assert (target.source_hash, target.network) == ("hash-of-1.0.0", contract.MODELS_NETWORK)
    # The whole spec that version was built to be served with, not the running one's (3 replicas, no limits).
    assert (target.replicas, target.cpus, target.memory) == (2, "0.5", "256M")
    assert target.environment == {"LOG_LEVEL": "info"}
    assert target.secrets == ("token",)  # what that version's image declares, mounted again
    assert fake_cluster["staged"] == [target.image]
    assert fake_cluster["recorded"][0]["to_version"] == "1.0.0"
    assert json.loads(capsys.readouterr().out)["ledger_id"] == 42


def test_cli_rollback_to_an_unrecorded_version_is_bad_input(fake_cluster, repo, capsys):
    code = cli.main(["rollback", "iris", "--to", "7.0.0", "-i", str(repo / "tests/unit/inventories/good.yml")])
    assert code == contract.Exit.USAGE
    assert "no recorded good rollout of iris to 7.0.0; known: ['1.0.0', '1.1.0']" in capsys.readouterr().err
    assert fake_cluster["rolled"] == [] and fake_cluster["recorded"] == []


# ------------------------------------------------------------------------------------------------ ledger client


class LedgerHandler(BaseHTTPRequestHandler):
    answers: ClassVar[list] = []
    bodies: ClassVar[list] = []
    authorizations: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def _answer(self):
        status, body = self.answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def do_POST(self):
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.authorizations.append(self.headers.get("Authorization"))
        self._answer()

    def do_GET(self):
        self.bodies.append(self.path)
        self.authorizations.append(self.headers.get("Authorization"))
        self._answer()


@pytest.fixture
def ledger_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), LedgerHandler)
    LedgerHandler.answers, LedgerHandler.bodies, LedgerHandler.authorizations = [], [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


KEY = "msk_0123456789ab_" + "k" * 43


def inventory_of(*addresses):
    hosts = {f"node{i}": cluster.Host(f"node{i}", a) for i, a in enumerate(addresses, start=1)}
    return cluster.Inventory(hosts=hosts, groups={"managers": list(hosts), "leader": ["node1"]})


def api_of(*addresses):
    """The ledger's client over plain HTTP (no CA) with a key, as the CLI builds it."""
    return Api(hosts=list(inventory_of(*addresses).managers), key=KEY, source="a test", verify=None)


def test_ledger_record_moves_on_from_a_node_that_does_not_answer_and_sends_the_key(ledger_server, unused_tcp_port):
    LedgerHandler.answers = [(201, {"id": 7})]
    stored = ledger.record(api_of(f"127.0.0.1:{unused_tcp_port}", ledger_server), {"model": "iris"})
    assert stored == {"id": 7}
    assert LedgerHandler.bodies == [{"model": "iris"}]
    assert LedgerHandler.authorizations == [f"Bearer {KEY}"]


def test_ledger_refusal_is_reported_with_the_consoles_message(ledger_server):
    LedgerHandler.answers = [(400, {"error": "invalid ledger entry", "details": {"model": "required"}})]
    with pytest.raises(
        ledger.LedgerError, match=r"could not be written: HTTP 400: invalid ledger entry: model: required"
    ):
        ledger.record(api_of(ledger_server), {})


def test_a_refused_key_is_named_with_where_it_came_from(ledger_server):
    LedgerHandler.answers = [(401, {"error": "invalid, revoked or expired credentials"})]
    with pytest.raises(ledger.LedgerError, match=r"HTTP 401: .*the key from a test is unknown or revoked"):
        ledger.record(api_of(ledger_server), {})


def test_ledger_unreachable_everywhere_names_each_node(ledger_server, unused_tcp_port):
    LedgerHandler.answers = [(503, {}), (503, {})]
    with pytest.raises(ledger.LedgerError, match=r"could not be written: .*ConnectionError.*HTTP 503"):
        ledger.record(api_of(f"127.0.0.1:{unused_tcp_port}", ledger_server), {})


def test_ledger_history_asks_for_one_model(ledger_server):
    LedgerHandler.answers = [(200, HISTORY)]
    assert ledger.history(api_of(ledger_server), "iris", limit=5) == HISTORY
    assert LedgerHandler.bodies == ["/api/rollouts?model=iris&limit=5"]


def test_without_a_key_the_deploy_stops_before_anything_changes(monkeypatch, tmp_path, repo):
    monkeypatch.delenv(contract.API_KEY_ENV, raising=False)
    monkeypatch.setenv("MODELSWARM_SECRETS_DIR", str(tmp_path))
    monkeypatch.setattr(cluster, "manager", lambda inventory: pytest.fail("the cluster was touched"))
    code = cli.main(["deploy", str(repo / "examples/models/iris"), "-i", str(repo / "tests/unit/inventories/good.yml")])
    assert code == contract.Exit.USAGE


def test_a_lost_ledger_write_is_a_warning_not_a_failed_rollout(monkeypatch):
    def refuse(api, entry):
        raise ledger.LedgerError("the ledger could not be written: node1: HTTP 502")

    monkeypatch.setattr(ledger, "record", refuse)
    outcome = rollout.Outcome("iris", None, "1", "r/models/iris:1@" + DIGEST, DIGEST, "succeeded", "", "a", "b")
    recorded = pipeline.record(api_of("x"), outcome)
    assert (recorded.ledger_id, recorded.exit_code) == (None, contract.Exit.OK)
    assert "HTTP 502" in recorded.ledger_warning


# ------------------------------------------------------------------------------------------ air-gapped bundle


class FakeImages:
    def __init__(self, ids):
        self.ids = ids

    def get(self, tag):
        import docker.errors

        if tag not in self.ids:
            raise docker.errors.ImageNotFound(tag)
        return SimpleNamespace(id=self.ids[tag])


@pytest.fixture
def fake_docker_save(monkeypatch):
    saves = []

    def run(command, check):
        assert command[:3] == ["docker", "save", "-o"]
        Path(command[3]).write_bytes(b"tar of " + " ".join(command[4:]).encode())
        saves.append(command[4:])

    monkeypatch.setattr(kit.subprocess, "run", run)
    monkeypatch.setattr(kit.shutil, "which", lambda name: "/usr/bin/docker")
    return saves


def test_bundle_is_written_once_by_placement_with_manifest_and_checksums(tmp_path, fake_docker_save):
    ids = {image.tag: f"sha256:{n:064x}" for n, image in enumerate(kit.KIT)}
    client = SimpleNamespace(images=FakeImages(ids))
    first = kit.save_bundle(client, tmp_path)
    manifest = json.loads((tmp_path / kit.MANIFEST).read_text())
    assert first["changed"] is True and len(fake_docker_save) == 2
    assert manifest["ids"] == ids
    assert manifest["images"]["python_runtime"] == kit.PYTHON_RUNTIME
    leader, everywhere = manifest["parts"]["leader"], manifest["parts"]["all"]
    pinned = {manifest["images"][key] for key in contract.LEADER_PINNED_SERVICES}
    assert set(leader["images"]) == pinned and not pinned & set(everywhere["images"])
    assert set(leader["images"]) | set(everywhere["images"]) == set(ids)  # every image goes somewhere
    for part in (leader, everywhere):
        tar = (tmp_path / part["tarball"]).read_bytes()
        assert part["sha256"] == hashlib.sha256(tar).hexdigest() and part["bytes"] == len(tar)
        assert tar == b"tar of " + " ".join(part["images"]).encode()
    assert sorted(manifest["placeholders"]) == sorted(i.key for i in kit.KIT if i.placeholder)
    assert not list(tmp_path.glob("*.partial"))

    again = kit.save_bundle(client, tmp_path)
    assert again["changed"] is False and len(fake_docker_save) == 2  # same IDs: not saved again

    ids[kit.PYTHON_RUNTIME] = "sha256:" + "e" * 64
    assert kit.save_bundle(client, tmp_path)["changed"] is True and len(fake_docker_save) == 4


def test_a_bundle_of_the_old_single_tarball_layout_is_replaced(tmp_path, fake_docker_save):
    (tmp_path / "images.tar").write_bytes(b"old")
    (tmp_path / kit.MANIFEST).write_text(json.dumps({"ids": {}, "tarball": "images.tar"}))
    ids = {image.tag: f"sha256:{n:064x}" for n, image in enumerate(kit.KIT)}
    assert kit.save_bundle(SimpleNamespace(images=FakeImages(ids)), tmp_path)["changed"] is True
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["images-all.tar", "images-leader.tar"]


def test_bundle_refuses_a_missing_kit_image(tmp_path, fake_docker_save):
    client = SimpleNamespace(images=FakeImages({}))
    with pytest.raises(RuntimeError, match=r"is missing: run `modelswarm images build` first"):
        kit.save_bundle(client, tmp_path)
    assert fake_docker_save == [] and not (tmp_path / kit.MANIFEST).exists()


def test_cli_rollback_to_an_image_gone_from_the_registry_is_refused_before_its_labels_are_read(
    fake_cluster, repo, monkeypatch, capsys
):
    asked = []

    def gone(client, ref):
        raise modelimage.ImageMissing(f"{ref} does not exist in the registry: nothing was changed")

    monkeypatch.setattr(modelimage, "ensure_in_registry", gone)
    monkeypatch.setattr(modelimage, "serving_spec", lambda client, ref: asked.append(ref) or ({}, False))
    code = cli.main(["rollback", "iris", "--to", "1.0.0", "-i", str(repo / "tests/unit/inventories/good.yml")])
    assert code == contract.Exit.USAGE
    assert "does not exist in the registry: nothing was changed" in capsys.readouterr().err
    assert asked == [] and fake_cluster["rolled"] == [] and fake_cluster["recorded"] == []


def test_cli_rollback_to_an_image_without_its_serving_spec_keeps_the_running_replica_count(fake_cluster, repo, capsys):
    code = cli.main(["rollback", "iris", "--to", "1.1.0", "-i", str(repo / "tests/unit/inventories/good.yml")])
    assert code == contract.Exit.OK
    target = fake_cluster["rolled"][0]
    assert (target.version, target.replicas, target.cpus, target.memory, target.secrets) == ("1.1.0", 3, None, None, ())
    assert "was built before images carried their serving spec" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- restore-models (restore)

RECORDED = {  # models.json of a backup taken on a cluster whose registry was at 10.9.9.11:5000
    "iris": {"version": "1.0.0", "image": f"10.9.9.11:5000/models/iris:1.0.0@{DIGEST}", "replicas": 3},
    "sentiment": {"version": "2.0.0", "image": f"10.9.9.11:5000/models/sentiment:2.0.0@{DIGEST}", "replicas": 1},
}


def test_cli_restore_models_rolls_each_out_from_this_registry_with_its_replica_count(
    fake_cluster, repo, tmp_path, capsys
):
    record = tmp_path / "models.json"
    record.write_text(json.dumps(RECORDED))
    code = cli.main(["restore-models", str(record), "-i", str(repo / "tests/unit/inventories/good.yml"), "--json"])
    assert code == contract.Exit.OK
    rolled = {t.name: t for t in fake_cluster["rolled"]}
    assert sorted(rolled) == ["iris", "sentiment"]
    assert rolled["iris"].image == f"{FACTS['registry']}/models/iris:1.0.0@{DIGEST}"
    assert rolled["sentiment"].image == f"{FACTS['registry']}/models/sentiment:2.0.0@{DIGEST}"
    # The replica count it ran with; the rest as its image's serving spec says (iris 1.0.0: limits, secrets).
    assert (rolled["iris"].replicas, rolled["iris"].cpus, rolled["iris"].secrets) == (3, "0.5", ("token",))
    assert rolled["sentiment"].replicas == 1
    assert fake_cluster["staged"] == [rolled["iris"].image, rolled["sentiment"].image]
    assert [e["to_version"] for e in fake_cluster["recorded"]] == ["1.0.0", "2.0.0"]


def test_cli_restore_models_refuses_before_any_rollout_when_an_image_was_not_restored(
    fake_cluster, repo, tmp_path, monkeypatch, capsys
):
    def only_iris(client, ref):
        if "sentiment" in ref:
            raise modelimage.ImageMissing(f"{ref} does not exist in the registry: nothing was changed")

    monkeypatch.setattr(modelimage, "ensure_in_registry", only_iris)
    record = tmp_path / "models.json"
    record.write_text(json.dumps(RECORDED))
    code = cli.main(["restore-models", str(record), "-i", str(repo / "tests/unit/inventories/good.yml")])
    assert code == contract.Exit.USAGE
    assert "restore the registry storage first" in capsys.readouterr().err
    assert fake_cluster["rolled"] == [] and fake_cluster["recorded"] == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read the models"),
        ("[]", "is not a JSON object"),
        ('{"iris": {"version": "1"}}', "no digest"),
    ],
)
def test_cli_restore_models_names_a_bad_record(fake_cluster, repo, tmp_path, capsys, content, message):
    record = tmp_path / "models.json"
    record.write_text(content)
    code = cli.main(["restore-models", str(record), "-i", str(repo / "tests/unit/inventories/good.yml")])
    assert code == contract.Exit.USAGE
    assert message in capsys.readouterr().err
    assert fake_cluster["rolled"] == []
