"""The old Orpheus-FastAPI surface: its README's cURL commands, verbatim, against a real server."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from conftest import LiveServer, word_error_rate
from morpheus_tts.api.legacy import OutputStore

SPEAK_TEXT = "Hello world! This is a test."
SPEECH_TEXT = "Hello world! This is a test of the Orpheus TTS system."

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="apt-get install -y curl")


def curl(command: str, server: LiveServer, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run a README cURL command as written; only the port differs from the old default."""
    command = command.replace("localhost:5005", f"127.0.0.1:{server.port}")
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, timeout=60, check=True
    )


def decode(data: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.channels == 1
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        return samples.astype(np.float32) / 32768.0, stream.rate


@needs_curl
def test_readme_speak_curl_writes_a_playable_wav(
    server: LiveServer, tmp_path: Path, transcribe
) -> None:
    curl(
        """curl -X POST http://localhost:5005/speak \\
  -H "Content-Type: application/json" \\
  -d '{
    "text": "Hello world! This is a test.",
    "voice": "tara"
  }' \\
  -o output.wav""",
        server, tmp_path,
    )
    data = (tmp_path / "output.wav").read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    samples, rate = decode(data)
    assert rate == 24000 and 1.0 < len(samples) / rate < 5.0
    assert word_error_rate(SPEAK_TEXT, transcribe(samples, rate)) < 0.10


@needs_curl
def test_readme_openai_curl_writes_speech_wav(server: LiveServer, tmp_path: Path) -> None:
    curl(
        """curl http://localhost:5005/v1/audio/speech \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "orpheus",
    "input": "Hello world! This is a test of the Orpheus TTS system.",
    "voice": "tara",
    "response_format": "wav",
    "speed": 1.0
  }' \\
  --output speech.wav""",
        server, tmp_path,
    )
    samples, rate = decode((tmp_path / "speech.wav").read_bytes())
    assert rate == 24000 and len(samples) / rate > len(SPEECH_TEXT) / 25


def test_orpheus_names_fall_back_to_the_default_engine_visibly(server: LiveServer) -> None:
    body = {"model": "orpheus", "input": SPEECH_TEXT, "voice": "tara", "response_format": "wav"}
    response = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)
    assert response.headers["x-morpheus-engine"] == "piper"
    assert response.headers["x-morpheus-voice"] == "joe"
    assert response.headers["x-morpheus-fallback"] == "true"


def test_speak_with_accept_json_answers_the_old_json_and_serves_the_file(
    server: LiveServer,
) -> None:
    body = {"text": SPEAK_TEXT, "voice": "tara"}
    streamed = httpx.post(f"{server.url}/speak", json=body, timeout=60)
    answer = httpx.post(
        f"{server.url}/speak", json=body, headers={"Accept": "application/json"}, timeout=60
    )
    assert answer.status_code == 200
    old = answer.json()
    assert {"status", "voice", "output_file", "generation_time"} <= set(old)
    assert old["status"] == "ok" and old["voice"] == "joe"
    assert re.fullmatch(r"outputs/[0-9a-f]{32}\.wav", old["output_file"])
    assert isinstance(old["generation_time"], float)
    served = httpx.get(f"{server.url}/{old['output_file']}")
    assert served.status_code == 200 and served.headers["content-type"] == "audio/wav"
    # The stored file has exact sizes in its header; the audio is the streamed audio.
    assert served.content[44:] == streamed.content[44:]
    assert int.from_bytes(served.content[40:44], "little") == len(served.content) - 44


def test_each_speak_file_gets_its_own_name(server: LiveServer) -> None:
    json_accept = {"Accept": "application/json"}
    names = {
        httpx.post(
            f"{server.url}/speak", json={"text": "Same text."}, headers=json_accept, timeout=60
        ).json()["output_file"]
        for _ in range(2)
    }
    assert len(names) == 2


def test_speak_ignores_unknown_keys_like_the_old_server(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.url}/speak", json={"text": SPEAK_TEXT, "voice": "tara", "model": "x"}
    )
    assert response.status_code == 200 and response.headers["x-morpheus-engine"] == "piper"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"voice": "tara"}, "text"),
        ({"text": "  "}, "text"),
        ({"text": "Hi.", "voice": "x"}, "voice"),
        ({"text": "Hi.", "speed": 9}, "speed"),
    ],
)
def test_speak_errors_use_the_envelope(server: LiveServer, body: dict, param: str) -> None:
    response = httpx.post(f"{server.url}/speak", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("name", ["nothing.wav", "..%2Fplugins.toml", "0" * 32 + ".wav"])
def test_unknown_output_files_are_404(server: LiveServer, name: str) -> None:
    response = httpx.get(f"{server.url}/outputs/{name}")
    assert response.status_code == 404
    assert "error" in response.json()


def test_old_voices_list_of_names_is_served_with_legacy_true(server: LiveServer) -> None:
    body = httpx.get(f"{server.url}/v1/audio/voices", params={"legacy": "true"}).json()
    assert body == {"status": "ok", "voices": ["joe"]}


# -- retention (the store itself) ------------------------------------------------------------


def test_store_keeps_only_the_newest_files_and_never_touches_others(tmp_path: Path) -> None:
    foreign = tmp_path / "notes.wav"
    foreign.write_bytes(b"mine")
    store = OutputStore(tmp_path, keep=3)
    names = [store.write(f"audio {i}".encode()) for i in range(5)]
    kept = {path.name for path in tmp_path.iterdir()}
    assert kept == {*names[-3:], "notes.wav"}
    assert store.path(names[-1]) == tmp_path / names[-1]
    assert store.path(names[0]) is None
    assert store.path("../notes.wav") is None and store.path("notes.wav") is None
