"""Conformance with the real clients users point at Morpheus.

- the openai SDK, async (the sync client is in test_api_speech.py): every format, SSE, errors;
- LiveKit Agents' `openai.TTS` (SSE and audio paths, every format it decodes, StreamAdapter,
  prewarm) and Pipecat's `OpenAITTSService` (pcm, in a real pipeline), each in the clients
  venv (`tests/clients_venv.py`) and driven as a subprocess;
- Open WebUI's discovery and speech requests, replayed as its backend sends them.

The Wyoming client (Home Assistant's protocol) is in test_wyoming.py. Every audio path is
judged by whisper, not only by its bytes.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import av
import clients_venv
import httpx
import numpy as np
import openai
import pytest
from conftest import ROOT, LiveServer, word_error_rate

TEXT = "Hello there. This is a test of the speech path."  # words whisper tiny spells right
CLIENTS = ROOT / "tests" / "clients"


def decode(data: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
    if np.issubdtype(samples.dtype, np.integer):  # s16 from wav and flac
        return samples.astype(np.float32) / np.iinfo(samples.dtype).max, stream.rate
    return samples.astype(np.float32), stream.rate


def pcm_file(path: str) -> np.ndarray:
    return np.frombuffer(Path(path).read_bytes(), "<i2").astype(np.float32) / 32768.0


def run_client(script: str, server: LiveServer, out: Path) -> dict:
    """Run a client driver in the clients venv; its JSON report."""
    done = subprocess.run(
        [str(clients_venv.python()), str(CLIENTS / script), f"{server.url}/v1", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the openai SDK, async -------------------------------------------------------------------


@pytest.fixture
async def sdk(server: LiveServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0
    ) as client:
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
async def test_async_sdk_streams_every_format(sdk, transcribe, fmt: str) -> None:
    async with sdk.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt
    ) as response:
        data = b"".join([chunk async for chunk in response.iter_bytes()])
    if fmt == "pcm":
        samples, rate = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, 24000
    else:
        samples, rate = decode(data)
    assert rate == (48000 if fmt == "opus" else 24000)  # Opus always decodes at 48 kHz
    assert word_error_rate(TEXT, transcribe(samples, rate)) <= 0.15


@pytest.mark.anyio
async def test_async_sdk_sse_events_carry_the_audio_and_usage(sdk, transcribe) -> None:
    async with sdk.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=TEXT, response_format="pcm",
        stream_format="sse",
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) async for line in response.iter_lines()
                  if line.startswith("data: ")]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    assert set(events[-1]["usage"]) == {"input_tokens", "output_tokens", "total_tokens"}
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    assert word_error_rate(TEXT, transcribe(samples, 24000)) <= 0.15


@pytest.mark.anyio
async def test_async_sdk_raises_its_typed_errors(sdk) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", speed=9.0)
    assert bad.value.body["param"] == "speed"
    with pytest.raises(openai.NotFoundError):
        await sdk.audio.speech.create(model="tts-9", voice="alloy", input="Hi.")


# -- LiveKit Agents and Pipecat, in their own venv -------------------------------------------

LIVEKIT_CASES = ["sse-pcm", "sse-mp3", "audio-pcm", "audio-mp3", "audio-wav", "audio-opus",
                 "stream-adapter"]


@pytest.fixture(scope="module")
def livekit_report(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_client("livekit_tts.py", server, tmp_path_factory.mktemp("livekit"))


@pytest.mark.parametrize("case", LIVEKIT_CASES)
def test_livekit_openai_tts_hears_24khz_mono_speech(livekit_report, transcribe, case) -> None:
    result = livekit_report[case]
    assert (result["rates"], result["channels"]) == ([24000], [1])
    samples = pcm_file(result["pcm_path"])
    assert word_error_rate(TEXT, transcribe(samples, 24000)) <= 0.15


def test_livekit_prewarm_reaches_the_api_base(livekit_report) -> None:
    assert livekit_report["prewarm"]["status"] == "ok"


def test_pipecat_openai_tts_service_streams_pcm_frames(server, transcribe, tmp_path) -> None:
    report = run_client("pipecat_tts.py", server, tmp_path)
    assert report["errors"] == []
    assert report["frames"] > 1 and (report["rates"], report["channels"]) == ([24000], [1])
    text = "Good evening. The pipeline asks for raw audio in small frames."
    heard = transcribe(pcm_file(report["pcm_path"]), 24000)
    assert word_error_rate(text, heard) <= 0.2


# -- Open WebUI, replayed ----------------------------------------------------------------------


def test_open_webui_discovery_fills_its_pickers(server: LiveServer) -> None:
    base = f"{server.url}/v1"  # what the admin types as the API base URL
    # Its backend fetches both without an Authorization header and reads them like this:
    models = [m["id"] for m in httpx.get(f"{base}/audio/models").json().get("models", [])]
    voices = {v["id"]: v["name"] for v in httpx.get(f"{base}/audio/voices").json()["voices"]}
    assert {"tts-1", "tts-1-hd"} <= set(models) and voices == {"joe": "joe"}


@pytest.mark.parametrize("params", [{}, {"response_format": "wav", "speed": 1.25}])
def test_open_webui_speech_requests_speak_each_sentence(
    server: LiveServer, transcribe, params: dict
) -> None:
    base = f"{server.url}/v1"
    voice = next(iter(httpx.get(f"{base}/audio/voices").json()["voices"]))["id"]
    # The chat splits the reply on punctuation and asks for each sentence on its own, with
    # TTS_OPENAI_PARAMS merged in; the body is read whole and cached as a file.
    for sentence in re.split(r"(?<=[.!?])\s+", TEXT):
        payload = {"input": sentence, "voice": voice, "model": "tts-1", **params}
        response = httpx.post(
            f"{base}/audio/speech", json=payload, timeout=60,
            headers={"Authorization": "Bearer sk-open-webui", "Content-Type": "application/json"},
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == (
            "audio/wav" if params else "audio/mpeg"
        )
        samples, rate = decode(response.content)
        assert word_error_rate(sentence, transcribe(samples, rate)) <= 0.2
