"""POST /v1/audio/speech against a real server, with the official `openai` SDK and httpx-sse."""

from __future__ import annotations

import base64
import io
import json
import math
import time
import wave
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import av
import httpx
import numpy as np
import openai
import pytest
from conftest import ROOT, LiveServer, start_live_server, word_error_rate
from httpx_sse import connect_sse
from litestar.testing import AsyncTestClient
from morpheus_tts.api.app import create_app
from morpheus_tts.api.encoders import pcm16
from morpheus_tts.host.config import load_config
from morpheus_tts.host.runtime import Runtime, SpeakRequest

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "The server streams speech while the text is still arriving."
)
SHORT = "Hello there. This is a short test."
LONG = " ".join(f"This is sentence number {i} of a very long story." for i in range(80))


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0) as sdk:
        yield sdk


def speak(server: LiveServer, **body: object) -> httpx.Response:
    payload = {"model": "tts-1", "voice": "alloy", "input": SHORT, **body}
    return httpx.post(f"{server.url}/v1/audio/speech", json=payload, timeout=60)


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        rate = wav.getframerate()
    return np.frombuffer(data[44:], "<i2").astype(np.float32) / 32768.0, rate


def decode(data: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        return samples.astype(np.float32), stream.rate


def active_streams(server: LiveServer) -> int:
    return httpx.get(f"{server.url}/health", timeout=5).json()["active_streams"]


# -- the official SDK ------------------------------------------------------------------------


def test_sdk_streams_wav_that_whisper_understands(client: openai.OpenAI, transcribe) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["x-morpheus-engine"] == "piper"
        assert response.headers["x-morpheus-voice"] == "joe"
        chunks = list(response.iter_bytes())
    samples, rate = read_wav(b"".join(chunks))
    assert rate == 24000
    assert word_error_rate(TEXT, transcribe(samples, rate)) < 0.10


def test_sdk_pcm_is_24khz_s16le_and_equals_the_wav_data(client: openai.OpenAI) -> None:
    pcm = client.audio.speech.create(
        model="tts-1", voice="alloy", input=SHORT, response_format="pcm"
    ).content
    wav = client.audio.speech.create(
        model="tts-1", voice="alloy", input=SHORT, response_format="wav"
    ).content
    assert pcm == wav[44:]
    seconds = len(pcm) / 2 / 24000
    assert len(SHORT) / 25 < seconds < len(SHORT) / 8


@pytest.mark.anyio
async def test_pcm_body_is_exactly_the_pipelines_audio(server: LiveServer) -> None:
    runtime = Runtime(load_config(server.log.with_suffix(".toml")))
    async with runtime.running():
        async with runtime.speak(SpeakRequest(), TEXT) as utterance:
            audio = [chunk.samples async for chunk in utterance.audio]
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "pcm"}
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{server.url}/v1/audio/speech", json=body)
    assert response.content == pcm16(np.concatenate(audio))


def test_sdk_mp3_is_the_default_and_whisper_understands_it(
    client: openai.OpenAI, transcribe
) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="coral", input=TEXT
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        data = response.read()
    samples, rate = decode(data)
    assert rate == 24000
    assert word_error_rate(TEXT, transcribe(samples, rate)) < 0.10


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("opus", "audio/ogg"), ("aac", "audio/aac"), ("flac", "audio/flac")]
)
def test_sdk_other_formats_decode(client: openai.OpenAI, fmt: str, content_type: str) -> None:
    response = client.audio.speech.create(
        model="tts-1", voice="nova", input=SHORT, response_format=fmt
    )
    assert response.response.headers["content-type"] == content_type
    samples, rate = decode(response.content)
    assert 1.0 < len(samples) / rate < 4.0


def test_sdk_sse_gives_deltas_then_one_done_with_usage(client: openai.OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=SHORT, response_format="pcm",
        stream_format="sse",
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    usage = done["usage"]
    assert usage["input_tokens"] == math.ceil(len(SHORT) / 4)
    assert usage["output_tokens"] == math.ceil(len(pcm) / 2 / 24000 * 20)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_httpx_sse_audio_equals_the_plain_stream(server: LiveServer) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": SHORT, "response_format": "pcm"}
    with httpx.Client(timeout=60) as http:
        with connect_sse(
            http, "POST", f"{server.url}/v1/audio/speech", json={**body, "stream_format": "sse"}
        ) as source:
            assert source.response.headers["x-morpheus-engine"] == "piper"
            events = [json.loads(sse.data) for sse in source.iter_sse()]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if "audio" in e)
    assert [e["type"] for e in events].count("speech.audio.done") == 1
    assert audio == speak(server, **body).content


def test_sse_is_chosen_by_the_body_never_by_accept(server: LiveServer) -> None:
    wants_sse = {"Accept": "text/event-stream"}
    response = httpx.post(
        f"{server.url}/v1/audio/speech", headers=wants_sse, timeout=60,
        json={"model": "tts-1", "voice": "alloy", "input": SHORT, "response_format": "wav"},
    )
    assert response.headers["content-type"] == "audio/wav"
    assert response.content[:4] == b"RIFF"


def test_voice_object_and_extension_fields_are_accepted(client: openai.OpenAI) -> None:
    response = client.audio.speech.create(
        model="tts-1-hd", voice={"id": "shimmer"}, input=SHORT, response_format="pcm",
        instructions="Speak calmly.", extra_body={"low_latency": True, "options": {"seed": 1}},
    )
    assert response.response.headers["x-morpheus-voice"] == "joe"
    assert len(response.content) > 24000


def test_engine_and_voice_names_work_directly(server: LiveServer) -> None:
    response = speak(server, model="piper", voice="piper:joe", response_format="pcm")
    assert response.status_code == 200
    assert "x-morpheus-fallback" not in response.headers


def test_speed_two_halves_the_duration(server: LiveServer) -> None:
    normal = len(speak(server, input=TEXT, response_format="pcm").content)
    fast = len(speak(server, input=TEXT, response_format="pcm", speed=2.0).content)
    # Piper's sentences are time-stretched to exactly half (tests/test_speed.py has the rest).
    assert fast / normal == pytest.approx(0.5, rel=0.05)


# -- models and voices -----------------------------------------------------------------------


def test_models_list_has_openai_shape_and_the_aliases(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    assert {"piper", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "orpheus"} <= set(models)
    assert models["tts-1"].object == "model"
    assert client.models.retrieve("orpheus").id == "orpheus"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_voices_list_objects_and_engine_detail(server: LiveServer) -> None:
    body = httpx.get(f"{server.url}/v1/audio/voices").json()
    assert body["status"] == "ok" and [v["id"] for v in body["voices"]] == ["joe"]
    (piper,) = body["engines"]
    assert piper["name"] == "piper" and piper["default_voice"] == "joe"
    assert piper["aliases"]["tara"] == "joe" and "alloy" in body["aliases"]


# -- errors ----------------------------------------------------------------------------------

LONG_INPUT = "a" * 4097
BAD_REQUESTS = [
    ({"foo": 1}, "foo", "unknown_parameter"),
    ({"input": LONG_INPUT}, "input", "string_above_max_length"),
    ({"input": "   "}, "input", "empty_string"),
    ({"input": 7}, "input", "invalid_type"),
    ({"speed": 0.1}, "speed", "decimal_below_min_value"),
    ({"speed": 4.5}, "speed", "decimal_above_max_value"),
    ({"speed": "fast"}, "speed", "invalid_type"),
    ({"response_format": "ogg"}, "response_format", "invalid_value"),
    ({"stream_format": "chunks"}, "stream_format", "invalid_value"),
    ({"voice": "nobody"}, "voice", "invalid_value"),
    ({"voice": {"name": "alloy"}}, "voice.name", "unknown_parameter"),
    ({"instructions": "x" * 4097}, "instructions", "string_above_max_length"),
    ({"options": {"nested": [1]}}, "options", "invalid_type"),
]


@pytest.mark.parametrize(("change", "param", "code"), BAD_REQUESTS)
def test_bad_fields_get_400_naming_the_field(
    server: LiveServer, change: dict, param: str, code: str
) -> None:
    response = speak(server, **change)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


def test_missing_field_is_named(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/v1/audio/speech", json={"model": "tts-1", "voice": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    assert response.json()["error"]["code"] == "missing_required_parameter"


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.audio.speech.create(model="tts-9", voice="alloy", input=SHORT)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.speech.create(model="tts-1", voice="alloy", input=LONG_INPUT)
    assert bad.value.param == "input"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.audio.speech.create(
            model="tts-1", voice="alloy", input=SHORT, extra_body={"stream": True}
        )
    assert unknown.value.param == "stream"


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_malformed_or_non_object_json_gets_the_envelope(server: LiveServer, body: bytes) -> None:
    response = httpx.post(
        f"{server.url}/v1/audio/speech", content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_oversized_body_is_413(server: LiveServer) -> None:
    response = speak(server, input="a" * 300_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/audio/speech", 405), ("POST", "/v1/audio/speeches", 404)],
)
def test_routing_errors_use_the_envelope(
    server: LiveServer, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, f"{server.url}{path}", json={})
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# -- behaviour under stress ------------------------------------------------------------------


def test_client_disconnect_cancels_synthesis(server: LiveServer) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": LONG, "response_format": "pcm"}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{server.url}/v1/audio/speech", json=body) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()  # held: a dropped iterator closes the connection
            next(chunks)
            assert active_streams(server) == 1
    closed = time.monotonic()
    while active_streams(server) and time.monotonic() - closed < 3:
        time.sleep(0.05)
    # 80 sentences take many seconds to synthesize: only a cancellation ends this soon.
    assert active_streams(server) == 0


CONCURRENT_TEXTS = [
    "One small step for a man.",
    "The rain in Spain stays mainly in the plain.",
    "Pack my box with five dozen liquor jugs.",
    "How vexingly quick daft zebras jump!",
    "Sphinx of black quartz, judge my vow.",
    "A journey of a thousand miles begins with a single step.",
    "All that glitters is not gold.",
    "Time flies like an arrow; fruit flies like a banana.",
]


def test_eight_concurrent_streams_each_get_exactly_their_own_audio(server: LiveServer) -> None:
    requests = [
        {"input": text, "response_format": "pcm" if i % 2 else "mp3"}
        for i, text in enumerate(CONCURRENT_TEXTS)
    ]
    alone = [speak(server, **request).content for request in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: speak(server, **r).content, requests))
    assert len(set(alone)) == len(alone)
    for i, (single, concurrent) in enumerate(zip(alone, together, strict=True)):
        assert single == concurrent, f"stream {i} differs when run concurrently"


# -- engine failures (in-process, with the scripted fault engine) -----------------------------

FAULT_CONFIG = """
[server]
default_engine = "fault"
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = {{ fail_after = {fail_after}, step_delay_ms = 10, start_delay_ms = {start_ms} }}
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""
FAULT_TEXT = "A sentence the fault engine turns into two seconds of tone."


@asynccontextmanager
async def fault_client(
    tmp_path: Path, fail_after: int = -1, start_ms: int = 0, wait: bool = True
) -> AsyncIterator[AsyncTestClient]:
    config = FAULT_CONFIG.format(fail_after=fail_after, start_ms=start_ms)
    (tmp_path / "plugins.toml").write_text(config)
    app = create_app(load_config(tmp_path / "plugins.toml"))
    async with AsyncTestClient(app, timeout=30) as http:
        while wait and (await http.get("/health")).status_code != 200:
            await anyio.sleep(0.05)
        yield http


def fault_body(**change: object) -> dict[str, object]:
    return {"model": "tts-1", "voice": "alloy", "input": FAULT_TEXT, **change}


@pytest.mark.anyio
async def test_requests_while_the_engine_loads_get_503_with_retry_after(tmp_path: Path) -> None:
    async with fault_client(tmp_path, start_ms=1000, wait=False) as http:
        response = await http.post("/v1/audio/speech", json=fault_body())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "engine_unavailable"


@pytest.mark.anyio
async def test_engine_failing_before_audio_is_a_500_envelope(tmp_path: Path) -> None:
    async with fault_client(tmp_path, fail_after=0) as http:
        response = await http.post("/v1/audio/speech", json=fault_body())
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "engine_error"
        assert (await http.get("/health")).json()["active_streams"] == 0


def test_engine_failing_mid_stream_aborts_the_body(tmp_path: Path) -> None:
    """After the 200 the status cannot change: the body is cut off before its chunked end,
    so the client sees an incomplete transfer rather than a short file that looks whole."""
    live = start_live_server(tmp_path, FAULT_CONFIG.format(fail_after=5, start_ms=0))
    received = bytearray()
    try:
        with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012 - the read raises
            with httpx.stream("POST", live.url + "/v1/audio/speech", timeout=30,
                              json=fault_body(response_format="wav")) as response:
                assert response.status_code == 200
                for data in response.iter_bytes():
                    received += data
    finally:
        live.stop()
    samples, rate = read_wav(bytes(received))
    assert 0 < len(samples) / rate < 1.0  # some audio, not the whole ~3.5 s


@pytest.mark.anyio
async def test_engine_failing_mid_sse_sends_an_error_event_instead_of_done(
    tmp_path: Path,
) -> None:
    async with fault_client(tmp_path, fail_after=5) as http:
        response = await http.post("/v1/audio/speech", json=fault_body(stream_format="sse"))
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "engine_error"
    assert "speech.audio.done" not in {event["type"] for event in events}


# -- auth and admission (a second server with a key and one stream slot) ----------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(
        tmp_path_factory.mktemp("guarded"), (ROOT / "plugins.toml").read_text(),
        env={"MORPHEUS_API_KEY": "sk-test", "MORPHEUS_MAX_STREAMS": "1"},
    )
    try:
        yield live
    finally:
        live.stop()


def test_wrong_api_key_is_401(guarded: LiveServer) -> None:
    with openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="sk-wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as error:
            sdk.audio.speech.create(model="tts-1", voice="alloy", input=SHORT)
    assert error.value.code == "invalid_api_key"


def test_right_api_key_speaks(guarded: LiveServer) -> None:
    with openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="sk-test", max_retries=0) as sdk:
        audio = sdk.audio.speech.create(
            model="tts-1", voice="alloy", input=SHORT, response_format="pcm"
        )
    assert len(audio.content) > 24000


def test_streams_beyond_the_limit_get_429_with_retry_after(guarded: LiveServer) -> None:
    headers = {"Authorization": "Bearer sk-test"}
    body = {"model": "tts-1", "voice": "alloy", "input": LONG, "response_format": "pcm"}
    url = f"{guarded.url}/v1/audio/speech"
    with httpx.Client(timeout=60, headers=headers) as http:
        with http.stream("POST", url, json=body) as first:
            chunks = first.iter_raw()
            next(chunks)
            second = http.post(url, json={**body, "input": SHORT})
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "rate_limit_exceeded"


def test_health_needs_no_key(guarded: LiveServer) -> None:
    assert httpx.get(f"{guarded.url}/health").status_code == 200


def test_pace_holds_delivery_to_playback_and_is_off_by_default(tmp_path: Path) -> None:
    # The fault engine sleeps its way to 10x real time, so the unpaced stream's speed does not
    # hang on how busy the CPU is; only pacing can hold the paced one back to playback speed.
    live = start_live_server(tmp_path, FAULT_CONFIG.format(fail_after=-1, start_ms=0))
    text = " ".join([FAULT_TEXT] * 4)

    def timed(**change: object) -> tuple[float, float]:
        started = time.perf_counter()
        response = httpx.post(
            live.url + "/v1/audio/speech", timeout=60,
            json=fault_body(input=text, response_format="pcm", **change),
        )
        assert response.status_code == 200
        return time.perf_counter() - started, len(response.content) / 2 / 24000

    try:
        fast_s, seconds = timed()
        paced_s, _ = timed(pace=True)
    finally:
        live.stop()
    assert seconds > 6
    assert fast_s < seconds / 2
    # Paced, the last sentence is made only once the listener's buffer runs low.
    assert paced_s > seconds - 2.5
