"""Model bundles: a directory with a manifest, the model code, its requirements and its artifacts.

    mymodel/
      modelswarm.yml        the manifest (below)
      model.py              the entry point: def predict(data) -> JSON-able; optional def load() -> None
      requirements.txt      pip requirements (may be empty)
      examples.json         example inputs (required): every new replica must answer each one before it serves
      artifacts/...         files the model reads (listed in the manifest)

    # modelswarm.yml
    name: iris                  # 2-40 chars: lowercase letters, digits, dashes; service model-<name>
    version: 1.0.0              # image tag: letters, digits, '.', '_', '-' (128 at most)
    entrypoint: model.py        # default model.py
    replicas: 2                 # default 2; one per node first, the rest where there is room
    resources: {cpus: "0.5", memory: 256M}
    environment: {LOG_LEVEL: info}   # not secrets: baked into the image (keys that look like secrets are refused)
    secrets: [db_password]      # swarm secrets, mounted at /run/secrets/<name> (`modelswarm secrets set`)
    artifacts: [artifacts/weights.npz]
    examples: examples.json     # default examples.json: a JSON list of inputs, each one a valid request body
    queue_timeout: 30           # seconds a request waits while no replica can answer (then 503); 0-300
    timeout: 20                 # seconds a replica may take to answer, then the next one; 1-55 (default: platform's)
    log_payload: false          # true: each prediction's log line carries its request body (default: never)
    slo_p99_ms: 250             # latency objective: p99 in ms over 5 min (default 1000); above it, an alert

`load_bundle` checks everything before any build and raises BundleError with one message per problem.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement

from modelswarm import contract

MANIFEST = "modelswarm.yml"
MEMORY = re.compile(r"^[1-9][0-9]*[KMG]$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
KNOWN_KEYS = {
    "name", "version", "entrypoint", "replicas", "resources", "environment", "secrets", "artifacts", "description",
    "examples", "queue_timeout", "timeout", "log_payload", "slo_p99_ms",
}  # fmt: skip
DEFAULT_EXAMPLES = "examples.json"
MAX_EXAMPLES = 20  # every replica answers each one before it serves: a few cover the model, many slow the start
MAX_EXAMPLES_BYTES = 1024 * 1024
EXAMPLES_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*\.json")  # also an image ENV value: no spaces, no quotes
# Segments (between underscores) of an environment key that mark it as holding a secret: DB_PASSWORD and API_KEY are
# refused, KEYBOARD_LAYOUT and PASSTHROUGH are not.
SECRET_WORDS = frozenset(
    {
        "PASSWORD", "PASSWORDS", "PASSWD", "PASS", "PWD", "PASSPHRASE", "TOKEN", "TOKENS", "SECRET", "SECRETS",
        "KEY", "KEYS", "APIKEY", "CREDENTIAL", "CREDENTIALS", "CREDS", "PRIVATE",
    }
)  # fmt: skip


class BundleError(ValueError):
    """The bundle is invalid; `problems` lists one message per problem."""

    def __init__(self, path: Path, problems: list[str]):
        super().__init__(f"invalid model bundle {path}:\n  - " + "\n  - ".join(problems))
        self.path, self.problems = path, problems


@dataclass(frozen=True)
class Bundle:
    path: Path
    name: str
    version: str
    entrypoint: str = "model.py"
    replicas: int = contract.DEFAULT_REPLICAS
    cpus: str | None = None
    memory: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    has_load: bool = False
    examples: str = DEFAULT_EXAMPLES  # the file of example inputs, relative to the bundle
    example_count: int = 0
    queue_timeout: int = contract.DEFAULT_QUEUE_TIMEOUT
    timeout: int | None = None  # None: the platform's prediction timeout
    log_payload: bool = False  # the prediction log line carries the request body (the model opts in)
    slo_p99_ms: int = contract.DEFAULT_SLO_P99_MS  # the latency objective (the model server exports it)

    @property
    def service(self) -> str:
        return contract.service_name(self.name)

    def files(self) -> list[Path]:
        """Every file that goes into the image, relative to the bundle (sorted, stable)."""
        wanted = {MANIFEST, self.entrypoint, "requirements.txt", self.examples, *self.artifacts}
        helpers = [p for p in self.path.rglob("*.py") if "__pycache__" not in p.parts]
        wanted.update(str(p.relative_to(self.path)) for p in helpers)
        return sorted(Path(p) for p in wanted if (self.path / p).is_file())

    def serving(self) -> dict:
        """How the version is served, as the manifest asks: what a rollout of this version sets on the service and
        what a rollback to it restores (the image carries it as a label)."""
        return {
            "replicas": self.replicas,
            "cpus": self.cpus,
            "memory": self.memory,
            "environment": dict(sorted(self.environment.items())),
            "secrets": list(self.secrets),
            "queue_timeout": self.queue_timeout,
            **({"timeout": self.timeout} if self.timeout is not None else {}),
        }

    def source_hash(self) -> str:
        """sha256 over the names and contents of the files that go into the image."""
        digest = hashlib.sha256()
        for rel in self.files():
            digest.update(str(rel).encode() + b"\0" + (self.path / rel).read_bytes() + b"\0")
        return digest.hexdigest()


def _check_entrypoint(path: Path, problems: list[str]) -> bool:
    """The entry point parses and defines predict(data) (and maybe load()). Returns whether load() exists."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        problems.append(f"{path.name}: syntax error at line {exc.lineno}: {exc.msg}")
        return False
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    predict = functions.get("predict")
    if predict is None:
        problems.append(f"{path.name}: no top-level function predict(data) (the entry point every request calls)")
    elif len(predict.args.args) != 1:
        problems.append(f"{path.name}: predict must take exactly one argument (the decoded JSON request)")
    load = functions.get("load")
    if load is not None and (load.args.args or load.args.vararg):
        problems.append(f"{path.name}: load() must take no arguments (it runs once, before serving)")
    return load is not None


def _check_requirements(path: Path, problems: list[str]) -> tuple[str, ...]:
    if not path.is_file():
        problems.append("requirements.txt is missing (an empty file is fine when the model needs nothing)")
        return ()
    found = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            problems.append(f"requirements.txt line {number}: pip options ({line.split()[0]}) are not allowed")
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"requirements.txt line {number}: {line!r} is not a valid requirement ({exc})")
            continue
        if requirement.url:
            problems.append(f"requirements.txt line {number}: direct URLs are not allowed ({requirement.name})")
        found.append(str(requirement))
    return tuple(found)


def secret_word(key: str) -> str | None:
    """The segment of environment key `key` that says it holds a secret (e.g. PASSWORD in DB_PASSWORD), or None."""
    return next((segment for segment in key.upper().split("_") if segment in SECRET_WORDS), None)


def _check_secrets(declared: object, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(declared, list):
        problems.append("secrets: a list of secret names, e.g. [db_password]")
        return ()
    names: list[str] = []
    for name in declared:
        if not contract.matches(contract.SECRET_NAME_PATTERN, name):
            problems.append(f"secret {name!r}: use {contract.SECRET_NAME_RULE}")
        elif name in names:
            problems.append(f"secret {name!r} is listed twice")
        else:
            names.append(name)
    return tuple(names)


def _check_examples(root: Path, declared: object, problems: list[str]) -> tuple[str, int]:
    """The examples file: inside the bundle, a JSON list of 1 to MAX_EXAMPLES inputs. Returns (path, count)."""
    if not isinstance(declared, str) or not EXAMPLES_PATH.fullmatch(declared):
        problems.append(f"examples {declared!r}: a .json file inside the bundle, e.g. {DEFAULT_EXAMPLES}")
        return DEFAULT_EXAMPLES, 0
    path = (root / declared).resolve()
    if root.resolve() not in path.parents:
        problems.append(f"examples {declared}: must be inside the bundle")
        return declared, 0
    wanted = (
        f"a JSON list of 1 to {MAX_EXAMPLES} example inputs, each one a request body that predict must answer; "
        "every new replica answers them before it serves, and a rollout whose replicas fail one is rolled back"
    )
    if not path.is_file():
        problems.append(f"{declared} is missing: {wanted}")
        return declared, 0
    if path.stat().st_size > MAX_EXAMPLES_BYTES:
        problems.append(f"{declared} is larger than {MAX_EXAMPLES_BYTES // 1024} KiB: {wanted}")
        return declared, 0
    try:
        examples = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{declared} is not valid JSON ({exc}): {wanted}")
        return declared, 0
    if not isinstance(examples, list) or not 1 <= len(examples) <= MAX_EXAMPLES:
        problems.append(f"{declared}: {wanted}")
        return declared, 0
    return declared, len(examples)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _whole_number(value: object, low: int, high: int) -> bool:
    """A manifest's whole number within [low, high] (YAML's true/false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle directory; raise BundleError listing every problem found."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(root, [f"{root} is not a directory"])
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(root, [f"no {MANIFEST} manifest in {root}"])
    try:
        manifest = yaml.safe_load(manifest_path.read_text())
    except yaml.YAMLError as exc:
        raise BundleError(root, [f"{MANIFEST} is not valid YAML: {exc}"]) from exc
    if not isinstance(manifest, dict):
        raise BundleError(root, [f"{MANIFEST} must be a mapping (name: ..., version: ...)"])

    problems: list[str] = []
    unknown = sorted(set(manifest) - KNOWN_KEYS)
    if unknown:
        problems.append(f"{MANIFEST}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})")
    name = manifest.get("name")
    if not contract.matches(contract.MODEL_NAME_PATTERN, name):
        problems.append(f"name {name!r}: use {contract.MODEL_NAME_RULE}")
    version = manifest.get("version")
    version = str(version) if isinstance(version, int | float) else version
    if not contract.matches(contract.VERSION_PATTERN, version):
        problems.append(f"version {version!r}: use {contract.VERSION_RULE}")
    replicas = manifest.get("replicas", contract.DEFAULT_REPLICAS)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= contract.MAX_REPLICAS:
        problems.append(f"replicas {replicas!r}: a whole number from 1 to {contract.MAX_REPLICAS}")

    entrypoint = manifest.get("entrypoint", "model.py")
    has_load = False
    entry_path = root / str(entrypoint)
    if not isinstance(entrypoint, str) or not entrypoint.endswith(".py") or "/" in entrypoint:
        problems.append(f"entrypoint {entrypoint!r}: a .py file at the top of the bundle")
    elif not entry_path.is_file():
        problems.append(f"entrypoint {entrypoint} is missing")
    else:
        has_load = _check_entrypoint(entry_path, problems)

    requirements = _check_requirements(root / "requirements.txt", problems)

    artifacts = manifest.get("artifacts", []) or []
    if not isinstance(artifacts, list) or not all(isinstance(a, str) for a in artifacts):
        problems.append("artifacts: a list of file paths inside the bundle")
        artifacts = []
    for artifact in artifacts:
        resolved = (root / artifact).resolve()
        if root.resolve() not in resolved.parents:
            problems.append(f"artifact {artifact}: must be inside the bundle")
        elif not resolved.is_file():
            problems.append(f"artifact {artifact} is missing")

    resources = manifest.get("resources", {}) or {}
    cpus, memory = None, None
    if not isinstance(resources, dict) or set(resources) - {"cpus", "memory"}:
        problems.append("resources: a mapping with cpus and/or memory")
    else:
        if "cpus" in resources:
            try:
                cpus = str(resources["cpus"])
                if not 0 < float(cpus) <= 64:
                    raise ValueError
            except ValueError:
                problems.append(f'resources.cpus {resources["cpus"]!r}: a number of CPUs, e.g. "0.5"')
        if "memory" in resources:
            memory = str(resources["memory"])
            if not MEMORY.match(memory):
                problems.append(f"resources.memory {memory!r}: a size such as 256M or 1G")

    environment = manifest.get("environment", {}) or {}
    if not isinstance(environment, dict):
        problems.append("environment: a mapping of NAME: value")
        environment = {}
    for key in environment:
        if not isinstance(key, str) or not ENV_NAME.match(key) or key.startswith("MODELSWARM_"):
            problems.append(f"environment {key!r}: NAME in capitals (MODELSWARM_* is reserved)")
        elif word := secret_word(key):
            suggested = key.lower() if contract.matches(contract.SECRET_NAME_PATTERN, key.lower()) else "a_name"
            model = name if contract.matches(contract.MODEL_NAME_PATTERN, name) else "<model>"
            problems.append(
                f"environment {key!r} looks like a secret ({word}): environment values are baked into the image "
                f"and shown by docker inspect. Declare it under secrets: [{suggested}] instead, store its value "
                f"with `modelswarm secrets set {model} {suggested}`, and read it in the model with "
                f"modelswarm_model.secret({suggested!r})"
            )

    secrets = _check_secrets(manifest.get("secrets", []) or [], problems)
    examples, example_count = _check_examples(root, manifest.get("examples", DEFAULT_EXAMPLES), problems)
    queue_timeout = manifest.get("queue_timeout", contract.DEFAULT_QUEUE_TIMEOUT)
    if not _whole_number(queue_timeout, 0, contract.MAX_QUEUE_TIMEOUT):
        problems.append(
            f"queue_timeout {queue_timeout!r}: whole seconds from 0 to {contract.MAX_QUEUE_TIMEOUT} that a request "
            "waits while the model has no replica that can answer (0: answer 503 at once)"
        )
    timeout = manifest.get("timeout")
    if timeout is not None and not _whole_number(timeout, 1, contract.MAX_TIMEOUT):
        problems.append(
            f"timeout {timeout!r}: whole seconds from 1 to {contract.MAX_TIMEOUT} that a replica may take to answer "
            "before NGINX sends the request to another replica (leave it out for the platform's default)"
        )
    log_payload = manifest.get("log_payload", False)
    if not isinstance(log_payload, bool):
        problems.append(
            f"log_payload {log_payload!r}: true or false (true: each prediction's log line carries its request body)"
        )
    slo_p99_ms = manifest.get("slo_p99_ms", contract.DEFAULT_SLO_P99_MS)
    if not _whole_number(slo_p99_ms, 1, contract.MAX_SLO_P99_MS):
        problems.append(
            f"slo_p99_ms {slo_p99_ms!r}: whole milliseconds from 1 to {contract.MAX_SLO_P99_MS}, the p99 latency "
            "the model should keep (an alert fires above it)"
        )

    if problems:
        raise BundleError(root, problems)
    return Bundle(
        path=root,
        name=name,
        version=version,
        entrypoint=entrypoint,
        replicas=replicas,
        cpus=cpus,
        memory=memory,
        environment={k: str(v) for k, v in environment.items()},
        secrets=secrets,
        artifacts=tuple(artifacts),
        requirements=requirements,
        has_load=has_load,
        examples=examples,
        example_count=example_count,
        queue_timeout=queue_timeout,
        timeout=timeout,
        log_payload=log_payload,
        slo_p99_ms=slo_p99_ms,
    )
