"""Shared helpers for the testinfra suites: re-running playbooks against the scenario's own inventory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def inventory() -> str:
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path:
        raise RuntimeError("MOLECULE_INVENTORY_FILE is not set: run these tests through `molecule verify`")
    return path


def run_tool(
    tool: str, *args: str, timeout: int = 600, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess:
    """A tool of this venv (ansible-playbook, modelswarm, pyinfra), run from the repository root; `stdin`: text to
    feed it (default: it inherits the tests' stdin)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / tool), *args],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_playbook(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """ansible-playbook against the scenario's hosts."""
    return run_tool(
        "ansible-playbook", "-i", inventory(), *args, timeout=timeout, ANSIBLE_ROLES_PATH=str(REPO / "roles")
    )


def playbook_failure(run: subprocess.CompletedProcess, tail: int = 2500) -> str:
    """What a failed ansible-playbook run says about its failure: every `fatal:` line, then the end of its output."""
    output = run.stdout + run.stderr
    fatal = [line for line in output.splitlines() if line.startswith(("fatal:", "failed:"))]
    return "\n".join([*fatal, "...", output[-tail:]])


def swarm_nodes(host) -> list[dict]:
    """`docker node inspect` of every node, as seen from `host` (a manager)."""
    ids = host.check_output("docker node ls -q").split()
    return json.loads(host.check_output("docker node inspect " + " ".join(ids)))


def lab_addresses() -> dict[str, str]:
    """node name -> address of the scenario's lab instance (from MODELSWARM_LAB_SUBNET, as the lab computes them)."""
    from modelswarm.lab import LabSettings

    settings = LabSettings.from_env()
    return {node: settings.address(node) for node in settings.all_nodes}


def service_tasks(host, service: str) -> list[dict]:
    """Running tasks of a service: [{'node': hostname, 'state': ...}], from `docker service ps` as JSON lines."""
    out = host.check_output("docker service ps --filter desired-state=running --format '{{json .}}' %s", service)
    tasks = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [{"node": t["Node"], "state": t["CurrentState"].split()[0]} for t in tasks]


def secrets_dir() -> Path:
    return REPO / ".secrets"


def secret_values() -> dict[str, str]:
    """Every secret the converge keeps on the controller, by file: the keys, passwords and tokens whole, the first
    line of each TLS private key and each htpasswd hash (a line of base64 is enough to tell a leak)."""
    found = {}
    for path in sorted(secrets_dir().rglob("*")):
        if not path.is_file() or path.suffix in (".crt", ".csr", ".json") or path.name.endswith(".srl"):
            continue
        text = path.read_text(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-----")]
        if text.startswith("-----BEGIN"):
            # A private key's PEM: its first line holds the start of the private value; the later lines of an EC key
            # carry its public key too, which certificates and requests show (and may show in the log).
            lines = lines[:1]
        for number, line in enumerate(lines):
            value = line.split(":", 1)[1] if path.name == "htpasswd" else line
            if len(value) >= 16:
                found[f"{path.relative_to(secrets_dir())}:{number + 1}"] = value
    return found


def leaked(output: str) -> list[str]:
    """The names of the secrets (file:line) whose value appears in `output`."""
    return sorted(name for name, value in secret_values().items() if value in output)


def controller_key(name: str = "") -> str:
    """A key the converge made for the controller (default: the deploy key)."""
    from modelswarm import contract

    return (secrets_dir() / "keys" / f"{name or contract.CONTROLLER_DEPLOY_KEY}.key").read_text().strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(node: str, method: str, path: str, key: str | None = "", scheme: str = "https", **kwargs):
    """One request to `node`'s NGINX (HTTPS, verified with the cluster CA); key "" = the controller's deploy key,
    None = no key."""
    import requests

    headers = {**(bearer(key or controller_key()) if key is not None else {}), **kwargs.pop("headers", {})}
    verify = str(secrets_dir() / "pki" / "ca.crt") if scheme == "https" else True
    return requests.request(
        method, f"{scheme}://{lab_addresses()[node]}{path}", headers=headers, verify=verify, timeout=10, **kwargs
    )


IRIS = REPO / "examples" / "models" / "iris"


# The text a version whose predict raises puts in its exception: it must never reach a caller, the CLI or the ledger.
RAISED_TEXT = "password=hunter2 deliberately broken"


def iris_variant(
    root: Path, version: str, broken: bool = False, predict_raises: bool = False, replicas: int | None = None
) -> Path:
    """A copy of the iris bundle at `version`. broken: its load() raises, so it never becomes healthy;
    predict_raises: it loads, but predict raises on every input (its examples included); replicas: another count."""
    path = root / f"iris-{version}"
    shutil.copytree(IRIS, path)
    manifest = (path / "modelswarm.yml").read_text().replace("version: 1.0.0", f"version: {version}")
    if replicas is not None:
        manifest = manifest.replace("replicas: 2", f"replicas: {replicas}")
    (path / "modelswarm.yml").write_text(manifest)
    code = (path / "model.py").read_text()
    if broken:
        code = code.replace("def load():\n", 'def load():\n    raise RuntimeError("deliberately broken")\n', 1)
    if predict_raises:
        code = code.replace("def predict(data):\n", f"def predict(data):\n    raise RuntimeError({RAISED_TEXT!r})\n", 1)
    (path / "model.py").write_text(code)
    return path


def modelswarm(*args: str, timeout: int = 900, stdin: str | None = None) -> tuple[int, dict, str]:
    """Run the CLI against the scenario's hosts with --json; returns (exit code, JSON result, progress output)."""
    result = run_tool(
        "modelswarm", *args, "-i", inventory(), "--json", timeout=timeout, stdin=stdin,
        MODELSWARM_NOTE="testinfra",
    )  # fmt: skip
    try:
        payload = json.loads(result.stdout) if result.stdout.strip() else {}
    except json.JSONDecodeError:
        payload = {"unparsed": result.stdout}
    return result.returncode, payload, result.stderr


def ledger_export() -> list[dict]:
    """Every ledger entry (with its hashes), from `modelswarm ledger export` (JSON lines) against the scenario."""
    result = run_tool("modelswarm", "ledger", "export", "-i", inventory())
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
