"""Turning float32 PCM into bytes: 16-bit PCM and a streamable WAV header."""

from __future__ import annotations

import struct

import numpy as np

UNKNOWN_LENGTH = 0xFFFFFFFF  # what streaming WAV writers put in the size fields


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as signed 16-bit little-endian bytes (clipped, rounded)."""
    clipped = np.clip(samples, -1.0, 1.0)
    return np.round(clipped * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None = None, channels: int = 1) -> bytes:
    """A 44-byte PCM16 WAV header; `data_bytes=None` writes the unknown-length form for streams."""
    block_align = 2 * channels
    data_size = UNKNOWN_LENGTH if data_bytes is None else data_bytes
    riff_size = UNKNOWN_LENGTH if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align,
                      block_align, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )
