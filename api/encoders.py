"""Turning float32 PCM into bytes: 16-bit PCM, streamable WAV, and per-stream encoders.

`new_encoder(fmt)` gives one stream its own encoder for any of OpenAI's response formats: raw
`pcm` (24 kHz s16le mono), `wav` with an unknown-length header, and mp3, opus, aac and flac
encoded incrementally with PyAV, so every chunk is sent as soon as it is encoded.
"""

from __future__ import annotations

import struct
from typing import Protocol

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


# -- per-stream encoders ---------------------------------------------------------------------

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")

CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
"""The Content-Type of each response format (opus travels in Ogg, aac in ADTS)."""

# (container, codec, bit rate) for the formats PyAV encodes.
_PYAV = {
    "mp3": ("mp3", "libmp3lame", 64_000),
    "opus": ("ogg", "libopus", 48_000),
    "aac": ("adts", "aac", 64_000),
    "flac": ("flac", "flac", None),
}
# Ogg holds packets until a page fills (1 s by default); 20 ms pages release every Opus packet.
# `bitexact` fixes the stream serial (random otherwise), so identical deterministic requests
# give identical bytes in every format.
_CONTAINER_OPTIONS = {"ogg": {"page_duration": "20000", "fflags": "+bitexact"}}


class AudioEncoder(Protocol):
    """One stream's encoder: float32 mono PCM in, bytes of the response format out.

    `encode` returns whatever bytes are final so far (maybe none: codecs work in frames);
    `flush` returns the rest and ends the stream. Concatenated, the outputs are one valid file.
    """

    content_type: str

    def encode(self, samples: np.ndarray) -> bytes:
        """Encode more samples (float32 in [-1, 1] at the stream's rate)."""

    def flush(self) -> bytes:
        """End the stream: the encoder's tail and the container's trailer."""

    def close(self) -> None:
        """Release the encoder without finishing (the client went away)."""


class PCMEncoder:
    """Raw signed 16-bit little-endian mono: what OpenAI's `pcm` is."""

    content_type = CONTENT_TYPES["pcm"]

    def encode(self, samples: np.ndarray) -> bytes:
        """16-bit little-endian bytes of `samples`."""
        return pcm16(samples)

    def flush(self) -> bytes:
        """Nothing is held back."""
        return b""

    def close(self) -> None:
        """Nothing to release."""


class WAVEncoder(PCMEncoder):
    """PCM16 WAV with the unknown-length header streaming writers use, sent before the audio.

    Args:
        sample_rate: the stream's rate, Hz.
    """

    content_type = CONTENT_TYPES["wav"]

    def __init__(self, sample_rate: int) -> None:
        self._header: bytes | None = wav_header(sample_rate)

    def encode(self, samples: np.ndarray) -> bytes:
        """The header (first call only), then 16-bit samples."""
        header, self._header = self._header or b"", None
        return header + pcm16(samples)

    def flush(self) -> bytes:
        """The header, if no audio came at all (a valid empty file)."""
        header, self._header = self._header or b"", None
        return header


class _Sink:
    """A write-only, unseekable file for PyAV: muxers then write streamable output."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class PyAVEncoder:
    """mp3, opus (in Ogg), aac (ADTS) or flac, encoded incrementally with PyAV (FFmpeg).

    The output sink cannot seek, so muxers write their streamable form (no Xing header to
    patch, FLAC's STREAMINFO without the total length): every byte is final once returned.

    Args:
        fmt: "mp3", "opus", "aac" or "flac".
        sample_rate: the stream's rate, Hz (Opus accepts 8, 12, 16, 24 or 48 kHz).
    """

    def __init__(self, fmt: str, sample_rate: int) -> None:
        import av  # deferred: wav and pcm streams never load FFmpeg

        container_format, codec, bit_rate = _PYAV[fmt]
        self.content_type = CONTENT_TYPES[fmt]
        self._sink = _Sink()
        self._container = av.open(
            self._sink, mode="w", format=container_format,
            options=_CONTAINER_OPTIONS.get(container_format, {}),
        )
        self._stream = self._container.add_stream(codec, rate=sample_rate)
        self._stream.layout = "mono"
        if bit_rate:
            self._stream.bit_rate = bit_rate
        self._rate = sample_rate
        self._pts = 0
        self._frame_type = av.AudioFrame
        self._closed = False
        # Open the codec and write the container header now, not on the first audio.
        self._container.start_encoding()

    def encode(self, samples: np.ndarray) -> bytes:
        """Encode `samples`; returns the packets now complete, muxed."""
        if len(samples):
            planar = np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1)
            frame = self._frame_type.from_ndarray(planar, format="flt", layout="mono")
            frame.sample_rate = self._rate
            frame.pts = self._pts
            self._pts += planar.shape[1]
            # PyAV converts the sample format and re-blocks to the codec's frame size.
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()

    def flush(self) -> bytes:
        """Drain the codec and write the trailer; the encoder is finished."""
        if self._closed:
            return b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._closed = True
        return self._sink.take()

    def close(self) -> None:
        """Release FFmpeg's state without finishing the file."""
        if not self._closed:
            self._closed = True
            self._container.close()


def new_encoder(fmt: str, sample_rate: int = 24000) -> AudioEncoder:
    """A fresh encoder for one stream.

    Args:
        fmt: one of `FORMATS`.
        sample_rate: the stream's rate, Hz.

    Raises:
        ValueError: an unknown format.
    """
    if fmt == "pcm":
        return PCMEncoder()
    if fmt == "wav":
        return WAVEncoder(sample_rate)
    if fmt in _PYAV:
        return PyAVEncoder(fmt, sample_rate)
    raise ValueError(f"unknown audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
