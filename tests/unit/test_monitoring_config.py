"""The platform's Prometheus and Alertmanager configurations (roles/platform/templates), rendered as the role renders
them: Prometheus' own promtool and Alertmanager's amtool accept them, and they say what the platform relies on."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from modelswarm import contract
from modelswarm.tooling import nginx_harness as harness

for tool in ("promtool", "amtool"):
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing: scripts/test-packages.sh installs it", pytrace=False)


def rendered(template: str, tmp_path, **overrides) -> tuple[str, dict]:
    text = harness.render(template, harness.role_vars(**overrides))
    path = tmp_path / template.removesuffix(".j2")
    path.write_text(text)
    return str(path), yaml.safe_load(text)


def test_promtool_accepts_the_prometheus_configuration(tmp_path):
    path, _ = rendered("prometheus.yml.j2", tmp_path)
    checked = subprocess.run(["promtool", "check", "config", "--syntax-only", path], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("webhooks", [[], ["https://hooks.example.test/alerts"]])
def test_amtool_accepts_the_alertmanager_configuration(tmp_path, webhooks):
    token = tmp_path / "monitoring_token"
    token.write_text("t\n")
    vars_ = harness.role_vars()
    path, config = rendered(
        "alertmanager.yml.j2", tmp_path, platform_alertmanager_webhook_urls=webhooks,
        _platform_prometheus={**vars_["_platform_prometheus"], "token": str(token)},
    )  # fmt: skip
    checked = subprocess.run(["amtool", "check-config", path], capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    urls = [hook["url"] for hook in config["receivers"][0]["webhook_configs"]]
    assert urls == [f"http://{contract.CONSOLE_SERVICE}:{contract.CONSOLE_PORT}/internal/alerts", *webhooks]


def test_prometheus_finds_models_nginx_and_nodes_through_the_proxy_and_scrapes_the_console_with_the_token(tmp_path):
    _, config = rendered("prometheus.yml.j2", tmp_path)
    vars_ = harness.role_vars()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "alertmanager", "console", "registry", "models", "nginx", "node"}
    registry_port = vars_["_platform_prometheus"]["registry_metrics_port"]
    assert jobs["registry"]["static_configs"] == [{"targets": [f"registry:{registry_port}"]}]
    proxy = f"tcp://docker-api-proxy:{vars_['_platform_docker_api_proxy']['port']}"
    for name, port in (("models", contract.MODEL_PORT), ("nginx", vars_["platform_nginx_status_port"]),
                       ("node", vars_["_platform_prometheus"]["node_exporter_port"])):  # fmt: skip
        (sd,) = jobs[name]["dockerswarm_sd_configs"]
        assert (sd["host"], sd["role"], sd["port"]) == (proxy, "tasks", port)
        kept = {
            tuple(r["source_labels"]): r["regex"] for r in jobs[name]["relabel_configs"] if r.get("action") == "keep"
        }
        assert kept[("__meta_dockerswarm_task_desired_state",)] == "running"
    models = {tuple(r["source_labels"]): r["regex"] for r in jobs["models"]["relabel_configs"] if r.get("action")}
    assert models[("__meta_dockerswarm_network_name",)] == contract.MODELS_NETWORK
    assert models[("__meta_dockerswarm_service_label_io_modelswarm_model",)] == ".+"
    assert jobs["console"]["authorization"]["credentials_file"] == "/run/secrets/monitoring_token"
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert config["global"]["scrape_interval"] == "15s"
