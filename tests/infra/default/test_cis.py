"""CIS Docker Benchmark v1.6 sections 5 and 7 on the cluster: every warning is excused by docs/cis-exceptions.yml.

The tool runs from the controller as an operator would (`make cis`), read-only: the Docker API over SSH, and the
containers' process status and the listening sockets on the host.
"""

import json

from tests.infra.helpers import inventory, run_tool


def cis(*args: str) -> tuple[int, object, str]:
    result = run_tool("python", "-m", "modelswarm.tooling.cis", "-i", inventory(), "--json", *args, timeout=300)
    assert result.returncode in (0, 1), f"the checks did not run: {result.stderr}"
    return result.returncode, json.loads(result.stdout), result.stderr


def unexcused(report: dict) -> dict[str, list[str]]:
    """check id -> what it warns for that no exception covers (the note when it names nothing)."""
    return {
        r["id"]: sorted({o["subject"] for o in r["unexcused"]}) or [r["note"]]
        for r in report["results"]
        if r["outcome"] == "WARN"
    }


def test_no_unexcused_warning_on_the_leader():
    code, report, _ = cis()
    assert report["node"] == "node1"
    assert report["host_read"], f"the host was not read, so 5.26 and 7.2 cannot pass: {report['host_error']}"
    assert report["containers"] > 0 and set(report["summary"]) == {"4", "5", "7"}
    assert unexcused(report) == {}, "CIS warnings no entry of docs/cis-exceptions.yml excuses"
    assert code == 0


def test_no_unexcused_warning_on_any_node():
    """Model replicas run wherever the swarm puts them, not only on the leader."""
    code, reports, _ = cis("--node", "all")
    assert {r["node"]: unexcused(r) for r in reports} == {r["node"]: {} for r in reports}
    assert len(reports) == 3 and code == 0
