"""Observability on the lab (issue: Prometheus, exact model metrics, alerts, prediction logs).

Prometheus runs on the designated leader and finds its targets itself; NGINX serves it at /prometheus/ to admin
keys. The checks: every target up; the models' request counter exact after predictions spread over every node and
both replicas; an alert that fires when the model is scaled below its declared replicas, and reaches the console's
log through Alertmanager; a prediction's log line and NGINX's access log carry the request id the client got back.
Every wait is bounded."""

from __future__ import annotations

import json
import re
import time

import pytest
import testinfra

from modelswarm import contract
from tests.infra.helpers import call, controller_key, inventory, lab_addresses

NODES = sorted(lab_addresses())[:3]
IRIS_INPUT = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1}
SERVICE = contract.service_name("iris")


def leader():
    return testinfra.get_host("ansible://node1", ansible_inventory=inventory())


def admin() -> str:
    return controller_key(contract.CONTROLLER_ADMIN_KEY)


def prometheus(path: str, **params) -> dict:
    answer = call("node2", "GET", f"/prometheus/api/v1/{path}", key=admin(), params=params)
    assert answer.status_code == 200, answer.text[:500]
    body = answer.json()
    assert body["status"] == "success", body
    return body["data"]


def query(expr: str) -> list[dict]:
    return prometheus("query", query=expr)["result"]


def wait_for(what: str, check, timeout: float, interval: float = 2.0):
    """check() until it returns something true; fails naming `what` and the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(interval)


def replicas_declared() -> int:
    spec = json.loads(leader().check_output("docker service inspect %s", SERVICE))[0]["Spec"]
    return int(spec["Labels"][contract.LABEL_REPLICAS])


def test_prometheus_opens_to_admin_keys_only():
    assert call("node1", "GET", "/prometheus/api/v1/targets", key=None).status_code == 401
    assert call("node1", "GET", "/prometheus/api/v1/targets").status_code == 403  # the deploy key
    assert call("node1", "GET", "/prometheus/api/v1/targets", key=admin()).status_code == 200


def test_every_target_is_found_and_up():
    """The model's replicas, NGINX and the node exporter on every node, the console, the registry, Alertmanager,
    Prometheus."""
    expected = {"prometheus": 1, "alertmanager": 1, "console": 1, "registry": 1}
    expected.update(nginx=len(NODES), node=len(NODES))

    def all_up():
        targets = prometheus("targets", state="active")["activeTargets"]
        by_job: dict[str, list[str]] = {}
        for target in targets:
            by_job.setdefault(target["labels"]["job"], []).append(target["health"])
        iris = [t for t in targets if t["labels"]["job"] == "models" and t["discoveredLabels"].get(
            "__meta_dockerswarm_service_name") == SERVICE]  # fmt: skip
        counts_ok = all(len(by_job.get(job, [])) == n for job, n in expected.items())
        healthy = all(health == "up" for healths in by_job.values() for health in healths)
        return (counts_ok and healthy and len(iris) == replicas_declared()) and by_job

    by_job = wait_for("every target found and up", all_up, 150)
    assert set(by_job) >= set(expected) | {"models"}


def test_the_request_counter_is_exact_after_predictions_over_every_node_and_both_replicas():
    def total_and_per_task():
        rows = query('modelswarm_model_requests_total{model="iris",code="200"}')
        return sum(float(r["value"][1]) for r in rows), {r["metric"]["task"]: float(r["value"][1]) for r in rows}

    # A baseline that two scrapes agree on (nothing else predicts on the lab now).
    first = total_and_per_task()
    time.sleep(16)
    baseline, per_task = total_and_per_task()
    assert baseline == first[0], "the counter moved while nothing predicted"
    sent = 0
    for n in range(200):
        answer = call(NODES[n % len(NODES)], "POST", "/models/iris/predict", json=IRIS_INPUT, scheme="http")
        assert answer.status_code == 200, answer.text
        sent += 1
    after = wait_for(
        "Prometheus counting exactly 200 more", lambda: (t := total_and_per_task())[0] == baseline + sent and t, 60
    )
    grown = {task: value - per_task.get(task, 0) for task, value in after[1].items()}
    assert sum(grown.values()) == 200
    assert len([g for g in grown.values() if g > 0]) == replicas_declared(), grown  # every replica answered some


def test_an_alert_fires_when_the_model_runs_below_its_declared_replicas_and_reaches_the_console_log():
    declared = replicas_declared()
    manager = leader()
    manager.check_output("docker service scale --detach %s=%s", SERVICE, str(declared - 1))
    try:

        def firing():
            return [
                a for a in prometheus("alerts")["alerts"]
                if a["labels"]["alertname"] == "ModelReplicasBelowSpec" and a["labels"].get("model") == "iris"
                and a["state"] == "firing"
            ]  # fmt: skip

        (alert,) = wait_for("ModelReplicasBelowSpec firing for iris", firing, 200, interval=5)
        assert alert["labels"]["severity"] == "critical"
        assert "fewer than its modelswarm.yml declares" in alert["annotations"]["summary"]

        def logged():
            logs = manager.check_output("docker service logs --raw --since 10m modelswarm_%s", contract.CONSOLE_SERVICE)
            return [
                line for line in logs.splitlines()
                if '"event":"alert"' in line and '"alertname":"ModelReplicasBelowSpec"' in line
            ]  # fmt: skip

        wait_for("the alert in the console's log (Alertmanager's webhook)", logged, 90, interval=5)
    finally:
        manager.check_output("docker service scale --detach %s=%s", SERVICE, str(declared))
    wait_for("iris back at its replicas", lambda: len(query('up{job="models"} == 1')) >= declared, 120, interval=5)


def test_the_consoles_model_page_shows_the_models_numbers_and_charts():
    """/model/iris, through another node's NGINX: after predictions, its request rate, p50 and p99 as numbers and its
    rate and latency charts drawn (p50 and p99 lines: the charts need two points a minute apart, so this may wait)."""
    for n in range(60):
        assert call(NODES[n % len(NODES)], "POST", "/models/iris/predict", json=IRIS_INPUT, scheme="http").ok

    def shown():
        page = call("node3", "GET", "/model/iris")
        assert page.status_code == 200, page.text[:500]
        row = re.search(r"<tr><th>req/s</th>.*?</tr>\s*<tr>(.*?)</tr>", page.text, re.DOTALL)
        assert row, page.text[:2000]
        rate, errors, p50, p99 = re.findall(r"<td>([^<]*)</td>", row.group(1))
        charts = {
            name: len(re.findall(r"<polyline ", chart))
            for name, chart in re.findall(r'<figure id="chart-(\w+)">(.*?)</figure>', page.text, re.DOTALL)
        }  # fmt: skip
        drawn = rate != "-" and float(rate) > 0 and p50.endswith(" ms") and p99.endswith(" ms")
        return (drawn and charts.get("rate", 0) >= 1 and charts.get("latency", 0) >= 2) and (errors, charts)

    errors, charts = wait_for("the model page's numbers and charts", shown, 180, interval=10)
    assert errors in ("0.0 %", "-"), errors  # no server error among these predictions
    assert set(charts) == {"rate", "errors", "latency"}


def test_a_predictions_log_line_and_the_access_log_carry_the_request_id_the_client_got():
    answer = call("node2", "POST", "/models/iris/predict", json=IRIS_INPUT, scheme="http")
    assert answer.status_code == 200
    rid = answer.headers["X-Request-Id"]
    assert len(rid) == 32
    manager = leader()

    def model_line():
        logs = manager.check_output("docker service logs --raw --since 5m %s", SERVICE)
        return [json.loads(line) for line in logs.splitlines() if f'"request_id":"{rid}"' in line]

    (line,) = wait_for("the prediction's log line", model_line, 30)
    assert line["event"] == "prediction" and line["status"] == 200 and line["model"] == "iris"
    assert line["key"] == contract.CONTROLLER_DEPLOY_KEY and controller_key() not in json.dumps(line)
    assert "sepal_length" not in json.dumps(line)  # the body only when the model opts in

    def access_line():
        logs = manager.check_output("docker service logs --raw --since 5m modelswarm_nginx")
        return [row for row in logs.splitlines() if row.endswith(f"request_id={rid}")]

    (access,) = wait_for("NGINX's access log line", access_line, 30)
    assert '"POST /models/iris/predict HTTP/1.1" 200' in access and f" {contract.CONTROLLER_DEPLOY_KEY} " in access
