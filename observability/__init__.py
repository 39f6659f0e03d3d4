"""Observability: what the pipeline reports, and the telemetry that listens.

The pipeline (host/pipeline.py) talks to one narrow seam: at the start of an utterance it asks
its `UtteranceObserver` for an `UtteranceProbe`, then calls the probe from its own loop
(`on_segment_start`, `on_segment_end`, `on_chunk`, `on_error`, `on_end`). `NULL_OBSERVER`
does nothing (a bare Runtime, the CLI); `Telemetry` (the server) records Prometheus metrics
always and OpenTelemetry spans when it has a tracer provider, and logs a line per utterance.

Barge-in, failover and underflow are reported on the probe too (`record_interrupted`,
`record_barge_in`, `record_failover`, `record_underflow`): span events and links, counters.
The listener's buffer depth and its underflows come from the rate controller (host/rate.py),
which measures what the client really took.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from morpheus_tts.host.observer import (
    NULL_OBSERVER,
    NULL_PROBE,
    Outcome,
    UtteranceObserver,
    UtteranceProbe,
)
from morpheus_tts.observability.logs import REQUEST_ID
from morpheus_tts.observability.metrics import Metrics, default_metrics
from morpheus_tts.observability.tracing import TRACER_NAME, UtteranceSpans, attach, detach

if TYPE_CHECKING:
    from morpheus_tts.host.events import PCMChunk
    from morpheus_tts.host.pipeline import UtteranceSpec, UtteranceStats
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext

__all__ = [
    "NULL_OBSERVER",
    "NULL_PROBE",
    "Metrics",
    "Outcome",
    "Telemetry",
    "UtteranceObserver",
    "UtteranceProbe",
    "default_metrics",
]

log = logging.getLogger("morpheus.utterance")

SILENCE = 1e-3  # |sample| at or below this (-60 dBFS) counts as leading silence


class Telemetry:
    """Metrics always, spans when a tracer provider is given: the server's observer.

    Args:
        tracer_provider: where spans go; None traces nothing.
        metrics: the Prometheus series; None (the default) uses the process-wide ones.
    """

    def __init__(
        self, *, tracer_provider: TracerProvider | None = None, metrics: Metrics | None = None
    ) -> None:
        self.tracer = tracer_provider.get_tracer(TRACER_NAME) if tracer_provider else None
        self.metrics = metrics if metrics is not None else default_metrics()

    def on_request_start(
        self, spec: UtteranceSpec, stats: UtteranceStats, text: str | None
    ) -> UtteranceProbe:
        """Open the request span and count the stream as active."""
        return _UtteranceTelemetry(self, spec, stats, text)


class _UtteranceTelemetry:
    """One utterance's spans, series and log lines."""

    def __init__(
        self, telemetry: Telemetry, spec: UtteranceSpec, stats: UtteranceStats, text: str | None
    ) -> None:
        self.stats = stats
        self.engine = self._started_engine = spec.engine.name
        self.request_id = spec.request_id
        self.stream_id = spec.stream_id
        self.sample_rate = spec.stitcher.sample_rate
        self.metrics = telemetry.metrics
        self._offset_ns = time.time_ns() - time.perf_counter_ns()
        self._last_ready = stats.started_at
        self._chunks = self._underflows = self._silent_samples = 0
        self._audible_ms: float | None = None
        self._ended = False
        self._outcome_note: Outcome | None = None
        self._chunk_time = self.metrics.chunk_time.labels(self.engine)
        self.metrics.active_streams.labels(self.engine).inc()
        self.spans: UtteranceSpans | None = None
        self.trace: dict[str, str] | None = None
        if telemetry.tracer is not None:
            attributes: dict[str, Any] = {
                "tts.engine": self.engine, "tts.voice": spec.voice or "",
                "tts.stream_id": spec.stream_id, "tts.speed": spec.speed,
            }
            if text is not None:
                attributes["tts.characters"] = len(text)
            if spec.response_format:
                attributes["tts.format"] = spec.response_format
            if spec.request_id:
                attributes["tts.request_id"] = spec.request_id
            if spec.session_id is not None:
                attributes["tts.session_id"] = spec.session_id
                attributes["tts.turn"] = spec.turn
            self.spans = UtteranceSpans(
                telemetry.tracer, attributes, spec.trace, start_ns=self._ns(stats.started_at),
                # One trace per session turn, linked to the request or socket that opened it.
                new_trace="tts.session_id" in attributes,
            )
            self.trace = self.spans.carrier

    def _ns(self, perf: float) -> int:
        return int(perf * 1e9) + self._offset_ns

    @property
    def span_context(self) -> SpanContext | None:
        return self.spans.span_context if self.spans else None

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        request_token = REQUEST_ID.set(self.request_id) if self.request_id else None
        span_token = attach(self.spans.request) if self.spans else None
        try:
            yield
        finally:
            if span_token is not None:
                detach(span_token)
            if request_token is not None:
                REQUEST_ID.reset(request_token)

    def on_segment_start(self, index: int, text: str) -> None:
        if self.spans:
            self.spans.segment_started(index, len(text), self.engine, time.time_ns())

    def on_segment_end(self, index: int, engine_chunks: int) -> None:
        if self.spans:
            self.spans.segment_synthesized(index, engine_chunks, time.time_ns())

    def on_chunk(
        self,
        chunk: PCMChunk,
        ready_at: float,
        *,
        chunk_tokens: int | None = None,
        buffer_ms: float | None = None,
    ) -> None:
        samples = len(chunk.samples)
        if samples == 0:
            return
        self._chunks += 1
        duration_s = samples / chunk.sample_rate
        started, self._last_ready = self._last_ready, ready_at
        if self._chunks == 1:
            ttfa = ready_at - self.stats.started_at
            self.metrics.time_to_first_audio.labels(self.engine).observe(ttfa)
        else:
            self._chunk_time.observe(ready_at - started)
        if self._audible_ms is None:
            self._find_onset(chunk)
        if self.spans:
            attributes: dict[str, Any] = {
                "tts.chunk.seq": chunk.seq, "tts.chunk.samples": samples,
                "tts.chunk.duration_ms": 1000.0 * duration_s,
                "tts.chunk.latency_ms": 1000.0 * (ready_at - self.stats.started_at),
                "tts.chunk.segment": chunk.segment, "tts.engine": self.engine,
            }
            if buffer_ms is not None:
                attributes["tts.chunk.buffer_ms"] = buffer_ms
            if chunk_tokens is not None:
                attributes["tts.chunk.size_tokens"] = chunk_tokens
            self.spans.chunk(chunk.segment, self._ns(started), self._ns(ready_at), attributes)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("chunk ready", extra={
                "engine": self.engine, "seq": chunk.seq, "chunk_samples": samples,
                "chunk_tokens": chunk_tokens, "buffer_ms": buffer_ms,
            })

    def _find_onset(self, chunk: PCMChunk) -> None:
        loud = np.flatnonzero(np.abs(chunk.samples) > SILENCE)
        if len(loud) == 0:
            self._silent_samples += len(chunk.samples)
            return
        self._silent_samples += int(loud[0])
        first_audio_ms = self.stats.time_to_first_audio_ms or 0.0
        self._audible_ms = first_audio_ms + 1000.0 * self._silent_samples / chunk.sample_rate

    def on_error(self, error: BaseException) -> None:
        if self.spans:
            self.spans.fail(error)
        with self.activated():
            log.error(
                "utterance failed: %s", error,
                extra={"engine": self.engine, "stream_id": self.stream_id},
            )

    def on_end(self, outcome: Outcome) -> None:
        if self._ended:
            return
        self._ended = True
        if outcome == "cancelled" and self._outcome_note is not None:
            outcome = self._outcome_note
        stats, metrics = self.stats, self.metrics
        now = time.perf_counter()
        audio_s = stats.samples_out / self.sample_rate
        wall_s = now - stats.started_at
        rtf = wall_s / audio_s if audio_s > 0 else None
        metrics.active_streams.labels(self._started_engine).dec()
        metrics.utterances.labels(self.engine, outcome).inc()
        metrics.audio.labels(self.engine).inc(audio_s)
        if stats.first_byte_at is not None:
            metrics.time_to_first_byte.labels(self.engine).observe(
                stats.first_byte_at - stats.started_at
            )
        if outcome == "completed" and rtf is not None:
            metrics.real_time_factor.labels(self.engine).observe(rtf)
        summary: dict[str, Any] = {
            "tts.outcome": outcome, "tts.segments": stats.segments, "tts.chunks": self._chunks,
            "tts.audio_ms": 1000.0 * audio_s, "tts.underflows": self._underflows,
            "tts.characters_spoken": stats.characters_spoken,
        }
        for key, start, end in (
            ("tts.text_aggregation_ms", stats.started_at, stats.first_segment_at),
            ("tts.time_to_first_byte_ms", stats.started_at, stats.first_byte_at),
            ("tts.time_to_first_audio_ms", stats.started_at, stats.first_audio_at),
        ):
            if end is not None:
                summary[key] = 1000.0 * (end - start)
        if self._audible_ms is not None:
            summary["tts.time_to_first_audible_ms"] = self._audible_ms
            summary["tts.leading_silence_ms"] = (
                self._audible_ms - (stats.time_to_first_audio_ms or 0.0)
            )
        if rtf is not None:
            summary["tts.real_time_factor"] = rtf
        with self.activated():  # the log line carries the request and trace ids
            log.info("utterance %s", outcome, extra={
                "engine": self.engine, "stream_id": self.stream_id,
                **{key.removeprefix("tts."): value for key, value in summary.items()},
            })
        if self.spans:
            self.spans.end(summary, self._ns(now))

    def record_interrupted(self, fade_ms: int = 0) -> None:
        self._outcome_note = "interrupted"
        self.metrics.barge_ins.labels(self.engine).inc()
        if self.spans:
            self.spans.event("tts.barge_in", {
                "tts.barge_in.role": "interrupted", "tts.barge_in.fade_ms": fade_ms,
                "tts.barge_in.after_chunks": self._chunks,
            })

    def record_barge_in(self, interrupted: SpanContext | None) -> None:
        if self.spans:
            self.spans.event("tts.barge_in", {"tts.barge_in.role": "interrupting"})
            if interrupted is not None and interrupted.is_valid:
                self.spans.link(interrupted, {"tts.link": "interrupted"})

    def record_failover(self, from_engine: str, to_engine: str, reason: str | None = None) -> None:
        self.metrics.failovers.labels(from_engine, to_engine).inc()
        self.engine = to_engine
        self._chunk_time = self.metrics.chunk_time.labels(to_engine)
        if self.spans:
            self.spans.event("tts.failover", {
                "tts.failover.from_engine": from_engine, "tts.failover.to_engine": to_engine,
                "tts.failover.reason": reason or "", "tts.failover.after_chunks": self._chunks,
            })
            self.spans.request.set_attributes({"tts.degraded": True, "tts.engine": to_engine})
        log.warning("engine failover", extra={
            "from_engine": from_engine, "to_engine": to_engine, "reason": reason,
            "stream_id": self.stream_id,
        })

    def record_underflow(self, buffer_ms: float | None = None) -> None:
        self._underflows += 1
        self.metrics.underflows.labels(self.engine).inc()
        if self.spans:
            self.spans.event("tts.underflow", {"tts.underflow.after_chunks": self._chunks})
        log.info("playback underflow", extra={
            "engine": self.engine, "buffer_ms": buffer_ms, "stream_id": self.stream_id,
        })
