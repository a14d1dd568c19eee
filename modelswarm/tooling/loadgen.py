"""Prediction load for the HA tests and the benchmarks: `hey` sends it, this module adds what hey does not report.

hey (Debian package `hey`) sends a bounded number of requests (-n) at a bounded rate (-q per worker, -c workers),
each with a timeout (-t). Its CSV output gives one row per answered request: latency and offset from the start.
From those rows this module adds what a fault test needs and hey's summary lacks:

- failures by kind (each non-2xx HTTP status, and transport errors: requests hey sent that got no HTTP answer,
  counted as the planned total minus the rows, because hey's CSV has no row for them);
- p50, p99 and max latency computed from every row (hey's own summary has no p99 on short runs);
- failed and answered requests per second of the run, and the first and last failure's offset, to line them up
  with a fault injected at a known offset.

Targets are limited to loopback, the lab's subnet and the hosts of an inventory the caller names: load is never
sent anywhere else by accident.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import math
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit


class LoadError(RuntimeError):
    """The load cannot be sent as asked; the message says why."""


@dataclass(frozen=True)
class LoadPlan:
    url: str
    body: str | None = None  # a JSON document; POSTed when given, else GET
    requests: int = 200
    concurrency: int = 4
    rate_per_worker: float = 0.0  # requests per second per worker; 0 = as fast as possible
    timeout: int = 10  # seconds per request
    # Extra request headers ("Name: value"), e.g. the API key; kept out of reprs (hey's arguments are not printed).
    headers: tuple[str, ...] = field(default=(), repr=False)

    @property
    def total(self) -> int:
        """hey gives each worker requests // concurrency requests."""
        return (self.requests // self.concurrency) * self.concurrency

    @property
    def expected_seconds(self) -> float | None:
        if self.rate_per_worker <= 0:
            return None
        return self.requests / (self.concurrency * self.rate_per_worker)

    def validate(self) -> None:
        if self.concurrency < 1 or self.requests < self.concurrency:
            raise LoadError(f"need at least as many requests ({self.requests}) as workers ({self.concurrency})")
        if self.requests > 1_000_000:
            raise LoadError(f"{self.requests} requests: the load is bounded to 1,000,000 per run")
        if self.rate_per_worker < 0 or self.timeout < 1:
            raise LoadError("the rate must be >= 0 and the per-request timeout >= 1 s")

    def command(self, hey: str = "hey") -> list[str]:
        command = [hey, "-n", str(self.requests), "-c", str(self.concurrency), "-t", str(self.timeout), "-o", "csv"]
        if self.rate_per_worker > 0:
            command += ["-q", f"{self.rate_per_worker:g}"]
        if self.body is not None:
            command += ["-m", "POST", "-T", "application/json", "-d", self.body]
        for header in self.headers:
            command += ["-H", header]
        return [*command, self.url]


@dataclass
class LoadResult:
    url: str
    sent: int
    answered: int
    ok: int
    failures: dict[str, int]  # kind -> count: "http 502", "transport error"
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    seconds: float
    requests_per_second: float
    per_second: list[dict[str, int]] = field(default_factory=list)  # [{"second", "ok", "failed"}]
    first_failure_at: float | None = None  # offsets (s) from the start of the run
    last_failure_at: float | None = None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "failed": self.failed}

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.failures.items())) or "none"
        window = (
            f"; failures between {self.first_failure_at:.1f}s and {self.last_failure_at:.1f}s"
            if self.first_failure_at is not None
            else ""
        )
        return (
            f"{self.sent} requests in {self.seconds:.1f}s ({self.requests_per_second:.1f}/s): {self.ok} ok, "
            f"{self.failed} failed ({kinds}); latency p50 {_ms(self.p50_ms)} p99 {_ms(self.p99_ms)} "
            f"max {_ms(self.max_ms)}{window}"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def parse(plan: LoadPlan, csv_text: str, seconds: float) -> LoadResult:
    """hey's CSV (one row per answered request) -> LoadResult."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    latencies, failures = [], {}
    buckets: dict[int, dict[str, int]] = {}
    first = last = None
    ok = 0
    for row in rows:
        status, offset = int(row["status-code"]), float(row["offset"])
        latencies.append(float(row["response-time"]) * 1000)
        bucket = buckets.setdefault(int(offset), {"ok": 0, "failed": 0})
        if 200 <= status < 300:
            ok += 1
            bucket["ok"] += 1
        else:
            kind = f"http {status}"
            failures[kind] = failures.get(kind, 0) + 1
            bucket["failed"] += 1
            first = offset if first is None else min(first, offset)
            last = offset if last is None else max(last, offset)
    missing = plan.total - len(rows)
    if missing > 0:
        failures["transport error"] = missing
    latencies.sort()
    return LoadResult(
        url=plan.url,
        sent=plan.total,
        answered=len(rows),
        ok=ok,
        failures=failures,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else None,
        seconds=seconds,
        requests_per_second=len(rows) / seconds if seconds > 0 else 0.0,
        per_second=[{"second": s, **buckets[s]} for s in sorted(buckets)],
        first_failure_at=first,
        last_failure_at=last,
    )


def allowed_target(url: str, networks: list[str], hosts: list[str] = ()) -> str:
    """The URL's host, if load may be sent there: loopback, inside one of `networks`, or one of `hosts`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadError(f"{url!r} is not an http(s) URL")
    host = parts.hostname
    if host in hosts or host == "localhost":
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise LoadError(f"{host}: give the address of a lab or inventory host, not a name") from exc
    if address.is_loopback or any(address in ipaddress.ip_network(n) for n in networks):
        return host
    raise LoadError(f"{host} is neither loopback, in the lab network ({', '.join(networks)}) nor an inventory host")


class LoadRun:
    """One run of hey in the background: start(), do something (inject a fault), then result()."""

    def __init__(self, plan: LoadPlan):
        plan.validate()
        self.plan = plan
        hey = shutil.which("hey")
        if not hey:
            raise LoadError("hey is not installed: apt-get install hey (scripts/engine-bootstrap.sh installs it)")
        self._command = plan.command(hey)
        self._process: subprocess.Popen | None = None
        self._output: dict[str, str] = {}
        self._readers: list[threading.Thread] = []
        self.started_at = 0.0
        self._ended_at: float | None = None

    def start(self) -> LoadRun:
        self.started_at = time.monotonic()
        self._process = subprocess.Popen(
            self._command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        # Drain hey's output as it comes: its CSV outgrows a pipe's buffer, and a blocked hey would not exit.
        for name, stream in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            reader = threading.Thread(
                target=lambda n=name, f=stream: self._output.__setitem__(n, f.read()), daemon=True
            )
            reader.start()
            self._readers.append(reader)
        return self

    def offset(self) -> float:
        """Seconds since the load started (to note when a fault was injected)."""
        return time.monotonic() - self.started_at

    def result(self, grace: float = 60.0) -> LoadResult:
        """Wait for hey to finish (bounded: the planned duration plus the per-request timeout plus `grace`)."""
        assert self._process is not None, "start() first"
        limit = (self.plan.expected_seconds or 600.0) + self.plan.timeout + grace
        try:
            self._process.wait(timeout=max(0.0, limit - self.offset()))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise LoadError(f"hey did not finish within {limit:.0f}s; stopped it") from None
        for reader in self._readers:
            reader.join(timeout=30)
        stdout, stderr = self._output.get("stdout", ""), self._output.get("stderr", "")
        # The run's length is until hey ended, not until the caller asked for the result.
        seconds = (self._ended_at or time.monotonic()) - self.started_at
        if self._process.returncode != 0:
            raise LoadError(f"hey failed (exit {self._process.returncode}): {stderr.strip()[-500:]}")
        return parse(self.plan, stdout, seconds)


def run(plan: LoadPlan) -> LoadResult:
    return LoadRun(plan).start().result()
