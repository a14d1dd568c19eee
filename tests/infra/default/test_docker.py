"""The docker role: engine running and enabled, pinned and held, daemon.json applied, SDK present."""

import json

testinfra_hosts = ["ansible://managers"]


def test_docker_runs_and_starts_at_boot(host):
    docker = host.service("docker")
    assert docker.is_running and docker.is_enabled


def test_daemon_json_turns_log_rotation_on(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-driver"] == "json-file"
    assert config["log-opts"] == {"max-size": "20m", "max-file": "5"}
    # ...and the running daemon uses it.
    assert host.check_output("docker info --format '{{.LoggingDriver}}'") == "json-file"


def test_every_container_runs_with_no_new_privileges(host):
    """daemon.json's no-new-privileges, as the kernel sees it: NoNewPrivs 1 in every running container's process
    (Docker 20.10's service specs cannot set it per service, so the daemon setting is what counts)."""
    assert json.loads(host.file("/etc/docker/daemon.json").content_string)["no-new-privileges"] is True
    ids = host.check_output("docker ps -q").split()
    assert ids
    for container in ids:
        pid = host.check_output("docker inspect --format '{{.State.Pid}}' %s", container)
        status = host.file(f"/proc/{pid}/status").content_string
        assert "NoNewPrivs:\t1" in status, (container, [line for line in status.splitlines() if "NoNew" in line])


def test_engine_package_is_held_at_the_pinned_version(host):
    assert "docker.io" in host.check_output("apt-mark showhold").split()
    assert host.package("docker.io").version == "20.10.24+dfsg1-1+deb12u1+b6"


def test_storage_driver_is_overlay2(host):
    assert host.check_output("docker info --format '{{.Driver}}'") == "overlay2"


def test_python_sdk_for_community_docker(host):
    host.check_output("python3 -c 'import docker, jsondiff, yaml'")
