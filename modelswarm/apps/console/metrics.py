"""The console's /metrics, for the platform's Prometheus (scraped with the monitoring token, never with a key).

The swarm as its managers see it, read through the read-only Docker API proxy at each scrape, and the console's own
database connection. The alert rules (roles/platform/files/prometheus/alerts.yml) read these series:

  modelswarm_swarm_up                               1 when the swarm's API answered, 0 when it refused (no quorum)
  modelswarm_swarm_node_ready{node,role}            1 when the swarm sees the node ready
  modelswarm_swarm_manager_reachable{node}          1 for each reachable manager (0 for an unreachable one)
  modelswarm_swarm_service_replicas_desired{service,platform}
  modelswarm_swarm_service_tasks_running{service,platform}
                                                    every service ("platform": its platform label, "" for models)
  modelswarm_model_replicas_declared{model}         what the model's modelswarm.yml declares (its service label)
  modelswarm_model_replicas_running{model}
  modelswarm_console_database_up                    1 when the console's PostgreSQL answered
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def families(state: dict | None, database_up: bool) -> list[GaugeMetricFamily]:
    """The series of one scrape. `state`: cluster()'s view of the swarm, None when its API refused to answer."""
    up = GaugeMetricFamily("modelswarm_swarm_up", "1 when the swarm's API answered the console (0: no quorum).")
    up.add_metric([], 1 if state is not None else 0)
    database = GaugeMetricFamily("modelswarm_console_database_up", "1 when the console's PostgreSQL answered.")
    database.add_metric([], 1 if database_up else 0)
    out = [up, database]
    if state is None:
        return out
    ready = GaugeMetricFamily(
        "modelswarm_swarm_node_ready", "1 when the swarm sees the node ready.", labels=["node", "role"]
    )
    reachable = GaugeMetricFamily(
        "modelswarm_swarm_manager_reachable", "1 for a reachable manager, 0 for an unreachable one.", labels=["node"]
    )
    for node in state["nodes"]:
        ready.add_metric([node["hostname"], node["role"]], 1 if node["state"] == "ready" else 0)
        if node["role"] == "manager":
            reachable.add_metric([node["hostname"]], 1 if node["manager"] == "reachable" else 0)
    desired = GaugeMetricFamily(
        "modelswarm_swarm_service_replicas_desired", "Tasks the service should run.", labels=["service", "platform"]
    )
    running = GaugeMetricFamily(
        "modelswarm_swarm_service_tasks_running", "Tasks of the service running now.", labels=["service", "platform"]
    )
    declared = GaugeMetricFamily(
        "modelswarm_model_replicas_declared", "Replicas the model's modelswarm.yml declares.", labels=["model"]
    )
    model_running = GaugeMetricFamily(
        "modelswarm_model_replicas_running", "Replicas of the model running now.", labels=["model"]
    )
    for service in state["services"]:
        labels = [service["name"], service.get("platform") or ""]
        desired.add_metric(labels, service["desired"])
        running.add_metric(labels, service["running"])
        if service.get("model"):
            declared.add_metric([service["model"]], service.get("declared") or service["desired"])
            model_running.add_metric([service["model"]], service["running"])
    return [*out, ready, reachable, desired, running, declared, model_running]


def render(state: dict | None, database_up: bool) -> bytes:
    """Prometheus' text format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)

    class _Scrape:
        def collect(self):
            return families(state, database_up)

    registry.register(_Scrape())
    return generate_latest(registry)
