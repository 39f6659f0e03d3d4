"""Point 9 of "safe to expose": Opus bytes are deterministic (fixed Ogg serial).

Identical deterministic requests give identical bytes in every format, opus included, so
concurrency isolation can be checked byte for byte.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import LiveServer
from morpheus_tts.api.encoders import new_encoder


def ogg_serials(data: bytes) -> set[int]:
    serials, at = set(), data.find(b"OggS")
    while at >= 0:
        serials.add(struct.unpack_from("<I", data, at + 14)[0])
        at = data.find(b"OggS", at + 4)
    return serials


def test_the_opus_encoder_writes_the_same_bytes_twice() -> None:
    tone = (0.3 * np.sin(np.arange(24000) / 8)).astype(np.float32)

    def encode() -> bytes:
        encoder = new_encoder("opus", 24000)
        return encoder.encode(tone) + encoder.flush()

    first, second = encode(), encode()
    assert first == second
    assert len(ogg_serials(first)) == 1


@pytest.mark.parametrize("fmt", ["opus", "mp3", "flac", "aac", "wav", "pcm"])
def test_concurrent_identical_requests_give_identical_bytes(server: LiveServer, fmt: str) -> None:
    body = {"model": "tts-1", "input": "Same words, same bytes.", "voice": "alloy",
            "response_format": fmt}

    def fetch(_: int) -> bytes:
        response = httpx.post(server.url + "/v1/audio/speech", json=body, timeout=60)
        assert response.status_code == 200
        return response.content

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(fetch, range(3)))
    assert len(results[0]) > 1000
    assert results[0] == results[1] == results[2]
