"""Per-stream encoders: every response format, encoded chunk by chunk, decodes to the input."""

from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np
import pytest
from morpheus_tts.api.encoders import (
    CONTENT_TYPES,
    FORMATS,
    UNKNOWN_LENGTH,
    new_encoder,
    pcm16,
    wav_header,
)

RATE = 24000
TONE_HZ = 440.0


def tone(seconds: float = 1.0, hz: float = TONE_HZ) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def encode_in_chunks(fmt: str, samples: np.ndarray, chunk: int = 2400) -> list[bytes]:
    encoder = new_encoder(fmt, RATE)
    parts = [encoder.encode(samples[i:i + chunk]) for i in range(0, len(samples), chunk)]
    return [*parts, encoder.flush()]


def decode(data: bytes) -> tuple[np.ndarray, int, str]:
    """Decode any container PyAV knows to mono float32, its rate and the container name."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().astype(np.float32) for frame in container.decode(stream)]
        planes = [f.reshape(-1) if f.shape[0] == 1 else f.mean(axis=0) for f in frames]
        samples = np.concatenate(planes)
        if frames and container.streams.audio[0].format.name in ("s16", "s16p"):
            samples = samples / 32768.0
        return samples, stream.rate, container.format.name


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize(
    ("fmt", "container"), [("mp3", "mp3"), ("opus", "ogg"), ("aac", "aac"), ("flac", "flac")]
)
def test_compressed_formats_decode_to_the_same_tone_and_length(fmt: str, container: str) -> None:
    data = b"".join(encode_in_chunks(fmt, tone(1.0)))
    samples, rate, name = decode(data)
    assert container in name
    assert rate in (RATE, 48000)  # Opus always decodes at 48 kHz
    assert abs(len(samples) / rate - 1.0) < 0.1
    assert abs(dominant_hz(samples, rate) - TONE_HZ) < 5


@pytest.mark.parametrize("fmt", ["mp3", "aac", "opus"])
def test_lossy_formats_emit_bytes_before_the_stream_ends(fmt: str) -> None:
    parts = encode_in_chunks(fmt, tone(1.0), chunk=4800)
    body = parts[:-1]
    assert all(len(part) > 0 for part in body[1:]), [len(p) for p in parts]
    assert sum(map(len, body)) > 0.6 * sum(map(len, parts))


@pytest.mark.parametrize("fmt", ["mp3", "aac", "flac"])
def test_chunk_boundaries_do_not_change_the_bytes(fmt: str) -> None:
    samples = tone(1.0)
    whole = b"".join(encode_in_chunks(fmt, samples, chunk=len(samples)))
    assert b"".join(encode_in_chunks(fmt, samples, chunk=1234)) == whole


def test_wav_starts_with_an_unknown_length_header_then_pcm16() -> None:
    samples = tone(0.5)
    parts = encode_in_chunks("wav", samples)
    data = b"".join(parts)
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", data[4:8])[0] == UNKNOWN_LENGTH
    assert struct.unpack("<I", data[40:44])[0] == UNKNOWN_LENGTH
    assert data[44:] == pcm16(samples)
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)


def test_wav_with_no_audio_is_still_a_header() -> None:
    assert new_encoder("wav", RATE).flush() == wav_header(RATE)


def test_pcm_is_raw_s16le_clipped_and_rounded() -> None:
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0], np.float32)
    data = b"".join(encode_in_chunks("pcm", samples, chunk=3))
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]


def test_every_format_has_a_content_type_and_an_encoder() -> None:
    assert set(CONTENT_TYPES) == set(FORMATS)
    for fmt in FORMATS:
        encoder = new_encoder(fmt, RATE)
        assert encoder.content_type == CONTENT_TYPES[fmt]
        encoder.close()


def test_unknown_format_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="mp3, opus, aac, flac, wav, pcm"):
        new_encoder("ogg")


def test_closing_without_flush_releases_the_encoder() -> None:
    encoder = new_encoder("mp3", RATE)
    encoder.encode(tone(0.2))
    encoder.close()
    assert encoder.flush() == b""
