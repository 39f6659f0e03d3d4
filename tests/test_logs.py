"""Structured logs: JSON lines with the request id and trace id, configured from the environment."""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from litestar import Litestar, get
from litestar.testing import AsyncTestClient
from morpheus_tts.observability.logs import (
    REQUEST_ID,
    ContextFilter,
    JsonFormatter,
    RequestContextMiddleware,
    configure_logging,
)
from opentelemetry.sdk.trace import TracerProvider


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A JSON handler on a test logger, the way `configure_logging` builds one."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("morpheus.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_context_ids_and_extras(captured: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    token = REQUEST_ID.set("req-1")
    try:
        with tracer.start_as_current_span("work") as span:
            logging.getLogger("morpheus.test").info(
                "chunk ready", extra={"engine": "piper", "chunk_samples": 4800, "buffer_ms": 250.0}
            )
    finally:
        REQUEST_ID.reset(token)
    (line,) = lines(captured)
    assert line["message"] == "chunk ready"
    assert line["level"] == "info"
    assert line["logger"] == "morpheus.test"
    assert line["request_id"] == "req-1"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    assert (line["engine"], line["chunk_samples"], line["buffer_ms"]) == ("piper", 4800, 250.0)


def test_json_line_outside_a_request_has_no_context_ids(captured: io.StringIO) -> None:
    logging.getLogger("morpheus.test").warning("idle")
    (line,) = lines(captured)
    assert "request_id" not in line and "trace_id" not in line


def test_exceptions_are_one_json_line(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("morpheus.test").exception("failed")
    (line,) = lines(captured)
    assert "RuntimeError: boom" in line["exception"]


def test_level_and_format_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORPHEUS_LOG_LEVEL", "debug")
    monkeypatch.setenv("MORPHEUS_LOG_FORMAT", "json")
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("warning", stream=io.StringIO())
    try:
        assert root.level == logging.DEBUG
        assert isinstance(handler.formatter, JsonFormatter)
        assert [h for h in root.handlers if h.get_name() == "morpheus"] == [handler]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_an_explicit_level_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORPHEUS_LOG_LEVEL", "debug")
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(level="error", stream=io.StringIO())
    try:
        assert root.level == logging.ERROR
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize(
    ("variable", "value"), [("MORPHEUS_LOG_LEVEL", "loud"), ("MORPHEUS_LOG_FORMAT", "xml")]
)
def test_a_bad_setting_names_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"{variable}='{value}': use one of"):
        configure_logging()


@pytest.mark.anyio
async def test_request_id_is_echoed_or_made_and_visible_to_handlers() -> None:
    seen: list[str | None] = []

    @get("/where", sync_to_thread=False)
    def where() -> str:
        seen.append(REQUEST_ID.get())
        return "ok"

    app = Litestar([where], middleware=[RequestContextMiddleware])
    async with AsyncTestClient(app) as client:
        mine = await client.get("/where", headers={"X-Request-Id": "abc-123"})
        made = await client.get("/where")
        hostile = await client.get("/where", headers={"X-Request-Id": "a b\tc"})
    assert mine.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 16
    assert hostile.headers["x-request-id"] != "a b\tc"
    assert seen == ["abc-123", made.headers["x-request-id"], hostile.headers["x-request-id"]]
    assert "x-trace-id" not in made.headers  # tracing is off


def test_library_code_never_prints() -> None:
    offenders = []
    for package in ("host", "api", "observability", "plugins"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "api" / "cli.py":
                continue  # the command line talks to its user
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "print"
                ):
                    offenders.append(f"{Path(path).relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
