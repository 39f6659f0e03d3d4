"""A segment engine presented as a turn: the chunker is the adapter (LiveKit's StreamAdapter).

A segment engine speaks one text segment per `synthesize()` call. `ChunkedText` cuts the
utterance's text deltas into segments with the stream's chunker (a long delta in a worker
thread, so the event loop keeps serving) and keeps them, so every attempt of the failover loop
sees the same segments and knows which were spoken. `SegmentRun` is one attempt on one
engine: for each unspoken segment it waits while the client's buffer is full, asks the rate
controller for a chunk size, runs the engine's steps under the failover policy (stall timeout,
silence check) and sends each output on stamped with the segment's index, so the stitcher
seams segment to segment.

After a failure the next attempt starts again from the first segment if no audio has gone out;
after audio it goes on from the next unspoken segment (a segment the failed engine had begun is
not repeated, so the listener hears nothing twice; the rest of that segment is lost).
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import TYPE_CHECKING, NamedTuple

import anyio
from morpheus_tts.host.contracts import Chunker, SynthesisRequest
from morpheus_tts.host.failover import FailoverPolicy
from morpheus_tts.host.outputs import pace
from morpheus_tts.host.rate import first_words

if TYPE_CHECKING:
    from morpheus_tts.host.engine_stage import StageState, TextSoFar
    from morpheus_tts.host.pipeline import Utterance

CHUNK_OFF_LOOP_CHARS = 4096  # deltas longer than this are chunked in a worker thread


class Segment(NamedTuple):
    """One piece of text a segment engine speaks in one call."""

    index: int  # the chunker's segment number: pieces of one segment share it (no seam)
    text: str


class ChunkedText:
    """The utterance's text cut into segments as it arrives, shared by every attempt.

    Args:
        utt: the utterance (its chunker, its statistics).
        text: the text deltas so far (replayed first, then read live).
        split_first: cut the first segment after its first few words (low latency on a
            waveform engine: a shorter first call gives earlier first audio); both pieces keep
            the segment's index, so the stitcher joins them without a seam.
    """

    def __init__(self, utt: Utterance, text: TextSoFar, *, split_first: bool) -> None:
        self._utt, self._text = utt, text
        self._chunker: Chunker = utt.spec.chunker
        self._split_first = split_first
        self.segments: list[Segment] = []
        self.next = 0  # the first segment not spoken yet
        self._cut = 0  # chunker segments released so far
        self._fed = 0  # deltas of `text` given to the chunker
        self._ended = False

    async def get(self, index: int) -> Segment | None:
        """Segment number `index`, waiting for the text it needs; None once the text ended."""
        while index >= len(self.segments) and not self._ended:
            await self._cut_more()
        return self.segments[index] if index < len(self.segments) else None

    def reset(self) -> None:
        """Barge-in: forget the text the chunker holds."""
        self._chunker.reset()

    async def _cut_more(self) -> None:
        if self._fed < len(self._text.deltas):
            delta: str | None = self._text.deltas[self._fed]  # read by an earlier attempt
        else:
            delta = await self._text.next()
        if delta is None:
            self._ended = True
            self._add(self._chunker.flush())
            return
        self._fed += 1
        if len(delta) > CHUNK_OFF_LOOP_CHARS:
            # Long deltas are cut in a worker thread, so the event loop keeps serving.
            self._add(await anyio.to_thread.run_sync(self._chunker.push, delta))
        else:
            self._add(self._chunker.push(delta))

    def _add(self, pieces: list[str]) -> None:
        for piece in pieces:
            if self._utt.stats.first_segment_at is None:
                self._utt.stats.first_segment_at = time.perf_counter()
            split = self._split_first and self._cut == 0
            for text in first_words(piece) if split else [piece]:
                self.segments.append(Segment(self._cut, text))
            self._cut += 1


class SegmentRun:
    """One attempt at the utterance on a segment engine, segment by segment."""

    def __init__(self, state: StageState, policy: FailoverPolicy) -> None:
        self.state, self.utt, self.policy = state, state.utt, policy
        self.segment_outputs = 0  # outputs sent of the segment being spoken

    async def speak(self) -> None:
        """Speak every unspoken segment, waiting for the text each one needs."""
        utt, chunked = self.utt, self.state.chunked
        spec, stats, rate = utt.spec, utt.stats, utt.rate
        generation = utt.generation
        while (segment := await chunked.get(chunked.next)) is not None:
            await pace(rate, rate.expected_audio_ms(len(segment.text)))
            caps = self.policy.engine.engine.capabilities
            base = SynthesisRequest(
                text=segment.text,
                speed=spec.speed if caps.native_speed else 1.0,
                options=spec.options,
                chunk_size=rate.next_chunk_size(),
                low_latency=rate.low_latency,
            )
            request = self.policy.request(base, spec.rate.min_chunk)
            utt.probe.on_segment_start(segment.index, segment.text)
            self.segment_outputs = 0
            try:
                await self._speak_segment(request, segment, generation)
            except Exception:
                # Before any audio the next attempt starts over; after it, it goes on from
                # the next segment not begun (this one's rest is lost, nothing is doubled).
                if self.segment_outputs:
                    chunked.next += 1
                elif not self.state.audio_sent:
                    chunked.next = 0
                raise
            finally:
                utt.probe.on_segment_end(segment.index, self.segment_outputs)
            if utt.generation != generation:
                return
            if self.segment_outputs:
                self.state.unrecovered = None
            rate.segment_done(len(segment.text))
            stats.segments += 1
            stats.characters_spoken += len(segment.text)
            chunked.next += 1

    async def _speak_segment(
        self, request: SynthesisRequest, segment: Segment, generation: int
    ) -> None:
        """Send one segment's audio on, counting it in `segment_outputs`."""
        utt, caps = self.utt, self.policy.engine.engine.capabilities
        counted = caps.chunk_unit is not None or caps.output == "tokens"
        units = request.chunk_size if counted else None
        async with aclosing(self.policy.steps(request)) as outputs:
            started = time.perf_counter()
            async for output in outputs:
                if utt.generation != generation:
                    return  # barge-in: the step's output is discarded
                await self.state.hand_on(
                    caps, output, segment.index, generation, started, units=units
                )
                self.segment_outputs += 1
                await pace(utt.rate, None)
                started = time.perf_counter()

    def resumable(self) -> bool:
        """Segments not begun can always be spoken by the next attempt."""
        return True

    async def abandon(self, wait_s: float | None) -> None:
        """Nothing to release: a stalled step lets go of the limiter itself."""

    async def interrupt(self) -> None:
        """Barge-in: the chunker forgets what it holds."""
        self.state.chunked.reset()

    async def finish(self) -> None:
        """Every segment was spoken."""
