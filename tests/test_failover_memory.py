"""Failover classes and memory: bad requests are final, dead engines are routed around and
probed back, a failed turn is interrupted before its replay, limiters are sized per engine."""

from __future__ import annotations

import anyio
import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from morpheus_tts.api.app import create_app
from morpheus_tts.host import EngineRequestError
from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from test_failover import chain_runtime

pytestmark = pytest.mark.anyio

BASE = {
    "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
    "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
}


def turn_chain(primary: dict, backup: dict) -> MorpheusConfig:
    plugins = {
        "turnstub": PluginEntry(module="turn_engine", settings=primary),
        "turnstub2": PluginEntry(module="turn_engine2", settings=backup),
        **BASE,
    }
    server = ServerSettings(default_engine="turnstub", failover=["turnstub2"])
    return MorpheusConfig(server=server, plugins=plugins)


async def test_a_bad_option_is_neither_retried_nor_failed_over() -> None:
    runtime = Runtime(turn_chain({}, {}), entry_points=False)
    async with runtime.running():
        first = runtime.registry.engine("turnstub")
        backup = runtime.registry.engine("turnstub2")
        stream = runtime.stream(SpeakRequest(options={"bogus": 1}), "Hello there")
        with pytest.raises(EngineRequestError, match="turnstub takes no options"):
            [chunk async for chunk in stream]
        assert backup.engine.calls == []
        assert first.engine.calls == []  # refused in open_turn: nothing was opened
        assert first.available and stream.stats is not None and not stream.stats.degraded


async def test_a_bad_option_is_a_400_before_any_audio() -> None:
    app = create_app(turn_chain({}, {}))
    async with AsyncTestClient(app, timeout=30) as http:
        with anyio.fail_after(30):
            while (await http.get("/health")).status_code != 200:
                await anyio.sleep(0.05)
        response = await http.post("/v1/audio/speech", json={
            "model": "turnstub", "voice": "stub", "input": "Hi there", "options": {"x": 1},
        })
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_value" and "turnstub takes no options" in error["message"]


async def test_a_failed_over_engine_is_skipped_until_a_probe_hears_it_again() -> None:
    # The primary's first step stalls past the timeout; its later steps are fine.
    runtime = chain_runtime(
        {"stall_after": 0, "stall_ms": 600}, {"chunks_per_segment": 1}, stall_timeout_s=0.2
    )
    runtime.availability.interval_s = 0.3
    async with runtime.running():
        fault = runtime.registry.engine("fault")
        async with runtime.speak(SpeakRequest(pace=False), "First.") as utterance:
            [chunk async for chunk in utterance.audio]
        assert utterance.stats.degraded and not fault.available
        started = fault.engine.steps_started
        async with runtime.speak(SpeakRequest(pace=False), "Second.") as utterance:
            [chunk async for chunk in utterance.audio]
        # Routed around at once: the dead primary was not asked (nor its timeout paid).
        assert utterance.stats.degraded and utterance.stats.engine == "fault2"
        assert utterance.stats.failures[0].startswith("fault: EngineStalledError")
        with anyio.fail_after(10):
            while not fault.available:
                await anyio.sleep(0.05)
        assert fault.engine.steps_started > started  # the probe spoke
        async with runtime.speak(SpeakRequest(pace=False), "Third.") as utterance:
            [chunk async for chunk in utterance.audio]
        assert not utterance.stats.degraded and utterance.stats.engine == "fault"


async def test_a_turn_that_fails_before_audio_is_interrupted_then_replayed() -> None:
    config = turn_chain({"voice_cloning": False}, {})
    runtime = Runtime(config, entry_points=False)
    async with runtime.running():
        first = runtime.registry.engine("turnstub").engine
        backup = runtime.registry.engine("turnstub2").engine

        def broken(delta: str):  # the primary's turn fails on its first step
            raise RuntimeError("primary is broken")

        original = first.open_turn

        def open_broken(request):
            turn = original(request)
            turn.push_text = lambda delta: iter([broken(delta)])  # type: ignore[method-assign]
            return turn

        first.open_turn = open_broken  # type: ignore[method-assign]
        async with runtime.speak(SpeakRequest(pace=False), "Hello there friend") as utt:
            audio = np.concatenate([c.samples async for c in utt.audio])
        assert utt.stats.degraded and utt.stats.engine == "turnstub2"
        names = [c["call"] for c in first.calls]
        assert names.count("interrupt") == 2 and names[-2:] == ["interrupt", "close"]
        assert all(c["heard"] == 0 for c in first.calls if c["call"] == "interrupt")
        assert [c["call"] for c in backup.calls] == ["open_turn", "push_text", "end_text", "close"]
        assert len(audio) == 3 * 2400


async def test_max_concurrent_streams_sizes_the_engine_limiter() -> None:
    runtime = chain_runtime({"chunks_per_segment": 1})
    async with runtime.running():
        assert runtime.registry.engine("fault").limiter.total_tokens == 1
    from turn_engine import TurnStubEngine, TurnStubSettings

    engine = TurnStubEngine(TurnStubSettings())
    engine.capabilities = engine.capabilities.__class__(
        sample_rate=24000, voices=("stub",), incremental_text=True, max_concurrent_streams=3
    )
    from morpheus_tts.host.registry import LoadedEngine

    assert LoadedEngine("x", "p", engine).limiter.total_tokens == 3
    with pytest.raises(ValueError, match="max_concurrent_streams must be >= 1"):
        engine.capabilities.__class__(sample_rate=1, voices=("a",), max_concurrent_streams=0)
