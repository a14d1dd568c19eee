"""The platform role's swarm_stack_converged module: a rolled-back update is a failed deploy, not a converged one."""

import importlib.util
import time
from pathlib import Path
from types import SimpleNamespace

MODULE = Path(__file__).resolve().parents[2] / "roles" / "platform" / "library" / "swarm_stack_converged.py"
spec = importlib.util.spec_from_file_location("swarm_stack_converged", MODULE)
converged = importlib.util.module_from_spec(spec)
spec.loader.exec_module(converged)

NODE = {"ID": "n1", "Status": {"State": "ready"}, "Spec": {"Availability": "active", "Role": "manager"}}


def stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.123456789Z", time.gmtime(time.time() - seconds_ago))


def service(name, update=None, running=1):
    tasks = [{"NodeID": "n1", "Status": {"State": "running", "Timestamp": stamp(5)}}] * running
    attrs = {"Spec": {"Name": name, "Mode": {"Replicated": {"Replicas": 1}}, "TaskTemplate": {}}}
    if update:
        attrs["UpdateStatus"] = update
    return SimpleNamespace(attrs=attrs, tasks=lambda filters=None: tasks)


def client(*services):
    return SimpleNamespace(
        nodes=SimpleNamespace(list=lambda: [SimpleNamespace(attrs=NODE)]),
        services=SimpleNamespace(list=lambda filters: list(services)),
    )


def test_a_rollback_of_this_deploy_fails_even_with_every_task_running():
    rolled = {"State": "rollback_completed", "StartedAt": stamp(30), "Message": "rollback completed"}
    report, problems, failed = converged.status(client(service("s_console", rolled)), "s", since=time.time() - 300)
    assert report["s_console"]["running"] == 1 and problems == []
    assert len(failed) == 1 and "s_console: the update was rollback completed" in failed[0]


def test_an_old_rollback_is_history():
    rolled = {"State": "rollback_completed", "StartedAt": stamp(3600), "Message": "rollback completed"}
    _, problems, failed = converged.status(client(service("s_console", rolled)), "s", since=time.time() - 300)
    assert problems == [] and failed == []


def test_an_update_in_progress_is_waited_for():
    updating = {"State": "updating", "StartedAt": stamp(2)}
    _, problems, failed = converged.status(client(service("s_nginx", updating)), "s", since=time.time() - 300)
    assert failed == [] and problems and problems[0].startswith("s_nginx: updating")


def test_completed_and_running_is_converged():
    done = {"State": "completed", "StartedAt": stamp(20)}
    _, problems, failed = converged.status(client(service("s_nginx", done), service("s_db")), "s", since=0)
    assert problems == [] and failed == []


def test_docker_timestamps_are_read():
    assert converged.started_at({"StartedAt": "2026-11-23T20:45:37.321054965Z"}) == 1795466737
    assert converged.started_at({}) == 0
