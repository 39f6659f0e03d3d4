"""Structured logs: JSON (or readable text) lines carrying the request id and the trace id.

`configure_logging()` reads `MORPHEUS_LOG_LEVEL` (debug, info, warning, error; default given by
the command) and `MORPHEUS_LOG_FORMAT` (`json` or `text`, default text) and installs one stderr
handler on the root logger. `ContextFilter` stamps every record, at the moment it is logged,
with the request id (`RequestContextMiddleware` sets it per HTTP request; utterances carry it
into their background tasks) and the current OpenTelemetry trace and span ids. Anything passed
as `extra=` (engine, chunk size, buffer depth...) becomes a field of its own.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, TextIO

import msgspec
from morpheus_tts.host.config import read_environment
from opentelemetry import trace

LEVEL_ENV = "MORPHEUS_LOG_LEVEL"
FORMAT_ENV = "MORPHEUS_LOG_FORMAT"
LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("json", "text")
REQUEST_ID_HEADER = "x-request-id"
TRACE_ID_HEADER = "x-trace-id"

REQUEST_ID: ContextVar[str | None] = ContextVar("morpheus_request_id", default=None)
"""The id of the request being served in this task (None outside requests)."""

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "trace_id", "span_id", "color_message",
}


def current_request_id() -> str | None:
    """The request id of the current task, if it serves one."""
    return REQUEST_ID.get()


class ContextFilter(logging.Filter):
    """Stamps `request_id`, `trace_id` and `span_id` on each record when it is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the context fields (None where there is none); never drops a record."""
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        context = trace.get_current_span().get_span_context()
        if context.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and k[0] != "_"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context ids, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a single JSON line."""
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id", "span_id"):
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = value
        payload.update(_extras(record))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return msgspec.json.encode(payload, enc_hook=repr).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The classic line, with the context ids and extras appended as key=value."""
        line = super().format(record)
        fields = {
            key: getattr(record, key, None) for key in ("request_id", "trace_id")
        } | _extras(record)
        tail = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{line} {tail}" if tail else line


def configure_logging(
    default_level: str = "info",
    *,
    level: str | None = None,
    fmt: str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (stderr) as JSON or text, at the configured level.

    Args:
        default_level: used when neither `level` nor `$MORPHEUS_LOG_LEVEL` is given.
        level: an explicit level (a command-line flag); beats the environment.
        fmt: an explicit format; beats `$MORPHEUS_LOG_FORMAT` (default "text").
        stream: where lines go; stderr by default (stdout may carry audio).

    Returns:
        The installed handler (it replaces one installed by an earlier call).

    Raises:
        ValueError: an unknown level or format; the message names the variable and the choices.
    """
    env = read_environment()
    level_name = (level or env.log_level or default_level).lower()
    format_name = (fmt or env.log_format or "text").lower()
    if level_name not in LEVELS:
        raise ValueError(f"{LEVEL_ENV}={level_name!r}: use one of {', '.join(LEVELS)}")
    if format_name not in FORMATS:
        raise ValueError(f"{FORMAT_ENV}={format_name!r}: use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("morpheus")
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if format_name == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "morpheus"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name.upper())
    return handler


def uvicorn_log_config() -> dict[str, Any]:
    """A uvicorn `log_config` that hands its records to the root handler (same format)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def litestar_logging_config() -> Any:
    """Litestar's logging config that leaves the root handler (ours) alone.

    Litestar's default replaces the root logger's handlers; this one only routes the `litestar`
    logger to the root, so its lines come out in the same format.
    """
    from litestar.logging.config import LoggingConfig

    return LoggingConfig(
        configure_root_logger=False,
        loggers={"litestar": {"level": "INFO", "handlers": [], "propagate": True}},
    )


class RequestContextMiddleware:
    """ASGI middleware: a request id per request, echoed with the trace id in headers.

    The id is the client's `X-Request-Id` when it is a sane token, else a new random one. The
    response carries `X-Request-Id` and, while tracing is on, `X-Trace-Id` (the id to look up
    in Jaeger). Install it inside the OpenTelemetry middleware so the server span is current.

    Args:
        app: the next ASGI application.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one connection with its request id set."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or secrets.token_hex(8)
        token = REQUEST_ID.set(request_id)
        extra = [(REQUEST_ID_HEADER.encode(), request_id.encode())]
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            extra.append((TRACE_ID_HEADER.encode(), format(context.trace_id, "032x").encode()))

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            REQUEST_ID.reset(token)


def _client_request_id(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            return candidate if _CLIENT_ID.match(candidate) else None
    return None
