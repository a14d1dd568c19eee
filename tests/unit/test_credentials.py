"""The converge's credentials tasks (roles/platform/tasks/credentials.yml), run for real on this machine against a
temporary secrets directory: files made once with private modes, nothing secret in Ansible's output even at -vvv,
a second run changes nothing, and a damaged key file is refused, never overwritten."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from modelswarm import contract
from modelswarm.tooling import recap

REPO = Path(__file__).resolve().parents[2]
PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_tasks: {tasks}
"""


def converge(tmp_path: Path) -> subprocess.CompletedProcess:
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(tasks=REPO / "roles/platform/tasks/credentials.yml"))
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-vvv",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"@{REPO / contract.ANSIBLE_VARS_FILE}",
            "-e",
            f"platform_secrets_dir={tmp_path / 'secrets'}",
            "-e",
            f"_platform_registry_dir={tmp_path / 'secrets' / 'registry'}",
            "-e",
            "platform_registry_bcrypt_rounds=6",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        env={"PATH": "/usr/bin:/bin", "ANSIBLE_LIBRARY": str(REPO / "roles/platform/library"), "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("credentials")
    return tmp, converge(tmp)


def secrets_of(tmp: Path) -> dict[str, str]:
    root = tmp / "secrets"
    return {str(p.relative_to(root)): p.read_text().strip() for p in root.rglob("*") if p.is_file()}


def test_every_credential_is_made_once_with_private_modes(first_run):
    tmp, result = first_run
    assert result.returncode == 0, result.stdout[-3000:]
    made = secrets_of(tmp)
    assert set(made) == {
        "keys/controller-admin.key", "keys/controller-deploy.key", "console-db-password",
        "console-app-db-password", "console-admin-password", "nginx-grants-token", "monitoring-token",
        f"registry/{contract.REGISTRY_USERS['push']}.password", f"registry/{contract.REGISTRY_USERS['pull']}.password",
        "registry/htpasswd",
    }  # fmt: skip
    assert contract.matches(contract.API_KEY_PATTERN, made["keys/controller-admin.key"])
    assert made["keys/controller-admin.key"] != made["keys/controller-deploy.key"]
    root = tmp / "secrets"
    for directory in (root, root / "keys", root / "registry"):
        assert oct(directory.stat().st_mode & 0o777) == "0o700", directory
    for path in root.rglob("*"):
        if path.is_file():
            assert oct(path.stat().st_mode & 0o777) == "0o600", path


def test_no_key_digest_or_password_appears_in_the_output_even_at_vvv(first_run):
    tmp, result = first_run
    output = result.stdout + result.stderr
    for name, value in secrets_of(tmp).items():
        for line in value.splitlines():  # the htpasswd file line by line: each account's hash
            assert line not in output, name
            assert line.split(":", 1)[-1] not in output, name
        assert hashlib.sha256(value.encode()).hexdigest() not in output, name


def test_a_second_run_changes_nothing_and_keeps_every_credential(first_run):
    tmp, _ = first_run
    before = secrets_of(tmp)
    again = converge(tmp)
    assert again.returncode == 0
    assert recap.changed_hosts(again.stdout) == {}
    assert secrets_of(tmp) == before


def test_a_damaged_key_file_is_refused_and_kept(tmp_path):
    keys = tmp_path / "secrets" / "keys"
    keys.mkdir(parents=True)
    (keys / "controller-admin.key").write_text("not a key\n")
    result = converge(tmp_path)
    assert result.returncode != 0
    assert (keys / "controller-admin.key").read_text() == "not a key\n"
