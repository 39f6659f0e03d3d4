"""The rate controller as a pure state machine: a fake clock, synthetic engines of known speed."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
from morpheus_tts.host.rate import (
    PlaybackBuffer,
    RateController,
    RateSettings,
    RateState,
    first_words,
)
from morpheus_tts.host.runtime import Runtime, SpeakRequest

RATE = 24000


class Clock:
    """Seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def samples(ms: float) -> int:
    return round(RATE * ms / 1000)


@dataclass
class Run:
    """What a simulated stream went through."""

    sizes: list[int] = field(default_factory=list)
    troughs: list[float] = field(default_factory=list)  # buffer just before a chunk lands
    peaks: list[float] = field(default_factory=list)  # buffer just after
    ewma: list[float] = field(default_factory=list)


def simulate(
    ctrl: RateController,
    clock: Clock,
    *,
    token_ms: float,
    token_delay_ms: float,
    chunks: int,
    stall_at: int | None = None,
    stall_ms: float = 0.0,
) -> Run:
    """A token engine making `size * token_ms` of audio in `size * token_delay_ms`, and a
    client that takes every chunk the moment it exists (the fastest reader)."""
    run = Run()
    for index in range(chunks):
        size = ctrl.next_chunk_size()
        for _ in range(1000):  # bounded: each wait moves the clock forward
            wait = ctrl.pause_s()
            if wait <= 0:
                break
            clock.now += wait
        run.sizes.append(size)
        elapsed = size * token_delay_ms + (stall_ms if index == stall_at else 0.0)
        clock.now += elapsed / 1000
        run.troughs.append(ctrl.buffer_ms())
        ctrl.produced(size * token_ms, elapsed, units=size)
        ctrl.emitted(samples(size * token_ms))
        ctrl.consumed(samples(size * token_ms))
        run.peaks.append(ctrl.buffer_ms())
        run.ewma.append(ctrl.chunk_ms_ewma or 0.0)
    return run


def controller(clock: Clock, **settings: object) -> RateController:
    return RateController(RateSettings(**settings), sample_rate=RATE, clock=clock)


def test_first_chunk_is_small_and_grows_by_half_toward_target() -> None:
    clock = Clock()
    ctrl = controller(clock)
    assert ctrl.state is RateState.INIT
    # An engine at half real time: the buffer stays under target for the first chunks.
    run = simulate(ctrl, clock, token_ms=5, token_delay_ms=2.5, chunks=5)
    assert run.sizes == [12, 18, 27, 32, 32]
    assert ctrl.history[:3] == [RateState.INIT, RateState.WARMUP, RateState.FILL]


def test_low_latency_starts_at_the_minimum_chunk() -> None:
    clock = Clock()
    default = RateController(RateSettings(), clock=clock)
    fast = RateController(RateSettings(), clock=clock, low_latency=True)
    assert fast.next_chunk_size() == 8 < default.next_chunk_size() == 12
    assert fast.low_latency and not default.low_latency


def test_a_synthetic_engine_converges_and_holds_the_buffer_between_200_and_500_ms() -> None:
    clock = Clock()
    ctrl = controller(clock)
    # 5 ms of audio per token made in 2 ms: real-time factor 0.4.
    run = simulate(ctrl, clock, token_ms=5, token_delay_ms=2, chunks=200)
    assert ctrl.state is RateState.STEADY
    assert ctrl.underflows == 0
    steady = slice(40, None)
    # The chunk settles on the largest size that still lands under max (32 would not: 160 ms
    # of audio on top of the 300 ms target plus the margin for a late chunk).
    size = run.sizes[-1]
    assert 24 <= size < 32 and set(run.sizes[-100:]) == {size}
    # The EWMA settles on the engine's true chunk time (size x 2 ms).
    assert run.ewma[-1] == pytest.approx(2.0 * size, rel=0.01)
    assert min(run.troughs[steady]) >= 200
    assert max(run.peaks[steady]) <= 500
    assert ctrl.pauses > 0  # a fast engine is held back, not allowed to run ahead


def test_a_stall_underflows_then_recovers_to_steady() -> None:
    clock = Clock()
    ctrl = controller(clock)
    run = simulate(
        ctrl, clock, token_ms=5, token_delay_ms=2, chunks=120, stall_at=60, stall_ms=1500
    )
    assert ctrl.underflows == 1
    after = ctrl.history[ctrl.history.index(RateState.UNDERFLOW):]
    assert after[:3] == [RateState.UNDERFLOW, RateState.RECOVER, RateState.STEADY]
    # The chunk was at least halved on underflow (the EWMA cap may cut deeper), then grew back.
    assert run.sizes[61] <= run.sizes[59] / 2
    assert run.sizes[-1] == run.sizes[59]
    assert min(run.troughs[-20:]) >= 200 and max(run.peaks[-20:]) <= 500


def test_underflow_halves_the_chunk_and_turns_low_latency_on() -> None:
    clock = Clock()
    ctrl = controller(clock)
    simulate(ctrl, clock, token_ms=5, token_delay_ms=2, chunks=60)
    before = ctrl.next_chunk_size()
    clock.now += 5.0  # the client plays everything and waits
    assert ctrl.next_chunk_size() == round(before / 2)
    assert ctrl.state is RateState.RECOVER
    assert ctrl.underflows == 1 and ctrl.low_latency


def test_the_end_of_the_stream_is_not_an_underflow() -> None:
    clock = Clock()
    ctrl = controller(clock)
    simulate(ctrl, clock, token_ms=5, token_delay_ms=2, chunks=30)
    ctrl.finish()
    clock.now += 10.0
    assert ctrl.buffer_ms() == 0.0
    assert ctrl.underflows == 0


def test_audio_on_its_way_counts_toward_overflow() -> None:
    clock = Clock()
    ctrl = controller(clock)
    ctrl.produced(100, 10)
    ctrl.emitted(samples(100))
    ctrl.consumed(samples(100))
    assert ctrl.pause_s() == 0.0
    ctrl.emitted(samples(900))  # stitched, still queued toward the client
    assert ctrl.in_flight_ms() == pytest.approx(900)
    assert ctrl.should_pause()
    clock.now += 0.1
    ctrl.consumed(samples(900))
    assert ctrl.in_flight_ms() == 0.0
    assert ctrl.should_pause()  # the client holds ~900 ms now: still too much
    clock.now += 1.0  # it plays them
    assert not ctrl.should_pause()


def test_pacing_off_never_pauses() -> None:
    clock = Clock()
    ctrl = controller(clock, pace=False)
    ctrl.produced(100, 10)
    ctrl.emitted(samples(5000))
    ctrl.consumed(samples(5000))
    assert ctrl.pause_s() == 0.0


def test_nothing_consumed_means_no_pacing() -> None:
    clock = Clock()
    ctrl = controller(clock)
    ctrl.produced(5000, 10)
    ctrl.emitted(samples(5000))
    assert ctrl.state is RateState.WARMUP
    assert ctrl.pause_s() == 0.0  # a reader that reports nothing is never held up


def test_a_locked_chunk_size_wins_within_bounds() -> None:
    clock = Clock()
    assert controller(clock, lock_chunk=24).next_chunk_size() == 24
    assert controller(clock, lock_chunk=500).next_chunk_size() == 64


def test_settings_come_from_the_server_table() -> None:
    server = ServerSettings(first_chunk_tokens=16, lock_chunk_tokens=20, playback_buffer_ms=250)
    settings = RateSettings.from_server(server)
    assert (settings.first_chunk, settings.lock_chunk) == (16, 20)
    assert settings.buffer_target_ms == 250 and settings.pace
    assert not RateSettings.from_server(server, pace=False).pace


def test_playback_buffer_counts_each_dry_spell_once() -> None:
    buffer = PlaybackBuffer(at=0.0)
    buffer.receive(100, at=0.0)
    buffer.advance(0.5)
    buffer.advance(0.7)
    assert buffer.underflows == 1 and buffer.depth_ms == 0.0
    buffer.receive(100, at=1.0)
    buffer.advance(1.05)
    assert buffer.depth_ms == pytest.approx(50)
    buffer.advance(2.0)
    assert buffer.underflows == 2


def test_first_words_cuts_a_long_first_segment_early() -> None:
    assert first_words("Hello there, my friend, how are you today?") == [
        "Hello there,", "my friend, how are you today?"
    ]
    assert first_words("Short one here.") == ["Short one here."]
    head, rest = first_words("The quick brown fox jumps over the lazy dog.")
    assert head == "The quick brown" and rest == "fox jumps over the lazy dog."


# -- through the pipeline -----------------------------------------------------------------------


def token_runtime() -> Runtime:
    config = MorpheusConfig(
        server=ServerSettings(default_engine="fault"),
        plugins={
            "fault": PluginEntry(
                module="morpheus_tts.plugins.engines.fault",
                    settings={"token_ms": 12.0, "token_delay_ms": 1}
            ),
            "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
            "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
        },
    )
    return Runtime(config, entry_points=False)


async def first_engine_chunk(runtime: Runtime, request: SpeakRequest, text: str) -> int:
    async with runtime.speak(request, text) as utterance:
        chunks = [chunk async for chunk in utterance.audio]
    return len(chunks[0].samples) + 240  # the stitcher holds a 10 ms crossfade tail back


@pytest.mark.anyio
async def test_low_latency_asks_a_token_engine_for_a_smaller_first_chunk() -> None:
    runtime = token_runtime()
    text = "A sentence long enough for several chunks of tokens."
    async with runtime.running():
        default = await first_engine_chunk(runtime, SpeakRequest(pace=False), text)
        low = await first_engine_chunk(runtime, SpeakRequest(pace=False, low_latency=True), text)
    # 12 tokens of 12 ms against 8: less audio to make before the first chunk is out.
    assert (default, low) == (12 * 288, 8 * 288)


@pytest.mark.anyio
async def test_low_latency_gives_piper_a_shorter_first_call() -> None:
    runtime = Runtime(entry_points=False)
    text = "Good morning to everyone who joined the call today, thank you for coming."
    async with runtime.running():
        firsts = []
        for low in (False, True):
            async with runtime.speak(SpeakRequest(pace=False, low_latency=low), text) as utt:
                chunk = await utt.audio.receive()
                firsts.append(len(chunk.samples))
    # Three words ("Good morning to") instead of the first clause: less to synthesize first.
    assert firsts[1] < firsts[0] / 2
