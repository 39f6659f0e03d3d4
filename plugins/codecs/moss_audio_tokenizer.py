"""MOSS Audio Tokenizer (PyTorch): MOSS-TTS-Realtime's codec, 24 kHz at 12.5 frames/s.

Frames: int arrays shaped (frames, codebooks), codes 0..1023, one frame per 80 ms (1920
samples). MOSS-TTS-Realtime speaks the first 16 of the codec's 32 quantizers; a prefix of the
quantizers decodes (`codebooks` sets how many the stream decoder expects).

Streaming: the codec is causal end to end, so each `CodecDecoder` keeps its own transformer
caches (`DecoderState`) and returns every frame's 1920 samples as soon as the frame arrives;
nothing is held back, `flush()` returns nothing, and the stream equals the offline decode of the
whole sequence to float precision. Streams never share state (the upstream module-level
streaming state is replaced by per-stream objects), so any number of streams decode at once.

Weights load from a local directory in the upstream OpenMOSS/MOSS-Audio-Tokenizer layout
(`config.json` + `model.safetensors`); the quantizer's weight norm is merged on load. Nothing is
ever downloaded.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
from morpheus_tts.host import Component, hookimpl

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920
CODEBOOK_SIZE = 1024
WEIGHTS_FILE = "model.safetensors"
INSTALL_HINT = "pip install 'morpheus-tts[moss]'"
MAX_PROMPT_SECONDS = 60.0


class MossCodecSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the `moss-audio-tokenizer` codec.

    Args:
        model_path: directory with `config.json` and `model.safetensors` (the layout of
            OpenMOSS-Team/MOSS-Audio-Tokenizer).
        device: torch device ("cpu", "cuda", "cuda:1"); "auto" picks CUDA when available.
        codebooks: quantizers per frame the stream decoder takes (MOSS-TTS-Realtime: 16).
    """

    model_path: str | None = None
    device: str = "auto"
    codebooks: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.codebooks <= 32:
            raise ValueError(f"codebooks must be 1..32, got {self.codebooks}")


def check_codec_dir(codec: str, model_path: str | None) -> Path:
    """The codec directory, or an error naming the setting, the path and what is missing."""
    if not model_path:
        raise ValueError(
            f"{codec}: set plugins.{codec}.settings.model_path to a directory holding "
            f"config.json and {WEIGHTS_FILE} (nothing is downloaded)"
        )
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{codec}: model_path {path} is not a directory")
    missing = [n for n in ("config.json", WEIGHTS_FILE) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{codec}: {path} has no {' or '.join(missing)}")
    config = json.loads((path / "config.json").read_text())
    for key in ("encoder_kwargs", "decoder_kwargs", "quantizer_kwargs", "downsample_rate"):
        if key not in config:
            raise ValueError(f"{codec}: {path / 'config.json'} has no {key!r}; is it a MOSS codec?")
    rate = config.get("sampling_rate", config.get("sample_rate"))
    if rate != SAMPLE_RATE or config["downsample_rate"] != FRAME_SAMPLES:
        raise ValueError(
            f"{codec}: {path / 'config.json'} describes {rate} Hz / {config['downsample_rate']} "
            f"samples per frame; MOSS-TTS-Realtime needs {SAMPLE_RATE} Hz / {FRAME_SAMPLES}"
        )
    return path


def check_frames(frames: np.ndarray, codebooks: int) -> np.ndarray:
    """(frames, codebooks) int codes 0..1023, or a ValueError saying what is wrong."""
    frames = np.asarray(frames)
    if frames.ndim == 1 and frames.size == 0:
        frames = frames.reshape(0, codebooks)
    if frames.ndim != 2 or frames.shape[1] != codebooks:
        raise ValueError(f"MOSS frames must be shaped (frames, {codebooks}), got {frames.shape}")
    if frames.size and (frames.min() < 0 or frames.max() >= CODEBOOK_SIZE):
        raise ValueError(f"MOSS codes must be 0..{CODEBOOK_SIZE - 1}")
    return frames.astype(np.int64)


def canonical_codes(codes: np.ndarray, num_quantizers: int, expected: int | None = None):
    """Codes in any of (NQ, T), (T, NQ), (NQ, 1, T), (1, T, NQ) -> (NQ, T).

    `num_quantizers` is the checkpoint's count (32). A 2D array is (NQ, T) when only its first
    axis fits the quantizers, (T, NQ) when only its second does. When both fit, it is (T, NQ)
    if only its second axis equals `expected` (the quantizers asked for), else it stays
    canonical (NQ, T), which keeps encode -> decode round trips exact.

    Raises:
        ValueError: the shape fits no layout or the batch is not 1.
    """
    codes = np.asarray(codes)
    if codes.ndim == 3:
        if codes.shape[1] == 1 and codes.shape[0] <= num_quantizers:
            return codes[:, 0, :]
        if codes.shape[0] == 1 and codes.shape[2] <= num_quantizers:
            return codes[0].T
        raise ValueError(f"codes {codes.shape}: expected (NQ, 1, T) or (1, T, NQ), batch 1")
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2D or 3D, got shape {codes.shape}")
    first, second = codes.shape[0] <= num_quantizers, codes.shape[1] <= num_quantizers
    if first and second and expected and codes.shape[1] == expected != codes.shape[0]:
        return codes.T
    if first:
        return codes
    if second:
        return codes.T
    raise ValueError(f"codes {codes.shape}: neither axis is <= {num_quantizers} quantizers")


def check_chunk_duration(chunk_duration: float, context_duration: float) -> int:
    """Frames per chunk for a `chunk_duration` in seconds, checked as upstream checks it."""
    if chunk_duration <= 0:
        raise ValueError(f"chunk_duration must be > 0, got {chunk_duration}")
    if chunk_duration > context_duration:
        raise ValueError(
            f"chunk_duration must be <= the causal context ({context_duration} s), "
            f"got {chunk_duration}"
        )
    samples = round(chunk_duration * SAMPLE_RATE)
    if samples % FRAME_SAMPLES:
        raise ValueError(
            f"chunk_duration * {SAMPLE_RATE} must be a multiple of {FRAME_SAMPLES} "
            f"(e.g. 0.08, 0.24, 0.96), got {chunk_duration}"
        )
    return samples // FRAME_SAMPLES


class MossStreamDecoder:
    """One stream's decoder: each call decodes new frames with the stream's own caches."""

    def __init__(self, codec: MossAudioTokenizerCodec) -> None:
        from morpheus_tts.plugins.codecs.moss_codec_model import DecoderState

        self._codec = codec
        self._state = DecoderState(codec.model)
        self._finished = False

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """Decode (frames, codebooks) codes; return their samples (1920 per frame)."""
        if self._finished:
            raise RuntimeError("decoder already flushed; ask the codec for a new one")
        frames = check_frames(frames, self._codec.codebooks)
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        return self._codec.decode_stream(frames.T, self._state)

    def flush(self) -> np.ndarray:
        """Nothing is held back by a causal decoder; marks the stream finished."""
        self._finished = True
        return np.zeros(0, dtype=np.float32)


class MossAudioTokenizerCodec:
    """The MOSS Audio Tokenizer on PyTorch, shared by every stream."""

    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / FRAME_SAMPLES

    def __init__(self, settings: MossCodecSettings) -> None:
        self.settings = settings
        self.codebooks = settings.codebooks
        self.path = check_codec_dir("moss-audio-tokenizer", settings.model_path)
        self.model: Any = None

    async def start(self) -> None:
        """Load the weights (in a worker thread)."""
        self.model = await anyio.to_thread.run_sync(self._load)

    def _load(self) -> Any:
        try:
            import torch
            from morpheus_tts.plugins.codecs.moss_codec_model import load_codec_model
        except ImportError as exc:
            raise RuntimeError(f"moss-audio-tokenizer needs torch: {INSTALL_HINT}") from exc
        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_codec_model(self.path, device)
        if self.codebooks > model.num_quantizers:
            raise ValueError(
                f"moss-audio-tokenizer: codebooks {self.codebooks} > the checkpoint's "
                f"{model.num_quantizers} quantizers"
            )
        return model

    async def stop(self) -> None:
        """Drop the model so its memory returns."""
        self.model = None
        gc.collect()

    def _require(self) -> Any:
        if self.model is None:
            raise RuntimeError("moss-audio-tokenizer codec is not started")
        return self.model

    def decoder(self) -> MossStreamDecoder:
        """A fresh streaming decoder for one stream."""
        self._require()
        return MossStreamDecoder(self)

    def decode_stream(self, codes: np.ndarray, state: Any) -> np.ndarray:
        """Decode (nq, frames) codes continuing the stream held in `state`."""
        import torch

        model = self._require()
        device = next(model.parameters()).device
        audio = model.decode(torch.from_numpy(np.ascontiguousarray(codes)).to(device), state)
        return audio.float().cpu().numpy()

    def decode(
        self,
        codes: np.ndarray,
        num_quantizers: int | None = None,
        chunk_duration: float | None = None,
    ) -> np.ndarray:
        """Offline decode of a whole code sequence in any accepted layout (see
        `canonical_codes`), using its first `num_quantizers` quantizers (default all given).
        With `chunk_duration` (seconds), decode chunk by chunk through one stream state; the
        result is the same audio.
        """
        from morpheus_tts.plugins.codecs.moss_codec_model import DecoderState

        model = self._require()
        codes = canonical_codes(codes, model.num_quantizers, num_quantizers or self.codebooks)
        nq = num_quantizers or codes.shape[0]
        if not 1 <= nq <= min(codes.shape[0], model.num_quantizers):
            raise ValueError(f"num_quantizers must be 1..{codes.shape[0]}, got {nq}")
        codes = codes[:nq].astype(np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK_SIZE):
            raise ValueError(f"MOSS codes must be 0..{CODEBOOK_SIZE - 1}")
        if chunk_duration is None:
            return self.decode_stream(codes, None)
        step = check_chunk_duration(chunk_duration, model.context_duration)
        state = DecoderState(model)
        parts = [self.decode_stream(codes[:, i : i + step], state)
                 for i in range(0, codes.shape[1], step)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def encode_codes(
        self, audio: np.ndarray, sample_rate: int, num_quantizers: int | None = None
    ) -> np.ndarray:
        """Mono audio -> codes (nq, frames) of every quantizer (or the first `num_quantizers`).

        The last partial frame is zero-padded and kept, as upstream's encode keeps it.
        """
        import soxr
        import torch

        model = self._require()
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if sample_rate != SAMPLE_RATE:
            audio = soxr.resample(audio, sample_rate, SAMPLE_RATE).astype(np.float32)
        if len(audio) > MAX_PROMPT_SECONDS * SAMPLE_RATE:
            raise ValueError(f"voice prompts are limited to {MAX_PROMPT_SECONDS:.0f} s of audio")
        device = next(model.parameters()).device
        codes = model.encode(torch.from_numpy(audio).to(device), num_quantizers)
        return codes.cpu().numpy().astype(np.int32)

    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Encode a voice prompt to (frames, codebooks): the first `codebooks` quantizers."""
        return self.encode_codes(audio, sample_rate, self.codebooks).T.copy()


@hookimpl
def morpheus_codecs() -> list[Component]:
    """Offer the `moss-audio-tokenizer` codec."""
    return [
        Component(
            name="moss-audio-tokenizer",
            kind="codec",
            create=MossAudioTokenizerCodec,
            settings=MossCodecSettings,
            description="MOSS Audio Tokenizer on PyTorch: 24 kHz, 12.5 frames/s, causal streams",
        )
    ]
