"""Request hygiene shared by the model server and the console: request ids, bodies, JSON limits, failure logs.

Standard library only: copied into every model image next to server.py (imported there as `httpguard`) and into the
console's image (imported as `modelswarm.apps.modelserver.httpguard`). A client's mistake raises HTTPError with a
4xx status and a message written here for the client (a JSON syntax error says where); an exception's own text is
never put in an answer: log_failure sends it, with the request id, to the log.

  MODELSWARM_MAX_JSON_DEPTH   deepest nesting of arrays and objects a JSON body may have (default 64)
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import traceback
import uuid
from http import HTTPStatus
from itertools import accumulate

MAX_JSON_DEPTH = int(os.environ.get("MODELSWARM_MAX_JSON_DEPTH", "64"))
MAX_INT_DIGITS = 4300  # Python's own limit for int(str); said here so the client reads a sentence, not a hint
REQUEST_ID_HEADER = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # NGINX's $request_id: 32 hex digits
_SQUARE, _NOT_BRACKET = bytes.maketrans(b"{}", b"[]"), bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")], _STEP[ord("]")] = 1, -1


class HTTPError(Exception):
    """An answer other than success. `message` (and `details`) go to the client; `internal` only to the log."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        details: dict | None = None,
        headers: list | None = None,
        internal: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.details, self.headers = HTTPStatus(status), message, details, headers or []
        self.internal = internal


def request_id(environ) -> str:
    """The request's id: the X-Request-Id it came with (NGINX sets one) if that is a short token, else a new one."""
    sent = environ.get("HTTP_X_REQUEST_ID", "")
    return sent if _SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex


def log_failure(rid: str, summary: str, exc: BaseException | None = None) -> None:
    """One block on stderr (the container's log): the summary and the traceback, every line tagged with the id."""
    lines = [summary, *("".join(traceback.format_exception(exc)).splitlines() if exc else [])]
    sys.stderr.write("".join(f"request_id={rid} {line}\n" for line in lines))
    sys.stderr.flush()


def require_media_type(environ, expected: str) -> None:
    """415 unless Content-Type is `expected` (parameters allowed; a charset, if given, must be UTF-8)."""
    media, _, params = environ.get("CONTENT_TYPE", "").partition(";")
    charset = re.search(r"charset\s*=\s*\"?([^\";\s]*)", params, re.IGNORECASE)
    if media.strip().lower() != expected or (charset and charset.group(1).lower() not in ("utf-8", "utf8")):
        raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"send the body as {expected} (Content-Type), in UTF-8")


def read_body(environ, limit: int) -> bytes:
    """The request body: 400 for a bad Content-Length, a transfer coding other than chunked or a body that breaks
    off; 411 without a length or chunks; 413 over `limit` bytes (checked before reading when the length is given)."""
    length_text = environ.get("CONTENT_LENGTH") or ""
    coding = environ.get("HTTP_TRANSFER_ENCODING", "").strip().lower()
    if coding not in ("", "chunked"):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "the only transfer coding accepted is chunked")
    if length_text and not re.fullmatch(r"[0-9]+", length_text):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "Content-Length must be a whole number of bytes")
    if length_text and (len(length_text) > 18 or int(length_text) > limit):
        raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"send at most {limit} bytes")
    if not length_text and coding != "chunked":
        raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length (or a chunked body)")
    wanted = int(length_text) if length_text else limit + 1
    try:
        body = environ["wsgi.input"].read(wanted)
    except Exception as exc:  # the server's reader: broken chunks, a connection that ended early
        raise HTTPError(HTTPStatus.BAD_REQUEST, "the body could not be read (malformed chunks or cut short)") from exc
    if len(body) > limit:
        raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"send at most {limit} bytes")
    if length_text and len(body) < wanted:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "the body is shorter than its Content-Length")
    return body


def json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text, measured without parsing it (brackets inside strings do not
    count): linear time in C-level passes, no recursion, so any depth is measured before json.loads recurses."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")  # escapes pair off left to right, as JSON reads them
    outside = b"".join(unescaped.split(b'"')[::2])  # what lies between strings (an unterminated one runs to the end)
    return max(accumulate(map(_STEP.__getitem__, outside.translate(_SQUARE, _NOT_BRACKET))), default=0)


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer longer than {MAX_INT_DIGITS} digits")
    return int(text)


def _constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes, max_depth: int | None = None) -> object:
    """The body as JSON: 400 if it is not UTF-8, nests deeper than `max_depth`, holds NaN/Infinity or a number
    beyond a float's range, or does not parse. The message says which, and where for a syntax error."""
    max_depth = MAX_JSON_DEPTH if max_depth is None else max_depth
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"the body is not UTF-8 (byte {exc.start})") from exc
    if not text.strip():
        raise HTTPError(HTTPStatus.BAD_REQUEST, "empty body: send JSON")
    if body.count(b"[") + body.count(b"{") > max_depth and json_depth(body) > max_depth:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_float=_number, parse_int=_integer, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"malformed JSON: {exc.msg} at {where}") from exc
    except RecursionError as exc:  # not expected after json_depth; kept so no nesting can ever become a 500
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"JSON nested deeper than {max_depth} levels") from exc
    except ValueError as exc:  # raised by the hooks above: the text is ours
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"malformed JSON: {exc}") from exc
