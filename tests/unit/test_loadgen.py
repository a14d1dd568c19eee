"""The load module: hey's CSV turned into failures by kind, percentiles and failures per second; target guard."""

import shutil
import subprocess
import sys
import time

import pytest

from modelswarm.tooling import loadgen as load

HEADER = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n"


def row(seconds, status, offset):
    return f"{seconds:.4f},0.0001,0.0000,0.0000,{seconds:.4f},0.0001,{status},{offset:.4f}\n"


def test_parse_counts_failures_by_kind_and_per_second():
    plan = load.LoadPlan(url="http://127.0.0.1/x", requests=8, concurrency=2)
    rows = [(0.010, 200, 0.1), (0.020, 200, 0.5), (0.030, 502, 1.2), (1.000, 502, 1.9), (0.040, 200, 2.1)]
    text = HEADER + "".join(row(*r) for r in [*rows, (0.050, 503, 2.2)])
    result = load.parse(plan, text, seconds=3.0)
    assert result.sent == 8 and result.answered == 6 and result.ok == 3
    assert result.failures == {"http 502": 2, "http 503": 1, "transport error": 2}
    assert result.failed == 5
    assert result.per_second == [
        {"second": 0, "ok": 2, "failed": 0},
        {"second": 1, "ok": 0, "failed": 2},
        {"second": 2, "ok": 1, "failed": 1},
    ]
    assert (result.first_failure_at, result.last_failure_at) == (1.2, 2.2)
    assert result.p50_ms == pytest.approx(30.0) and result.max_ms == pytest.approx(1000.0)
    assert result.p99_ms == pytest.approx(1000.0)


def test_total_is_what_hey_sends_per_worker():
    assert load.LoadPlan(url="http://127.0.0.1/", requests=10, concurrency=4).total == 8


def test_percentile_is_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert load.percentile(values, 0.5) == 50.0 and load.percentile(values, 0.99) == 99.0
    assert load.percentile([], 0.5) is None


@pytest.mark.parametrize(
    "url",
    ["http://192.0.2.7/models/x/predict", "http://example.com/", "ftp://127.0.0.1/", "http://172.30.100.1/"],
)
def test_targets_outside_the_lab_are_refused(url):
    with pytest.raises(load.LoadError):
        load.allowed_target(url, ["172.30.99.0/24"])


def test_lab_loopback_and_inventory_targets_are_accepted():
    assert load.allowed_target("http://172.30.99.12/models/iris/predict", ["172.30.99.0/24"]) == "172.30.99.12"
    assert load.allowed_target("http://127.0.0.1:8080/", []) == "127.0.0.1"
    assert load.allowed_target("http://10.1.2.3/", [], hosts=["10.1.2.3"]) == "10.1.2.3"


def test_bad_plans_are_refused():
    with pytest.raises(load.LoadError, match="at least as many requests"):
        load.LoadPlan(url="http://127.0.0.1/", requests=2, concurrency=4).validate()
    with pytest.raises(load.LoadError, match="bounded"):
        load.LoadPlan(url="http://127.0.0.1/", requests=2_000_000).validate()


@pytest.mark.skipif(shutil.which("hey") is None, reason="hey is not installed (scripts/engine-bootstrap.sh does)")
def test_real_hey_against_a_loopback_server_counts_404s_and_refusals(tmp_path, unused_tcp_port):
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(unused_tcp_port), "--bind", "127.0.0.1", "-d", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (tmp_path / "ok.txt").write_text("ok")
        for _ in range(50):  # bounded wait for the server to listen
            probe = load.run(load.LoadPlan(url=f"http://127.0.0.1:{unused_tcp_port}/ok.txt", requests=1, concurrency=1))
            if probe.ok:
                break
            time.sleep(0.1)
        good = load.run(load.LoadPlan(url=f"http://127.0.0.1:{unused_tcp_port}/ok.txt", requests=20, concurrency=2))
        assert (good.ok, good.failed) == (20, 0)
        missing = load.run(load.LoadPlan(url=f"http://127.0.0.1:{unused_tcp_port}/nope", requests=6, concurrency=2))
        assert missing.failures == {"http 404": 6}
    finally:
        server.terminate()
        server.wait(timeout=10)
    refused = load.run(load.LoadPlan(url=f"http://127.0.0.1:{unused_tcp_port}/ok.txt", requests=4, concurrency=2))
    assert refused.failures == {"transport error": 4} and refused.answered == 0
