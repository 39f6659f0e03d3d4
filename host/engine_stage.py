"""The engine stage of an utterance: its text deltas in, engine output out, as one turn.

There is one stream path, whatever the engine's shape. Every attempt at the utterance is a
turn run on one engine of the failover chain:

- a turn-shaped engine (`capabilities.incremental_text`) runs its own `EngineTurn`
  (`host.engine_turn`): the deltas go straight to `push_text`, one segment for the whole turn;
- a segment engine is presented as a turn by its chunker, the adapter (`host.segment_turn`,
  LiveKit's StreamAdapter): the deltas are cut into segments and each is one `synthesize()`.

The stage keeps what every attempt shares (the text so far, the segments cut from it, whether
audio has gone out) and runs the failover loop: a failed run is abandoned (a turn hears
`interrupt(0)` and `close()`), the policy picks the next attempt (a smaller-chunk retry, then
the next engine), and the next run replays what was not heard: everything before any audio;
after audio a segment engine goes on from the next unspoken segment, a turn cannot (the loss
stands and the utterance fails). A final error (a bad request) is never retried. A chain keeps
to one shape (the runtime filters `[server] failover`): a turn could not take over from the
middle of an utterance a segment engine had begun.

Barge-in or a client gone cancels the stage: the run stops its step (`host.steps`) and, for a
turn, `interrupt(heard)` with what the client was sent, then `close()`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from morpheus_tts.host.contracts import EngineCapabilities
from morpheus_tts.host.engine_turn import EngineTurnRun
from morpheus_tts.host.events import PCMChunk, TextDelta, TokenFrames
from morpheus_tts.host.failover import Candidate, FailoverPolicy
from morpheus_tts.host.outputs import duration_ms, ms_since, wrap_output
from morpheus_tts.host.segment_turn import ChunkedText, SegmentRun

if TYPE_CHECKING:
    import numpy as np
    from morpheus_tts.host.pipeline import Utterance


class TurnRun(Protocol):
    """One attempt at the utterance on one engine."""

    async def speak(self) -> None:
        """Speak the text (what earlier attempts left, then the live deltas) to its end."""

    def resumable(self) -> bool:
        """After a failure: can a next attempt go on without doubling what was heard?"""

    async def abandon(self, wait_s: float | None) -> None:
        """The run failed: release the engine (waiting for a stalled step at most `wait_s`)."""

    async def interrupt(self) -> None:
        """Barge-in or the client left: stop, keeping what the client was sent."""

    async def finish(self) -> None:
        """The run spoke the whole text: end it normally."""


class TextSoFar:
    """The utterance's text deltas as they arrive, kept so a later attempt can replay them."""

    def __init__(self, utt: Utterance, text_in: ObjectReceiveStream[TextDelta]) -> None:
        self._utt, self._text_in = utt, text_in
        self.deltas: list[str] = []
        self.ended = False

    @property
    def joined(self) -> str:
        """All the text received so far."""
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
            self.ended = delta.final
            if delta.text:
                self.deltas.append(delta.text)
                return delta.text
        return None


class StageState:
    """What the attempts of one utterance share.

    Args:
        utt: the utterance.
        text_in: its text deltas.
        raw_out: engine output on its way to the stitch stage.
    """

    def __init__(
        self,
        utt: Utterance,
        text_in: ObjectReceiveStream[TextDelta],
        raw_out: ObjectSendStream[PCMChunk | TokenFrames],
    ) -> None:
        self.utt, self.raw_out = utt, raw_out
        self.text = TextSoFar(utt, text_in)
        self.chunked = ChunkedText(utt, self.text, split_first=_low_latency_split(utt))
        self.attempts = 0
        self.audio_sent = False  # once audio went out, nothing heard may be replayed
        self.unrecovered: Exception | None = None  # a failure no later attempt spoke past

    async def hand_on(
        self,
        caps: EngineCapabilities,
        output: np.ndarray,
        segment: int,
        generation: int,
        started: float,
        *,
        units: int | None = None,
    ) -> None:
        """Send one engine output to the stitch stage, stamped, and tell rate control its cost.

        `started` is when the step that made it began; `units` the chunk size it was asked
        for, where the engine counts in units.
        """
        utt = self.utt
        event = wrap_output(
            caps, output, utt.stream_id, segment, utt.rate.chunks, generation, utt.probe.trace
        )
        utt.rate.produced(duration_ms(event, utt.spec), ms_since(started), units=units)
        if utt.stats.first_byte_at is None:
            utt.stats.first_byte_at = time.perf_counter()
        await self.raw_out.send(event)
        self.audio_sent = True


async def engine_stage(
    utt: Utterance,
    text_in: ObjectReceiveStream[TextDelta],
    raw_out: ObjectSendStream[PCMChunk | TokenFrames],
) -> None:
    """Speak the utterance on its engine, failing over along the chain."""
    spec = utt.spec
    policy = FailoverPolicy(
        [Candidate(spec.engine, spec.voice), *spec.failover],
        stall_timeout_s=spec.stall_timeout_s,
        on_failover=utt.probe.record_failover,
        on_unavailable=spec.on_unavailable,
    )
    _note_engine(utt, policy)
    state = StageState(utt, text_in, raw_out)
    async with text_in, raw_out:
        while True:
            run = _new_run(state, policy)
            try:
                await run.speak()
            except Exception as exc:  # noqa: BLE001 - the engine's failure, for the policy
                await run.abandon(wait_s=spec.stall_timeout_s)
                if not run.resumable():
                    raise  # a turn was heard: replaying it elsewhere would double it
                if state.audio_sent:
                    state.unrecovered = state.unrecovered or exc
                policy.failed(exc)  # re-raises once the chain is spent (or the request is bad)
                _note_engine(utt, policy)
                state.attempts += 1
                continue
            except BaseException:
                await run.interrupt()  # barge-in or client gone
                raise
            await run.finish()
            break
    if state.unrecovered is not None:
        raise state.unrecovered  # the text ended before the next attempt spoke: the loss stands


def _new_run(state: StageState, policy: FailoverPolicy) -> TurnRun:
    if policy.engine.turn_shaped:
        return EngineTurnRun(state, policy)
    return SegmentRun(state, policy)


def _low_latency_split(utt: Utterance) -> bool:
    # Waveform engines speak a segment per call: an earlier first audio needs a shorter first
    # call. Token engines get a smaller first chunk instead.
    return utt.spec.low_latency and utt.spec.engine.engine.capabilities.output == "pcm"


def _note_engine(utt: Utterance, policy: FailoverPolicy) -> None:
    utt.stats.engine, utt.stats.degraded = policy.engine.name, policy.degraded
    utt.stats.failures = list(policy.failures)
