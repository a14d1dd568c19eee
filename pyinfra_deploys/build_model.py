"""Build and push a model image on the designated leader.

pyinfra -y pyinfra_deploys/inventory.py pyinfra_deploys/build_model.py --data bundle=examples/models/iris
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinfra import host

from modelswarm.modelimage import DEFAULT_RUNTIME
from pyinfra_deploys.swarm_model import model_image

if "leader" in host.groups:
    model_image(
        name=f"Build and push the image of {host.data.bundle}",
        bundle_path=host.data.bundle,
        runtime_image=os.environ.get("MODELSWARM_RUNTIME_IMAGE", DEFAULT_RUNTIME),
    )
