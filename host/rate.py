"""Rate control: chunk sizes and pacing from a model of the client's playback buffer.

The model is driven by what the client really took, not by what was produced: the consumer side
(the HTTP layer after each socket send, or `AudioStream` on iteration) reports
`consumed(samples)`, and the client is assumed to play that audio in real time from the first
report on. The buffer depth is what it received minus what it has played; when it runs dry
before the stream ends the client heard a gap: an underflow. The engine stage reports each
chunk's production time (`produced`), smoothed by an EWMA, and the stitch stage reports audio
it handed on (`emitted`), so audio queued between the stitcher and the client counts as on its
way.

The engine stage asks `next_chunk_size()` before each request and `pause_s()` between steps:

    INIT -> WARMUP -> FILL -> STEADY            (start: small first chunk, grow x1.5 to target)
                       ^          |
                    RECOVER <- UNDERFLOW        (buffer low or dry: halve, low latency)

- INIT: nothing produced; WARMUP: produced, the client has not taken any yet.
- FILL: playing, buffer under target: each chunk grows x1.5 up to `target_chunk`.
- STEADY: buffer at target; the chunk drifts back toward target by one unit per request while
  a chunk one unit larger would still land under `buffer_max_ms`, and shrinks slightly when
  it would not; if the buffer drops under `buffer_min_ms` -> UNDERFLOW.
- UNDERFLOW: chunk halved (not under `min_chunk`), low latency on; the next request -> RECOVER.
- RECOVER: grow again like FILL until the buffer is back at target -> STEADY, low latency off.
- Overflow: `pause_s()` holds the engine while making the next chunk now would push the
  buffer (plus audio on its way) over `buffer_max_ms` when it lands, but never so long that
  the buffer would fall under target before the chunk arrives. The next chunk's cost is
  predicted from the EWMAs: its audio (from the segment's length at the smoothed ms of audio
  per character, or per unit of chunk size, else the smoothed chunk duration) times the
  smoothed real-time factor.

Every method takes an optional `at` (seconds on the injected clock), so tests drive it without
threads or sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

import msgspec

EWMA_ALPHA = 0.3  # weight of the newest chunk time: settles in ~5-8 chunks, damps one-offs
GROWTH = 1.5  # the seed's `size * 1.5` while the buffer is under target
SHRINK_AFTER_OVERFLOW = 0.875  # "reduce size slightly" once an overflow pause ends
SAFETY = 2.0  # assume the next chunk may take twice as long as predicted (a loaded CPU)
HEADROOM = 0.2  # aim the buffer's peaks this share of (max - target) under max


class RateState(str, Enum):
    """Where the controller is in its start-up / steady / recovery cycle."""

    INIT = "init"
    WARMUP = "warmup"
    FILL = "fill"
    STEADY = "steady"
    UNDERFLOW = "underflow"
    RECOVER = "recover"


class RateSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The controller's knobs, taken from `[server]` (see `from_server`).

    Args:
        first_chunk: first request's size, in engine units (tokens); 8/12/16 are the profiles.
        target_chunk: size the chunk grows toward while the buffer fills.
        min_chunk: hard lower bound.
        max_chunk: hard upper bound.
        lock_chunk: a fixed size that overrides the adaptation (manual override).
        buffer_target_ms: the client buffer depth to hold.
        buffer_min_ms: under this (once playing) the controller counts as underflowing.
        buffer_max_ms: over this (including audio on its way) the engine pauses.
        pace: pause the engine on overflow; False lets a fast reader take audio as fast as
            it is made (downloads, benchmarks of throughput).
    """

    first_chunk: int = 12
    target_chunk: int = 32
    min_chunk: int = 8
    max_chunk: int = 64
    lock_chunk: int | None = None
    buffer_target_ms: float = 300.0
    buffer_min_ms: float = 200.0
    buffer_max_ms: float = 500.0
    pace: bool = True

    @classmethod
    def from_server(cls, server: object, *, pace: bool | None = None) -> RateSettings:
        """Build from a `ServerSettings` (duck-typed, so this module imports no config)."""
        return cls(
            first_chunk=server.first_chunk_tokens,  # type: ignore[attr-defined]
            target_chunk=server.target_chunk_tokens,  # type: ignore[attr-defined]
            min_chunk=server.min_chunk_tokens,  # type: ignore[attr-defined]
            max_chunk=server.max_chunk_tokens,  # type: ignore[attr-defined]
            lock_chunk=server.lock_chunk_tokens,  # type: ignore[attr-defined]
            buffer_target_ms=server.playback_buffer_ms,  # type: ignore[attr-defined]
            buffer_min_ms=server.buffer_min_ms,  # type: ignore[attr-defined]
            buffer_max_ms=server.buffer_max_ms,  # type: ignore[attr-defined]
            pace=getattr(server, "pace_playback", True) if pace is None else pace,
        )


class PlaybackBuffer:
    """The client's buffer: audio it received minus audio it has played in real time.

    Playback starts at the first `receive`. When the buffer runs dry the play clock waits
    (the client rebuffers); a dry spell before `finish()` is an underflow.
    """

    def __init__(self, at: float) -> None:
        self.depth_ms = 0.0
        self.received_ms = 0.0
        self.underflows = 0
        self.playing = False
        self.finished = False
        self._last = at
        self._dry = False

    def advance(self, at: float) -> None:
        """Play audio up to time `at`."""
        if self.playing and at > self._last:
            played = 1000.0 * (at - self._last)
            if played >= self.depth_ms and not self.finished and not self._dry:
                self.underflows += 1
                self._dry = True
            self.depth_ms = max(0.0, self.depth_ms - played)
        self._last = max(self._last, at)

    def receive(self, duration_ms: float, at: float) -> None:
        """The client took `duration_ms` of audio at time `at`."""
        self.advance(at)
        self.playing = True
        self.depth_ms += duration_ms
        self.received_ms += duration_ms
        if duration_ms > 0:
            self._dry = False


class RateController:
    """Chooses chunk sizes and pauses for one stream; a pure state machine.

    Args:
        settings: sizes and buffer thresholds.
        sample_rate: the rate of the samples reported to `consumed` and `emitted`.
        low_latency: the request asked for early first audio: the first chunk is `min_chunk`
            and requests carry `low_latency` until the buffer first reaches target.
        clock: seconds, monotonic; injected by tests.
    """

    def __init__(
        self,
        settings: RateSettings | None = None,
        *,
        sample_rate: int = 24000,
        low_latency: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = s = settings or RateSettings()
        self.sample_rate = sample_rate
        self._clock = clock
        self.state = RateState.INIT
        self.low_latency = low_latency
        first = s.min_chunk if low_latency else s.first_chunk
        self.chunk_size = float(_clamp(first, s.min_chunk, s.max_chunk))
        self.chunk_ms_ewma: float | None = None  # wall ms to produce one chunk
        self.audio_ms_ewma: float | None = None  # audio ms in one chunk
        self.rtf_ewma: float | None = None  # wall ms per ms of audio produced
        self.ms_per_char_ewma: float | None = None  # audio ms per character of text
        self.ms_per_unit_ewma: float | None = None  # audio ms per unit of chunk size (tokens)
        self._segment_audio_ms = 0.0
        self.chunks = 0
        self.emitted_ms = 0.0
        self.paused = False
        self.pauses = 0
        self.buffer = PlaybackBuffer(clock())
        self.history: list[RateState] = [self.state]

    # -- reports -----------------------------------------------------------------------------

    def produced(
        self,
        duration_ms: float,
        elapsed_ms: float,
        *,
        units: int | None = None,
        at: float | None = None,
    ) -> None:
        """The engine made a chunk of `duration_ms` audio in `elapsed_ms` of wall time.

        `units` is the chunk size it was asked for (token engines), so the next chunk's audio
        can be predicted from the next size.
        """
        self._advance(at)
        self.chunks += 1
        self.chunk_ms_ewma = _ewma(self.chunk_ms_ewma, elapsed_ms)
        self._segment_audio_ms += duration_ms
        if duration_ms > 0:
            self.audio_ms_ewma = _ewma(self.audio_ms_ewma, duration_ms)
            if units:
                self.ms_per_unit_ewma = _ewma(self.ms_per_unit_ewma, duration_ms / units)
            self.rtf_ewma = _ewma(self.rtf_ewma, elapsed_ms / duration_ms)
        if self.state is RateState.INIT:
            self._enter(RateState.WARMUP)

    def segment_done(self, characters: int) -> None:
        """A text segment of `characters` is fully synthesized (learns audio per character)."""
        if characters > 0 and self._segment_audio_ms > 0:
            self.ms_per_char_ewma = _ewma(
                self.ms_per_char_ewma, self._segment_audio_ms / characters
            )
        self._segment_audio_ms = 0.0

    def emitted(self, samples: int, *, at: float | None = None) -> None:
        """The stitcher handed `samples` on toward the client."""
        self._advance(at)
        self.emitted_ms += 1000.0 * samples / self.sample_rate

    def consumed(self, samples: float, *, at: float | None = None) -> None:
        """The client took `samples` (a socket accepted them, a reader received them)."""
        at = self._clock() if at is None else at
        self._advance(at)
        self.buffer.receive(1000.0 * samples / self.sample_rate, at)
        if self.state in (RateState.INIT, RateState.WARMUP) and samples > 0:
            self._enter(RateState.FILL)

    def finish(self, *, at: float | None = None) -> None:
        """No more audio will come: the buffer running dry from now on is the end, not a gap."""
        self._advance(at)
        self.buffer.finished = True

    # -- questions ---------------------------------------------------------------------------

    @property
    def underflows(self) -> int:
        """Times the client's buffer ran dry before the end."""
        return self.buffer.underflows

    def buffer_ms(self, *, at: float | None = None) -> float:
        """Audio the client holds and has not played yet."""
        self._advance(at)
        return self.buffer.depth_ms

    def in_flight_ms(self) -> float:
        """Audio handed on by the stitcher that the client has not taken yet."""
        return max(0.0, self.emitted_ms - self.buffer.received_ms)

    def next_chunk_size(self, *, at: float | None = None) -> int:
        """The size for the next engine request; moves the state machine one decision on."""
        self._advance(at)
        s = self.settings
        depth = self.buffer.depth_ms + self.in_flight_ms()
        if self.state is RateState.UNDERFLOW:
            self._enter(RateState.RECOVER)
        elif self.state in (RateState.FILL, RateState.RECOVER):
            if self.buffer.depth_ms >= s.buffer_target_ms:
                self._enter(RateState.STEADY)
                self.low_latency = False
            else:
                self.chunk_size = min(float(s.target_chunk), self.chunk_size * GROWTH)
        elif self.state is RateState.STEADY and self.buffer.depth_ms < s.buffer_min_ms:
            self._underflow()
        elif self.state is RateState.STEADY and not self._fits(self.chunk_size):
            self.chunk_size *= SHRINK_AFTER_OVERFLOW  # can't land under max: smaller
        elif self.state is RateState.STEADY and self._fits(self.chunk_size + 1):
            # Healthy: drift back toward target after the trims of overflows.
            self.chunk_size = min(float(s.target_chunk), self.chunk_size + 1)
        self.chunk_size = max(self.chunk_size, float(s.min_chunk))
        if s.lock_chunk is not None:
            return _clamp(s.lock_chunk, s.min_chunk, s.max_chunk)
        size = round(self.chunk_size)
        if self.rtf_ewma and self.buffer.playing and self.chunks:
            # The next chunk must be made before the buffer (and what is on its way) drains:
            # cap it at what the smoothed per-unit time allows.
            per_unit_ms = (self.chunk_ms_ewma or 0.0) / max(1.0, self.chunk_size)
            if per_unit_ms > 0 and depth > 0:
                size = min(size, int(depth / per_unit_ms))
        return _clamp(size, s.min_chunk, s.max_chunk)

    def expected_audio_ms(self, characters: int | None = None) -> float:
        """Audio the next chunk will likely hold: from its text if given, else the EWMA."""
        if characters and self.ms_per_char_ewma:
            return characters * self.ms_per_char_ewma
        if self.ms_per_unit_ewma:
            return self.ms_per_unit_ewma * round(self.chunk_size)
        return self.audio_ms_ewma or 0.0

    def pause_s(self, *, next_audio_ms: float | None = None, at: float | None = None) -> float:
        """Seconds the engine should wait before making its next chunk (0: go on).

        Args:
            next_audio_ms: the audio the next chunk will hold, if known (see
                `expected_audio_ms`); else the smoothed chunk duration.
            at: the time, on the controller's clock.
        """
        self._advance(at)
        s = self.settings
        if not s.pace or not self.buffer.playing:
            return 0.0
        audio = next_audio_ms if next_audio_ms is not None else self.expected_audio_ms()
        make = (self.rtf_ewma or 0.0) * audio if audio else (self.chunk_ms_ewma or 0.0)
        ahead = self.buffer.depth_ms + self.in_flight_ms()
        peak = ahead - make + audio  # the buffer just after the chunk lands
        trough = ahead - SAFETY * make  # just before it lands, if it comes late
        ceiling = s.buffer_max_ms - HEADROOM * (s.buffer_max_ms - s.buffer_target_ms)
        wait_ms = min(peak - ceiling, trough - s.buffer_target_ms)
        if wait_ms <= 0:
            self.paused = False
            return 0.0
        if not self.paused:
            self.paused = True
            self.pauses += 1
        return wait_ms / 1000.0

    def should_pause(self, *, at: float | None = None) -> bool:
        """True while the client holds more than it needs (overflow)."""
        return self.pause_s(at=at) > 0

    def snapshot(self) -> dict[str, object]:
        """State for logs, spans and the perf panel."""
        return {
            "state": self.state.value,
            "chunk_size": round(self.chunk_size),
            "buffer_ms": round(self.buffer.depth_ms, 1),
            "in_flight_ms": round(self.in_flight_ms(), 1),
            "chunk_ms_ewma": None if self.chunk_ms_ewma is None else round(self.chunk_ms_ewma, 2),
            "underflows": self.underflows,
            "pauses": self.pauses,
            "low_latency": self.low_latency,
        }

    # -- internals ---------------------------------------------------------------------------

    def _advance(self, at: float | None) -> None:
        before = self.buffer.underflows
        self.buffer.advance(self._clock() if at is None else at)
        if self.buffer.underflows > before:
            self._underflow()

    def _fits(self, size: float) -> bool:
        """Would a chunk of `size`, made just in time for target, land under max?"""
        s = self.settings
        if self.ms_per_unit_ewma is None or self.rtf_ewma is None:
            return self.buffer.depth_ms <= s.buffer_max_ms  # no unit model: judge by the buffer
        audio = self.ms_per_unit_ewma * round(size)
        return s.buffer_target_ms + (SAFETY - 1) * self.rtf_ewma * audio + audio <= s.buffer_max_ms

    def _underflow(self) -> None:
        s = self.settings
        self.chunk_size = max(float(s.min_chunk), self.chunk_size / 2)
        self.low_latency = True
        self._enter(RateState.UNDERFLOW)

    def _enter(self, state: RateState) -> None:
        if state is not self.state:
            self.state = state
            self.history.append(state)


def _ewma(previous: float | None, value: float) -> float:
    return value if previous is None else EWMA_ALPHA * value + (1 - EWMA_ALPHA) * previous


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, int(value)))


def first_words(text: str, words: int = 3) -> list[str]:
    """Cut `text` after its first clause or first `words` words, whichever comes first.

    Returns `[text]` when it is too short to be worth two engine calls.
    """
    parts = text.split(" ")
    if sum(1 for p in parts if p) <= words + 2:
        return [text]
    for i, part in enumerate(parts[:words]):
        if part.endswith((",", ";", ":")) and i > 0:
            return [" ".join(parts[: i + 1]), " ".join(parts[i + 1 :])]
    return [" ".join(parts[:words]), " ".join(parts[words:])]
