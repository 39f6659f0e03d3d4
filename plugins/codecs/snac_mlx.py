"""SNAC 24 kHz on MLX (mlx-audio's model): the `snac` codec's contract for Apple silicon.

Frames, streaming and noise work exactly as in `plugins.codecs.snac` (same `StreamingDecoder`,
same position-indexed noise table), so the stream equals the offline decode and holds 2048
samples per frame.

mlx-audio 0.6.2's SNAC passes `groups` positionally into `mx.conv_transpose1d`, where MLX now
expects `output_padding`: every upsampling stage grows by one sample and the output drifts from
PyTorch's. This codec replaces those transposed convolutions with an exact equivalent (one
matmul and an overlap-add), which makes MLX's decode match PyTorch's to float precision with
2048 samples per frame, and runs faster on MLX's CPU backend.

Weights load from a local directory in mlx-audio's layout (`config.json` + `model.safetensors`,
as in mlx-community/snac_24khz); nothing is ever downloaded. MLX runs on the CPU on Linux.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

import anyio
import msgspec
import numpy as np
from morpheus_tts.host import Component, hookimpl
from morpheus_tts.plugins.codecs.snac import (
    FRAME_SAMPLES,
    LATENTS_PER_FRAME,
    LOOKAHEAD_SAMPLES,
    NOISE_PERIOD,
    SAMPLE_RATE,
    SLOTS,
    StreamingDecoder,
    check_model_dir,
    frames_to_levels,
    levels_to_frames,
    noise_table,
    read_config,
)

WEIGHTS_FILE = "model.safetensors"
INSTALL_HINT = "pip install 'morpheus-tts[orpheus-mlx]'"


class SnacMlxSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the `snac-mlx` codec.

    Args:
        model_path: directory with `config.json` and `model.safetensors` (mlx-audio's layout).
        noise: keep SNAC's noise blocks, fed position-indexed noise (see `plugins.codecs.snac`).
        noise_seed: seed of that noise (the same table as the PyTorch codec's).
        lookahead_samples: samples held back for context; the default (5120) is exact.
    """

    model_path: str | None = None
    noise: bool = False
    noise_seed: int = 0
    lookahead_samples: int = LOOKAHEAD_SAMPLES

    def __post_init__(self) -> None:
        if self.lookahead_samples < 0:
            raise ValueError(f"lookahead_samples must be >= 0, got {self.lookahead_samples}")


class SnacMlxCodec:
    """SNAC 24 kHz on MLX, shared by every stream; each stream gets a `StreamingDecoder`."""

    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / FRAME_SAMPLES
    codebooks = SLOTS

    def __init__(self, settings: SnacMlxSettings) -> None:
        self.settings = settings
        self.path = check_model_dir("snac-mlx", settings.model_path, WEIGHTS_FILE)
        self.config = read_config("snac-mlx", self.path)
        self._model: Any = None
        self._noise: list[Any] = []
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Load the weights (in a worker thread)."""
        self._model = await anyio.to_thread.run_sync(self._load)

    def _load(self) -> Any:
        try:
            import mlx.core as mx
            from mlx_audio.codec.models.snac import SNAC
        except ImportError as exc:
            raise RuntimeError(
                f"snac-mlx: the codec needs mlx and mlx-audio: {INSTALL_HINT}"
            ) from exc
        model = SNAC(**self.config)
        model.load_weights(str(self.path / WEIGHTS_FILE))  # strict: every key and shape
        self._noise = _patch_decoder(model, self.settings)
        mx.eval(model.parameters())
        return model

    async def stop(self) -> None:
        """Drop the model so its memory returns."""
        self._model, self._noise = None, []
        gc.collect()

    def decoder(self) -> StreamingDecoder:
        """A fresh streaming decoder for one stream."""
        return StreamingDecoder(self.decode_window, self.settings.lookahead_samples)

    def decode_window(self, frames: np.ndarray, first_frame: int = 0) -> np.ndarray:
        """Offline decode of (frames, 7) codes starting at absolute frame `first_frame`."""
        import mlx.core as mx

        if self._model is None:
            raise RuntimeError("snac-mlx codec is not started")
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        codes = [mx.array(level[None, :].astype(np.int32)) for level in frames_to_levels(frames)]
        with self._lock:
            for stage in self._noise:
                stage.start = first_frame * LATENTS_PER_FRAME * stage.upsampling
            audio = self._model.decode(codes)  # (1, samples, 1): MLX is channel-last
            mx.eval(audio)
        return np.array(audio[0, :, 0], dtype=np.float32)

    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Encode mono audio to (frames, 7) slot-order codes (whole frames only)."""
        import mlx.core as mx
        import soxr

        if self._model is None:
            raise RuntimeError("snac-mlx codec is not started")
        audio = np.asarray(audio, dtype=np.float32)
        if sample_rate != SAMPLE_RATE:
            audio = soxr.resample(audio, sample_rate, SAMPLE_RATE).astype(np.float32)
        with self._lock:
            levels = self._model.encode(mx.array(audio)[None, None, :])
            mx.eval(levels)
        return levels_to_frames(*(np.array(level[0]) for level in levels))


def _patch_decoder(model: Any, settings: SnacMlxSettings) -> list[Any]:
    """Fix the transposed convolutions and swap the noise blocks; return the positional ones."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_audio.codec.models.snac.layers import DecoderBlock, NoiseBlock, normalize_weight

    class ExactConvTranspose(nn.Module):
        """mlx-audio's weight-normed transposed conv (kernel 2 * stride), computed exactly.

        Each input step adds `kernel` output samples starting at `step * stride - padding`; with
        a kernel of two strides that is one matmul and one overlap-add of two halves, which MLX's
        CPU backend runs about five times faster than its transposed convolution.
        """

        def __init__(self, conv: Any) -> None:
            super().__init__()
            if conv.kernel_size != 2 * conv.stride or conv.groups != 1 or conv.dilation != 1:
                raise ValueError("snac-mlx: unexpected transposed convolution in the decoder")
            # (in, kernel, out), weight norm folded once.
            weight = conv.weight_g * conv.weight_v / normalize_weight(conv.weight_v, except_dim=0)
            self.channels = weight.shape[2]
            self.weight = weight.reshape(weight.shape[0], -1)
            self.bias = conv.bias
            self.stride, self.padding = conv.stride, conv.padding

        def __call__(self, x: mx.array) -> mx.array:
            batch, steps, _ = x.shape
            stride, channels = self.stride, self.channels
            halves = (x @ self.weight).reshape(batch, steps, 2, stride, channels)
            zeros = mx.zeros((batch, 1, stride, channels), dtype=halves.dtype)
            full = mx.concatenate([halves[:, :, 0], zeros], axis=1) + mx.concatenate(
                [zeros, halves[:, :, 1]], axis=1
            )
            full = full.reshape(batch, (steps + 1) * stride, channels)
            y = full[:, self.padding : self.padding + steps * stride]
            return y if self.bias is None else y + self.bias

    class Identity(nn.Module):
        def __call__(self, x: mx.array) -> mx.array:
            return x

    class PositionalNoise(nn.Module):
        """`x + noise * linear(x)` with noise read from a fixed table at absolute positions."""

        def __init__(self, block: Any, table: np.ndarray, upsampling: int) -> None:
            super().__init__()
            self.linear = block.linear
            self.table = mx.array(table)
            self.upsampling = upsampling
            self.start = 0

        def __call__(self, x: mx.array) -> mx.array:
            index = mx.arange(self.start, self.start + x.shape[1]) % NOISE_PERIOD
            return x + self.table[index][None, :, None] * self.linear(x)

    positional = []
    upsampling = 1
    blocks = [m for m in model.decoder.model.layers if isinstance(m, DecoderBlock)]
    for stage, (block, rate) in enumerate(zip(blocks, model.decoder_rates, strict=True)):
        upsampling *= rate
        layers = block.block.layers
        for index, layer in enumerate(layers):
            if type(layer).__name__ == "WNConvTranspose1d":
                layers[index] = ExactConvTranspose(layer)
            elif isinstance(layer, NoiseBlock):
                if settings.noise:
                    layers[index] = PositionalNoise(
                        layer, noise_table(settings.noise_seed, stage), upsampling
                    )
                    positional.append(layers[index])
                else:
                    layers[index] = Identity()
    return positional


@hookimpl
def morpheus_codecs() -> list[Component]:
    """Offer the `snac-mlx` codec."""
    return [
        Component(
            name="snac-mlx",
            kind="codec",
            create=SnacMlxCodec,
            settings=SnacMlxSettings,
            description="SNAC 24 kHz on MLX (mlx-audio): Orpheus's codec for Apple silicon",
        )
    ]
