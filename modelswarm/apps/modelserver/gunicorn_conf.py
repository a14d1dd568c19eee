"""gunicorn settings of the model server (`gunicorn --config /opt/model/gunicorn_conf.py`; written for the gunicorn
pinned in modelswarm.lifecycle.modelimage, and tested under it by tests/unit/test_modelserver_fuzz.py).

gunicorn answers a request it cannot parse (request line, header names and values, Content-Length, Transfer-Encoding,
over-long lines or headers) itself, before the app sees it, with an HTML page. Here those answers are JSON like the
app's own; a transfer coding gunicorn does not know and a SCRIPT_NAME header that does not prefix the path (gunicorn
honours that header from clients) are the client's mistakes: 400, not 501 or 500.

The metrics: each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess
mode), which the master empties when it starts. A worker that exits keeps its counts (the totals stay exact); its
in-flight gauge is dropped.
"""

import json
import os
import shutil

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http.errors import ConfigurationProblem, InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.sync import SyncWorker


def write_json_error(sock, status_int, reason, mesg):
    """gunicorn.util.write_error's contract (status, reason phrase, message), answered as JSON."""
    body = json.dumps({"error": mesg or reason}) + "\n"
    head = f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    util.write_nonblock(sock, f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode("latin-1"))


class JSONErrorWorker(SyncWorker):
    """gunicorn's sync worker (the default), its refusals in JSON, the client's mistakes as 400."""

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("TRANSFER-ENCODING (only chunked is accepted)")
        elif isinstance(exc, ConfigurationProblem):  # raised for one thing only: a SCRIPT_NAME header off the path
            exc = InvalidHeader("SCRIPT_NAME")
        super().handle_error(req, client, addr, exc)


class PredictionLogger(Logger):
    """gunicorn's logger, without the access line of a request the app logged itself: a prediction's JSON line
    (server.py) carries the same request id, status and time, and the model, version, latency and key name besides.
    One line per prediction in the container's log, not two: every line crosses containerd and dockerd, and that
    cost per line was most of what the prediction log cost (docs/benchmarks.md). With the prediction log turned off
    (MODELSWARM_PREDICTION_LOG=0), predictions get their access line again. (A logger class of one's own also means
    gunicorn does not switch to its statsd logger when statsd_host is set: nothing here sets it.)"""

    def access(self, resp, req, environ, request_time):
        if not environ.get("modelswarm.logged"):
            super().access(resp, req, environ, request_time)


# gunicorn's default access log line, without %(u)s (HTTP Basic's user), with the answer's request id.
access_log_format = '%(h)s - - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" request_id=%({x-request-id}o)s'
util.write_error = write_json_error  # what handle_error calls; workers are forked from this process
worker_class = JSONErrorWorker
logger_class = PredictionLogger


def on_starting(server):
    """An empty metrics directory before the first worker starts."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)


def child_exit(server, worker):
    """A worker is gone: its live gauges no longer count; its counters and histograms do."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
