"""Model secrets: the manifest's `secrets:` and the environment check, versioned swarm secrets, the helper a model
reads them with, what goes into the image, and `modelswarm secrets` against a fake swarm (values never printed)."""

import io
import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest

from modelswarm import cli, cluster, contract
from modelswarm.apps.modelserver import modelswarm_model
from modelswarm.lifecycle import bundle, modelimage, modelsecrets

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
INVENTORY = "tests/unit/inventories/good.yml"
VALUE = "s3cr3t-Value-that-must-never-show"
# Swarm's own rule for secret names (swarmkit's validation), besides at most 64 characters.
SWARM_NAME = re.compile(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")


@pytest.fixture
def iris(tmp_path):
    target = tmp_path / "iris"
    shutil.copytree(EXAMPLES / "iris", target)
    return target


def manifest_with(path: Path, extra: str) -> Path:
    (path / "modelswarm.yml").write_text((path / "modelswarm.yml").read_text() + extra)
    return path


def problems_of(path) -> list[str]:
    with pytest.raises(bundle.BundleError) as caught:
        bundle.load_bundle(path)
    return caught.value.problems


# ---------------------------------------------------------------------------------------------------- manifest


def test_declared_secrets_are_read_in_order(iris):
    loaded = bundle.load_bundle(manifest_with(iris, "secrets: [db_password, api-token]\n"))
    assert loaded.secrets == ("db_password", "api-token")
    assert bundle.load_bundle(EXAMPLES / "iris").secrets == ()


@pytest.mark.parametrize(
    ("declared", "problem"),
    [
        ("[DB_PASSWORD]", "secret 'DB_PASSWORD': use 1-40 characters"),
        ("['../etc/passwd']", "secret '../etc/passwd': use"),
        ("[token-]", "secret 'token-': use"),
        ("[" + "a" * 41 + "]", "secret 'aaaa"),
        ("[token, token]", "secret 'token' is listed twice"),
        ("[1]", "secret 1: use"),
        ("db_password", "secrets: a list of secret names"),
    ],
)
def test_bad_secret_declarations_are_named(iris, declared, problem):
    found = problems_of(manifest_with(iris, f"secrets: {declared}\n"))
    assert len(found) == 1 and found[0].startswith(problem), found


@pytest.mark.parametrize(
    ("key", "word"),
    [
        ("DB_PASSWORD", "PASSWORD"),
        ("API_KEY", "KEY"),
        ("APIKEY", "APIKEY"),
        ("SECRET", "SECRET"),
        ("AWS_SECRET_ACCESS_KEY", "SECRET"),
        ("GITHUB_TOKEN", "TOKEN"),
        ("SMTP_PASSWD", "PASSWD"),
        ("DB_PASS", "PASS"),
        ("GCP_CREDENTIALS", "CREDENTIALS"),
        ("PRIVATE_KEY_PEM", "PRIVATE"),
    ],
)
def test_environment_keys_that_look_like_secrets_are_refused_with_the_way_to_do_it(iris, key, word):
    found = problems_of(manifest_with(iris, f"environment: {{{key}: x, LOG_LEVEL: info}}\n"))
    assert len(found) == 1
    assert found[0].startswith(f"environment {key!r} looks like a secret ({word}): ")
    assert f"secrets: [{key.lower()}]" in found[0] and f"`modelswarm secrets set iris {key.lower()}`" in found[0]
    assert f"modelswarm_model.secret('{key.lower()}')" in found[0]


@pytest.mark.parametrize("key", ["KEYBOARD_LAYOUT", "LOG_LEVEL", "TOKENIZER", "PASSTHROUGH", "MONKEY", "SECRETARY"])
def test_environment_keys_that_only_contain_such_letters_are_fine(iris, key):
    assert bundle.load_bundle(manifest_with(iris, f"environment: {{{key}: x}}\n")).environment == {key: "x"}


# ----------------------------------------------------------------------------------------- names and versions


def test_swarm_names_say_model_name_and_version_and_fit_swarms_rules():
    assert modelsecrets.swarm_name("iris", "db_password", 3) == "model-iris-db_password-v3"
    model, long_a, long_b = "m" * 40, "a" * 30 + "_one", "a" * 30 + "_two"
    a, b = modelsecrets.swarm_name(model, long_a, 12), modelsecrets.swarm_name(model, long_b, 12)
    assert a != b  # cut to fit, told apart by a hash of (model, name)
    for name in (a, b, modelsecrets.swarm_name(model, "z" * 40, 1000)):
        assert len(name) <= 64 and SWARM_NAME.match(name) and name.startswith("model-mmm"), name
    assert a.endswith("-v12")


def test_the_digest_is_salted_and_recognises_only_its_value():
    first, second = modelsecrets.digest(b"value"), modelsecrets.digest(b"value")
    assert first != second and first.startswith("pbkdf2-sha256$100000$")  # a random salt each time
    assert "value" not in first
    assert modelsecrets.holds(first, b"value") and modelsecrets.holds(second, b"value")
    assert not modelsecrets.holds(first, b"value\n") and not modelsecrets.holds(first, b"other")
    for broken in ("", "sha256$1$00$00", "pbkdf2-sha256$x$zz$00", "no dollars"):
        assert not modelsecrets.holds(broken, b"value")


def test_setting_a_value_makes_a_labelled_version_and_the_same_value_again_makes_nothing(fake_secrets):
    first, created = modelsecrets.store(fake_secrets, "iris", "token", VALUE.encode(), now="2025-06-01T10:00:00+00:00")
    assert created and (first.version, first.secret_name) == (1, "model-iris-token-v1")
    labels = fake_secrets.attrs[0]["Spec"]["Labels"]
    assert labels[contract.LABEL_MODEL] == "iris" and labels[contract.LABEL_SECRET] == "token"
    assert labels[contract.LABEL_SECRET_VERSION] == "1"
    assert labels[contract.LABEL_SECRET_CREATED_AT] == "2025-06-01T10:00:00+00:00"
    assert VALUE not in repr(fake_secrets.attrs) and fake_secrets.values == {"secret1": VALUE.encode()}

    again, created = modelsecrets.store(fake_secrets, "iris", "token", VALUE.encode())
    assert not created and again == first and len(fake_secrets.attrs) == 1

    rotated, created = modelsecrets.store(fake_secrets, "iris", "token", b"new value")
    assert created and rotated.secret_name == "model-iris-token-v2"
    back, created = modelsecrets.store(fake_secrets, "iris", "token", VALUE.encode())  # an older value: newest again
    assert created and back.version == 3
    assert [v.version for v in modelsecrets.versions(fake_secrets.attrs, "iris")["token"]] == [1, 2, 3]


def test_versions_sort_by_number_and_keep_to_their_model():
    def attrs(model, name, version):
        labels = {contract.LABEL_MODEL: model, contract.LABEL_SECRET: name, contract.LABEL_SECRET_VERSION: version}
        return {"ID": f"{model}{name}{version}", "Spec": {"Name": f"{model}-{name}-{version}", "Labels": labels}}

    found = [attrs("iris", "token", "10"), attrs("iris", "token", "9"), attrs("churn", "token", "11"),
             attrs("iris", "token", "x"), attrs("iris", "db", "1")]  # fmt: skip
    listed = modelsecrets.versions(found, "iris")
    assert list(listed) == ["db", "token"] and [v.version for v in listed["token"]] == [9, 10]
    assert modelsecrets.newest(found, "iris")["token"].secret_id == "iristoken10"


@pytest.mark.parametrize(
    ("value", "message"),
    [(b"", "the value is empty"), (b"\n", "the value is empty"), (b"x" * (500 * 1024 + 1), "at most 512000 bytes")],
)
def test_empty_and_oversized_values_are_refused(fake_secrets, value, message):
    with pytest.raises(modelsecrets.SecretError, match=message):
        modelsecrets.store(fake_secrets, "iris", "token", value)
    assert fake_secrets.attrs == []


def test_a_version_made_at_the_same_time_elsewhere_is_a_clear_error(fake_secrets, monkeypatch):
    modelsecrets.store(fake_secrets, "iris", "token", b"one")
    monkeypatch.setattr(modelsecrets, "versions", lambda inspected, model: {})  # as if v1 was not seen yet
    with pytest.raises(modelsecrets.SecretError, match=r"model-iris-token-v1 already exists .*run the command again"):
        modelsecrets.store(fake_secrets, "iris", "token", b"two")


def test_only_versions_neither_newest_nor_in_use_are_pruned(fake_secrets):
    for value in (b"1", b"2", b"3", b"4"):
        modelsecrets.store(fake_secrets, "iris", "token", value)
    modelsecrets.store(fake_secrets, "iris", "db", b"only")
    removed = modelsecrets.remove_unused(fake_secrets, "iris", {"model-iris-token-v2"})
    assert removed == ["model-iris-token-v1", "model-iris-token-v3"]
    assert sorted(a["Spec"]["Name"] for a in fake_secrets.attrs) == [
        "model-iris-db-v1", "model-iris-token-v2", "model-iris-token-v4",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- model's helper


@pytest.fixture
def run_secrets(tmp_path, monkeypatch):
    monkeypatch.setattr(modelswarm_model, "SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("MODELSWARM_MODEL", "iris")
    monkeypatch.setenv("MODELSWARM_SECRETS", "token,db")
    return tmp_path


@pytest.mark.parametrize(
    ("stored", "read"),
    [("abc", "abc"), ("abc\n", "abc"), ("abc\r\n", "abc"), ("abc\n\n", "abc\n"), (" a b \n", " a b ")],
)
def test_the_helper_reads_the_file_without_one_trailing_newline(run_secrets, stored, read):
    (run_secrets / "token").write_bytes(stored.encode())
    assert modelswarm_model.secret("token") == read


def test_the_helper_refuses_an_undeclared_name(run_secrets):
    (run_secrets / "other").write_text("x")
    with pytest.raises(modelswarm_model.SecretUnavailable, match=r"'other' is not declared.*\(declared: token,db\)"):
        modelswarm_model.secret("other")


def test_the_helper_says_how_to_set_a_declared_secret_that_is_missing(run_secrets):
    with pytest.raises(modelswarm_model.SecretUnavailable, match=r"`modelswarm secrets set iris db` and deploy again"):
        modelswarm_model.secret("db")


def test_the_helper_is_not_an_input_error(run_secrets):
    """The model server answers ValueError, TypeError, KeyError and IndexError with their text (422): a missing
    secret must be the model's failure (500), not a message to the caller."""
    assert not issubclass(modelswarm_model.SecretUnavailable, ValueError | TypeError | LookupError)


def test_outside_an_image_the_helper_reads_whatever_is_there(run_secrets, monkeypatch):
    monkeypatch.delenv("MODELSWARM_SECRETS")
    (run_secrets / "anything").write_text("v\n")
    assert modelswarm_model.secret("anything") == "v"


# -------------------------------------------------------------------------------------------------- the image


def test_the_image_ships_the_helper_and_only_the_names_of_the_secrets(iris):
    loaded = bundle.load_bundle(manifest_with(iris, "secrets: [db_password, token]\n"))
    files = modelimage.context_files(loaded, "example/runtime:1")
    dockerfile = files["Dockerfile"]
    helper = Path(modelswarm_model.__file__).read_bytes()
    assert files["modelswarm_model.py"] == helper
    assert "COPY server.py httpguard.py modelswarm_model.py gunicorn_conf.py /opt/model/" in dockerfile
    assert "PYTHONPATH=/opt/model" in dockerfile
    assert 'MODELSWARM_SECRETS="db_password,token"' in dockerfile
    assert f'{contract.LABEL_SECRETS}="db_password,token"' in dockerfile
    assert (
        'MODELSWARM_SECRETS=""' in modelimage.context_files(bundle.load_bundle(EXAMPLES / "iris"), "r:1")["Dockerfile"]
    )


def test_the_serving_spec_of_an_image_comes_from_its_labels():
    serving = {"replicas": 3, "cpus": "0.5", "memory": "256M", "environment": {"A": "1"}, "secrets": ["token"]}
    labels = {contract.LABEL_SERVING: json.dumps(serving), contract.LABEL_SECRETS: "token"}
    pulled = []
    images = SimpleNamespace(pull=lambda ref: pulled.append(ref) or SimpleNamespace(labels=labels))
    client = SimpleNamespace(images=images)
    assert modelimage.serving_spec(client, "r/models/iris:1.2.0@sha256:" + "a" * 64) == (serving, True)
    assert pulled == ["r/models/iris@sha256:" + "a" * 64]
    del labels[contract.LABEL_SERVING]  # built before images carried their serving spec
    labels[contract.LABEL_SECRETS] = "db_password,token"
    assert modelimage.serving_spec(client, "r/models/iris:1.0.0@sha256:" + "a" * 64) == (
        {"secrets": ["db_password", "token"]}, False
    )  # fmt: skip
    labels.clear()  # built before model secrets existed
    assert modelimage.serving_spec(client, "r/models/iris:0.9@sha256:" + "a" * 64) == ({"secrets": []}, False)


# ------------------------------------------------------------------------------------------------------ the CLI


class FakeServices:
    def __init__(self, spec=None):
        self.spec = spec

    def get(self, name):
        if self.spec is None:
            raise docker.errors.NotFound("no such service")
        return SimpleNamespace(id="svc", attrs={"Spec": self.spec, "PreviousSpec": None})


@pytest.fixture
def swarm(monkeypatch, repo, fake_secrets):
    """`modelswarm secrets` against a fake manager: its secrets, and model-iris (absent unless given a spec)."""
    monkeypatch.chdir(repo)
    client = SimpleNamespace(secrets=fake_secrets, api=fake_secrets, services=FakeServices())
    touched = []

    class Manager:
        def __enter__(self):
            touched.append(True)
            return client

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cluster, "manager", lambda inventory: Manager())
    return SimpleNamespace(client=client, secrets=fake_secrets, touched=touched)


def stdin(monkeypatch, data: bytes, tty: bool = False):
    stream = io.TextIOWrapper(io.BytesIO(data))
    stream.isatty = lambda: tty
    monkeypatch.setattr(sys, "stdin", stream)


def secrets_cli(*args: str) -> int:
    return cli.main(["secrets", *args, "-i", INVENTORY])


def test_set_from_stdin_stores_the_value_and_never_prints_it(swarm, monkeypatch, capsys):
    stdin(monkeypatch, VALUE.encode() + b"\n")
    assert secrets_cli("set", "iris", "token") == contract.Exit.OK
    output = capsys.readouterr()
    assert swarm.secrets.values == {"secret1": VALUE.encode() + b"\n"}  # the bytes as given; the helper strips
    assert VALUE not in output.out + output.err
    assert "stored iris/token as version 1 (model-iris-token-v1)" in output.out
    assert "model-iris is not deployed: `modelswarm deploy BUNDLE` mounts it" in output.out
    assert "storing secret token of iris as a swarm secret" in output.err

    stdin(monkeypatch, VALUE.encode() + b"\n")
    assert secrets_cli("set", "iris", "token", "--json") == contract.Exit.OK
    output = capsys.readouterr()
    assert '"created": false' in output.out and VALUE not in output.out + output.err
    assert len(swarm.secrets.attrs) == 1


def test_set_from_a_file_takes_its_bytes(swarm, tmp_path, capsys):
    (tmp_path / "value").write_bytes(b"-----BEGIN KEY-----\nabc\n-----END KEY-----\n")
    assert secrets_cli("set", "iris", "tls_key", "--from-file", str(tmp_path / "value")) == contract.Exit.OK
    assert swarm.secrets.values["secret1"] == b"-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
    assert "abc" not in capsys.readouterr().out


def test_set_on_a_terminal_asks_twice_without_echo(swarm, monkeypatch, capsys):
    import getpass

    stdin(monkeypatch, b"", tty=True)
    answers = iter([VALUE, VALUE + "typo"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(answers))
    assert secrets_cli("set", "iris", "token") == contract.Exit.USAGE
    assert "the two values differ: nothing was stored" in capsys.readouterr().err
    assert swarm.touched == [] and swarm.secrets.attrs == []

    answers = iter([VALUE, VALUE])
    assert secrets_cli("set", "iris", "token") == contract.Exit.OK
    assert swarm.secrets.values == {"secret1": VALUE.encode()}


@pytest.mark.parametrize(
    ("args", "data", "message"),
    [
        (("set", "iris", "token"), b"", "the value is empty: nothing was stored"),
        (("set", "iris", "token"), b"\n", "the value is empty: nothing was stored"),
        (("set", "iris", "token", "--from-file", "/no/such/file"), b"", "cannot read --from-file /no/such/file"),
        (("set", "iris", "Token"), b"x", "secret 'Token': use 1-40 characters"),
        (("set", "Iris", "token"), b"x", "model 'Iris': use 2-40 characters"),
        (("list", "no_model"), b"", "model 'no_model': use"),
    ],
)
def test_bad_input_is_refused_before_the_cluster_is_asked(swarm, monkeypatch, capsys, args, data, message):
    stdin(monkeypatch, data)
    assert secrets_cli(*args) == contract.Exit.USAGE
    assert message in capsys.readouterr().err
    assert swarm.touched == [] and swarm.secrets.attrs == []


def test_list_shows_versions_current_and_in_use_never_a_value(swarm, monkeypatch, capsys):
    import json

    old, _ = modelsecrets.store(swarm.client, "iris", "token", b"first-value", now="2025-01-01T00:00:00+00:00")
    modelsecrets.store(swarm.client, "iris", "token", b"second-value", now="2025-02-01T00:00:00+00:00")
    swarm.client.services.spec = {
        "TaskTemplate": {"ContainerSpec": {"Secrets": modelsecrets.references({"token": old})}}
    }
    assert secrets_cli("list", "iris", "--json") == contract.Exit.OK
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["current"], r["in_use"], r["created_at"][:7]) for r in rows] == [
        (1, False, True, "2025-01"), (2, True, False, "2025-02"),
    ]  # fmt: skip
    assert secrets_cli("list", "iris") == contract.Exit.OK
    output = capsys.readouterr()
    assert "│ token │ 2       │ 2025-02-01T00:00:00+00:00 │ yes     │" in output.out
    assert "model-iris runs an older version of token" in output.out

    assert "value" not in output.out.replace("values are never shown", "")

    stdin(monkeypatch, b"second-value")
    assert secrets_cli("set", "iris", "token") == contract.Exit.OK
    said = capsys.readouterr().out
    assert said.startswith("unchanged: model-iris-token-v2 (version 2) already holds this value\n")
    assert "model-iris uses model-iris-token-v1: `modelswarm deploy BUNDLE` (of a version declaring it)" in said


def test_prune_keeps_the_newest_and_what_the_service_mounts(swarm, capsys):
    used, _ = modelsecrets.store(swarm.client, "iris", "token", b"1")
    modelsecrets.store(swarm.client, "iris", "token", b"2")
    modelsecrets.store(swarm.client, "iris", "token", b"3")
    swarm.client.services.spec = {
        "TaskTemplate": {"ContainerSpec": {"Secrets": modelsecrets.references({"token": used})}}
    }
    assert secrets_cli("prune", "iris") == contract.Exit.OK
    assert "removed 1 old version(s)" in capsys.readouterr().out
    assert [a["Spec"]["Name"] for a in swarm.secrets.attrs] == ["model-iris-token-v1", "model-iris-token-v3"]


def test_a_deploy_whose_secret_was_never_set_stops_before_the_build(swarm, iris, monkeypatch, capsys):
    from modelswarm.lifecycle import pipeline

    monkeypatch.setenv(contract.API_KEY_ENV, "msk_0123456789ab_" + "k" * 43)
    monkeypatch.setattr(pipeline, "facts", lambda client, overrides: None)
    monkeypatch.setattr(pipeline, "_build_on", lambda *a: pytest.fail("built although a secret is missing"))
    manifest_with(iris, "secrets: [token]\n")
    assert cli.main(["deploy", str(iris), "-i", INVENTORY]) == contract.Exit.USAGE
    assert "`modelswarm secrets set iris token`" in capsys.readouterr().err


def test_pyinfra_reads_a_models_secrets_by_label():
    from pyinfra_deploys.swarm_model import ModelSecrets

    fact = ModelSecrets()
    command = fact.command("iris")
    assert "--filter label=io.modelswarm.model=iris --filter label=io.modelswarm.secret" in command
    assert fact.process(["[]"]) == [] and fact.process([""]) == []
