"""Backpressure and pacing: a slow client makes the engine wait; a fast one is held back."""

from __future__ import annotations

import json

import anyio
import pytest
from conftest import fault_runtime
from morpheus_tts.api.app import create_app
from morpheus_tts.host.runtime import SpeakRequest

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


async def test_http_rate_control_counts_exactly_what_the_socket_accepted() -> None:
    """The response reports audio once the server's `send` returned, never before."""
    runtime = fault_runtime(chunks_per_segment=6, chunk_ms=200)
    streams = []
    start_stream = runtime.stream

    def recording_stream(*args: object, **kwargs: object):
        streams.append(start_stream(*args, **kwargs))  # type: ignore[arg-type]
        return streams[-1]

    runtime.stream = recording_stream  # type: ignore[method-assign]
    app = create_app(runtime=runtime, tracer_provider=None)
    body = json.dumps(
        {"model": "tts-1", "voice": "tone", "input": "Six chunks.", "response_format": "pcm"}
    )
    requests = [{"type": "http.request", "body": body.encode(), "more_body": False}]
    accepted: list[int] = []  # bytes of each body message whose send returned
    socket_open, response_sent = anyio.Event(), anyio.Event()

    async def receive() -> dict[str, object]:
        if requests:
            return requests.pop()
        await response_sent.wait()  # as a server: the exchange is over
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] != "http.response.body":
            return
        if message.get("body"):
            if len(accepted) == 1:
                await socket_open.wait()  # a full socket: this send does not return yet
            accepted.append(len(message["body"]))  # type: ignore[arg-type]
        if not message.get("more_body"):
            response_sent.set()

    def received_ms() -> float:
        return streams[0].utterance.rate.buffer.received_ms

    def pcm_ms(n_bytes: int) -> float:
        return 1000 * n_bytes / 2 / 24000

    async with runtime.running():  # what the app's lifespan does, on this test's event loop
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(app, http_scope("/v1/audio/speech", body), receive, send)
                while not accepted or streams[0].utterance.rate.emitted_ms < 400:
                    await anyio.sleep(0.01)  # the engine runs ahead into the bounded buffers
                # One send returned: the first 100 ms of a 200 ms chunk. The second waits,
                # while far more than that has been made.
                assert pcm_ms(accepted[0]) == pytest.approx(100)
                assert received_ms() == pytest.approx(100, abs=0.1)
                socket_open.set()  # the response runs to its end
    assert pcm_ms(sum(accepted)) == pytest.approx(6 * 200)  # one segment: no crossfade
    assert received_ms() == pytest.approx(pcm_ms(sum(accepted)), abs=0.1)


def http_scope(path: str, body: str) -> dict[str, object]:
    """An ASGI HTTP scope for a JSON POST, as a server builds it."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
