"""The engine stage of a turn-shaped engine: text deltas straight into one `EngineTurn`.

One utterance is one turn: `open_turn(TurnRequest)`, `push_text` for every delta, `end_text`
once the text has ended, `close`. Every output is stamped with one segment index, so the
stitcher keeps one codec decoder for the whole turn and puts no crossfade inside it. Whether
the engine stayed silent is judged once per turn, after `end_text`, against the whole text.

Barge-in (the `BargeIn` on the control bus cancels this stage): the step in flight is stopped
or waited for, then, holding the engine's limiter so no step runs, the turn hears
`interrupt(heard)` with what the client was actually sent (in the engine's units) and
`close()`.

Failover before any audio: the failed turn is interrupted (`interrupt(0)`, `close()`) and the
text so far is replayed on the next turn-shaped engine of the chain. After audio has gone out
the loss stands and the utterance fails (the session goes on with its next turn).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import anyio
import numpy as np
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from morpheus_tts.host.contracts import EngineTurn, TurnRequest
from morpheus_tts.host.engine_stage import _pace, wrap_output
from morpheus_tts.host.events import PCMChunk, TextDelta, TokenFrames
from morpheus_tts.host.failover import Candidate, FailoverPolicy, SilentEngineError
from morpheus_tts.host.registry import LoadedEngine
from morpheus_tts.host.steps import request_error, run_locked, thread_steps

if TYPE_CHECKING:
    from collections.abc import Iterator

    from morpheus_tts.host.pipeline import Utterance

log = logging.getLogger(__name__)


async def turn_stage(
    utt: Utterance,
    text_in: ObjectReceiveStream[TextDelta],
    raw_out: ObjectSendStream[PCMChunk | TokenFrames],
) -> None:
    """Speak the utterance as one turn, failing over to the next turn engine before audio."""
    spec, stats = utt.spec, utt.stats
    chain = [Candidate(spec.engine, spec.voice)]
    chain += [c for c in spec.failover if c.engine.turn_shaped]
    policy = FailoverPolicy(
        chain, stall_timeout_s=spec.stall_timeout_s, on_failover=utt.probe.record_failover,
        on_unavailable=spec.on_unavailable,
    )
    _note_engine(utt, policy)
    text = _TextSoFar(utt, text_in)
    attempt = 0
    async with text_in, raw_out:
        while True:
            run = _TurnRun(utt, policy, attempt, raw_out)
            try:
                await run.speak(text)
            except Exception as exc:  # noqa: BLE001 - the engine's failure, for the policy
                # A stalled step may still hold the limiter: wait for it at most one timeout.
                await run.finish(heard=0, wait_s=spec.stall_timeout_s)
                if run.sent:
                    raise  # audio went out: nothing can be replayed without doubling it
                policy.failed(exc)  # re-raises once the chain is spent (or the request is bad)
                _note_engine(utt, policy)
                attempt += 1
                continue
            except BaseException:
                await run.finish(heard=run.heard_units())  # barge-in or client gone
                raise
            await run.finish(heard=None)
            stats.segments = 1
            stats.characters_spoken = len(text.joined)
            return


class _TextSoFar:
    """The turn's text deltas as they arrive, kept so a failover can replay them."""

    def __init__(self, utt: Utterance, text_in: ObjectReceiveStream[TextDelta]) -> None:
        self._utt, self._text_in = utt, text_in
        self.deltas: list[str] = []
        self.ended = False

    @property
    def joined(self) -> str:
        return "".join(self.deltas)

    async def next(self) -> str | None:
        """The next non-empty delta, or None once the text has ended."""
        while not self.ended:
            try:
                delta = await self._text_in.receive()
            except anyio.EndOfStream:
                self.ended = True
                return None
            if delta.generation < self._utt.generation:
                continue  # text of an interrupted turn
            if self._utt.stats.first_segment_at is None:
                self._utt.stats.first_segment_at = time.perf_counter()
            self.ended = delta.final
            if delta.text:
                self.deltas.append(delta.text)
                return delta.text
        return None


class _TurnRun:
    """One attempt at the turn on one engine."""

    def __init__(
        self,
        utt: Utterance,
        policy: FailoverPolicy,
        attempt: int,
        raw_out: ObjectSendStream[PCMChunk | TokenFrames],
    ) -> None:
        self.utt, self.policy, self.segment, self.raw_out = utt, policy, attempt, raw_out
        self.loaded: LoadedEngine = policy.engine
        self.voice = policy.attempt.candidate.voice
        self.turn: EngineTurn | None = None
        self.sent = 0  # outputs handed to the stitcher
        self.units_out = 0  # samples (pcm) or frames (tokens) the engine yielded
        self._closed = False

    async def speak(self, text: _TextSoFar) -> None:
        """Open the turn, feed it the text (replayed, then live), end it; send its output."""
        spec, utt = self.utt.spec, self.utt
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
            event = wrap_output(
                caps, output, utt.stream_id, self.segment, utt.rate.chunks, generation,
                utt.probe.trace,
            )
            units = len(output)
            self.units_out += units
            duration_ms = _duration_ms(event, utt)
            utt.rate.produced(duration_ms, 1000.0 * (time.perf_counter() - started))
            if utt.stats.first_byte_at is None:
                utt.stats.first_byte_at = time.perf_counter()
            await self.raw_out.send(event)
            self.sent += 1
            await _pace(utt.rate, None)
            started = time.perf_counter()

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

    async def finish(self, *, heard: int | None, wait_s: float | None = None) -> None:
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


def _note_engine(utt: Utterance, policy: FailoverPolicy) -> None:
    utt.stats.engine, utt.stats.degraded = policy.engine.name, policy.degraded
    utt.stats.failures = list(policy.failures)


def _duration_ms(event: PCMChunk | TokenFrames, utt: Utterance) -> float:
    if isinstance(event, PCMChunk):
        return event.duration_ms
    codec = utt.spec.codecs.get(event.codec) or utt.spec.codec
    return 1000.0 * len(event.frames) / codec.frame_rate if codec else 0.0
