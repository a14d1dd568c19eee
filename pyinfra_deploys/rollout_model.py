"""Roll a model version out (building it first if needed), health-gated, with automatic rollback; recorded in the
console's ledger under the API key's name ($MODELSWARM_API_KEY, else the controller's deploy key), with
$MODELSWARM_NOTE as its note (e.g. a CI job URL). Fails (exit 1) unless the version serves on every replica.

    pyinfra -y pyinfra_deploys/inventory.py pyinfra_deploys/rollout_model.py --data bundle=examples/models/iris
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinfra import host

from pyinfra_deploys.swarm_model import model_service

if "leader" in host.groups:
    model_service(
        name=f"Roll out {host.data.bundle}",
        bundle_path=host.data.bundle,
        note=os.environ.get("MODELSWARM_NOTE", ""),
    )
