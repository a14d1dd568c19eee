"""Reading Ansible's PLAY RECAP: per host counts, so that "nothing changed" is checked for every host exactly."""

from __future__ import annotations

import re

_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


class RecapError(ValueError):
    """The output holds no PLAY RECAP (the play did not finish) or a recap line that cannot be read."""


def parse(output: str) -> dict[str, dict[str, int]]:
    """host -> {"ok": n, "changed": n, "unreachable": n, "failed": n, ...} from the last PLAY RECAP in `output`."""
    _, found, tail = output.rpartition("PLAY RECAP")
    if not found:
        raise RecapError("no PLAY RECAP in the output: the play did not run to its end")
    hosts: dict[str, dict[str, int]] = {}
    for line in tail.splitlines()[1:]:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()  # colour codes, when a terminal asked for them
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            break  # the recap ended (profile_tasks' timings follow it)
        counts = dict(pair.split("=") for pair in match.group("counts").split())
        hosts[match.group("host")] = {key: int(value) for key, value in counts.items()}
    if not hosts:
        raise RecapError("the PLAY RECAP lists no host")
    return hosts


def changed_hosts(output: str) -> dict[str, int]:
    """The hosts whose recap counts a change, with their count (empty: nothing changed anywhere)."""
    return {host: counts["changed"] for host, counts in parse(output).items() if counts.get("changed", 0)}
