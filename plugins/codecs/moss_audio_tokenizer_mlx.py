"""MOSS Audio Tokenizer on MLX (mlx-audio's `MossAudioTokenizer`): the `moss-audio-tokenizer`
contract for Apple silicon (MLX's CPU backend on Linux).

mlx-audio 0.6.2 loads the upstream on-disk layout itself (weight-norm parametrizations,
`in_projs.0`, `linear1`/`linear2` names) and its streaming decoder objects keep their caches
per object, so each stream gets its own. Frames, codebooks and streaming behave as in
`plugins.codecs.moss_audio_tokenizer`: 1920 samples per frame as soon as it arrives, nothing
held back. Encode zero-pads the last partial frame and keeps it, as the PyTorch codec does.

Weights load from a local directory (`config.json` + `model.safetensors`); nothing is ever
downloaded.
"""

from __future__ import annotations

import gc
from typing import Any

import anyio
import numpy as np
from morpheus_tts.host import Component, hookimpl
from morpheus_tts.plugins.codecs.moss_audio_tokenizer import (
    FRAME_SAMPLES,
    MAX_PROMPT_SECONDS,
    SAMPLE_RATE,
    MossCodecSettings,
    check_codec_dir,
    check_frames,
)

INSTALL_HINT = "pip install 'morpheus-tts[moss-mlx]'"


def load_mlx_codec(path: Any) -> Any:
    """mlx-audio's MossAudioTokenizer from a local directory, with the extra named if missing."""
    try:
        from mlx_audio.codec.models.moss_audio_tokenizer import MossAudioTokenizer
    except ImportError as exc:
        raise RuntimeError(f"the MLX MOSS codec needs mlx and mlx-audio: {INSTALL_HINT}") from exc
    return MossAudioTokenizer.from_pretrained(str(path))


def encode_mlx(model: Any, audio: np.ndarray, sample_rate: int, quantizers: int) -> np.ndarray:
    """Mono audio -> (frames, quantizers) codes, the last partial frame padded and kept."""
    import mlx.core as mx
    import soxr

    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE).astype(np.float32)
    if len(audio) > MAX_PROMPT_SECONDS * SAMPLE_RATE:
        raise ValueError(f"voice prompts are limited to {MAX_PROMPT_SECONDS:.0f} s of audio")
    audio = np.pad(audio, (0, (-len(audio)) % FRAME_SAMPLES))
    codes = model.encode_audio(mx.array(audio[:, None]), sample_rate=SAMPLE_RATE,
                               num_quantizers=quantizers)
    return np.array(codes).astype(np.int32)


class MossMlxStreamDecoder:
    """One stream: an mlx-audio streaming decoder object of its own."""

    def __init__(self, codec: MossAudioTokenizerMlxCodec) -> None:
        self._codebooks = codec.codebooks
        self._stream = codec.model.make_streaming_decoder(num_quantizers=codec.codebooks)
        self._finished = False

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """Decode (frames, codebooks) codes; return their samples (1920 per frame)."""
        if self._finished:
            raise RuntimeError("decoder already flushed; ask the codec for a new one")
        frames = check_frames(frames, self._codebooks)
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.array(self._stream.decode_frames(frames.astype(np.int32)))[:, 0]

    def flush(self) -> np.ndarray:
        """Nothing is held back; marks the stream finished."""
        self._finished = True
        return np.zeros(0, dtype=np.float32)


class MossAudioTokenizerMlxCodec:
    """The MOSS Audio Tokenizer on MLX, shared by every stream."""

    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / FRAME_SAMPLES

    def __init__(self, settings: MossCodecSettings) -> None:
        self.settings = settings
        self.codebooks = settings.codebooks
        self.path = check_codec_dir("moss-audio-tokenizer-mlx", settings.model_path)
        self.model: Any = None

    async def start(self) -> None:
        """Load the weights (in a worker thread)."""
        self.model = await anyio.to_thread.run_sync(load_mlx_codec, self.path)

    async def stop(self) -> None:
        """Drop the model so its memory returns."""
        self.model = None
        gc.collect()

    def decoder(self) -> MossMlxStreamDecoder:
        """A fresh streaming decoder for one stream."""
        if self.model is None:
            raise RuntimeError("moss-audio-tokenizer-mlx codec is not started")
        return MossMlxStreamDecoder(self)

    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Encode a voice prompt to (frames, codebooks)."""
        if self.model is None:
            raise RuntimeError("moss-audio-tokenizer-mlx codec is not started")
        return encode_mlx(self.model, audio, sample_rate, self.codebooks)


@hookimpl
def morpheus_codecs() -> list[Component]:
    """Offer the `moss-audio-tokenizer-mlx` codec."""
    return [
        Component(
            name="moss-audio-tokenizer-mlx",
            kind="codec",
            create=MossAudioTokenizerMlxCodec,
            settings=MossCodecSettings,
            description="MOSS Audio Tokenizer on MLX (mlx-audio): 24 kHz, 12.5 frames/s",
        )
    ]
