"""OpenTelemetry tracing: a provider from the standard `OTEL_*` variables, and utterance spans.

Tracing is off unless configured, and costs nothing then (no provider, no middleware, no
spans). It turns on with `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) or with
`OTEL_TRACES_EXPORTER` = `otlp`, `console` (stderr) or both, comma-separated; `none` turns it
off. `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (default, port 4318) or `grpc` (4317).
The exporters read their own endpoint, headers and timeout variables; `BatchSpanProcessor`
reads `OTEL_BSP_*`, the provider reads `OTEL_TRACES_SAMPLER`, and the resource reads
`OTEL_SERVICE_NAME` (default "morpheus") and `OTEL_RESOURCE_ATTRIBUTES`.

`UtteranceSpans` owns the spans of one utterance: `tts.request`, one `tts.segment` per text
segment (from the engine starting it to its last chunk sent) and one `tts.chunk` per audio chunk
sent. Spans are started with explicit parents and explicit timestamps inside the pipeline's own
loop, never through the ambient context, so concurrent streams cannot adopt each other's spans.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "morpheus"
PROTOCOLS = ("http/protobuf", "grpc")
EXPORTERS = ("otlp", "console", "none")

_W3C = TraceContextTextMapPropagator()


# -- the provider -------------------------------------------------------------------------------


def configure_tracing(env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Build a TracerProvider with batch export from the `OTEL_*` variables, or None (off).

    The provider is returned, not installed globally: the app hands it to Litestar's
    OpenTelemetry middleware and to the utterance observer, and shuts it down (flushing the
    batch) when it stops.

    Args:
        env: the variables to read (default: the process environment). The OTLP exporters
            always read their endpoint, headers and timeouts from the process environment.

    Raises:
        ValueError: an unknown exporter or protocol; the message names the variable and the
            choices.
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = _exporter_names(env)
    if not names:
        return None
    provider = TracerProvider(resource=_resource(env))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    return provider


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    chosen = env.get("OTEL_TRACES_EXPORTER")
    if chosen is None or not chosen.strip():
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [name.strip().lower() for name in chosen.split(",") if name.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise ValueError(f"OTEL_TRACES_EXPORTER={chosen!r}: use {', '.join(EXPORTERS)}")
    return [name for name in dict.fromkeys(names) if name != "none"]


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)  # stdout may be carrying audio
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use {' or '.join(PROTOCOLS)}"
        )
    return OTLPSpanExporter()


def _resource(env: Mapping[str, str]) -> Resource:
    attributes: dict[str, Any] = {"service.version": _version()}
    if env.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = env["OTEL_SERVICE_NAME"]
    elif "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes[SERVICE_NAME] = "morpheus"
    return Resource.create(attributes)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("morpheus-tts")
    except PackageNotFoundError:
        return "0+unknown"


def litestar_plugin(provider: TracerProvider) -> Any:
    """Litestar's OpenTelemetry plugin: one server span per request, no per-send spans.

    A streamed response sends hundreds of body messages; a span each would bury the audio
    spans. `/health` and `/metrics` (polled) are not traced.
    """
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            tracer_provider=provider, exclude_spans=["send"], exclude=["^/health$", "^/metrics$"]
        )
    )


def shutdown_tracing(provider: TracerProvider) -> None:
    """Export what is still queued and stop (blocks up to the exporters' timeouts)."""
    provider.shutdown()


# -- context helpers ----------------------------------------------------------------------------


def current_trace_id() -> str | None:
    """The 32-hex-digit trace id of the current span, or None when nothing is traced."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_carrier() -> dict[str, str] | None:
    """The current span's W3C context (`traceparent`, maybe `tracestate`), or None."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier or None


def carrier_from_traceparent(
    traceparent: str | None, tracestate: str | None = None
) -> dict[str, str] | None:
    """A W3C carrier for a client's `traceparent`; None when it is missing or malformed."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent.strip()}
    if tracestate:
        carrier["tracestate"] = tracestate
    extracted = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    return carrier if extracted.is_valid else None


def span_context_of(carrier: Mapping[str, str] | None) -> SpanContext | None:
    """The remote span context in a W3C carrier, or None."""
    if not carrier:
        return None
    span_context = trace.get_current_span(_W3C.extract(dict(carrier))).get_span_context()
    return span_context if span_context.is_valid else None


def attach(span: Span) -> object:
    """Make `span` current in this task (and tasks started from it); returns a detach token."""
    return otel_context.attach(trace.set_span_in_context(span))


def detach(token: object) -> None:
    """Undo `attach`."""
    otel_context.detach(token)  # type: ignore[arg-type]


# -- the spans of one utterance -----------------------------------------------------------------


class UtteranceSpans:
    """The request, segment and chunk spans of one utterance.

    Args:
        tracer: where spans go.
        attributes: the request span's starting attributes (engine, voice, characters...).
        parent: W3C carrier of the parent (the HTTP server span, a client's traceparent).
        new_trace: start a new trace linked to `parent` rather than continuing it (one trace
            per turn of a realtime session, however long its socket lives).
        start_ns: the request's start, in epoch nanoseconds.
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        attributes: dict[str, Any],
        parent: Mapping[str, str] | None,
        *,
        start_ns: int,
        new_trace: bool = False,
    ) -> None:
        self.tracer = tracer
        links: list[Link] = []
        # No parent: a new trace, never whatever span happens to be current in this task.
        parent_context = _W3C.extract(dict(parent)) if parent else Context()
        if new_trace:
            opener = span_context_of(parent)
            links = [Link(opener, {"tts.link": "opened_by"})] if opener else []
            parent_context = Context()
        self.request = tracer.start_span(
            "tts.request", context=parent_context, kind=SpanKind.INTERNAL,
            attributes=attributes, links=links, start_time=start_ns,
        )
        self._request_context = trace.set_span_in_context(self.request)
        self.carrier: dict[str, str] = {}
        _W3C.inject(self.carrier, context=self._request_context)
        self._segments: dict[int, Span] = {}
        self._segment_contexts: dict[int, Context] = {}  # parents of their chunk spans
        self._segment_start_ns: dict[int, int] = {}

    @property
    def span_context(self) -> SpanContext:
        """The request span's context (what a barge-in links to)."""
        return self.request.get_span_context()

    def segment_started(self, index: int, characters: int, engine: str, now_ns: int) -> None:
        """Open the span of text segment `index` (the engine begins it).

        A segment started again (failover replays it on the next engine) ends the earlier
        attempt's span, marked `tts.segment.abandoned`.
        """
        earlier = self._segments.pop(index, None)
        self._segment_contexts.pop(index, None)
        if earlier is not None:
            earlier.set_attribute("tts.segment.abandoned", True)
            earlier.end(end_time=now_ns)
        span = self.tracer.start_span(
            "tts.segment", context=self._request_context, start_time=now_ns,
            attributes={
                "tts.segment.index": index, "tts.segment.characters": characters,
                "tts.engine": engine,
            },
        )
        self._segments[index] = span
        self._segment_contexts[index] = trace.set_span_in_context(span)
        self._segment_start_ns[index] = now_ns

    def segment_synthesized(self, index: int, engine_chunks: int, now_ns: int) -> None:
        """The engine finished segment `index`; its span stays open until its audio is sent."""
        span = self._segments.get(index)
        if span is not None:
            span.set_attribute("tts.segment.engine_chunks", engine_chunks)
            synthesis_ns = now_ns - self._segment_start_ns[index]
            span.set_attribute("tts.segment.synthesis_ms", synthesis_ns / 1e6)

    def chunk(self, segment: int, start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
        """Record one sent chunk as a span under its segment; earlier segments are complete."""
        for index in [i for i in self._segments if i < segment]:
            self._segments.pop(index).end(end_time=start_ns)
            del self._segment_contexts[index]
        parent_context = self._segment_contexts.get(segment)
        if parent_context is not None:
            start_ns = max(start_ns, self._segment_start_ns[segment])
        else:
            parent_context = self._request_context
        span = self.tracer.start_span(
            "tts.chunk", context=parent_context, start_time=start_ns, attributes=attributes
        )
        span.end(end_time=end_ns)

    def event(self, name: str, attributes: dict[str, Any], now_ns: int | None = None) -> None:
        """Add an event (barge-in, failover, underflow) to the request span."""
        self.request.add_event(name, attributes, timestamp=now_ns)

    def link(self, span_context: SpanContext, attributes: dict[str, Any]) -> None:
        """Link the request span to another (the turn this one interrupted)."""
        self.request.add_link(span_context, attributes)

    def fail(self, error: BaseException) -> None:
        """Mark the request (and any open segment) as failed with `error`."""
        for span in self._segments.values():
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        self.request.record_exception(error)
        self.request.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def end(self, attributes: dict[str, Any], now_ns: int) -> None:
        """Set the closing attributes and end every open span."""
        for span in self._segments.values():
            span.end(end_time=now_ns)
        self._segments.clear()
        self._segment_contexts.clear()
        self.request.set_attributes(attributes)
        self.request.end(end_time=now_ns)
