"""The lab hosts look like real servers to Ansible: systemd as PID 1, sshd, python3, their own host keys."""

testinfra_hosts = ["ansible://managers"]


def test_systemd_is_pid_1_and_the_system_is_up(host):
    assert host.check_output("ps -o comm= -p 1") == "systemd"
    assert host.run("systemctl is-system-running").stdout.strip() in ("running", "degraded")


def test_sshd_runs_and_is_enabled(host):
    ssh = host.service("ssh")
    assert ssh.is_running and ssh.is_enabled


def test_python3_is_there_for_ansible(host):
    assert host.exists("python3")


def test_each_host_made_its_own_ssh_host_keys_at_first_boot(host):
    # The image ships no host keys; a oneshot unit makes them at first boot, so no two hosts share one.
    unit = host.service("lab-ssh-host-keys").systemd_properties
    assert unit["Result"] == "success"
    assert unit["ConditionResult"] == "yes"
    assert host.file("/etc/ssh/ssh_host_ed25519_key").mode == 0o600
