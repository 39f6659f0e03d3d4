"""A turn run of a turn-shaped engine: the text deltas straight into its own `EngineTurn`.

One utterance is one turn: `open_turn(TurnRequest)`, `push_text` for every delta, `end_text`
once the text has ended, `close`. Every output is stamped with one segment index, so the
stitcher keeps one codec decoder for the whole turn and puts no crossfade inside it. Whether
the engine stayed silent is judged once per turn, after `end_text`, against the whole text.

Barge-in (the stage is cancelled): the step in flight is stopped or waited for, then, holding
the engine's limiter so no step runs, the turn hears `interrupt(heard)` with what the client
was actually sent (in the engine's units) and `close()`. A failed turn hears `interrupt(0)`
and `close()` before its text is replayed on the next engine; once it was heard it cannot be.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from morpheus_tts.host.contracts import EngineTurn, TurnRequest
from morpheus_tts.host.failover import FailoverPolicy, SilentEngineError
from morpheus_tts.host.outputs import pace
from morpheus_tts.host.registry import LoadedEngine
from morpheus_tts.host.steps import request_error, run_locked, thread_steps

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    from morpheus_tts.host.engine_stage import StageState

log = logging.getLogger(__name__)


class EngineTurnRun:
    """One attempt at the utterance as one turn of a turn-shaped engine."""

    def __init__(self, state: StageState, policy: FailoverPolicy) -> None:
        self.state, self.utt, self.policy = state, state.utt, policy
        self.segment = state.attempts  # each attempt its own segment: a fresh decoder
        self.loaded: LoadedEngine = policy.engine
        self.voice = policy.attempt.candidate.voice
        self.turn: EngineTurn | None = None
        self.sent = 0  # outputs handed to the stitcher
        self.units_out = 0  # samples (pcm) or frames (tokens) the engine yielded
        self._closed = False

    async def speak(self) -> None:
        """Open the turn, feed it the text (replayed, then live), end it; send its output."""
        spec, utt, text = self.utt.spec, self.utt, self.state.text
        request = TurnRequest(
            session_id=spec.session_id, turn=spec.turn, voice=self.voice,
            options=spec.options, low_latency=utt.rate.low_latency, user_text=spec.user_text,
        )
        try:
            self.turn = self.loaded.engine.open_turn(request)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise request_error(exc) from exc
        utt.probe.on_segment_start(self.segment, text.joined)
        for delta in list(text.deltas):  # a replay after failover
            await self._run(self.turn.push_text(delta))
        while (delta := await text.next()) is not None:
            if utt.stats.first_segment_at is None:
                utt.stats.first_segment_at = time.perf_counter()
            await self._run(self.turn.push_text(delta))
        await self._run(self.turn.end_text())
        utt.probe.on_segment_end(self.segment, self.sent)
        if self.units_out == 0 and any(ch.isalnum() for ch in text.joined):
            raise SilentEngineError(
                f"engine {self.loaded.name!r} returned no audio for {text.joined!r}"
            )

    async def _run(self, steps: Iterator[np.ndarray]) -> None:
        utt, caps = self.utt, self.loaded.engine.capabilities
        generation = utt.generation
        started = time.perf_counter()
        async for output in thread_steps(self.loaded, steps, self.policy.stall_timeout_s):
            if utt.generation != generation:
                return  # barge-in: the step's output is discarded
            if len(output) == 0:
                continue
            self.units_out += len(output)
            await self.state.hand_on(caps, output, self.segment, generation, started)
            self.sent += 1
            await pace(utt.rate, None)
            started = time.perf_counter()

    def resumable(self) -> bool:
        """A turn can be replayed elsewhere only if none of it was sent."""
        return self.sent == 0

    async def abandon(self, wait_s: float | None) -> None:
        """A stalled step may still hold the limiter: wait for it at most `wait_s`."""
        await self._end(heard=0, wait_s=wait_s)

    async def interrupt(self) -> None:
        """Tell the turn what the client was sent, then close it."""
        await self._end(heard=self.heard_units())

    async def finish(self) -> None:
        """Close the turn; count it."""
        await self._end(heard=None)
        self.utt.stats.segments += 1
        self.utt.stats.characters_spoken += len(self.state.text.joined)

    def heard_units(self) -> int:
        """What the client was sent of this turn, in the engine's units (at most its output).

        Samples at the engine's rate for pcm engines, codec frames (rounded up: a frame begun
        was heard) for token engines; time-stretching by the host is undone.
        """
        utt = self.utt
        barged = utt.barged
        delivered = barged.delivered if barged is not None else utt.delivered_samples
        caps = self.loaded.engine.capabilities
        seconds = delivered / utt.spec.stitcher.sample_rate
        if not caps.native_speed:
            seconds *= utt.spec.speed
        if caps.output == "tokens":
            codec = utt.spec.codecs.get(caps.codec or "") or utt.spec.codec
            heard = math.ceil(seconds * codec.frame_rate) if codec else 0
        else:
            heard = math.floor(seconds * caps.sample_rate)
        return max(0, min(self.units_out, heard))

    async def _end(self, *, heard: int | None, wait_s: float | None = None) -> None:
        """End the turn once: `interrupt(heard)` first unless it ended normally, then close."""
        if self._closed or self.turn is None:
            return
        self._closed = True
        turn = self.turn

        def end() -> None:
            try:
                if heard is not None:
                    turn.interrupt(heard)
            finally:
                turn.close()

        if not await run_locked(self.loaded, end, wait_s=wait_s):
            log.warning(
                "turn not interrupted: a stalled step still holds the engine",
                extra={"engine": self.loaded.name},
            )
