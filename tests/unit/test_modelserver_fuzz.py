"""The model server for real: its image's files and command (gunicorn pinned as in the image, gunicorn_conf.py) on
loopback, fed malformed requests over raw sockets. Each must get a 4xx JSON answer with a message (never a 5xx, never
HTML), whether gunicorn refuses it or the app does; and a model's exception text must reach the log, not the client."""

import json
import os
import random
import re
import socket
import time

import pytest
from conftest import SERVED_MAX_BODY as MAX_BODY

from modelswarm.lifecycle import modelimage


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, end our side, read the answer to the end: (status, headers in lower case, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def request(body: bytes = b"", *, method="POST", path="/predict", version="HTTP/1.1", headers=None, length=True):
    """A raw request; `headers` lines as given (a JSON Content-Type unless they name one), Content-Length unless
    `length` is False or they name one."""
    lines = [f"{method} {path} {version}", "Host: model", *(headers or [])]
    named = {line.split(":")[0].strip().lower() for line in headers or []}
    if "content-type" not in named:
        lines.append("Content-Type: application/json")
    if length and "content-length" not in named:
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def chunked(*chunks: bytes, tail=b"0\r\n\r\n") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + tail


TE_CHUNKED = ["Transfer-Encoding: chunked"]
NOISE = random.Random(13).randbytes(2048)

# Malformed bodies and headers: every one must get a JSON 4xx (which one is the server's to choose).
CASES = {
    "nested 100,000 deep": request(b"[" * 100_000 + b"]" * 100_000),
    "objects nested 10,000 deep": request(b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
    "nested one past the limit": request(b"[" * 65 + b"]" * 65),
    "only opening brackets": request(b"[{" * 50_000),
    "integer of 100,000 digits": request(b"9" * 100_000),
    "float beyond range": request(b'{"x": 1e999999}'),
    "NaN": request(b'{"x": NaN}'),
    "Infinity": request(b"[Infinity, -Infinity]"),
    "invalid UTF-8": request(b'{"x": "\xc3\x28 \xff"}'),
    "UTF-16 with a BOM": request('{"x": 1}'.encode("utf-16")),
    "truncated JSON": request(b'{"x": [1, 2, {"y": '),
    "unterminated string": request(b'{"x": "abc'),
    "bad escape": request(b'{"x": "\\q"}'),
    "trailing garbage": request(b'{"x": 1} {"y": 2}'),
    "single quotes": request(b"{'x': 1}"),
    "empty body": request(b""),
    "whitespace only": request(b" \r\n\t "),
    "binary noise": request(NOISE),
    "NUL bytes": request(b"\x00" * 64),
    "text/plain": request(b'{"x": 1}', headers=["Content-Type: text/plain"]),
    "no Content-Type": request(b'{"x": 1}', headers=["Content-Type:"]),
    "form encoded": request(b"x=1", headers=["Content-Type: application/x-www-form-urlencoded"]),
    "JSON in latin-1": request(b'{"x": 1}', headers=["Content-Type: application/json; charset=iso-8859-1"]),
    "duplicate Content-Type": request(b"{}", headers=["Content-Type: application/json", "Content-Type: text/xml"]),
    "Content-Length not a number": request(b'{"x": 1}', headers=["Content-Length: ten"]),
    "Content-Length negative": request(b'{"x": 1}', headers=["Content-Length: -8"]),
    "Content-Length twice": request(b'{"x": 1}', headers=["Content-Length: 8", "Content-Length: 8"]),
    "Content-Length disagreeing": request(b'{"x": 1}', headers=["Content-Length: 8", "Content-Length: 3"]),
    "Content-Length longer than the body": request(b'{"x": 1}', headers=["Content-Length: 800"]),
    "Content-Length over the limit": request(b"[]", headers=[f"Content-Length: {10 * MAX_BODY}"]),
    "Content-Length of 40 digits": request(b"[]", headers=["Content-Length: " + "9" * 40]),
    "no length at all": request(b'{"x": 1}', length=False),
    "chunked with a bad size": request(b"zz\r\n{}\r\n0\r\n\r\n", headers=TE_CHUNKED, length=False),
    "chunked without terminators": request(b"2\r\n{}XX0\r\n\r\n", headers=TE_CHUNKED, length=False),
    "chunked cut short": request(b'100\r\n{"x":', headers=TE_CHUNKED, length=False),
    "chunked over the limit": request(chunked(*[b" " * 65536] * 4, b" "), headers=TE_CHUNKED, length=False),
    "chunked garbage JSON": request(chunked(b'{"x', b'": 1'), headers=TE_CHUNKED, length=False),
    "chunked and Content-Length": request(chunked(b"{}"), headers=[*TE_CHUNKED, "Content-Length: 7"]),
    "chunked twice": request(chunked(b"{}"), headers=["Transfer-Encoding: chunked, chunked"], length=False),
    "chunked on HTTP/1.0": request(chunked(b"{}"), version="HTTP/1.0", headers=TE_CHUNKED, length=False),
    "gzip transfer coding": request(b"\x1f\x8b\x08\x00", headers=["Transfer-Encoding: gzip"]),
    "unknown transfer coding": request(b"{}", headers=["Transfer-Encoding: bogus"], length=False),
    "header value of 20 kB": request(b"{}", headers=["X-Filler: " + "a" * 20_000]),
    "300 headers": request(b"{}", headers=[f"X-H{i}: {i}" for i in range(300)]),
    "URL of 6 kB": request(b"{}", path="/predict?" + "q" * 6_000),  # longer: answered before read, then a reset
    "space in a header name": request(b"{}", headers=["Bad Name: x"]),
    "control character in Content-Type": request(b"{}", headers=["Content-Type: application/json\x01"]),
    "obsolete line folding": request(b"{}", headers=["X-Fold: a", " b"]),
    "header without a colon": request(b"{}", headers=["NoColonHere"]),
    "HTTP/9.9": request(b"{}", version="HTTP/9.9"),
    "binary request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + NOISE[:200] + b"\r\n\r\n",
    "lower-case method": request(b"{}", method="post"),
    "method with symbols": request(b"{}", method="P@ST"),
    "GET on /predict": request(method="GET"),
    "PUT on /predict": request(b"{}", method="PUT"),
    "DELETE on /health": request(method="DELETE", path="/health"),
    "POST on /metrics": request(b"{}", path="/metrics"),
    "unknown path": request(b"{}", path="/predict/../../etc/passwd"),
    "SCRIPT_NAME header": request(b"{}", headers=["SCRIPT_NAME: /elsewhere"], path="/nowhere"),
    "a refusal by the model": request(b'{"do": "refuse"}'),
}


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_every_malformed_request_gets_a_json_4xx(served, raw):
    port, _ = served
    status, headers, body = exchange(port, raw)
    assert 400 <= status < 500, (status, body[:300])
    assert headers.get("content-type") == "application/json", (status, headers, body[:300])
    answer = json.loads(body)
    assert isinstance(answer["error"], str) and answer["error"]


def test_the_server_still_answers_after_the_fuzzing(served):
    port, _ = served
    status, _, body = exchange(port, request(b'{"x": 1}'))
    assert status == 200 and json.loads(body)["prediction"] == {"echo": {"x": 1}}
    assert exchange(port, request(method="GET", path="/health"))[0] == 200


def test_a_models_exception_text_reaches_the_log_not_the_client(served):
    port, log = served
    rid = "fuzz-" + os.urandom(8).hex()
    for failure in ("crash", "value"):
        raw = request(json.dumps({"do": failure}).encode(), headers=[f"X-Request-Id: {rid}"])
        status, headers, body = exchange(port, raw)
        assert status == (500 if failure == "crash" else 422) and headers["x-request-id"] == rid
        assert b"hunter2" not in body and b"Error" not in body and json.loads(body)["request_id"] == rid
    deadline = time.monotonic() + 5
    while f"request_id={rid} RuntimeError: password=hunter2" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert f"request_id={rid} RuntimeError: password=hunter2" in text
    assert f"request_id={rid} ValueError: password=hunter2" in text
    # Each prediction's one line is its JSON line (gunicorn_conf.PredictionLogger: no access line besides it).
    logged = [json.loads(line) for line in text.splitlines() if f'"request_id":"{rid}"' in line]
    assert sorted(line["status"] for line in logged) == [422, 500], logged
    assert f"request_id={rid}\n" not in text  # gunicorn's access line ends so


def test_an_insane_request_id_is_replaced(served):
    port, _ = served
    _, headers, _ = exchange(port, request(method="GET", path="/health", headers=["X-Request-Id: a;b c"]))
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])


def test_the_lock_pins_the_images_gunicorn(repo):
    for lock in ("lock.txt", "lock-el7.txt", "toolchain.in"):
        assert f"gunicorn=={modelimage.GUNICORN_VERSION}\n" in (repo / "requirements" / lock).read_text(), lock
