"""The cluster contract: the names, labels, ports, limits, rules and exit codes that the Ansible roles, the
platform's templates, the console, the model server and the CLI must agree on. Each is decided here, once.

The Ansible side reads the same values from `playbooks/group_vars/all/contract.yml`, which is generated from this
module (`python -m modelswarm.contract --write`, or `make contract`) and checked in; a unit test fails when the two
drift. These are facts of the design, not settings: a site changes its settings in the inventory.

What a deploy needs to know about one particular cluster (its registry address, its runtime image, its CA) is not
here: the platform publishes that into the cluster at converge (see `DEPLOY_FACTS_CONFIG`), and the CLI reads it back.
"""

from __future__ import annotations

import argparse
import re
import sys
from enum import IntEnum
from pathlib import Path

# --- Names --------------------------------------------------------------------------------------------------------
STACK = "modelswarm"  # the platform's swarm stack (service names <stack>_<service>)
MODELS_NETWORK = "modelswarm-models"  # overlay network that model services and NGINX share
MODEL_SERVICE_PREFIX = "model-"  # swarm service of model <name>: model-<name>
MODEL_REPOSITORY = "models"  # images: <registry>/models/<name>:<version>
RUNTIME_REPOSITORY = "modelswarm/python-runtime"  # the runtime image as mirrored into the cluster registry
CONSOLE_SERVICE = "console"  # the console's name on the platform network (NGINX proxies to it)
# The swarm config in which the platform publishes what a deploy needs (registry, network, runtime image, CA).
DEPLOY_FACTS_CONFIG = "modelswarm_deploy_facts"

# The platform services pinned to the designated leader (they keep its data: ledger, registry storage, metrics). The
# stack pins them, and the air-gapped bundle carries their images to the leader only.
LEADER_PINNED_SERVICES = ("console", "postgres", "registry", "prometheus")

# --- Labels -------------------------------------------------------------------------------------------------------
LEADER_LABEL = "modelswarm.leader"  # node label of the designated leader ("true"); pins console, PostgreSQL, registry
# On each host: while this file exists the node is being taken out (day-2 playbooks: upgrade, remove-node), and its
# NGINX answers /healthz with 503, so the VIP and any health-checking load balancer stop sending to it before it drains.
MAINTENANCE_DIR = "/var/lib/modelswarm/maintenance"
MAINTENANCE_FLAG = "draining"
LABEL_MODEL = "io.modelswarm.model"
LABEL_VERSION = "io.modelswarm.version"
LABEL_SOURCE_HASH = "io.modelswarm.source-hash"
LABEL_SPEC_HASH = "io.modelswarm.spec-hash"  # of a model service's whole spec: a redeploy that changes it is no no-op
LABEL_QUEUE_TIMEOUT = "io.modelswarm.queue-timeout"  # on a model service: seconds a request waits for a replica
LABEL_TIMEOUT = (
    "io.modelswarm.timeout"  # on a model service: seconds a replica may take to answer (when the manifest sets it)
)
LABEL_PLATFORM = "io.modelswarm.platform"
# On a model service: the replicas its manifest declares (a `docker service scale` below it is what the
# ModelReplicasBelowSpec alert sees; the console's /metrics reads it).
LABEL_REPLICAS = "io.modelswarm.replicas"
LABEL_SECRETS = "io.modelswarm.secrets"  # on a model image: the secret names its manifest declares, comma-separated
# On a model image: how its manifest asks it to be served (replicas, resources, environment, secrets), as JSON;
# a rollback to the image restores exactly that.
LABEL_SERVING = "io.modelswarm.serving"
# On a model secret (a swarm secret; LABEL_MODEL names its model): its name, version, creation time and a salted
# digest of its value (so that setting the same value again creates nothing).
LABEL_SECRET = "io.modelswarm.secret"
LABEL_SECRET_VERSION = "io.modelswarm.secret-version"
LABEL_SECRET_CREATED_AT = "io.modelswarm.created-at"
LABEL_SECRET_DIGEST = "io.modelswarm.secret-digest"

# --- Ports --------------------------------------------------------------------------------------------------------
MODEL_PORT = 8000  # every model server listens here, inside its container
CONSOLE_PORT = 8080

# --- Rules --------------------------------------------------------------------------------------------------------
# Unanchored, so NGINX locations and SQL CHECKs can embed them; `matches` anchors them.
MODEL_NAME_PATTERN = r"[a-z][a-z0-9-]{0,38}[a-z0-9]"  # 2-40 chars; becomes a DNS name and a URL segment
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # an image tag
DIGEST_PATTERN = r"sha256:[0-9a-f]{64}"
MODEL_NAME_RULE = (
    "2-40 characters, lowercase letters, digits and dashes, starting with a letter and not ending with a dash "
    "(it becomes the service name model-<name> and the URL /models/<name>/)"
)
VERSION_RULE = "letters, digits, '.', '_' and '-', at most 128 (it becomes the image tag)"
# A model secret's name: the file /run/secrets/<name> in the model's containers and part of the swarm secret's name.
SECRET_NAME_PATTERN = r"[a-z](?:[a-z0-9_-]{0,38}[a-z0-9])?"
SECRET_NAME_RULE = (
    "1-40 characters, lowercase letters, digits, '_' and '-', starting with a letter and ending with a letter or "
    "digit (it becomes the file /run/secrets/<name>)"
)

# --- Access control -----------------------------------------------------------------------------------------------
# An API key: "msk_<id>_<secret>", id 12 hex digits (the lookup handle, shown in listings), secret 32 random bytes
# (URL-safe base64, 43 characters). Only its SHA-256 digest is stored; NGINX and the console check it by digest.
API_KEY_PREFIX = "msk"
API_KEY_ID_PATTERN = r"[0-9a-f]{12}"
API_KEY_PATTERN = r"msk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}"
# Names of keys and console users (one person or pipeline, one name); they appear in the ledger and NGINX's map.
PRINCIPAL_NAME_PATTERN = r"[a-z][a-z0-9._-]{1,39}"
PRINCIPAL_NAME_RULE = "2-40 characters: lowercase letters, digits, '.', '_' and '-', starting with a letter"
# Roles, weakest first; each includes every right of the ones before it (all of them may predict).
ROLES = ("predict", "viewer", "deploy", "admin")
USER_ROLES = ROLES[1:]  # console users sign in to see the cluster: a predict-only person needs a key, not a login
# The keys the converge makes for the controller (files <secrets dir>/keys/<name>.key, 0600) and the first user.
CONTROLLER_ADMIN_KEY = "controller-admin"
CONTROLLER_DEPLOY_KEY = "controller-deploy"
FIRST_ADMIN_USER = "admin"
API_KEY_ENV = "MODELSWARM_API_KEY"  # a key given to the CLI or pyinfra (CI); wins over the controller's files

# --- Registry -----------------------------------------------------------------------------------------------------
# The registry answers only through its gateway (NGINX, TLS, HTTP Basic against a bcrypt htpasswd swarm secret).
# Two accounts: `push` may push and pull (the controller and CI build model images), `pull` may only read (the
# nodes, and every service spec that names a registry image). Deletes are refused to both.
REGISTRY_USERS = {"push": "modelswarm-push", "pull": "modelswarm-pull"}
# A password given to the CLI or pyinfra (CI) wins over the controller's file <secrets dir>/registry/<user>.password.
REGISTRY_PASSWORD_ENV = {"push": "MODELSWARM_REGISTRY_PUSH_PASSWORD", "pull": "MODELSWARM_REGISTRY_PULL_PASSWORD"}

# --- Model containers ---------------------------------------------------------------------------------------------
# Model images run as this user (no home, no shell, owns nothing in the image), on a read-only root filesystem with
# a tmpfs /tmp, every capability dropped, and these limits when the manifest sets none.
MODEL_UID = 10001  # the user (and group) model code runs as; its secrets' files belong to it
MODEL_TMPFS_BYTES = 64 * 1024 * 1024
MODEL_PIDS_LIMIT = 256
MODEL_DEFAULT_MEMORY = "1G"

# --- Limits -------------------------------------------------------------------------------------------------------
DEFAULT_REPLICAS = 2
MAX_REPLICAS = 9
# How long a request for a model with no reachable replica waits for one (seconds; the manifest's queue_timeout),
# and the most a manifest may ask. NGINX reads a service's value from LABEL_QUEUE_TIMEOUT.
DEFAULT_QUEUE_TIMEOUT = 30
MAX_QUEUE_TIMEOUT = 300
# How long a replica may take to answer a request before NGINX sends it to another replica (seconds; the manifest's
# timeout, when it sets one: else the platform's platform_nginx_prediction_timeout). At most 55 s: gunicorn stops a
# worker that has been busy with one request for 60 s (the model image's --timeout).
MAX_TIMEOUT = 55
# A model's latency objective: its p99 over 5 minutes, in milliseconds (the manifest's slo_p99_ms; the alert
# ModelLatencyAboveObjective fires above it), and the bounds a manifest may ask.
DEFAULT_SLO_P99_MS = 1000
MAX_SLO_P99_MS = 60000
ROLLOUT_MONITOR_SECONDS = 10  # a new task must stay healthy this long before the next one is replaced
# How long swarm waits before it starts a replica again (its process exited, or its node died and the replica is
# rescheduled elsewhere). Swarm's own default is 5 s; each second here is a second longer without the replica after a
# node dies, while a replica that crashes at once restarts once per this delay.
REPLICA_RESTART_DELAY_SECONDS = 1
STOP_GRACE_SECONDS = 30  # a stopping replica finishes its in-flight requests within this
MAX_SECRET_BYTES = 500 * 1024  # swarm's limit for one secret's value


class Exit(IntEnum):
    """Exit codes of the CLI (and of the pyinfra deploys' outcome)."""

    OK = 0  # done, or already so
    FAILED = 1  # the operation failed; the message says why
    USAGE = 2  # bad input or bad usage; nothing was changed
    ROLLED_BACK = 3  # the new version failed its health gate and was rolled back automatically
    TIMED_OUT = 4  # the rollout did not finish in time


def matches(pattern: str, value: object) -> bool:
    """Whether `value` is a string that matches `pattern` as a whole."""
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def role_includes(role: str, needed: str) -> bool:
    """Whether `role` has the rights of `needed` (roles are ordered, each including the ones before it)."""
    return role in ROLES and needed in ROLES and ROLES.index(role) >= ROLES.index(needed)


def service_name(model: str) -> str:
    return MODEL_SERVICE_PREFIX + model


# The values the Ansible side reads, under the names it reads them by.
ANSIBLE_VARS: dict[str, object] = {
    "modelswarm_stack": STACK,
    "modelswarm_models_network": MODELS_NETWORK,
    "modelswarm_model_service_prefix": MODEL_SERVICE_PREFIX,
    "modelswarm_model_repository": MODEL_REPOSITORY,
    "modelswarm_runtime_repository": RUNTIME_REPOSITORY,
    "modelswarm_console_service": CONSOLE_SERVICE,
    "modelswarm_deploy_facts_config": DEPLOY_FACTS_CONFIG,
    "modelswarm_leader_label": LEADER_LABEL,
    "modelswarm_platform_label": LABEL_PLATFORM,
    "modelswarm_model_port": MODEL_PORT,
    "modelswarm_console_port": CONSOLE_PORT,
    "modelswarm_model_name_pattern": MODEL_NAME_PATTERN,
    "modelswarm_leader_pinned_services": list(LEADER_PINNED_SERVICES),
    "modelswarm_api_key_prefix": API_KEY_PREFIX,
    "modelswarm_principal_name_pattern": PRINCIPAL_NAME_PATTERN,
    "modelswarm_roles": list(ROLES),
    "modelswarm_controller_keys": {CONTROLLER_ADMIN_KEY: "admin", CONTROLLER_DEPLOY_KEY: "deploy"},
    "modelswarm_first_admin_user": FIRST_ADMIN_USER,
    "modelswarm_registry_users": REGISTRY_USERS,
    "modelswarm_model_uid": MODEL_UID,
    "modelswarm_default_queue_timeout": DEFAULT_QUEUE_TIMEOUT,
    "modelswarm_queue_timeout_label": LABEL_QUEUE_TIMEOUT,
    "modelswarm_timeout_label": LABEL_TIMEOUT,
    "modelswarm_max_timeout": MAX_TIMEOUT,
    "modelswarm_model_label": LABEL_MODEL,
    "modelswarm_maintenance_dir": MAINTENANCE_DIR,
    "modelswarm_maintenance_flag": MAINTENANCE_FLAG,
}

ANSIBLE_VARS_FILE = Path("playbooks/group_vars/all/contract.yml")


def ansible_vars_yaml() -> str:
    """The generated vars file: YAML that yamllint accepts, every value quoted as a string or a plain integer."""
    import json

    lines = [
        "---",
        "# Generated from modelswarm/contract.py by `make contract`: do not edit here; change the contract there.",
        "# The cluster's fixed names, labels, ports and rules, shared by every role and template.",
    ]
    for key, value in ANSIBLE_VARS.items():
        # JSON strings are valid YAML double-quoted scalars; integers stay integers.
        lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print or write the Ansible vars file generated from the contract.")
    parser.add_argument("--write", metavar="ROOT", nargs="?", const=".", help="write it under ROOT (default .)")
    args = parser.parse_args(argv)
    text = ansible_vars_yaml()
    if args.write is None:
        sys.stdout.write(text)
    else:
        path = Path(args.write) / ANSIBLE_VARS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
