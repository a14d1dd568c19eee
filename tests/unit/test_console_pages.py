"""The console's pages: each model's traffic of the last hour from Prometheus (numbers and inline SVG charts drawn
on the server), rollouts with the no-op deploys folded away and times to the second in UTC, and what the pages say
when Prometheus does not answer. Prometheus here is a loopback server that answers its query API."""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from conftest import wsgi_call

from modelswarm import contract
from modelswarm.apps.console import app, ledger, observed
from modelswarm.apps.console.accounts import Identity

NOW = 1_800_000_000.0
VIEWER = {"HTTP_AUTHORIZATION": "Bearer viewer-key"}


class FakePrometheus(BaseHTTPRequestHandler):
    """query_range: iris has traffic (a gap in the middle), churn none; `fail` makes it answer 503."""

    fail = False
    seen: ClassVar[list[dict]] = []

    def do_GET(self):
        url = urlparse(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        FakePrometheus.seen.append({"path": url.path, **params})
        if FakePrometheus.fail:
            self.send_response(503)
            self.end_headers()
            return
        start, step = float(params["start"]), float(params["step"])
        value = {"rate": "2.5", "errors": "NaN", "p50": "4.2", "p99": "31"}[self._which(params["query"])]
        values = [[start + i * step, value if not 20 <= i < 25 else "NaN"] for i in range(61)]
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"model": "iris"}, "values": values}]}}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @staticmethod
    def _which(query: str) -> str:
        return next(name for name, expr in observed.QUERIES.items() if expr == query)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def prometheus(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    FakePrometheus.fail, FakePrometheus.seen = False, []
    monkeypatch.setenv("MODELSWARM_PROMETHEUS_URL", f"http://127.0.0.1:{server.server_address[1]}/prometheus/")
    yield FakePrometheus
    server.shutdown()


def service(model, declared, running):
    return {"name": contract.service_name(model), "mode": "replicated", "image": f"r/models/{model}:1",
            "image_digest": None, "desired": running, "running": running, "update_state": None, "model": model,
            "version": "1.0.0", "platform": None, "declared": declared}  # fmt: skip


ROWS = [
    {"id": n, "model": "iris", "from_version": "1.0.0", "to_version": "1.0.0", "result": "no_op", "actor": "ci",
     "started_at": "2026-12-07T05:00:00.000000Z", "duration_s": 0.1}
    for n in range(30, 10, -1)
] + [
    {"id": 3, "model": "iris", "from_version": "0.9.0", "to_version": "1.0.0", "result": "succeeded",
     "actor": "alice", "started_at": "2026-12-07T04:10:02.654321Z", "duration_s": 31.2},
    {"id": 2, "model": "churn", "from_version": None, "to_version": "2.0.0", "result": "rolled_back",
     "actor": "bob", "started_at": "2026-12-06T23:59:59.999999Z", "duration_s": 12.0},
]  # fmt: skip


@pytest.fixture
def console(monkeypatch):
    monkeypatch.setattr(app, "identify", lambda environ: Identity("vera", "viewer", "key") if environ.get(
        "HTTP_AUTHORIZATION") == "Bearer viewer-key" else None)  # fmt: skip
    monkeypatch.setattr(app, "cluster", lambda: {"nodes": [], "services": [service("iris", 2, 2),
                                                                           service("churn", 3, 1)]})  # fmt: skip
    monkeypatch.setattr(app, "with_db", lambda work: work(None))
    monkeypatch.setattr(ledger, "history", lambda conn, model, limit: [r for r in ROWS if model in (None, r["model"])])
    monkeypatch.setattr(app.time, "time", lambda: NOW)  # the pages' "now"


def get(path):
    return wsgi_call(app.application, "GET", path, headers={**VIEWER, "HTTP_X_FORWARDED_PROTO": "https"})


def test_the_chart_is_drawn_to_scale_and_a_gap_splits_its_line():
    start = 0.0
    line = [(0.0, 0.0), (30.0, 5.0), (60.0, math.nan), (90.0, 10.0), (120.0, 10.0)]
    drawn = observed.chart([line], start, 120.0, width=120, height=42)
    assert drawn["top"] == 10.0
    assert drawn["lines"] == [["0.0,41.0 30.0,21.0", "90.0,1.0 120.0,1.0"]]
    empty = observed.chart([[(0.0, math.nan)]], 0.0, 60.0)
    assert empty["lines"] == [[]] and empty["top"] == 0.0


def test_traffic_reads_the_last_hour_of_every_model(prometheus):
    seen = observed.traffic(NOW)
    assert set(seen) == {"iris"}
    assert {q["path"] for q in prometheus.seen} == {"/prometheus/api/v1/query_range"}
    assert {(q["start"], q["end"], q["step"]) for q in prometheus.seen} == {(f"{NOW - 3600:.0f}", f"{NOW:.0f}", "60")}
    assert seen["iris"].now("rate") == 2.5 and seen["iris"].now("p99") == 31.0
    assert seen["iris"].now("errors") is None  # no server error: Prometheus has no value (0/0)
    assert sum(math.isnan(v) for _, v in seen["iris"].series["rate"]) == 5


def test_the_overview_shows_each_models_numbers_and_charts_and_folds_the_no_ops(console, prometheus):
    status, headers, body = get("/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    iris = page[page.index('href="model/iris"') : page.index('href="model/churn"')]
    assert "2/2" in iris and "2.50" in iris and "4 ms" in iris and "31 ms" in iris
    assert iris.count("<polyline") == 2 + 2 * 2  # rate (two runs around the gap), latency p50 + p99 (two each)
    churn = page[page.index('href="model/churn"') : page.index("</table>", page.index('href="model/churn"'))]
    assert 'class="bad">1/3' in churn and "<polyline" not in churn and "no traffic in the last hour" in churn
    assert "20 no-op deploys" in page and "<td>30</td>" not in page  # folded, the real changes listed
    assert "<td>2026-12-07 04:10:02</td>" in page or "2026-12-07 04:10:02 UTC" in page
    assert re.search(r"<td>3</td>.*?succeeded.*?2026-12-07 04:10:02 UTC", page, re.S)
    assert "2026-12-06 23:59:59 UTC" in page and "T23:59" not in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_a_models_page_has_its_larger_charts_and_only_its_rollouts(console, prometheus):
    status, _, body = get("/model/iris")
    page = body.decode()
    assert status == 200
    for chart in ("chart-rate", "chart-errors", "chart-latency"):
        assert f'id="{chart}"' in page
    assert page.count("<polyline") == 6 and 'width="540"' in page
    assert "rolled_back" not in page and "succeeded" in page  # churn's rollout is not iris'
    assert get("/model/nope")[0] == 404


def test_without_prometheus_the_pages_say_so_and_show_the_rest(console, prometheus, capfd):
    prometheus.fail = True
    status, _, body = get("/")
    page = body.decode()
    assert status == 200 and "metrics unavailable: Prometheus did not answer (HTTPError)" in page
    assert 'href="model/iris"' in page and "<polyline" not in page and "succeeded" in page
    assert "page: Prometheus did not answer" in capfd.readouterr().err


def test_chromium_renders_the_model_pages_charts(console, prometheus, tmp_path):
    """The model page as a browser draws it (Debian's Chromium, headless): every chart's lines are laid out with a
    size, and the screenshot is kept (test-artifacts/console-model-page.png). The page has no script of its own; the
    copy opened here gets one that writes the lines' boxes into the document, which Chromium then dumps."""
    import shutil
    import subprocess

    from modelswarm.tooling.nginx_harness import REPO

    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: scripts/test-packages.sh installs it"
    status, _, body = get("/model/iris")
    assert status == 200
    probe = (
        "<script>document.body.setAttribute('data-boxes', JSON.stringify([...document.querySelectorAll("
        "'figure')].map(f => [f.id, [...f.querySelectorAll('polyline')].map(p => {const b = p.getBBox(); "
        "return [Math.round(b.width), Math.round(b.height)];})])));</script>"
    )
    page = tmp_path / "model.html"
    page.write_text(body.decode().replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", f"--user-data-dir={tmp_path}"]
    dumped = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    boxes = dict(json.loads(re.search(r'data-boxes="([^"]*)"', dumped.stdout).group(1).replace("&quot;", '"')))
    assert set(boxes) == {"chart-rate", "chart-errors", "chart-latency"}
    assert len(boxes["chart-rate"]) == 2 and len(boxes["chart-latency"]) == 4 and boxes["chart-errors"] == []
    assert all(width > 20 for width, _ in boxes["chart-rate"] + boxes["chart-latency"]), boxes
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "console-model-page.png"
    taken = subprocess.run([chromium, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                           text=True, timeout=120, check=False)  # fmt: skip
    assert taken.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", taken.stderr[-2000:]
