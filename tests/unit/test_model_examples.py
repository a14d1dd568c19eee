"""The example inputs gate: a model image answers each of its bundle's examples before it serves (server.py, at
import), and a version that cannot answer one never becomes healthy - gunicorn exits, so swarm rolls it back. The
log names the example, the status a caller would have got and the exception's class, never its text."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import image_layout

from modelswarm.lifecycle import rollout

SECRET = "password=hunter2"  # what the probe model raises with (conftest.PROBE_MODEL)


@pytest.fixture
def layout(probe_bundle, tmp_path):
    """A copy of the probe bundle (examples can be rewritten) and a function that lays out its image."""
    root = tmp_path / "bundle"
    shutil.copytree(probe_bundle, root)

    def lay_out(examples=None):
        if examples is not None:
            (root / "examples.json").write_text(json.dumps(examples))
        opt = tmp_path / "opt-model"
        shutil.rmtree(opt, ignore_errors=True)
        opt.mkdir()
        argv, env = image_layout(root, opt)
        return opt, argv, {**os.environ, **env}

    return lay_out


def run_server_checks(opt, env):
    """`python server.py` as `modelswarm validate` runs it in the image."""
    return subprocess.run(
        [sys.executable, str(opt / "server.py")], cwd=opt, env=env, capture_output=True, text=True, timeout=60
    )


def failure_report(stderr: str) -> dict:
    lines = [line for line in stderr.splitlines() if line.startswith("modelswarm-example-failed ")]
    assert lines and len(set(lines)) == 1, stderr  # one per worker that tried to boot, all the same
    assert SECRET not in lines[0]  # the exception's text stays in the traceback lines
    return json.loads(lines[0].split(" ", 1)[1])


def test_examples_that_are_answered_pass(layout):
    opt, _, env = layout()
    result = run_server_checks(opt, env)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("modelswarm-examples-passed "))
    passed = json.loads(line.split(" ", 1)[1])
    assert (passed["name"], passed["examples"], passed["file"]) == ("probe", 2, "examples.json")


@pytest.mark.parametrize(
    ("bad", "status", "exception", "what"),
    [
        ({"do": "crash"}, 500, "RuntimeError", "the model raised an exception"),
        ({"do": "refuse"}, 422, "RefusedInput", "the model refused it"),
        ({"do": "value"}, 422, "ValueError", "the model refused it"),
        ({"do": "nan"}, 500, "ValueError", "the answer is not JSON"),
        ({"do": "object"}, 500, "TypeError", "the answer is not JSON"),
    ],
)
def test_the_first_example_that_fails_is_named_without_its_text(layout, bad, status, exception, what):
    opt, _, env = layout([{"x": 1}, bad, {"do": "crash"}])
    result = run_server_checks(opt, env)
    assert result.returncode != 0 and "modelswarm-examples-passed" not in result.stdout
    report = failure_report(result.stderr)
    assert report == {
        "model": "probe", "version": "1.0.0", "example": 2, "of": 3, "file": "examples.json",
        "status": status, "exception": exception, "what": what,
    }  # fmt: skip
    # The traceback is in the log, tagged, for the model's operators (with the text a caller must never see).
    assert f"request_id=example-2 example 2 of 3: {what}" in result.stderr
    if bad["do"] in ("crash", "value"):
        assert SECRET in result.stderr


def test_gunicorn_does_not_serve_a_version_that_fails_an_example(layout):
    """The image's own command: the worker's boot fails, so gunicorn exits instead of serving (swarm's task fails)."""
    opt, argv, env = layout([{"do": "crash"}])
    argv[argv.index("--bind") + 1] = "127.0.0.1:0"
    result = subprocess.run(argv, cwd=opt, env=env, capture_output=True, text=True, timeout=60)
    # gunicorn halts: exit 3 (WORKER_BOOT_ERROR), or 1 when the worker died before the arbiter's main loop began.
    assert result.returncode in (1, 3), result.stderr[-2000:]
    assert failure_report(result.stderr)["example"] == 1
    assert "Worker failed to boot" in result.stderr


def test_the_rollout_names_the_failed_example_from_the_service_log():
    lines = [
        b"2026-12-06T10:00:00Z request_id=example-2 example 2 of 3: the model raised an exception\n",
        b'modelswarm-example-failed {"model": "iris", "version": "1.2.0", "example": 2, "of": 3, '
        b'"file": "examples.json", "status": 500, "exception": "ZeroDivisionError", '
        b'"what": "the model raised an exception"}\n',
    ]
    assert rollout.example_failure(lines) == (
        "example 2 of 3 in examples.json failed on the new replicas: 500, the model raised an exception "
        "(ZeroDivisionError)"
    )
    assert rollout.example_failure([b"anything else\n", b"modelswarm-example-failed {not json\n"]) is None
