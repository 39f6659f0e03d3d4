"""Span trees of one utterance, a barge-in and a failover; trace context in events and headers."""

from __future__ import annotations

import gzip
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import grpc
import pytest
from litestar.testing import AsyncTestClient
from morpheus_tts.api.app import create_app
from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.host.session_manager import SessionManager
from morpheus_tts.observability import Telemetry
from morpheus_tts.observability.metrics import Metrics
from morpheus_tts.observability.tracing import configure_tracing
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.anyio

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def fault_config(failover: tuple[str, ...] = (), **settings: object) -> MorpheusConfig:
    extra = {name: PluginEntry(module=f"morpheus_tts.plugins.engines.{name}") for name in failover}
    return MorpheusConfig(
        server=ServerSettings(default_engine="fault", failover=list(failover)),
        plugins={
            "fault": PluginEntry(module="morpheus_tts.plugins.engines.fault",
                settings=dict(settings)),
            "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
            "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
            **extra,
        },
    )


class Traced:
    """A fault-engine runtime whose telemetry goes to memory."""

    def __init__(self, failover: tuple[str, ...] = (), **settings: object) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.runtime = Runtime(fault_config(failover, **settings), entry_points=False)
        self.runtime.observer = Telemetry(tracer_provider=self.provider, metrics=self.metrics)

    def spans(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def count(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def requests(self, count: int = 1) -> list[ReadableSpan]:
        """The request spans, once `count` have ended (background streams end a bit later)."""
        with anyio.fail_after(5):
            while len(self.spans("tts.request")) < count:
                await anyio.sleep(0.01)
        return sorted(self.spans("tts.request"), key=lambda span: span.start_time)


async def test_one_request_is_a_request_span_over_segment_spans_over_chunk_spans() -> None:
    traced = Traced(chunks_per_segment=2, chunk_ms=50)
    text = "One. Two. Three."
    async with traced.runtime.running():
        async with traced.runtime.speak(SpeakRequest(response_format="wav"), text) as utterance:
            chunks = [chunk async for chunk in utterance.audio if len(chunk.samples)]
    (request,) = traced.spans("tts.request")
    segments = sorted(traced.spans("tts.segment"), key=lambda s: s.attributes["tts.segment.index"])
    chunk_spans = sorted(traced.spans("tts.chunk"), key=lambda s: s.attributes["tts.chunk.seq"])

    assert request.parent is None  # nothing was current: a trace of its own
    expected = {
        "tts.engine": "fault", "tts.voice": "tone", "tts.characters": len(text),
        "tts.format": "wav", "tts.outcome": "completed", "tts.segments": 3,
        "tts.chunks": len(chunks),
    }
    assert {key: request.attributes[key] for key in expected} == expected
    assert request.attributes["tts.audio_ms"] == pytest.approx(
        1000 * sum(len(c.samples) for c in chunks) / 24000
    )
    for key in ("tts.time_to_first_byte_ms", "tts.time_to_first_audio_ms",
                "tts.text_aggregation_ms", "tts.real_time_factor"):
        assert request.attributes[key] >= 0

    assert [s.attributes["tts.segment.index"] for s in segments] == [0, 1, 2]
    assert all(s.parent.span_id == request.context.span_id for s in segments)
    assert [s.attributes["tts.segment.engine_chunks"] for s in segments] == [2, 2, 2]

    by_id = {s.context.span_id: s for s in segments}
    assert [s.attributes["tts.chunk.seq"] for s in chunk_spans] == [c.seq for c in chunks]
    assert [s.attributes["tts.chunk.samples"] for s in chunk_spans] == [
        len(c.samples) for c in chunks
    ]
    for span, chunk in zip(chunk_spans, chunks, strict=True):
        parent = by_id[span.parent.span_id]
        assert parent.attributes["tts.segment.index"] == chunk.segment
        assert span.attributes["tts.chunk.duration_ms"] == pytest.approx(chunk.duration_ms)
        assert span.attributes["tts.engine"] == "fault"
        assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time
    assert {s.context.trace_id for s in [request, *segments, *chunk_spans]} == {
        request.context.trace_id
    }


async def test_every_bus_event_out_carries_the_request_span_context() -> None:
    traced = Traced(chunks_per_segment=2, chunk_ms=50)
    async with traced.runtime.running():
        async with traced.runtime.speak(SpeakRequest(), "One. Two.") as utterance:
            chunks = [chunk async for chunk in utterance.audio]
    (request,) = traced.spans("tts.request")
    expected = f"00-{request.context.trace_id:032x}-{request.context.span_id:016x}-"
    assert {chunk.trace["traceparent"][:-2] for chunk in chunks} == {expected}


async def test_a_client_traceparent_is_continued_and_a_malformed_one_ignored() -> None:
    traced = Traced(chunks_per_segment=1, chunk_ms=50)
    async with traced.runtime.running():
        for traceparent in (f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "00-nonsense-01"):
            request = SpeakRequest(traceparent=traceparent)
            async with traced.runtime.speak(request, "Hello.") as utterance:
                _ = [chunk async for chunk in utterance.audio]
    continued, fresh = traced.spans("tts.request")
    assert f"{continued.context.trace_id:032x}" == CLIENT_TRACE
    assert f"{continued.parent.span_id:016x}" == CLIENT_SPAN
    assert fresh.parent is None and f"{fresh.context.trace_id:032x}" != CLIENT_TRACE


async def test_an_engine_error_marks_the_request_span_failed() -> None:
    traced = Traced(chunks_per_segment=5, fail_after=2)
    async with traced.runtime.running():
        stream = traced.runtime.stream(SpeakRequest(), "Doomed sentence.")
        with pytest.raises(RuntimeError, match="scripted failure"):
            async for _chunk in stream:
                pass
        (request,) = await traced.requests()
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes["tts.outcome"] == "error"
    assert [e.name for e in request.events] == ["exception"]
    assert "scripted failure" in request.events[0].attributes["exception.message"]
    assert traced.count("morpheus_utterances_total", engine="fault", outcome="error") == 1


async def test_a_session_turn_after_a_barge_in_links_to_the_turn_it_interrupted() -> None:
    traced = Traced(chunks_per_segment=40, chunk_ms=20, step_delay_ms=5)
    async with traced.runtime.running():
        manager = SessionManager(traced.runtime)
        session = manager.create(SpeakRequest())
        lease = session.attach()
        session.send_text("A long first turn.", final=True)
        while type(await session.next_event(lease)).__name__ != "AudioDelta":
            pass
        session.barge_in()
        session.send_text("Second.", final=True)
        with anyio.fail_after(10):
            while type(await session.next_event(lease)).__name__ != "TurnDone":
                pass
        first, second = await traced.requests(2)
        await manager.close_all()
    assert first.attributes["tts.outcome"] == "interrupted"
    assert second.attributes["tts.outcome"] == "completed"
    assert first.attributes["tts.session_id"] == second.attributes["tts.session_id"] == session.id
    assert first.context.trace_id != second.context.trace_id  # one trace per turn
    interrupted = [e for e in first.events if e.name == "tts.barge_in"]
    assert [e.attributes["tts.barge_in.role"] for e in interrupted] == ["interrupted"]
    assert [e.attributes["tts.barge_in.role"] for e in second.events] == ["interrupting"]
    (link,) = second.links
    assert link.context.span_id == first.context.span_id
    assert link.attributes["tts.link"] == "interrupted"
    assert traced.count("morpheus_barge_ins_total", engine="fault") == 1


async def test_a_barge_in_on_a_stream_ends_its_request_span_as_interrupted() -> None:
    traced = Traced(chunks_per_segment=40, chunk_ms=20, step_delay_ms=5)
    async with traced.runtime.running():
        stream = traced.runtime.stream(SpeakRequest(), "A long sentence.")
        async for _chunk in stream:
            stream.barge_in(fade_ms=10)
        (request,) = await traced.requests()
    assert request.attributes["tts.outcome"] == "interrupted"
    (event,) = request.events
    assert (event.name, event.attributes["tts.barge_in.fade_ms"]) == ("tts.barge_in", 10)


async def test_a_failover_is_an_event_on_the_request_span_and_a_count() -> None:
    traced = Traced(failover=("piper",), chunks_per_segment=3, fail_after=0)
    async with traced.runtime.running():
        async with traced.runtime.speak(SpeakRequest(), "Hello.") as utterance:
            chunks = [chunk async for chunk in utterance.audio if len(chunk.samples)]
    assert chunks and utterance.stats.degraded
    (request,) = traced.spans("tts.request")
    (event,) = [e for e in request.events if e.name == "tts.failover"]
    assert event.attributes["tts.failover.from_engine"] == "fault"
    assert event.attributes["tts.failover.to_engine"] == "piper"
    assert "scripted failure" in event.attributes["tts.failover.reason"]
    assert event.attributes["tts.failover.after_chunks"] == 0
    assert request.attributes["tts.degraded"] is True
    assert request.attributes["tts.engine"] == "piper"
    assert request.attributes["tts.outcome"] == "completed"
    attempts = sorted(traced.spans("tts.segment"), key=lambda s: s.start_time)
    # The policy retries the failing engine once with a smaller chunk, then moves on.
    assert [s.attributes["tts.engine"] for s in attempts] == ["fault", "fault", "piper"]
    assert [s.attributes.get("tts.segment.abandoned") for s in attempts] == [True, True, None]
    assert {s.attributes["tts.engine"] for s in traced.spans("tts.chunk")} == {"piper"}
    assert traced.count(
        "morpheus_engine_failovers_total", from_engine="fault", to_engine="piper"
    ) == 1


async def test_an_engine_slower_than_real_time_records_underflows() -> None:
    # 20 ms of audio per 80 ms step: the listener runs dry before every chunk after the first,
    # however slow the machine (a slower one only widens the gaps).
    # The stream reports what its reader took, so the rate controller sees real playback.
    traced = Traced(chunks_per_segment=4, chunk_ms=20, step_delay_ms=80)
    async with traced.runtime.running():
        async for _chunk in traced.runtime.stream(SpeakRequest(), "Slow."):
            pass
        (request,) = await traced.requests()
    underflows = [e for e in request.events if e.name == "tts.underflow"]
    assert len(underflows) >= 1
    assert request.attributes["tts.underflows"] == len(underflows)
    assert all(e.attributes["tts.underflow.after_chunks"] >= 1 for e in underflows)
    assert traced.count("morpheus_playback_underflows_total", engine="fault") == len(underflows)


# -- through the HTTP API ----------------------------------------------------------------------


async def test_the_http_span_parents_the_request_span_and_its_id_comes_back() -> None:
    traced = Traced(chunks_per_segment=3, chunk_ms=40)
    app = create_app(runtime=traced.runtime, tracer_provider=traced.provider)
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello. There.", "response_format": "pcm"}
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    async with AsyncTestClient(app) as client:
        with anyio.fail_after(10):
            while (await client.get("/health")).status_code != 200:
                await anyio.sleep(0.05)
        plain = await client.post("/v1/audio/speech", json=body)
        continued = await client.post(
            "/v1/audio/speech", json=body, headers={"traceparent": traceparent}
        )
        requests = await traced.requests(2)
    assert plain.status_code == continued.status_code == 200
    spans = traced.exporter.get_finished_spans()
    assert not [s for s in spans if s.name.endswith("http send")]  # no per-send spans
    assert not [s for s in spans if "/health" in s.name]  # polling is not traced
    servers = {s.context.span_id: s for s in spans if s.kind is SpanKind.SERVER}
    for response, request in zip((plain, continued), requests, strict=True):
        server = servers[request.parent.span_id]
        assert response.headers["x-trace-id"] == f"{server.context.trace_id:032x}"
        assert request.context.trace_id == server.context.trace_id
        assert request.attributes["tts.format"] == "pcm"
    assert continued.headers["x-trace-id"] == CLIENT_TRACE
    assert f"{servers[requests[1].parent.span_id].parent.span_id:016x}" == CLIENT_SPAN


# -- a real OTLP export --------------------------------------------------------------------------


class _OtlpHttp(BaseHTTPRequestHandler):
    """The trace half of an OTLP/HTTP receiver."""

    exports: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.path == "/v1/traces"
        self.exports.append(ExportTraceServiceRequest.FromString(body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        """Quiet."""


class _OtlpGrpc(trace_service_pb2_grpc.TraceServiceServicer):
    exports: list[ExportTraceServiceRequest] = []

    def Export(self, request: ExportTraceServiceRequest, context: object) -> object:  # noqa: N802
        self.exports.append(request)
        return ExportTraceServiceResponse()


@contextmanager
def otlp_receiver(protocol: str) -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """A receiver on 127.0.0.1: (endpoint, the export requests it got)."""
    if protocol == "grpc":
        servicer = _OtlpGrpc()
        servicer.exports = []
        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"http://127.0.0.1:{port}", servicer.exports
        finally:
            server.stop(None)
        return
    _OtlpHttp.exports = []
    http = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpHttp)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{http.server_port}", _OtlpHttp.exports
    finally:
        http.shutdown()
        http.server_close()


def _value(any_value: object) -> object:
    return getattr(any_value, any_value.WhichOneof("value"))  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_reach_an_otlp_receiver_with_parents_and_attributes(
    monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    with otlp_receiver(protocol) as (endpoint, exports):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "morpheus-test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        provider = configure_tracing()
        assert provider is not None
        runtime = Runtime(fault_config(chunks_per_segment=2, chunk_ms=50), entry_points=False)
        runtime.observer = Telemetry(tracer_provider=provider, metrics=Metrics(CollectorRegistry()))
        async with runtime.running():
            async with runtime.speak(SpeakRequest(), "One. Two.") as utterance:
                chunks = [chunk async for chunk in utterance.audio if len(chunk.samples)]
        await anyio.to_thread.run_sync(provider.shutdown)  # flushes the batch
    resources = [rs for export in exports for rs in export.resource_spans]
    names = {_value(a.value) for rs in resources for a in rs.resource.attributes
             if a.key == "service.name"}
    assert names == {"morpheus-test"}
    spans = [span for rs in resources for ss in rs.scope_spans for span in ss.spans]
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (request,) = by_name["tts.request"]
    assert request.parent_span_id == b""
    assert len(by_name["tts.segment"]) == 2
    assert {s.parent_span_id for s in by_name["tts.segment"]} == {request.span_id}
    segment_ids = {s.span_id for s in by_name["tts.segment"]}
    assert len(by_name["tts.chunk"]) == len(chunks)
    assert {s.parent_span_id for s in by_name["tts.chunk"]} <= segment_ids
    assert {s.trace_id for s in spans} == {request.trace_id}
    attributes = {a.key: _value(a.value) for a in request.attributes}
    assert (attributes["tts.engine"], attributes["tts.outcome"]) == ("fault", "completed")
    seqs = sorted(
        _value(a.value) for s in by_name["tts.chunk"] for a in s.attributes
        if a.key == "tts.chunk.seq"
    )
    assert seqs == [chunk.seq for chunk in chunks]


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "processors"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, ["OTLPSpanExporter"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["ConsoleSpanExporter"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["OTLPSpanExporter", "ConsoleSpanExporter"]),
    ],
)
def test_tracing_is_off_unless_configured(env: dict[str, str], processors: list | None) -> None:
    provider = configure_tracing(env)
    if processors is None:
        assert provider is None
        return
    assert provider is not None
    active = provider._active_span_processor._span_processors  # noqa: SLF001
    assert [type(p.span_exporter).__name__ for p in active] == processors
    assert all(isinstance(p, BatchSpanProcessor) for p in active)
    assert provider.resource.attributes["service.name"] == "morpheus"
    provider.shutdown()


def test_grpc_is_chosen_by_the_protocol_variable() -> None:
    provider = configure_tracing(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert provider is not None
    (processor,) = provider._active_span_processor._span_processors  # noqa: SLF001
    assert type(processor.span_exporter).__module__.endswith("grpc.trace_exporter")
    provider.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger': use otlp, console"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json': use http/protobuf or grpc",
        ),
    ],
)
def test_an_unknown_exporter_or_protocol_is_refused_by_name(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        configure_tracing(env)
