"""The model server's metrics under gunicorn, as its image runs it (two workers, prometheus_client's multiprocess
mode): every scrape, whichever worker answers it, gives the exact totals of all workers - including a worker that
was killed and replaced - and only client predictions count."""

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request

PREDICTION = json.dumps({"x": 1}).encode()


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.read().decode()


def predict(port, body=PREDICTION):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def answered(port) -> dict[str, float]:
    """Predictions answered, by status code, in one scrape."""
    found = {}
    for line in get(port, "/metrics").splitlines():
        match = re.match(r'modelswarm_model_requests_total\{.*code="(\d+)".*\} (\S+)$', line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def worker_pids(port, tries=40) -> set[int]:
    return {json.loads(get(port, "/info"))["pid"] for _ in range(tries)}


def test_every_scrape_gives_the_exact_totals_of_all_workers_even_one_killed(served):
    port, log = served
    before = answered(port)
    for _ in range(100):
        assert predict(port) == 200
    for _ in range(10):
        assert predict(port, b"{") == 400
        get(port, "/health")  # health checks are not predictions
    pids, deadline = worker_pids(port), time.monotonic() + 15
    while len(pids) < 2 and time.monotonic() < deadline:  # on a busy machine one worker may take every accept a while
        pids |= worker_pids(port)
    assert len(pids) == 2, f"both workers should answer: {pids}"

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in worker_pids(port, tries=10) or len(worker_pids(port)) < 2:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    for _ in range(100):
        assert predict(port) == 200

    for _ in range(6):  # several scrapes, answered by either worker: all the same, all exact
        after = answered(port)
        assert after.get("200", 0) - before.get("200", 0) == 200, after
        assert after.get("400", 0) - before.get("400", 0) == 10, after


def test_every_prediction_leaves_exactly_one_whole_log_line_whichever_worker_answered(served):
    """60 predictions from 6 threads with their own request ids: 60 JSON lines in the container's log (the workers
    share stdout), each whole, each naming its id once, and no line for the health checks in between."""
    from concurrent.futures import ThreadPoolExecutor

    port, log = served
    ids = [f"log-test-{n:04d}" for n in range(60)]

    def send(rid):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=PREDICTION,
            headers={"Content-Type": "application/json", "X-Request-Id": rid, "X-Modelswarm-Key-Name": "ci"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            get(port, "/health")
            return answer.status, answer.headers["X-Request-Id"]

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(send, ids))
    assert answers == [(200, rid) for rid in ids]  # each answer returns the id it came with
    deadline = time.monotonic() + 10
    while True:  # the last lines may still be on their way to the file
        lines = [json.loads(line) for line in log.read_text().splitlines() if '"log-test-' in line]
        if len(lines) >= len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(line["request_id"] for line in lines) == ids
    assert {(line["event"], line["status"], line["key"]) for line in lines} == {("prediction", 200, "ci")}
    # One line per prediction: gunicorn's access line is left out for them (gunicorn_conf.PredictionLogger), not for
    # the other requests.
    text = log.read_text()
    assert '"POST /predict HTTP/1.1"' not in text
    assert text.count('"GET /health HTTP/1.1" 200') >= len(ids)
