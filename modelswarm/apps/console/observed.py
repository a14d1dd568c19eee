"""What the console shows of each model's traffic: request rate, error %, p50 and p99 latency over the last hour, from
the platform's Prometheus (its HTTP API on the platform network), as numbers and as small charts drawn here (inline
SVG: no script, nothing fetched from elsewhere).

MODELSWARM_PROMETHEUS_URL: Prometheus' base URL (the stack sets it; its route prefix included). When Prometheus does
not answer, the page says so and shows everything else.
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

WINDOW_SECONDS = 3600
STEP_SECONDS = 60
RATE_WINDOW = "5m"
# name -> PromQL, one series per model. Errors: server errors (5xx) among the predictions the model answered.
QUERIES = {
    "rate": f"sum by (model) (rate(modelswarm_model_requests_total[{RATE_WINDOW}]))",
    "errors": (
        f'100 * sum by (model) (rate(modelswarm_model_requests_total{{code=~"5.."}}[{RATE_WINDOW}]))'
        f" / sum by (model) (rate(modelswarm_model_requests_total[{RATE_WINDOW}]))"
    ),
    "p50": (
        "1000 * histogram_quantile(0.5, sum by (model, le) "
        f"(rate(modelswarm_model_request_duration_seconds_bucket[{RATE_WINDOW}])))"
    ),
    "p99": (
        "1000 * histogram_quantile(0.99, sum by (model, le) "
        f"(rate(modelswarm_model_request_duration_seconds_bucket[{RATE_WINDOW}])))"
    ),
}


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer, or not as its API does."""


@dataclass
class Traffic:
    """One model's last hour: per query, [(unix time, value)] (NaN where Prometheus has no value: no traffic)."""

    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def now(self, name: str) -> float | None:
        """The latest value of `name`, None when there is none (no traffic in the window)."""
        points = [v for _, v in self.series.get(name, []) if not math.isnan(v)]
        return points[-1] if points else None


def base_url() -> str:
    url = os.environ.get("MODELSWARM_PROMETHEUS_URL", "http://prometheus:9090/prometheus").rstrip("/")
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise PrometheusUnavailable(f"MODELSWARM_PROMETHEUS_URL must be http(s), not {url!r}")
    return url


def _query_range(expr: str, start: float, end: float, timeout: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.0f}", "end": f"{end:.0f}", "step": STEP_SECONDS})
    try:
        url = f"{base_url()}/api/v1/query_range?{params}"
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (http(s) only: base_url)
            body = json.load(answer)
    except (OSError, ValueError) as exc:
        raise PrometheusUnavailable(f"Prometheus did not answer ({type(exc).__name__})") from exc
    if body.get("status") != "success":
        raise PrometheusUnavailable(f"Prometheus refused the query: {body.get('error', 'no reason given')}")
    return body["data"]["result"]


def traffic(now: float, timeout: float = 3.0) -> dict[str, Traffic]:
    """Every model's last hour, by model name (models without any sample are absent)."""
    start = now - WINDOW_SECONDS
    found: dict[str, Traffic] = {}
    for name, expr in QUERIES.items():
        for row in _query_range(expr, start, now, timeout):
            model = row["metric"].get("model")
            if not model:
                continue
            points = [(float(t), _number(v)) for t, v in row["values"]]
            found.setdefault(model, Traffic()).series[name] = points
    return found


def _number(text: str) -> float:
    value = float(text)  # Prometheus writes NaN and +Inf as such
    return value if math.isfinite(value) else math.nan


def chart(lines: list[list[tuple[float, float]]], start: float, end: float, width: int = 180, height: int = 40) -> dict:
    """Polyline points (SVG user units) of each line over [start, end], all on one vertical scale from 0 to the
    largest value; a gap (NaN) splits a line. {"width", "height", "lines": [[points text, ...] per line], "top"}."""
    values = [v for line in lines for _, v in line if not math.isnan(v)]
    top = max(values) if values else 0.0
    scale = (height - 2) / top if top > 0 else 0.0
    span = max(end - start, 1.0)
    drawn = []
    for line in lines:
        runs, run = [], []
        for t, v in line:
            if math.isnan(v):
                if run:
                    runs.append(run)
                run = []
                continue
            x = (t - start) / span * width
            y = height - 1 - v * scale
            run.append(f"{x:.1f},{y:.1f}")
        if run:
            runs.append(run)
        drawn.append([" ".join(r) for r in runs if len(r) > 1])
    return {"width": width, "height": height, "lines": drawn, "top": top}
