"""The observer port: what the pipeline reports, and to whom (the host owns this seam).

At the start of an utterance the pipeline asks its `UtteranceObserver` for an
`UtteranceProbe`, then calls the probe from its own loop (`on_segment_start`,
`on_segment_end`, `on_chunk`, `on_error`, `on_end`, and `record_*` for barge-in, failover and
underflow). `NULL_OBSERVER` reports nothing (a bare Runtime, the CLI); `observability.Telemetry`
(the server) implements the port with metrics, spans and logs. The host never imports
`observability`: the dependency points from there to here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from morpheus_tts.host.events import PCMChunk
    from morpheus_tts.host.pipeline import UtteranceSpec, UtteranceStats
    from opentelemetry.trace import SpanContext

__all__ = ["NULL_OBSERVER", "NULL_PROBE", "Outcome", "UtteranceObserver", "UtteranceProbe"]

Outcome = Literal["completed", "cancelled", "interrupted", "error"]


class UtteranceProbe(Protocol):
    """What one utterance reports. Every method is called from the pipeline's event loop.

    `trace` is the W3C carrier the pipeline stamps on its events (None when not traced).
    """

    trace: dict[str, str] | None

    @property
    def span_context(self) -> SpanContext | None:
        """The request span's context, for links from a turn that interrupts this one."""

    def activated(self) -> contextlib.AbstractContextManager[None]:
        """Make the request id and request span current for the stage tasks started inside."""

    def on_segment_start(self, index: int, text: str) -> None:
        """The engine starts synthesizing text segment `index`."""

    def on_segment_end(self, index: int, engine_chunks: int) -> None:
        """The engine finished segment `index` after yielding `engine_chunks` outputs."""

    def on_chunk(
        self,
        chunk: PCMChunk,
        ready_at: float,
        *,
        chunk_tokens: int | None = None,
        buffer_ms: float | None = None,
    ) -> None:
        """A stitched chunk is ready to send (`ready_at`: `time.perf_counter()`).

        Args:
            chunk: the chunk (empty ones are ignored).
            ready_at: when it became ready.
            chunk_tokens: codec frames it came from (token engines).
            buffer_ms: the listener's playback buffer (None: not known yet).
        """

    def on_error(self, error: BaseException) -> None:
        """The utterance failed with `error` (`on_end("error")` follows)."""

    def on_end(self, outcome: Outcome) -> None:
        """The utterance is over; called exactly once, last."""

    def record_interrupted(self, fade_ms: int = 0) -> None:
        """A barge-in stops this utterance (cut, or a fade of `fade_ms`)."""

    def record_barge_in(self, interrupted: SpanContext | None) -> None:
        """This utterance interrupted the one whose request span is `interrupted` (a link)."""

    def record_failover(self, from_engine: str, to_engine: str, reason: str | None = None) -> None:
        """The stream moved from a failing engine to the next one in the chain."""

    def record_underflow(self, buffer_ms: float | None = None) -> None:
        """The listener's buffer ran dry before the stream ended (a gap it heard)."""


class UtteranceObserver(Protocol):
    """Hands each utterance its probe."""

    def on_request_start(
        self, spec: UtteranceSpec, stats: UtteranceStats, text: str | None
    ) -> UtteranceProbe:
        """An utterance starts now (`stats.started_at`); `text` is its whole text if known."""


class _NullProbe:
    """Reports nothing; one attribute read and a no-op call per chunk."""

    trace = None
    span_context = None

    def activated(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def on_segment_start(self, index: int, text: str) -> None: ...
    def on_segment_end(self, index: int, engine_chunks: int) -> None: ...
    def on_chunk(self, chunk: PCMChunk, ready_at: float, **_: Any) -> None: ...
    def on_error(self, error: BaseException) -> None: ...
    def on_end(self, outcome: Outcome) -> None: ...
    def record_interrupted(self, fade_ms: int = 0) -> None: ...
    def record_barge_in(self, interrupted: SpanContext | None) -> None: ...
    def record_failover(self, from_engine: str, to_engine: str, reason: str | None = None) -> None: ...  # noqa: E501
    def record_underflow(self, buffer_ms: float | None = None) -> None: ...


NULL_PROBE: UtteranceProbe = _NullProbe()
"""A probe that reports nothing."""


class _NullObserver:
    def on_request_start(
        self, spec: UtteranceSpec, stats: UtteranceStats, text: str | None
    ) -> UtteranceProbe:
        return NULL_PROBE


NULL_OBSERVER: UtteranceObserver = _NullObserver()
"""The observer of a bare Runtime: reports nothing."""
