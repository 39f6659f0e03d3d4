"""The utterance pipeline: order, backpressure-free completion, and cancellation."""

from __future__ import annotations

import asyncio

import anyio
import numpy as np
import pytest
from conftest import fault_runtime
from morpheus_tts.host.runtime import Runtime, SpeakRequest

pytestmark = pytest.mark.anyio



async def test_every_sample_arrives_in_order_with_contiguous_offsets() -> None:
    runtime = fault_runtime(chunks_per_segment=3, chunk_ms=50)
    async with runtime.running():
        async with runtime.speak(SpeakRequest(), "One. Two. Three.") as utterance:
            chunks = [chunk async for chunk in utterance.audio]
    starts = [chunk.start for chunk in chunks]
    lengths = [len(chunk.samples) for chunk in chunks]
    assert starts == list(np.cumsum([0, *lengths[:-1]]))
    assert chunks[-1].final and not any(chunk.final for chunk in chunks[:-1])
    # 3 segments x 3 chunks x 50 ms at 24 kHz, minus one 10 ms crossfade per seam.
    assert sum(lengths) == 3 * 3 * 1200 - 2 * 240
    assert utterance.stats.segments == 3


async def test_text_streamed_in_deltas_is_spoken_as_it_arrives() -> None:
    runtime = fault_runtime(chunks_per_segment=2, chunk_ms=50)
    async with runtime.running():
        async with runtime.speak(SpeakRequest()) as utterance:
            await utterance.send_text("Hello the")
            await utterance.send_text("re. How a")
            # The first sentence is complete: audio flows before the text has ended.
            first = await utterance.audio.receive()
            assert len(first.samples) > 0
            await utterance.send_text("re you?", final=True)
            rest = [chunk async for chunk in utterance.audio]
    assert rest[-1].final
    assert utterance.stats.segments == 2


async def test_cancel_mid_utterance_leaves_no_task_or_busy_worker() -> None:
    runtime = fault_runtime(chunks_per_segment=40, chunk_ms=20, step_delay_ms=30)
    async with runtime.running():
        engine = runtime.registry.engine("fault")
        tasks_before = set(asyncio.all_tasks())
        async with runtime.speak(SpeakRequest(), "A long sentence. " * 5) as utterance:
            await utterance.audio.receive()
            utterance.cancel()
        # Leaving the block waited for the in-flight step: nothing runs any more.
        assert engine.limiter.borrowed_tokens == 0
        assert set(asyncio.all_tasks()) == tasks_before
        started = engine.engine.steps_started
        await anyio.sleep(0.2)  # several engine steps' worth of time
        assert engine.engine.steps_started == started
        assert engine.engine.steps_finished == started
        assert engine.open_utterances == 0


async def test_background_stream_closed_by_consumer_stops_synthesis() -> None:
    runtime = fault_runtime(chunks_per_segment=40, chunk_ms=20, step_delay_ms=30)
    async with runtime.running():
        engine = runtime.registry.engine("fault")
        stream = runtime.stream(SpeakRequest(), "A long sentence. " * 5)
        async for _chunk in stream:
            break
        await stream.aclose()
        with anyio.fail_after(5):
            while engine.limiter.borrowed_tokens or engine.open_utterances:
                await anyio.sleep(0.01)
        started = engine.engine.steps_started
        await anyio.sleep(0.2)
        assert engine.engine.steps_started == started


async def test_engine_error_reaches_the_consumer() -> None:
    runtime = fault_runtime(chunks_per_segment=5, fail_after=2)
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(), "Doomed sentence.")
        with pytest.raises(RuntimeError, match="scripted failure at chunk 2"):
            async for _chunk in stream:
                pass


async def test_piper_cancellation_leaves_no_busy_worker() -> None:
    runtime = Runtime(entry_points=False)
    async with runtime.running():
        piper = runtime.registry.engine("piper")
        text = "This is a sentence that takes a moment to synthesize. " * 6
        async with runtime.speak(SpeakRequest(), text) as utterance:
            await utterance.audio.receive()
        assert piper.limiter.borrowed_tokens == 0
        assert piper.open_utterances == 0


async def test_a_cancelled_piper_step_is_terminated_not_waited_for() -> None:
    runtime = Runtime(entry_points=False)
    async with runtime.running():
        piper = runtime.registry.engine("piper")
        long_sentence = "and then the story went on " * 40 + "."  # one ONNX call, seconds long
        stream = runtime.stream(SpeakRequest(), long_sentence)
        await stream.started()
        with anyio.fail_after(30):
            while not piper.limiter.borrowed_tokens:
                await anyio.sleep(0.005)
            await anyio.sleep(0.05)  # the ONNX run is under way
            await stream.aclose()
            while piper.limiter.borrowed_tokens or piper.open_utterances:
                await anyio.sleep(0.005)
        assert piper.engine.steps_cancelled == 1
        # The engine is usable at once.
        async with runtime.speak(SpeakRequest(pace=False), "Next.") as utterance:
            audio = [chunk async for chunk in utterance.audio]
        assert sum(len(c.samples) for c in audio) > 0
