#!/usr/bin/python
# -*- coding: utf-8 -*-
# What removing one node from the swarm would do, or why it is refused. Read-only. Python 2.7-compatible.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: swarm_removal_plan
short_description: Work out whether one node may be removed from the swarm, and how
description:
  - Reads the swarm's nodes on a manager and returns the plan for removing the node whose hostname is given, or the
    reason it is refused; playbooks/remove-node.yml stops on a refusal before anything changes.
  - Refused are the designated leader (its services and their data live there), a manager whose removal would leave
    fewer reachable managers than a majority of those that remain, and a node that is down unless C(force) is set.
  - A node that is not in the swarm gives an empty plan (nothing to do).
  - Changes nothing.
options:
  node:
    description: The node's inventory name (named in the messages).
    type: str
    required: true
  hostname:
    description: The hostname the swarm knows the node by.
    type: str
    required: true
  leader:
    description: The designated leader's inventory name.
    type: str
    required: true
  force:
    description: Remove a node that is already down.
    type: bool
    default: false
requirements: [docker (Python SDK)]
author: modelswarm
"""

RETURN = r"""
refusal:
  description: Why the removal is refused, naming the way out; empty when it may go ahead.
  returned: always
  type: str
entries:
  description: The node's entries in the swarm (ID, role, state); more than one when stale entries share its hostname.
  returned: always
  type: list
manager:
  description: Whether one of its entries is a manager.
  returned: always
  type: bool
down:
  description: Whether the node has entries and none of them is ready.
  returned: always
  type: bool
plan:
  description: The steps, in words.
  returned: always
  type: list
"""

from ansible.module_utils.basic import AnsibleModule

try:
    import docker

    HAS_DOCKER = True
except ImportError:
    HAS_DOCKER = False


def removal_plan(nodes, node, hostname, leader, force=False):
    """nodes: the swarm's node objects (docker's /nodes). Returns the module's result (without `changed`)."""
    entries = [n for n in nodes if (n.get("Description") or {}).get("Hostname") == hostname]
    members = [n for n in nodes if n.get("ManagerStatus")]
    is_manager = any(n.get("ManagerStatus") for n in entries)
    is_down = bool(entries) and not any(n["Status"]["State"] == "ready" for n in entries)
    members_after = len(members) - len([n for n in entries if n.get("ManagerStatus")])
    reachable_after = len(
        [
            n
            for n in members
            if (n.get("Description") or {}).get("Hostname") != hostname
            and n["ManagerStatus"].get("Reachability") == "reachable"
        ]
    )
    quorum_after = members_after // 2 + 1
    role = "manager" if is_manager else "worker"
    refusal, plan = "", []
    if node == leader:
        refusal = (
            "%s is the designated leader: the console, PostgreSQL and the registry run there. Move them first "
            "(playbooks/move-leader.yml -e to=<another manager>), then remove it. Nothing was changed." % node
        )
    elif not entries:
        plan = ["%s (hostname %s) is not in the swarm: nothing to do." % (node, hostname)]
    elif is_manager and reachable_after < quorum_after:
        refusal = (
            "Removing the manager %s would leave %d managers of which %d are reachable: quorum needs %d. Bring the "
            "other managers back first (or recover quorum: playbooks/recover-quorum.yml). Nothing was changed."
            % (node, members_after, reachable_after, quorum_after)
        )
    elif is_down and not force:
        refusal = (
            "%s is down in the swarm (%s): it cannot drain or leave by itself, and its tasks already run elsewhere. "
            "To remove its entry for good, run again with -e force=true. Nothing was changed."
            % (node, ", ".join(n["Status"]["State"] for n in entries))
        )
    elif is_down:
        plan = ["%s (%s, down): %sremove its entry (force)." % (node, role, "demote it, " if is_manager else "")]
    else:
        plan = [
            "%s (%s, ready): out of rotation, drain it, wait until its tasks run elsewhere, %smake it leave, remove "
            "its entry." % (node, role, "demote it, " if is_manager else "")
        ]
    if plan and entries and is_manager and members_after % 2 == 0:
        plan.append("%d managers remain: add one (site.yml) to tolerate the loss of one again." % members_after)
    return {
        "refusal": refusal,
        "entries": [
            {"ID": n["ID"], "role": "manager" if n.get("ManagerStatus") else "worker", "state": n["Status"]["State"]}
            for n in entries
        ],
        "manager": is_manager,
        "down": is_down,
        "plan": plan,
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            node=dict(type="str", required=True),
            hostname=dict(type="str", required=True),
            leader=dict(type="str", required=True),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if not HAS_DOCKER:
        module.fail_json(msg="the Docker SDK for Python is required on the host (role docker installs it)")
    client = docker.from_env(timeout=30)
    nodes = [n.attrs for n in client.nodes.list()]
    params = module.params
    module.exit_json(
        changed=False, **removal_plan(nodes, params["node"], params["hostname"], params["leader"], params["force"])
    )


if __name__ == "__main__":
    main()
