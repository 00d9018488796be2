"""HTTP errors as JSON `{"error": {"code", "message"}}`, from one place; bounded request input:
body size, JSON nesting, header values."""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dashboard.errors import HTTP_CODES, BrokerError, DashboardError, HTTPError
from dashboard.events import json_problem

log = logging.getLogger("dashboard")


def error_response(
    status: int, message: str, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"code": code or HTTP_CODES.get(status, "error"), "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _dashboard_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DashboardError)
    if exc.status >= 500 and not isinstance(exc, (HTTPError, BrokerError)):
        return await _internal(request, exc)
    message = exc.message if isinstance(exc, HTTPError) else str(exc)
    return error_response(exc.status, message, exc.code, exc.headers)


async def _starlette_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, "internal server error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    DashboardError: _dashboard_error,
    HTTPException: _starlette_error,
    Exception: _internal,
}


async def exception_response(request: Request, exc: Exception) -> Response:
    """What Starlette's exception handling answers for `exc` (for routes served without it)."""
    handler = next(EXCEPTION_HANDLERS[cls] for cls in type(exc).__mro__ if cls in EXCEPTION_HANDLERS)
    if handler is _internal:
        log.error("exception in %s %s", request.method, request.url.path, exc_info=exc)
    return await handler(request, exc)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number") from None
        if size > limit:
            raise HTTPError(413, f"request body of {size} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


MAX_JSON_DEPTH = 64  # arrays and objects nested deeper than this are refused before parsing
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN_CLOSE = bytes.maketrans(b"{}", b"[]")


def json_nesting_problem(body: bytes, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why `body` is too deeply nested to parse; None when it is not.

    Checked before `json.loads`, which would recurse once per level. Strings are removed, then
    the brackets left: each pass deletes every innermost pair, so a document nested `d` deep is
    emptied in `d` passes of C-speed `replace`. Unmatched brackets (invalid JSON, which the
    parser then reports) count as levels too."""
    if body.count(b"[") + body.count(b"{") <= limit:  # no deeper than it has openings (most bodies)
        return None
    brackets = _JSON_STRING.sub(b"", body).translate(_OPEN_CLOSE, _NOT_BRACKETS)
    for depth in range(limit + 1):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):  # nothing but unmatched brackets left, if any
            if depth + shorter.count(b"[") <= limit:
                return None
            break
        brackets = shorter
    return f"arrays and objects are nested deeper than {limit} levels"


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a \\uD800-\\uDFFF escape: maybe a lone surrogate


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


# What json.loads(text, parse_constant=..., parse_float=...) would make anew for every body.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def parse_json(body: bytes) -> Any:
    """`body` parsed as JSON; 400 `invalid_json` saying why when it is not JSON or nests too deep.

    Only what can be sent on is taken: strict UTF-8, no NaN or Infinity (nor numbers that
    overflow to it), no lone surrogate in an escape (`"\\ud800"` is legal JSON, not UTF-8): what
    passes here can be stored and streamed to every reader (dashboard.events.encode_data)."""
    problem = json_nesting_problem(body)
    if problem is not None:
        raise HTTPError(400, f"invalid JSON: {problem}", "invalid_json")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = body[exc.start : exc.start + 1].hex()
        message = f"invalid JSON: the body is not UTF-8 (byte 0x{bad} at position {exc.start})"
        raise HTTPError(400, message, "invalid_json") from None
    try:
        if text.startswith("\ufeff"):  # a second BOM: what json.loads says of it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except ValueError as exc:
        raise HTTPError(400, f"invalid JSON: {exc}", "invalid_json") from None
    if _SURROGATE_ESCAPE.search(body) and (problem := json_problem(value)) is not None:
        raise HTTPError(400, f"invalid JSON: {problem}", "invalid_json")
    return value


def media_type(request: Request) -> str | None:
    """The request's Content-Type without its parameters, lowercased; None when it sends none."""
    raw = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return raw or None


def require_json_type(request: Request, *also: str) -> None:
    """415 `unsupported_media_type` when the request says its body is something other than JSON
    (`application/json`, `application/...+json`) or one of the media types `also`. A body sent
    without a Content-Type is read as JSON."""
    kind = media_type(request)
    if kind is None or kind == "application/json" or kind in also:
        return
    if kind.startswith("application/") and kind.endswith("+json"):
        return
    raise HTTPError(415, f"send the body as application/json, not {shown(kind)}", "unsupported_media_type")


async def read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON (see `parse_json`), at most `limit` bytes of it."""
    return parse_json(await read_body(request, limit))


_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() and int() take '²' and '٣'


def parse_count(raw: str, what: str) -> int:
    """A whole number given by a client (an event id, a count): 400 naming `what` otherwise."""
    if not _ID.fullmatch(raw):
        raise HTTPError(400, f"{what} must be a whole number of at most 18 digits, got {shown(raw)}")
    return int(raw)


def shown(value: str, limit: int = 40) -> str:
    """A client's value quoted in an error message, cut short so that the answer stays small."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"
