"""Turn-shaped engines: text deltas straight into one EngineTurn per utterance."""

from __future__ import annotations

import anyio
import numpy as np
import pytest
import turn_engine
from conftest import fault_runtime
from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
from morpheus_tts.host.registry import Registry
from morpheus_tts.host.runtime import Runtime, SpeakRequest

pytestmark = pytest.mark.anyio


def turn_runtime(**settings: object) -> Runtime:
    config = MorpheusConfig(
        server=ServerSettings(default_engine="turnstub"),
        plugins={
            "turnstub": PluginEntry(module="turn_engine", settings=dict(settings)),
            "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
            "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
        },
    )
    return Runtime(config, entry_points=False)


def expected_audio(words: list[str], per_word: int = 2400, rate: int = 24000) -> np.ndarray:
    """What the stub emits for `words`: one phase-continuous tone per word."""
    parts, offset = [], 0
    for word in words:
        t = (np.arange(per_word) + offset) / rate
        parts.append(0.25 * np.sin(2 * np.pi * turn_engine.word_pitch(word) * t))
        offset += per_word
    return np.concatenate(parts).astype(np.float32)


def calls(engine: turn_engine.TurnStubEngine, name: str) -> list[dict]:
    return [c for c in engine.calls if c["call"] == name]


async def test_one_shot_speech_is_exactly_the_samples_the_engine_emitted() -> None:
    runtime = turn_runtime()
    async with runtime.running():
        stub = runtime.registry.engine("turnstub").engine
        async with runtime.speak(SpeakRequest(pace=False), "Hello there. How are you") as utt:
            chunks = [chunk async for chunk in utt.audio]
    audio = np.concatenate([c.samples for c in chunks])
    want = expected_audio(["Hello", "there.", "How", "are", "you"])
    np.testing.assert_array_equal(audio, want)  # no crossfade, no seam inside the turn
    assert {c.segment for c in chunks} == {0}
    [opened] = calls(stub, "open_turn")
    assert opened == {
        "call": "open_turn", "session_id": None, "turn": 1, "voice": "stub", "options": {},
        "user_text": None,
    }
    assert [c["call"] for c in stub.calls] == [
        "open_turn", "push_text", "end_text", "close",
    ]


async def test_deltas_split_inside_words_reach_the_engine_whole() -> None:
    runtime = turn_runtime()
    async with runtime.running():
        stub = runtime.registry.engine("turnstub").engine
        async with runtime.speak(SpeakRequest(pace=False)) as utt:
            for delta in ["Hel", "lo wo", "rld", " and", " more"]:
                await utt.send_text(delta)
            await utt.end_text()
            audio = np.concatenate([c.samples async for c in utt.audio])
    np.testing.assert_array_equal(audio, expected_audio(["Hello", "world", "and", "more"]))
    pushed = [c["delta"] for c in calls(stub, "push_text")]
    assert pushed == ["Hel", "lo wo", "rld", " and", " more"]
    assert len(calls(stub, "open_turn")) == 1 and len(calls(stub, "end_text")) == 1


async def test_barge_in_interrupts_the_turn_with_what_the_client_was_sent() -> None:
    runtime = turn_runtime(step_delay_ms=20)
    async with runtime.running():
        loaded = runtime.registry.engine("turnstub")
        stub = loaded.engine
        async with runtime.speak(SpeakRequest(pace=False), "word " * 60) as utt:
            received = 0
            async for chunk in utt.audio:
                received += len(chunk.samples)
                utt.consumed(len(chunk.samples))
                if received >= 3 * 2400:
                    utt.barge_in(0)
                    break
            rest = [chunk async for chunk in utt.audio]
    assert rest[-1].final and sum(len(c.samples) for c in rest) == 0
    [interrupt] = calls(stub, "interrupt")
    assert 0 < interrupt["heard"] <= received <= interrupt["samples_out"]
    assert interrupt["heard"] == received
    names = [c["call"] for c in stub.calls]
    assert names[-2:] == ["interrupt", "close"]  # interrupt first, then close, once each
    assert loaded.limiter.borrowed_tokens == 0
    event, stages = utt.bus.history[0]
    assert event.delivered == received and stages == ["engine", "stitcher"]


async def test_a_cancelled_step_frees_the_engine_at_once() -> None:
    runtime = turn_runtime(step_delay_ms=5000)  # one step: five seconds unless cancelled
    async with runtime.running():
        stub = runtime.registry.engine("turnstub").engine
        loaded = runtime.registry.engine("turnstub")
        stream = runtime.stream(SpeakRequest(pace=False), "long words here")
        await stream.started()
        with anyio.fail_after(2):
            while not calls(stub, "push_text"):
                await anyio.sleep(0.01)
            await anyio.sleep(0.05)  # the first step is running
            await stream.aclose()
            while loaded.limiter.borrowed_tokens or loaded.open_utterances:
                await anyio.sleep(0.01)
    assert calls(stub, "cancel")
    assert [c["call"] for c in loaded.engine.calls][-1] == "close"


async def test_an_incremental_engine_without_open_turn_fails_to_load_naming_it() -> None:
    config = MorpheusConfig(plugins={"broken": PluginEntry(module="turn_engine_broken")})
    registry = Registry(config, entry_points=False)
    await registry.load_all()
    record = registry.records["broken"]
    assert record.state == "failed"
    assert record.error == (
        "TypeError: engine 'halfturn' declares incremental_text=True but does not implement "
        "open_turn, end_session; add open_turn/end_session or drop the flag"
    )


async def test_a_segment_engine_hears_the_same_deltas_as_whole_segments() -> None:
    # One stream path: the chunker is the adapter that presents a segment engine as a turn.
    runtime = fault_runtime(chunks_per_segment=2, chunk_ms=50)
    async with runtime.running():
        fault = runtime.registry.engine("fault").engine
        async with runtime.speak(SpeakRequest(pace=False)) as utt:
            for delta in ["Hel", "lo the", "re. How", " are", " you?"]:
                await utt.send_text(delta)
            await utt.end_text()
            chunks = [chunk async for chunk in utt.audio]
    assert fault.texts == ["Hello there.", "How are you?"]
    segments = [c.segment for c in chunks if len(c.samples)]
    assert segments == sorted(segments) and set(segments) == {0, 1}  # one seam, in order
    assert utt.stats.segments == 2
    assert utt.stats.characters_spoken == len("Hello there.How are you?")


async def test_a_segment_engine_barge_in_stops_the_one_engine_stage() -> None:
    runtime = fault_runtime(chunks_per_segment=20, chunk_ms=50, step_delay_ms=5)
    async with runtime.running():
        loaded = runtime.registry.engine("fault")
        async with runtime.speak(SpeakRequest(pace=False), "One. Two. Three.") as utt:
            first = await utt.audio.receive()
            utt.consumed(len(first.samples))
            utt.barge_in(0)
            rest = [chunk async for chunk in utt.audio]
    assert rest[-1].final
    assert loaded.engine.texts == ["One."]  # the later segments were never asked for
    assert loaded.limiter.borrowed_tokens == 0
    event, stages = utt.bus.history[0]
    assert event.delivered == len(first.samples) and stages == ["engine", "stitcher"]
