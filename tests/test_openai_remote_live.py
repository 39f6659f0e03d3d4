"""Two Morpheus servers on 127.0.0.1, one proxying the other through `openai-remote`.

The remote speaks Piper with noise 0 (deterministic), so the proxy's audio can be compared
sample by sample with the remote's own answer to the same request.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import LiveServer, start_live_server, word_error_rate

pytestmark = pytest.mark.slow

PIPER = """
[plugins.piper]
module = "morpheus_tts.plugins.engines.piper"
settings = { voice = "bundled", noise_scale = 0.0, noise_w_scale = 0.0 }
"""
COMMON = """
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""
REMOTE_CONFIG = '[server]\ndefault_engine = "piper"\n' + PIPER + COMMON
ONE_SENTENCE = "The proxy speaks exactly what the server says."
TWO_SENTENCES = "The proxy speaks exactly what the server says. Every sample arrives unchanged."
SEAM = 240  # the crossfade stitcher's 10 ms at 24 kHz


def proxy_config(remote_url: str, *, failover: bool = False) -> str:
    server = '[server]\ndefault_engine = "openai-remote"\n'
    if failover:
        server += 'failover = ["piper"]\nstall_timeout_s = 5\n'
    remote = f"""
[plugins.remote]
module = "morpheus_tts.plugins.engines.openai_remote"
settings = {{ base_url = "{remote_url}/v1", health_interval_s = 0.5, connect_timeout_s = 1.0 }}
"""
    return server + remote + (PIPER if failover else "") + COMMON


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    remote = start_live_server(tmp_path_factory.mktemp("remote"), REMOTE_CONFIG)
    try:
        proxy = start_live_server(tmp_path_factory.mktemp("proxy"), proxy_config(remote.url))
        try:
            yield remote, proxy
        finally:
            proxy.stop()
    finally:
        remote.stop()


def speak_pcm(url: str, model: str, text: str) -> tuple[np.ndarray, float]:
    """The pcm answer and the client's time to its first body byte, in ms."""
    body = {"model": model, "input": text, "voice": "joe", "response_format": "pcm"}
    started = time.perf_counter()
    first_ms = None
    data = b""
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for piece in response.iter_bytes():
            if first_ms is None and piece:
                first_ms = 1000 * (time.perf_counter() - started)
            data += piece
    return np.frombuffer(data, dtype="<i2").astype(np.int32), first_ms or 0.0


def test_the_proxy_lists_the_remote_voices(pair: tuple[LiveServer, LiveServer]) -> None:
    remote, proxy = pair
    listing = httpx.get(f"{proxy.url}/v1/audio/voices").json()
    engines = {e["name"]: e for e in listing["engines"]}
    assert engines["openai-remote"]["voices"] == ["joe"]
    health = _engine_health(httpx.get(f"{proxy.url}/adapters").json(), "openai-remote")
    assert health["ready"] is True and health["url"] == f"{remote.url}/v1"


def test_one_sentence_through_the_proxy_is_the_remote_audio_bit_for_bit(
    pair: tuple[LiveServer, LiveServer],
) -> None:
    remote, proxy = pair
    direct, _ = speak_pcm(remote.url, "piper", ONE_SENTENCE)
    proxied, _ = speak_pcm(proxy.url, "openai-remote", ONE_SENTENCE)
    assert len(direct) > 24000  # over a second of speech
    assert np.array_equal(proxied, direct)


def test_two_sentences_differ_only_by_rounding_inside_the_seam(
    pair: tuple[LiveServer, LiveServer],
) -> None:
    # The proxy joins the remote's two 16-bit answers; the remote joined unrounded floats.
    remote, proxy = pair
    direct, _ = speak_pcm(remote.url, "piper", TWO_SENTENCES)
    proxied, _ = speak_pcm(proxy.url, "openai-remote", TWO_SENTENCES)
    assert len(proxied) == len(direct)
    differing = np.flatnonzero(proxied != direct)
    assert np.abs(proxied - direct).max() <= 1
    print(f"\n{len(differing)} of {len(direct)} samples differ, by 1 LSB at most")
    if len(differing):  # all of them within one seam
        assert differing[-1] - differing[0] < SEAM


def test_time_to_first_audio_through_the_proxy(pair: tuple[LiveServer, LiveServer]) -> None:
    """Measured, not asserted (bench/bench_remote.py measures it properly)."""
    remote, proxy = pair
    direct_ms, proxied_ms = [], []
    for _ in range(3):
        direct_ms.append(speak_pcm(remote.url, "piper", TWO_SENTENCES)[1])
        proxied_ms.append(speak_pcm(proxy.url, "openai-remote", TWO_SENTENCES)[1])
    d, p = statistics.median(direct_ms), statistics.median(proxied_ms)
    print(f"\nTTFA median of 3: direct {d:.1f} ms, through the proxy {p:.1f} ms "
          f"(+{p - d:.1f} ms)")
    assert d > 0 and p > 0


def test_a_remote_that_dies_mid_request_fails_over_to_the_local_engine(
    tmp_path: Path, transcribe
) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "p").mkdir()
    remote = start_live_server(tmp_path / "r", REMOTE_CONFIG)
    proxy = start_live_server(tmp_path / "p", proxy_config(remote.url, failover=True))
    sentences = [
        "The remote server speaks the first sentence.",
        "It goes on with a second one.",
        "A third sentence keeps the stream busy.",
        "Then a fourth sentence follows.",
        "The fifth sentence is still going.",
        "Finally the local voice reads this last sentence.",
    ]
    body = {"model": "openai-remote", "input": " ".join(sentences), "voice": "joe",
            "response_format": "pcm", "stream_format": "sse"}
    events: list[dict] = []
    try:
        with httpx.stream("POST", f"{proxy.url}/v1/audio/speech", json=body,
                          timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                events.append(json.loads(line.removeprefix("data:")))
                if len(events) == 1:
                    remote.process.kill()  # gone mid-request, without a goodbye
                    remote.process.wait()
        health = httpx.get(f"{proxy.url}/adapters").json()
    finally:
        proxy.stop()
        remote.stop()
    kinds = [e["type"] for e in events]
    assert kinds[0] == "speech.audio.delta" and kinds[-1] == "speech.audio.done"
    degraded = [e for e in events if e["type"] == "speech.degraded"]
    assert len(degraded) == 1
    assert degraded[0]["engine"] == "piper" and degraded[0]["from_engine"] == "openai-remote"
    assert "RemoteUnavailableError" in degraded[0]["reason"]
    after = kinds.index("speech.degraded")
    local = b"".join(base64.b64decode(e["audio"]) for e in events[after:]
                     if e["type"] == "speech.audio.delta")
    samples = np.frombuffer(local, dtype="<i2").astype(np.float32) / 32767
    heard = transcribe(samples, 24000)
    print(f"\nafter failover the local engine said: {heard!r}")
    assert word_error_rate(sentences[-1], " ".join(heard.split()[-8:])) < 0.3
    remote_health = _engine_health(health, "openai-remote")
    assert remote_health["ready"] is False


def _engine_health(adapters: dict, name: str) -> dict:
    for engine in adapters["adapters"]:
        if engine.get("name") == name:
            return engine["health"]
    raise AssertionError(f"no engine {name!r} in {adapters}")
