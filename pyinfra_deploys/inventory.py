"""pyinfra inventory, made from the Ansible inventory: the one list of hosts (MODELSWARM_INVENTORY, default
inventory/lab). Groups: managers, leader.

    pyinfra -y pyinfra_deploys/inventory.py pyinfra_deploys/rollout_model.py --data bundle=examples/models/iris
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelswarm.cluster import Host, read_inventory

_ansible = read_inventory(os.environ.get("MODELSWARM_INVENTORY", "inventory/lab"))


def _entry(host: Host) -> tuple[str, dict]:
    data = {"ssh_hostname": host.address, "ssh_user": host.user, "ssh_port": host.port}
    if host.key:
        data["ssh_key"] = host.key
    if "StrictHostKeyChecking=no" in host.ssh_args:  # the inventory's own choice (the lab's hosts are throwaway)
        data["ssh_strict_host_key_checking"] = "no"
        data["ssh_known_hosts_file"] = "/dev/null"
    return host.name, data


managers = [_entry(h) for h in _ansible.managers]
leader = [_entry(_ansible.leader)]
