"""The registry accounts as the CLI finds and uses them: environment first, then the controller's files; the
password goes to the daemon and nowhere else."""

import docker.errors
import pytest

from modelswarm import contract, registryauth
from modelswarm.apiclient import CredentialsMissing

PUSH, PULL = contract.REGISTRY_USERS["push"], contract.REGISTRY_USERS["pull"]


@pytest.fixture
def secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSWARM_SECRETS_DIR", str(tmp_path))
    for variable in contract.REGISTRY_PASSWORD_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "registry").mkdir()
    return tmp_path / "registry"


def test_the_controller_files_give_each_account_its_own_password(secrets):
    (secrets / f"{PUSH}.password").write_text("p" * 32 + "\n")
    (secrets / f"{PULL}.password").write_text("q" * 32 + "\n")
    assert registryauth.credentials("push") == {"username": PUSH, "password": "p" * 32}
    assert registryauth.credentials("pull") == {"username": PULL, "password": "q" * 32}


def test_the_environment_wins(secrets, monkeypatch):
    (secrets / f"{PULL}.password").write_text("q" * 32)
    monkeypatch.setenv(contract.REGISTRY_PASSWORD_ENV["pull"], "from-ci")
    assert registryauth.credentials("pull")["password"] == "from-ci"


@pytest.mark.parametrize("content", [None, "\n"])
def test_no_password_is_a_clear_usage_error(secrets, content):
    if content is not None:
        (secrets / f"{PUSH}.password").write_text(content)
    with pytest.raises(CredentialsMissing) as caught:
        registryauth.credentials("push")
    assert PUSH in str(caught.value)
    assert contract.REGISTRY_PASSWORD_ENV["push"] in str(caught.value) or "empty" in str(caught.value)


class FakeClient:
    def __init__(self, refuse: bool = False):
        self.refuse, self.calls = refuse, []

    def login(self, username, password, registry, reauth):
        self.calls.append((username, password, registry, reauth))
        if self.refuse:
            raise docker.errors.APIError(f"login for {username}:{password} unauthorized", explanation=None)


def test_login_hands_the_pull_account_to_the_daemon(secrets):
    (secrets / f"{PULL}.password").write_text("q" * 32)
    client = FakeClient()
    auth = registryauth.login(client, "10.0.0.11:5000")
    assert client.calls == [(PULL, "q" * 32, "10.0.0.11:5000", True)]
    assert auth == {"username": PULL, "password": "q" * 32}


def test_a_refused_login_names_the_account_but_not_the_password(secrets):
    (secrets / f"{PULL}.password").write_text("q" * 32)
    with pytest.raises(registryauth.RegistryLoginFailed) as caught:
        registryauth.login(FakeClient(refuse=True), "10.0.0.11:5000")
    assert PULL in str(caught.value) and "q" * 32 not in str(caught.value)
