#!/usr/bin/python
# -*- coding: utf-8 -*-
# Wait until the swarm's tasks have moved off a node, or back onto the nodes. Read-only. Python 2.7-compatible.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: swarm_workload
short_description: Wait until every swarm service runs what it should, optionally with nothing left on one node
description:
  - Polls the Docker API (on a manager) until every service of the swarm (platform and models) has as many
    running tasks as its spec wants - a replicated service its replica count, a global service one on every ready,
    active node its placement allows - and, when C(off_node) is given, no task of any service is still running on
    that node (the day-2 playbooks drain a node and then wait with this).
  - A replicated service that no usable node may run (pinned, by a constraint, to the drained node: the console,
    PostgreSQL and the registry on the designated leader) is reported in C(parked) and not waited for: it comes back
    when its node does.
  - Fails when the timeout passes, naming each service that has not converged and what its newest task says, and
    the tasks still on C(off_node).
  - Changes nothing.
options:
  off_node:
    description: A node (ID or hostname) on which no task may still run. Empty to only wait for the services.
    type: str
    default: ""
  timeout:
    description: Seconds to wait at most.
    type: int
    default: 300
  interval:
    description: Seconds between polls.
    type: int
    default: 2
requirements: [docker (Python SDK)]
author: modelswarm
"""

RETURN = r"""
services:
  description: Service name to {mode, desired, running}.
  returned: always
  type: dict
parked:
  description: The replicated services that no ready, active node may run now (they wait for their node).
  returned: always
  type: list
on_node:
  description: The services with a task still running on C(off_node) at the last poll.
  returned: always
  type: list
seconds:
  description: How long it took.
  returned: success
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule

try:
    import docker

    HAS_DOCKER = True
except ImportError:
    HAS_DOCKER = False


def placement_allows(node, constraints):
    """The simple constraints used here (node.labels.X==Y, node.role==Y, node.hostname==Y, and their !=)."""
    for constraint in constraints or []:
        negate = "!=" in constraint
        key, _, value = constraint.partition("!=" if negate else "==")
        key, value = key.strip(), value.strip()
        if key.startswith("node.labels."):
            actual = (node["Spec"].get("Labels") or {}).get(key[len("node.labels.") :])
        elif key == "node.role":
            actual = node["Spec"].get("Role")
        elif key == "node.hostname":
            actual = node["Description"]["Hostname"]
        elif key == "node.id":
            actual = node["ID"]
        else:
            continue  # not judged here: the swarm's own placement still applies
        if (actual == value) == negate:
            return False
    return True


def latest_news(tasks):
    if not tasks:
        return "no task"
    newest = max(tasks, key=lambda t: t.get("UpdatedAt", ""))
    state = newest["Status"]
    return "%s%s" % (state.get("State"), (": " + state["Err"]) if state.get("Err") else "")


def status(client, off_node):
    nodes = [n.attrs for n in client.nodes.list()]
    usable = [n for n in nodes if n["Status"]["State"] == "ready" and n["Spec"]["Availability"] == "active"]
    off_ids = set(n["ID"] for n in nodes if off_node and off_node in (n["ID"], n["Description"]["Hostname"]))
    report, problems, on_node, parked = {}, [], [], []
    for service in client.services.list():
        spec = service.attrs["Spec"]
        tasks = service.tasks(filters={"desired-state": "running"})
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        if "Global" in spec["Mode"]:
            constraints = (spec["TaskTemplate"].get("Placement") or {}).get("Constraints")
            wanted = set(n["ID"] for n in usable if placement_allows(n, constraints))
            desired = len(wanted)
            have = len(wanted & set(t["NodeID"] for t in running))
            mode = "global"
        elif "Replicated" in spec["Mode"]:
            desired = spec["Mode"]["Replicated"]["Replicas"]
            have = len([t for t in running if t["NodeID"] not in off_ids])
            mode = "replicated"
            constraints = (spec["TaskTemplate"].get("Placement") or {}).get("Constraints")
            if desired and not any(placement_allows(n, constraints) for n in usable if n["ID"] not in off_ids):
                parked.append(spec["Name"])
                report[spec["Name"]] = {"mode": mode, "desired": desired, "running": have, "parked": True}
                continue
        else:
            continue  # jobs run to completion; nothing to wait for
        report[spec["Name"]] = {"mode": mode, "desired": desired, "running": have}
        if have != desired:
            problems.append("%s: %d/%d running (%s)" % (spec["Name"], have, desired, latest_news(tasks)))
        if any(t["NodeID"] in off_ids for t in running):
            on_node.append(spec["Name"])
    return report, problems, sorted(on_node), sorted(parked)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            off_node=dict(type="str", default=""),
            timeout=dict(type="int", default=300),
            interval=dict(type="int", default=2),
        ),
        supports_check_mode=True,
    )
    if not HAS_DOCKER:
        module.fail_json(msg="the Docker SDK for Python is required on the host (role docker installs it)")
    client = docker.from_env(timeout=30)
    off_node = module.params["off_node"]
    started = time.time()
    while True:
        try:
            report, problems, on_node, parked = status(client, off_node)
        except docker.errors.APIError as exc:  # e.g. a raft election under way: ask again
            report, problems, on_node, parked = {}, ["the manager cannot answer yet: %s" % exc], [], []
        if report and not problems and not on_node:
            module.exit_json(
                changed=False, services=report, on_node=on_node, parked=parked, seconds=round(time.time() - started, 1)
            )
        if time.time() - started > module.params["timeout"]:
            still = ("; still running on %s: %s" % (off_node, ", ".join(on_node))) if on_node else ""
            module.fail_json(
                msg="the swarm's services did not settle within %ds: %s%s"
                % (module.params["timeout"], " | ".join(problems) or "every service runs", still),
                services=report,
                on_node=on_node,
                parked=parked,
            )
        time.sleep(module.params["interval"])


if __name__ == "__main__":
    main()
