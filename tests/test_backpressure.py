"""Backpressure and pacing: a slow client makes the engine wait; a fast one is held back."""

from __future__ import annotations

import anyio
import pytest

from host.runtime import SpeakRequest
from tests.conftest import fault_runtime

pytestmark = pytest.mark.anyio

# Chunks that can sit between the engine and the reader: the raw and output streams (2 each),
# the forwarder's hand-off (2), one in the hands of each of the engine, stitcher, forwarder,
# and the stitcher's held crossfade tail (one 10 ms chunk here). A constant, whatever the length.
MAX_LEAD_CHUNKS = 12



async def test_a_client_at_half_real_time_makes_the_engine_wait_and_loses_nothing() -> None:
    runtime = fault_runtime(chunks_per_segment=12, chunk_ms=10)
    text = "First part here. Second part here. Third part here."
    async with runtime.running():
        engine = runtime.registry.engine("fault").engine
        stream = runtime.stream(SpeakRequest(), text)
        chunks, leads = [], []
        async for chunk in stream:
            chunks.append(chunk)
            leads.append(engine.steps_finished - len(chunks))
            await anyio.sleep(2 * chunk.duration_ms / 1000)  # plays at half real time
    # The engine never ran more than the bounded buffers ahead of the reader.
    assert max(leads) <= MAX_LEAD_CHUNKS
    assert engine.steps_finished == 3 * 12
    # Nothing dropped: contiguous offsets, every sample (minus two 10 ms crossfades).
    assert [c.start for c in chunks[1:]] == [c.start + len(c.samples) for c in chunks[:-1]]
    assert sum(len(c.samples) for c in chunks) == 3 * 12 * 240 - 2 * 240
    assert chunks[-1].final
    # The client heard gaps: the playback model counted them.
    assert stream.utterance is not None and stream.utterance.rate.underflows > 0


async def test_a_stalled_reader_holds_the_engine_until_it_reads_again() -> None:
    runtime = fault_runtime(chunks_per_segment=40, chunk_ms=10)
    async with runtime.running():
        engine = runtime.registry.engine("fault").engine
        stream = runtime.stream(SpeakRequest(), "One long sentence to speak.")
        iterator = aiter(stream)
        await anext(iterator)
        await anyio.sleep(0.3)  # many engine steps' worth: it fills the buffers and waits
        held = engine.steps_finished
        assert held <= MAX_LEAD_CHUNKS
        rest = [chunk async for chunk in iterator]
    assert engine.steps_finished == 40 > held
    assert rest[-1].final


async def test_a_fast_reader_is_paced_to_the_playback_buffer() -> None:
    runtime = fault_runtime(chunks_per_segment=15, chunk_ms=40)
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(), "A paced stream. Of two parts.")
        chunks = [chunk async for chunk in stream]
    rate = stream.utterance.rate  # type: ignore[union-attr]
    assert chunks[-1].final
    assert rate.pauses > 0  # the engine was held back instead of running 1.2 s ahead
    assert rate.buffer.received_ms == pytest.approx(2 * 15 * 40 - 10, abs=1)


async def test_pacing_can_be_turned_off_per_request() -> None:
    runtime = fault_runtime(chunks_per_segment=15, chunk_ms=40)
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(pace=False), "A fast download. Of two parts.")
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].final
    assert stream.utterance.rate.pauses == 0  # type: ignore[union-attr]


async def test_a_consumer_reporting_its_own_sends_replaces_the_iteration_reports() -> None:
    runtime = fault_runtime(chunks_per_segment=4, chunk_ms=20)
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(pace=False), "Reported by hand.")
        reported = 0
        async for chunk in stream:
            half = len(chunk.samples) // 2
            stream.consumed(half)  # e.g. the socket took half of the bytes
            reported += half
    rate = stream.utterance.rate  # type: ignore[union-attr]
    assert rate.buffer.received_ms == pytest.approx(1000 * reported / 24000)
