"""Model bundle validation and image-context rendering."""

import shutil
import tarfile
from pathlib import Path

import pytest

from modelswarm import imagebuild as build
from modelswarm.lifecycle import bundle, modelimage

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"


@pytest.fixture
def iris(tmp_path):
    target = tmp_path / "iris"
    shutil.copytree(EXAMPLES / "iris", target)
    return target


def edit(path: Path, old: str, new: str):
    path.write_text(path.read_text().replace(old, new))


def add_to_manifest(bundle_dir: Path, line: str):
    """`line` appended to the bundle's modelswarm.yml."""
    manifest = bundle_dir / "modelswarm.yml"
    manifest.write_text(manifest.read_text() + line + "\n")


def problems_of(path) -> list[str]:
    with pytest.raises(bundle.BundleError) as caught:
        bundle.load_bundle(path)
    return caught.value.problems


def test_examples_are_valid():
    iris = bundle.load_bundle(EXAMPLES / "iris")
    assert (iris.name, iris.version, iris.replicas, iris.service) == ("iris", "1.0.0", 2, "model-iris")
    assert iris.requirements == ("numpy==2.1.3",) and iris.has_load
    sentiment = bundle.load_bundle(EXAMPLES / "sentiment")
    assert sentiment.requirements == () and sentiment.memory == "128M"


def test_missing_predict(iris):
    edit(iris / "model.py", "def predict(data):", "def guess(data):")
    assert problems_of(iris) == ["model.py: no top-level function predict(data) (the entry point every request calls)"]


@pytest.mark.parametrize("name", ["Iris", "x", "iris_", "iris-", "1iris", "a" * 41])
def test_invalid_names(iris, name):
    edit(iris / "modelswarm.yml", "name: iris", f"name: {name}")
    assert len(problems_of(iris)) == 1 and problems_of(iris)[0].startswith(f"name {name!r}")


def test_missing_requirements_file(iris):
    (iris / "requirements.txt").unlink()
    assert problems_of(iris) == ["requirements.txt is missing (an empty file is fine when the model needs nothing)"]


def test_requirements_that_do_not_parse(iris):
    (iris / "requirements.txt").write_text("numpy==2.1.3\nnot a requirement!!\n-e git+https://x/y\n")
    found = problems_of(iris)
    assert len(found) == 2
    assert found[0].startswith("requirements.txt line 2: 'not a requirement!!' is not a valid requirement")
    assert found[1] == "requirements.txt line 3: pip options (-e) are not allowed"


def test_missing_artifact_and_escape(iris):
    edit(iris / "modelswarm.yml", "artifacts: [artifacts/model.npz]", "artifacts: [artifacts/gone.npz, ../x]")
    assert problems_of(iris) == ["artifact artifacts/gone.npz is missing", "artifact ../x: must be inside the bundle"]


def test_several_problems_are_all_reported(iris):
    edit(iris / "modelswarm.yml", "version: 1.0.0", "version: 'bad version'")
    edit(iris / "modelswarm.yml", "replicas: 2", "replicas: 0")
    edit(iris / "model.py", "def predict(data):", "def predict(data, extra):")
    found = problems_of(iris)
    assert len(found) == 3
    assert any("version 'bad version'" in p for p in found)
    assert any("replicas 0" in p for p in found)
    assert any("exactly one argument" in p for p in found)


def test_syntax_error_is_reported_with_its_line(iris):
    (iris / "model.py").write_text("def predict(data):\n    return (\n")
    assert problems_of(iris)[0].startswith("model.py: syntax error at line")


def test_no_manifest(tmp_path):
    assert problems_of(tmp_path) == [f"no modelswarm.yml manifest in {tmp_path}"]


def test_source_hash_follows_content(iris):
    first = bundle.load_bundle(iris).source_hash()
    assert bundle.load_bundle(iris).source_hash() == first
    edit(iris / "model.py", '"""Iris', '"""The iris')
    assert bundle.load_bundle(iris).source_hash() != first


def test_image_context_puts_dependencies_before_code(iris):
    loaded = bundle.load_bundle(iris)
    files = modelimage.context_files(loaded, "example/runtime:1")
    dockerfile = files["Dockerfile"]
    assert dockerfile.index("requirements.txt") < dockerfile.index("COPY bundle/")
    assert "FROM example/runtime:1" in dockerfile and "HEALTHCHECK" in dockerfile
    assert f'io.modelswarm.source-hash="{loaded.source_hash()}"' in dockerfile
    assert files["requirements.txt"] == "numpy==2.1.3\n"
    assert "bundle/artifacts/model.npz" in files and "bundle/model.py" in files
    with tarfile.open(fileobj=build.context_tar(files, b"PEM")) as tar:
        assert build.CA_FILE_IN_CONTEXT in tar.getnames()


def test_pip_mirror_is_set_only_when_given(iris):
    loaded = bundle.load_bundle(iris)
    assert "PIP_INDEX_URL" not in modelimage.context_files(loaded, "r:1")["Dockerfile"]
    assert (
        "PIP_INDEX_URL=https://mirror.example/simple"
        in modelimage.context_files(loaded, "r:1", "https://mirror.example/simple")["Dockerfile"]
    )


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda p: edit(p / "model.py", "def predict(data):", "def guess(data):"), "no top-level function predict"),
        (lambda p: edit(p / "modelswarm.yml", "name: iris", "name: Iris_Model"), "name 'Iris_Model'"),
        (lambda p: (p / "requirements.txt").unlink(), "requirements.txt is missing"),
    ],
)
@pytest.mark.parametrize("command", ["build", "deploy"])
def test_cli_refuses_a_bad_bundle_before_it_reads_the_inventory(iris, tmp_path, capsys, breakage, message, command):
    """Exit 2 with the bundle's problem, from a bundle check that runs before anything else: the inventory given
    does not even exist, so no host can have been contacted and nothing can have changed."""
    from modelswarm import cli

    breakage(iris)
    code = cli.main([command, str(iris), "-i", str(tmp_path / "no-such-inventory")])
    output = capsys.readouterr()
    assert code == 2
    assert message in output.err
    assert "inventory" not in output.err and output.out == ""


# ---------------------------------------------------------------------------------------------- example inputs


def test_the_example_bundles_carry_their_examples_into_the_image():
    iris = bundle.load_bundle(EXAMPLES / "iris")
    assert (iris.examples, iris.example_count) == ("examples.json", 3)
    assert Path("examples.json") in iris.files()
    assert "MODELSWARM_EXAMPLES=examples.json" in modelimage.context_files(iris, "runtime:1")["Dockerfile"]
    assert bundle.load_bundle(EXAMPLES / "sentiment").example_count == 3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "examples.json is missing: a JSON list of 1 to 20 example inputs"),
        ("[]", "examples.json: a JSON list of 1 to 20 example inputs"),
        ('{"sepal_length": 1}', "examples.json: a JSON list of 1 to 20 example inputs"),
        ("[1, 2", "examples.json is not valid JSON"),
        ("[NaN]", "examples.json is not valid JSON (NaN is not JSON)"),
        ("[" + ",".join(["1"] * 21) + "]", "examples.json: a JSON list of 1 to 20 example inputs"),
    ],
)
def test_a_bundle_without_usable_examples_is_refused(iris, content, expected):
    (iris / "examples.json").unlink()
    if content is not None:
        (iris / "examples.json").write_text(content)
    found = problems_of(iris)
    assert len(found) == 1 and found[0].startswith(expected), found
    assert "a rollout whose replicas fail one is rolled back" in found[0]


@pytest.mark.parametrize("declared", ["../outside.json", "inputs.txt", "my examples.json", 3])
def test_the_examples_file_is_a_json_file_inside_the_bundle(iris, declared):
    (iris.parent / "outside.json").write_text("[1]")
    add_to_manifest(iris, f"examples: {declared!r}")
    found = problems_of(iris)
    assert (len(found) == 1 and found[0].startswith(f"examples {declared!r}")) or "must be inside" in found[0], found


def test_another_examples_file_can_be_named(iris):
    (iris / "examples.json").rename(iris / "data" / "inputs.json")
    edit(iris / "modelswarm.yml", "examples: examples.json", "examples: data/inputs.json")
    loaded = bundle.load_bundle(iris)
    assert loaded.examples == "data/inputs.json" and Path("data/inputs.json") in loaded.files()


def test_the_serving_spec_is_what_the_manifest_asks():
    assert bundle.load_bundle(EXAMPLES / "iris").serving() == {
        "replicas": 2, "cpus": "0.5", "memory": "256M", "environment": {}, "secrets": [], "queue_timeout": 30,
    }  # fmt: skip


@pytest.mark.parametrize("value", [-1, 301, "30", 2.5, True])
def test_a_queue_timeout_is_whole_seconds_from_0_to_300(iris, value):
    add_to_manifest(iris, f"queue_timeout: {value!r}")
    found = problems_of(iris)
    assert len(found) == 1 and found[0].startswith(f"queue_timeout {value!r}: whole seconds from 0 to 300")


@pytest.mark.parametrize("value", [0, 5, 300])
def test_a_queue_timeout_goes_into_the_serving_spec(iris, value):
    add_to_manifest(iris, f"queue_timeout: {value}")
    assert bundle.load_bundle(iris).serving()["queue_timeout"] == value


@pytest.mark.parametrize("value", [0, 56, "20", 2.5, True])
def test_a_timeout_is_whole_seconds_from_1_to_55(iris, value):
    add_to_manifest(iris, f"timeout: {value!r}")
    found = problems_of(iris)
    assert len(found) == 1 and found[0].startswith(f"timeout {value!r}: whole seconds from 1 to 55")


@pytest.mark.parametrize("value", [1, 20, 55])
def test_a_timeout_goes_into_the_serving_spec_only_when_set(iris, value):
    assert "timeout" not in bundle.load_bundle(iris).serving()
    add_to_manifest(iris, f"timeout: {value}")
    assert bundle.load_bundle(iris).serving()["timeout"] == value


@pytest.mark.parametrize("replicas", [1, 3, 4, 9])
def test_any_replica_count_up_to_the_limit_is_accepted(iris, replicas):
    edit(iris / "modelswarm.yml", "replicas: 2", f"replicas: {replicas}")
    assert bundle.load_bundle(iris).replicas == replicas


@pytest.mark.parametrize("value", ["yes", 1, "true"])
def test_log_payload_is_true_or_false(iris, value):
    add_to_manifest(iris, f"log_payload: {value!r}")
    assert problems_of(iris) == [f"log_payload {value!r}: true or false (true: each prediction's log line carries "
                                 "its request body)"]  # fmt: skip


@pytest.mark.parametrize(("line", "env"), [("", "0"), ("log_payload: false", "0"), ("log_payload: true", "1")])
def test_the_image_logs_the_payload_only_when_the_manifest_opts_in(iris, line, env):
    from modelswarm.lifecycle import modelimage

    add_to_manifest(iris, line)
    dockerfile = modelimage.context_files(bundle.load_bundle(iris), "runtime:1")["Dockerfile"]
    assert f"MODELSWARM_LOG_PAYLOAD={env} " in dockerfile


@pytest.mark.parametrize("value", [0, 60001, "250", 2.5, True])
def test_a_latency_objective_is_whole_milliseconds_from_1_to_60000(iris, value):
    add_to_manifest(iris, f"slo_p99_ms: {value!r}")
    found = problems_of(iris)
    assert len(found) == 1 and found[0].startswith(f"slo_p99_ms {value!r}: whole milliseconds from 1 to 60000")


@pytest.mark.parametrize(("line", "env"), [("", "1000"), ("slo_p99_ms: 250", "250")])
def test_the_image_carries_the_latency_objective(iris, line, env):
    from modelswarm.lifecycle import modelimage

    add_to_manifest(iris, line)
    dockerfile = modelimage.context_files(bundle.load_bundle(iris), "runtime:1")["Dockerfile"]
    assert f"MODELSWARM_SLO_P99_MS={env} " in dockerfile
