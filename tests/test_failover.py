"""Failover: stalls, errors and silence move the stream to the next engine, flagged degraded."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import LiveServer, start_live_server
from httpx_sse import connect_sse
from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
from morpheus_tts.host.failover import EngineStalledError, SilentEngineError
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.plugins.engines.fault import pitch_of
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.anyio

RATE = 24000
TEXT = "The old turn. A new turn. Hello there."  # 520, 260 and 500 Hz


def chain_runtime(
    primary: dict[str, object], backup: dict[str, object] | None = None, **server: object
) -> Runtime:
    plugins = {
        "fault": PluginEntry(module="morpheus_tts.plugins.engines.fault", settings=primary),
        "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
        "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
    }
    if backup is not None:
        # A second entry of the same module: its engine is named after the entry, "fault2".
        plugins["fault2"] = PluginEntry(module="morpheus_tts.plugins.engines.fault",
            settings=backup)
    settings = ServerSettings(
        default_engine="fault", failover=["fault2"] if backup is not None else [], **server
    )
    return Runtime(MorpheusConfig(server=settings, plugins=plugins), entry_points=False)


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[np.argmax(spectrum)])


def segment_pitches(audio: np.ndarray, chunk: int) -> list[float]:
    """The pitch of each `chunk`-sample block (blocks straddling a seam are skipped)."""
    return [dominant_hz(audio[i : i + chunk // 2]) for i in range(chunk // 4, len(audio), chunk)]


async def speak(runtime: Runtime, text: str = TEXT) -> tuple[np.ndarray, object]:
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(pace=False), text)
        chunks = [chunk async for chunk in stream]
    return np.concatenate([c.samples for c in chunks]), stream.stats


async def test_an_engine_failing_before_first_audio_replays_everything_on_the_next() -> None:
    runtime = chain_runtime({"fail_after": 0}, {"chunks_per_segment": 2, "chunk_ms": 100})
    audio, stats = await speak(runtime)
    assert stats.degraded and stats.engine == "fault2"
    assert len(stats.failures) == 2  # the first try and the smaller retry
    # All three segments, once each, from the backup: 3 x 2 x 100 ms minus two crossfades.
    assert len(audio) == 3 * 2 * 2400 - 2 * 240
    pitches = segment_pitches(audio, 4800)
    assert pitches == pytest.approx([520, 260, 500], abs=10)


async def test_an_engine_failing_after_first_audio_continues_from_the_next_segment() -> None:
    # Segment 0 speaks 2 chunks, segment 1 one chunk, then every step fails.
    primary = {"chunks_per_segment": 2, "chunk_ms": 100, "fail_after": 3}
    runtime = chain_runtime(primary, {"chunks_per_segment": 2, "chunk_ms": 100})
    audio, stats = await speak(runtime)
    assert stats.degraded and stats.engine == "fault2"
    # Segment 1 is not repeated: 2 + 1 chunks from the primary, 2 for segment 2.
    assert len(audio) == 5 * 2400 - 2 * 240
    head = [dominant_hz(audio[i : i + 1200]) for i in (600, 3000, 5400)]
    assert head == pytest.approx([520, 520, 260], abs=10)
    assert dominant_hz(audio[-3000:-600]) == pytest.approx(pitch_of("Hello there."), abs=10)


async def test_a_silent_engine_counts_as_failing() -> None:
    runtime = chain_runtime({"silent": True}, {"chunks_per_segment": 1, "chunk_ms": 100})
    audio, stats = await speak(runtime, "Anyone there?")
    assert stats.degraded and stats.engine == "fault2"
    assert "SilentEngineError" in stats.failures[0]
    assert len(audio) == 2400


async def test_a_stall_past_the_timeout_fails_over() -> None:
    primary = {"stall_after": 0, "stall_ms": 1000}
    runtime = chain_runtime(primary, {"chunks_per_segment": 1}, stall_timeout_s=0.2)
    audio, stats = await speak(runtime, "Stalled at once.")
    assert stats.degraded and stats.engine == "fault2"
    assert all("EngineStalledError" in failure for failure in stats.failures)
    assert len(audio) == 2400


async def test_one_failure_is_retried_with_a_smaller_chunk_on_the_same_engine() -> None:
    # Token mode: the stall lasts less than two timeouts, so the retry gets the engine back.
    primary = {"token_ms": 10, "chunks_per_segment": 1, "chunk_ms": 200,
               "stall_after": 0, "stall_ms": 700}
    runtime = chain_runtime(primary, {"chunks_per_segment": 1}, stall_timeout_s=0.5)
    audio, stats = await speak(runtime, "Retried once.")
    assert not stats.degraded and stats.engine == "fault"
    assert len(stats.failures) == 1
    assert len(audio) == 4800  # 200 ms in chunks of the halved size
    assert dominant_hz(audio) == pytest.approx(pitch_of("Retried once."), abs=10)


async def test_without_a_chain_the_first_error_reaches_the_consumer() -> None:
    runtime = chain_runtime({"stall_after": 0, "stall_ms": 1000}, stall_timeout_s=0.2)
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(), "Nobody can say this.")
        with pytest.raises(EngineStalledError, match="'fault'"):
            [chunk async for chunk in stream]


async def test_when_every_engine_fails_the_stream_fails() -> None:
    runtime = chain_runtime({"silent": True}, {"silent": True})
    async with runtime.running():
        stream = runtime.stream(SpeakRequest(), "Nobody can say this.")
        with pytest.raises(SilentEngineError, match="'fault2'"):
            [chunk async for chunk in stream]


async def test_an_engine_that_failed_over_serves_the_next_request_again() -> None:
    runtime = chain_runtime({"fail_after": 0}, {"chunks_per_segment": 1})
    async with runtime.running():
        for _ in range(2):
            async with runtime.speak(SpeakRequest(pace=False), "Again.") as utterance:
                [chunk async for chunk in utterance.audio]
            assert utterance.stats.degraded
        fault = runtime.registry.engine("fault")
        assert fault.limiter.borrowed_tokens == 0 and fault.open_utterances == 0


# -- end to end through POST /v1/audio/speech --------------------------------------------------

# Plugins load in order and /health turns 200 with the default engine: it comes last.
SERVER_TOML = """
[server]
default_engine = "fault"
failover = {failover}
pace_playback = false

[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"

[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"

[plugins.{backup}]
module = "morpheus_tts.plugins.engines.{backup_module}"
{backup_settings}

[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
[plugins.fault.settings]
{primary}
"""


def live_server(tmp_path: Path, primary: str, backup: str, backup_settings: str = "") -> LiveServer:
    return start_live_server(tmp_path, SERVER_TOML.format(
        failover=f'["{backup}"]', primary=primary, backup=backup,
        # "fault2" is a second entry of the fault module (an engine named after its entry)
        backup_module="fault" if backup.startswith("fault") else backup,
        backup_settings=backup_settings,
    ))


def post_speech(server: LiveServer, text: str) -> httpx.Response:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    return httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)


def test_api_failover_before_the_first_byte_says_degraded_and_who_spoke(
    tmp_path: Path,
) -> None:
    server = live_server(tmp_path, "fail_after = 0", "piper")
    try:
        response = post_speech(server, "The backup voice speaks this sentence.")
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    assert response.status_code == 200
    assert response.headers["x-morpheus-degraded"] == "true"
    assert response.headers["x-morpheus-engine"] == "piper"
    assert len(response.content) > 2 * 24000  # over a second of 16-bit speech
    assert 'from_engine="fault"' in metrics and 'to_engine="piper"' in metrics


def test_api_failover_after_the_first_byte_continues_the_stream(tmp_path: Path) -> None:
    primary = "chunks_per_segment = 2\nchunk_ms = 100.0\nfail_after = 3"
    backup = "[plugins.fault2.settings]\nchunks_per_segment = 2\nchunk_ms = 100.0"
    server = live_server(tmp_path, primary, "fault2", backup)
    try:
        response = post_speech(server, TEXT)
    finally:
        server.stop()
    assert response.status_code == 200
    assert "x-morpheus-degraded" not in response.headers  # sent before the failure
    audio = np.frombuffer(response.content, dtype="<i2").astype(np.float32) / 32768
    # 2 + 1 chunks from the failing engine, 2 from the backup, nothing repeated.
    assert len(audio) == 5 * 2400 - 2 * 240
    assert dominant_hz(audio[-3000:-600]) == pytest.approx(pitch_of("Hello there."), abs=10)


MIDSTREAM_PRIMARY = "chunks_per_segment = 2\nchunk_ms = 100.0\nfail_after = 3"
MIDSTREAM_BACKUP = "[plugins.fault2.settings]\nchunks_per_segment = 2\nchunk_ms = 100.0"


def test_api_sse_says_degraded_between_the_two_engines_audio(tmp_path: Path) -> None:
    server = live_server(tmp_path, MIDSTREAM_PRIMARY, "fault2", MIDSTREAM_BACKUP)
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "stream_format": "sse"}
    try:
        with httpx.Client(timeout=60) as client, connect_sse(
            client, "POST", f"{server.url}/v1/audio/speech", json=body
        ) as source:
            events = [json.loads(sse.data) for sse in source.iter_sse()]
    finally:
        server.stop()
    types = [event["type"] for event in events]
    assert types.count("speech.degraded") == 1 and types[-1] == "speech.audio.done"
    at = types.index("speech.degraded")
    assert "speech.audio.delta" in types[:at] and "speech.audio.delta" in types[at:]
    notice = events[at]
    assert (notice["engine"], notice["from_engine"]) == ("fault2", "fault")
    assert "scripted failure" in notice["reason"]


def test_websocket_session_says_degraded_and_who_spoke(tmp_path: Path) -> None:
    server = live_server(tmp_path, MIDSTREAM_PRIMARY, "fault2", MIDSTREAM_BACKUP)
    received: list[object] = []
    try:
        with ws_connect(server.url.replace("http", "ws", 1) + "/v1/realtime?voice=tone") as ws:
            ws.send(json.dumps({"type": "text", "text": TEXT, "final": True}))
            while not received or not _is_metrics(received[-1]):
                received.append(ws.recv(timeout=30))
    finally:
        server.stop()
    kinds = [
        "audio" if isinstance(m, bytes) else json.loads(m)["type"] for m in received
    ]
    at = kinds.index("turn.degraded")
    assert "audio" in kinds[:at] and "audio" in kinds[at:]
    notice = json.loads(received[at])  # type: ignore[arg-type]
    assert (notice["engine"], notice["from_engine"], notice["turn"]) == ("fault2", "fault", 1)
    metrics = json.loads(received[-1])  # type: ignore[arg-type]
    assert metrics["engine"] == "fault2" and metrics["degraded"] is True


def _is_metrics(message: object) -> bool:
    return isinstance(message, str) and json.loads(message)["type"] == "metrics"
