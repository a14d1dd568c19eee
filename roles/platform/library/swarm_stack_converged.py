#!/usr/bin/python
# -*- coding: utf-8 -*-
# Wait until every service of a stack runs what it should. Read-only. Python 2.7-compatible (CentOS 7 targets).
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: swarm_stack_converged
short_description: Wait until every service of a swarm stack has its tasks running
description:
  - Polls the Docker API (on a manager) until each replicated service of the stack has as many running tasks as
    replicas, and each global service has a running task on every ready, active node that its placement allows.
  - Fails, naming each service that has not converged and why (task state and error), when the timeout passes.
  - Fails at once when an update started by this deploy (within C(recent) seconds before the module started) was
    rolled back or paused: the tasks then run the old spec, and a count of running tasks alone would call it
    converged.
  - Changes nothing.
options:
  stack:
    description: Stack name (the com.docker.stack.namespace label).
    type: str
    required: true
  timeout:
    description: Seconds to wait at most.
    type: int
    default: 300
  interval:
    description: Seconds between polls.
    type: int
    default: 3
  recent:
    description: An update that started this many seconds before the module, or later, belongs to this deploy.
    type: int
    default: 300
requirements: [docker (Python SDK)]
author: modelswarm
"""

RETURN = r"""
services:
  description: Service name to {mode, desired, running}.
  returned: always
  type: dict
seconds:
  description: How long it took to converge.
  returned: success
  type: float
"""

import calendar
import time

from ansible.module_utils.basic import AnsibleModule

try:
    import docker

    HAS_DOCKER = True
except ImportError:
    HAS_DOCKER = False


def placement_allows(node, constraints):
    """Evaluate the simple constraints global services use here (node.labels.X==Y, node.role==Y)."""
    for constraint in constraints or []:
        for op in ("==", "!="):
            if op in constraint:
                key, value = [part.strip() for part in constraint.split(op, 1)]
                break
        else:
            continue
        if key.startswith("node.labels."):
            actual = (node["Spec"].get("Labels") or {}).get(key[len("node.labels.") :])
        elif key == "node.role":
            actual = node["Spec"]["Role"]
        elif key == "node.hostname":
            actual = node["Description"]["Hostname"]
        else:
            continue
        if (op == "==") != (actual == value):
            return False
    return True


def latest_news(service):
    """The newest task's state and, if any task failed, the newest error: what an operator needs first."""
    tasks = sorted(service.tasks(), key=lambda t: t["Status"].get("Timestamp", ""), reverse=True)
    if not tasks:
        return "no task scheduled: check placement constraints and node availability"
    news = "newest task %s" % tasks[0]["Status"]["State"]
    errors = [t["Status"]["Err"] for t in tasks if t["Status"].get("Err")]
    if errors:
        news += "; last error: %s (%d failed tasks)" % (errors[0], len(errors))
    return news


FAILED_UPDATES = ("paused", "rollback_started", "rollback_paused", "rollback_completed")


def started_at(update_status):
    """Epoch seconds of an UpdateStatus's StartedAt (Docker's RFC 3339 with nanoseconds), or 0."""
    text = (update_status or {}).get("StartedAt") or ""
    try:
        return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0


def status(client, stack, since=0):
    nodes = [
        n.attrs
        for n in client.nodes.list()
        if n.attrs["Status"]["State"] == "ready" and n.attrs["Spec"]["Availability"] == "active"
    ]
    report, problems, failed = {}, [], []
    for service in client.services.list(filters={"label": "com.docker.stack.namespace=%s" % stack}):
        spec = service.attrs["Spec"]
        tasks = service.tasks(filters={"desired-state": "running"})
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        if "Global" in spec["Mode"]:
            constraints = (spec["TaskTemplate"].get("Placement") or {}).get("Constraints")
            wanted = set(n["ID"] for n in nodes if placement_allows(n, constraints))
            desired = len(wanted)
            have = len(wanted & set(t["NodeID"] for t in running))
            mode = "global"
        else:
            desired = spec["Mode"]["Replicated"]["Replicas"]
            have = len(running)
            mode = "replicated"
        report[spec["Name"]] = {"mode": mode, "desired": desired, "running": have}
        update = service.attrs.get("UpdateStatus") or {}
        if update.get("State") in FAILED_UPDATES and started_at(update) >= since:
            failed.append(
                "%s: the update was %s (%s); it runs its previous spec. %s"
                % (spec["Name"], update["State"].replace("_", " "), update.get("Message", ""), latest_news(service))
            )
        elif update.get("State") in ("updating", "rollback_started"):
            problems.append("%s: updating (%s)" % (spec["Name"], latest_news(service)))
        elif have != desired:
            problems.append("%s: %d/%d running (%s)" % (spec["Name"], have, desired, latest_news(service)))
    return report, problems, failed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            stack=dict(type="str", required=True),
            timeout=dict(type="int", default=300),
            interval=dict(type="int", default=3),
            recent=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    if not HAS_DOCKER:
        module.fail_json(msg="the Docker SDK for Python is required on the host (role docker installs it)")
    client = docker.from_env(timeout=30)
    started = time.time()
    while True:
        report, problems, failed = status(client, module.params["stack"], since=started - module.params["recent"])
        if failed:
            module.fail_json(
                msg="stack %s: an update was rolled back: %s" % (module.params["stack"], " | ".join(failed)),
                services=report,
            )
        if report and not problems:
            module.exit_json(changed=False, services=report, seconds=round(time.time() - started, 1))
        if time.time() - started > module.params["timeout"]:
            module.fail_json(
                msg="stack %s did not converge within %ds: %s"
                % (
                    module.params["stack"],
                    module.params["timeout"],
                    " | ".join(problems) if report else "no service found",
                ),
                services=report,
            )
        time.sleep(module.params["interval"])


if __name__ == "__main__":
    main()
