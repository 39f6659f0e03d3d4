"""Barge-in: audio stops within one chunk (cut or a bounded fade), old audio never leaks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from conftest import fault_runtime, start_live_server
from httpx_sse import connect_sse
from morpheus_tts.host.runtime import SpeakRequest
from morpheus_tts.plugins.engines.fault import pitch_of

pytestmark = pytest.mark.anyio

RATE = 24000
OLD, NEW = "The old turn.", "A new turn."  # 520 Hz and 260 Hz tones


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2)))


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[np.argmax(spectrum)])


def test_the_two_turns_are_told_apart_by_pitch() -> None:
    assert abs(pitch_of(OLD) - pitch_of(NEW)) >= 200


@pytest.mark.parametrize("fade_ms", [0, 10, 30])
async def test_after_barge_in_at_most_the_fade_follows(fade_ms: int) -> None:
    runtime = fault_runtime(chunks_per_segment=50, chunk_ms=50, step_delay_ms=5)
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(pace=False), OLD)
        before = []
        async for chunk in stream:
            before.append(chunk)
            if len(before) == 3:
                stream.barge_in(fade_ms)
                break
        after = [chunk async for chunk in stream]
    assert sum(len(c.samples) for c in after) <= round(fade_ms * RATE / 1000)
    assert after[-1].final
    tail = np.concatenate([c.samples for c in after]) if after else np.zeros(0)
    if len(tail):
        assert abs(tail[-1]) < 1e-6  # faded to silence, no click
    assert stream.utterance.stats.interrupted  # type: ignore[union-attr]


async def test_queued_audio_of_the_interrupted_turn_is_dropped() -> None:
    # A fast engine and a reader that has not read: every buffer on the way is full.
    runtime = fault_runtime(chunks_per_segment=50, chunk_ms=50)
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(pace=False), OLD)
        iterator = aiter(stream)
        await anext(iterator)
        await anyio.sleep(0.2)
        stream.barge_in(20)
        after = [chunk async for chunk in iterator]
    assert sum(len(c.samples) for c in after) <= round(20 * RATE / 1000)


async def test_the_engine_stops_and_stays_usable_for_the_next_turn() -> None:
    runtime = fault_runtime(chunks_per_segment=50, chunk_ms=20, step_delay_ms=20)
    async with runtime.running():
        loaded = runtime.registry.engine("fault")
        async with runtime.speak(SpeakRequest(pace=False), OLD) as utterance:
            await utterance.audio.receive()
            utterance.barge_in(0)
            rest = [chunk async for chunk in utterance.audio]
        assert [len(c.samples) for c in rest] == [0] and rest[0].final
        stopped_at = loaded.engine.steps_started
        assert stopped_at < 50
        await anyio.sleep(0.1)  # several steps' worth: nothing more runs
        assert loaded.engine.steps_started == stopped_at
        assert loaded.limiter.borrowed_tokens == 0 and loaded.open_utterances == 0
        # The next turn speaks in full, in its own voice only.
        async with runtime.speak(SpeakRequest(pace=False), NEW) as utterance:
            chunks = [chunk async for chunk in utterance.audio]
    audio = np.concatenate([c.samples for c in chunks])
    assert len(audio) == 50 * 480
    for start in range(0, len(audio) - 2400, 2400):
        assert dominant_hz(audio[start : start + 2400]) == pytest.approx(pitch_of(NEW), abs=10)


async def test_text_sent_after_a_barge_in_is_ignored() -> None:
    runtime = fault_runtime(chunks_per_segment=5, chunk_ms=20)
    async with runtime.running():
        async with runtime.speak(SpeakRequest(pace=False)) as utterance:
            await utterance.send_text("Spoken at first. ")
            await utterance.audio.receive()
            utterance.barge_in(0)
            await utterance.send_text("Never spoken.", final=True)
            rest = [chunk async for chunk in utterance.audio]
    assert sum(len(c.samples) for c in rest) == 0
    assert utterance.stats.segments <= 1


async def test_events_carry_the_new_generation_after_barge_in() -> None:
    runtime = fault_runtime(chunks_per_segment=20, chunk_ms=20, step_delay_ms=5)
    async with runtime.running():
        async with runtime.speak(SpeakRequest(pace=False), OLD) as utterance:
            first = await utterance.audio.receive()
            utterance.barge_in(10)
            rest = [chunk async for chunk in utterance.audio]
    assert first.generation == 0
    assert utterance.generation == 1
    assert all(chunk.generation == 1 for chunk in rest)


# -- at the client: a live server, a session, SSE ----------------------------------------------

SESSION_TOML = """
[server]
default_engine = "fault"
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = { chunk_ms = 50.0, step_delay_ms = 5.0 }
"""


def test_a_client_hears_nothing_of_the_old_turn_after_barge_in(tmp_path: Path) -> None:
    server = start_live_server(tmp_path, SESSION_TOML)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http, httpx.Client(
            base_url=server.url, timeout=30
        ) as control:
            session = http.post("/v1/sessions", json={}).json()["id"]
            control.post(f"/v1/sessions/{session}/text", json={"text": f"{OLD} " * 40})
            events: list[dict] = []
            barged = False
            with connect_sse(http, "GET", f"/v1/sessions/{session}/events") as source:
                for sse in source.iter_sse():
                    events.append(json.loads(sse.data))
                    heard = [e for e in events if e["type"] == "audio.delta"]
                    if len(heard) == 3 and not barged:
                        barged = True
                        control.post(f"/v1/sessions/{session}/barge-in")
                        control.post(
                            f"/v1/sessions/{session}/text", json={"text": NEW, "final": True}
                        )
                    if events[-1]["type"] == "turn.done" or len(events) > 500:
                        break
    finally:
        server.stop()
    kinds = [(e["type"], e.get("turn")) for e in events]
    interrupted = kinds.index(("turn.interrupted", 1))
    # Once the server has processed the barge-in, of turn 1 only its faded tail follows
    # (`fade_out`, at most the 20 ms fade), before turn 2 starts.
    after = events[interrupted:]
    tail = [e for e in after if e["type"] == "audio.delta" and e["turn"] == 1]
    assert all(e.get("fade_out") for e in tail)
    assert sum(len(base64.b64decode(e["audio"])) // 2 for e in tail) <= 20 * 24
    started = kinds.index(("turn.started", 2))
    assert all(e["turn"] == 2 for e in events[started:] if e["type"] == "audio.delta")
    assert kinds[-1] == ("turn.done", 2)
    new_audio = [e for e in events if e["type"] == "audio.delta" and e["turn"] == 2]
    samples = np.frombuffer(
        b"".join(base64.b64decode(e["audio"]) for e in new_audio), dtype="<i2"
    ).astype(np.float32)
    assert len(samples) > RATE // 2
    # Every 100 ms of the next turn is its own tone: none of the old turn's audio leaked in.
    for start in range(0, len(samples) - 2400, 2400):
        assert dominant_hz(samples[start : start + 2400]) == pytest.approx(pitch_of(NEW), abs=10)


def test_an_http_speech_stream_ends_with_the_fade_after_its_barge_in(tmp_path: Path) -> None:
    body = {"model": "tts-1", "voice": "tone", "input": f"{OLD} " * 40,
            "response_format": "pcm", "pace": True}
    server = start_live_server(tmp_path, SESSION_TOML)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http, httpx.Client(
            base_url=server.url, timeout=30
        ) as control:
            received, barged_at = b"", 0
            with http.stream("POST", "/v1/audio/speech", json=body) as response:
                stream_id = response.headers["x-morpheus-stream-id"]
                for data in response.iter_raw():
                    received += data
                    if not barged_at and len(received) >= RATE:  # half a second heard
                        reply = control.post(
                            f"/v1/audio/speech/{stream_id}/barge-in", params={"fade_ms": 20}
                        )
                        barged_at = len(received) // 2
            ended = control.post(f"/v1/audio/speech/{stream_id}/barge-in")
            too_long = control.post("/v1/audio/speech/x/barge-in", params={"fade_ms": 50})
    finally:
        server.stop()
    assert reply.status_code == 200
    assert reply.json() == {"stream_id": stream_id, "interrupted": True}
    audio = np.frombuffer(received, dtype="<i2").astype(np.float32) / 32768
    # Paced, the server was at most ~0.5 s ahead of the listener when the barge-in came; the
    # full text is 40 x 0.78 s.
    assert len(audio) - barged_at < 1.5 * RATE
    # The stream ended on a 20 ms fade, not mid-tone (a click).
    assert rms(audio[-48:]) < 0.2 * rms(audio[-2400:-480])
    assert ended.status_code == 404 and ended.json()["error"]["code"] == "stream_not_found"
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "fade_ms"
