"""Build and push a model image on the designated leader.

pyinfra -y pyinfra_deploys/inventory.py pyinfra_deploys/build_model.py --data bundle=examples/models/iris
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinfra import host

from pyinfra_deploys.swarm_model import model_image

if "leader" in host.groups:
    model_image(
        name=f"Build and push the image of {host.data.bundle}",
        bundle_path=host.data.bundle,
    )
