"""SNAC 24 kHz (PyTorch): Orpheus's codec, decoded as a stream that loses no sample.

Frames: the decoder takes int arrays shaped (frames, 7), codes 0..4095 in Orpheus slot order
`[c0[i], c1[2i], c2[4i], c2[4i+1], c1[2i+1], c2[4i+2], c2[4i+3]]` (see
`plugins.engines.orpheus_tokens`). One frame is one coarse step: 4 latent hops of 512 samples,
2048 samples at 24 kHz (85.3 ms).

Streaming: SNAC's 24 kHz decoder is convolutional (no attention), so an output sample depends
only on nearby latent steps. Measured with exact comparisons on the real architecture (perturb
one code, see which samples move), a latent step reaches 4757 samples before its start and 4755
after its end. `StreamingDecoder` therefore keeps back the last `LOOKAHEAD_SAMPLES` (10 hops)
until later frames arrive, decodes each window with `CONTEXT_FRAMES` (6144 samples) of left
context, and emits every sample exactly once: the stream equals the offline decode of the whole
code sequence within float tolerance, and the first frame and the tail are included (`flush`).

Noise: SNAC's NoiseBlocks add `randn() * linear(x)`, fresh each call, so two decodes of the same
codes differ and no stream can equal an offline decode. By default they are removed (`noise =
false`). `noise = true` keeps them with noise drawn from a fixed table indexed by absolute sample
position, so the stream still equals the offline decode.

Weights load from a local directory in the published `hubertsiuzdak/snac_24khz` layout
(`config.json` + `pytorch_model.bin`); nothing is ever downloaded.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
from morpheus_tts.host import Component, hookimpl

SAMPLE_RATE = 24000
HOP = 512
LATENTS_PER_FRAME = 4
FRAME_SAMPLES = HOP * LATENTS_PER_FRAME
SLOTS = 7
CONTEXT_FRAMES = 3
LOOKAHEAD_SAMPLES = 10 * HOP
NOISE_PERIOD = 1 << 15
WEIGHTS_FILE = "pytorch_model.bin"
VQ_STRIDES = [4, 2, 1]

# Slot order of a frame, per level (see the module docstring).
C1_SLOTS = [1, 4]
C2_SLOTS = [2, 3, 5, 6]


def frames_to_levels(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split (frames, 7) slot-order codes into SNAC's levels c0 (n,), c1 (2n,), c2 (4n,)."""
    frames = np.asarray(frames, dtype=np.int64).reshape(-1, SLOTS)
    return frames[:, 0], frames[:, C1_SLOTS].reshape(-1), frames[:, C2_SLOTS].reshape(-1)


def levels_to_frames(c0: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Interleave SNAC's levels into (frames, 7) slot-order codes (whole frames only)."""
    n = min(len(c0), len(c1) // 2, len(c2) // 4)
    frames = np.empty((n, SLOTS), dtype=np.int32)
    frames[:, 0] = c0[:n]
    frames[:, C1_SLOTS] = np.asarray(c1[: 2 * n]).reshape(n, 2)
    frames[:, C2_SLOTS] = np.asarray(c2[: 4 * n]).reshape(n, 4)
    return frames


def noise_table(seed: int, stage: int) -> np.ndarray:
    """The fixed noise of one upsampling stage, indexed by absolute position modulo its length."""
    return np.random.default_rng([seed, stage]).standard_normal(NOISE_PERIOD).astype(np.float32)


# decode_window(frames, first_frame) -> float32 samples, 2048 per frame: the offline decode of
# `frames` as if they started the stream at absolute frame `first_frame` (for positional noise).
WindowDecoder = Callable[[np.ndarray, int], np.ndarray]


class StreamingDecoder:
    """One stream's SNAC decoder: each sample is decoded with full context, then emitted once.

    Args:
        decode_window: offline decode of a run of frames (see `WindowDecoder`).
        lookahead_samples: samples held back until later frames are known. The default makes
            the stream exact; less gives earlier audio with approximate samples near each cut.
    """

    def __init__(
        self, decode_window: WindowDecoder, lookahead_samples: int = LOOKAHEAD_SAMPLES
    ) -> None:
        self._decode_window = decode_window
        self._lookahead = lookahead_samples
        self._frames = np.zeros((0, SLOTS), dtype=np.int32)
        self._first = 0  # absolute index of self._frames[0]
        self._emitted = 0  # samples emitted so far
        self._finished = False

    @property
    def frames_received(self) -> int:
        """Frames decoded or pending so far."""
        return self._first + len(self._frames)

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """Add (frames, 7) codes; return the samples that no later frame can change."""
        if self._finished:
            raise RuntimeError("decoder already flushed; ask the codec for a new one")
        frames = np.asarray(frames, dtype=np.int32).reshape(-1, SLOTS)
        if frames.size and (frames.min() < 0 or frames.max() >= 4096):
            raise ValueError("SNAC codes must be 0..4095")
        self._frames = np.concatenate([self._frames, frames])
        return self._emit_until(self.frames_received * FRAME_SAMPLES - self._lookahead)

    def flush(self) -> np.ndarray:
        """Return the held-back tail (the end of the stream is known now)."""
        tail = self._emit_until(self.frames_received * FRAME_SAMPLES)
        self._finished = True
        self._frames = self._frames[:0]
        return tail

    def _emit_until(self, end: int) -> np.ndarray:
        if end <= self._emitted:
            return np.zeros(0, dtype=np.float32)
        # Window from CONTEXT_FRAMES before the first unemitted sample to the last frame: its
        # left edge is too far back, and its right edge too far ahead, to change samples
        # [emitted, end).
        first = max(0, self._emitted // FRAME_SAMPLES - CONTEXT_FRAMES)
        audio = self._decode_window(self._frames[first - self._first :], first)
        offset = first * FRAME_SAMPLES
        out = np.asarray(audio[self._emitted - offset : end - offset], dtype=np.float32)
        self._emitted = end
        keep = max(0, end // FRAME_SAMPLES - CONTEXT_FRAMES)
        self._frames, self._first = self._frames[keep - self._first :], keep
        return out


class SnacSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the `snac` codec.

    Args:
        model_path: directory with `config.json` and `pytorch_model.bin` (the layout of
            hubertsiuzdak/snac_24khz).
        device: torch device ("cpu", "cuda", "cuda:1"); "auto" picks CUDA when available.
        noise: keep SNAC's noise blocks, fed position-indexed noise (see the module docstring).
        noise_seed: seed of that noise.
        lookahead_samples: samples held back for context; the default (5120) is exact.
    """

    model_path: str | None = None
    device: str = "auto"
    noise: bool = False
    noise_seed: int = 0
    lookahead_samples: int = LOOKAHEAD_SAMPLES

    def __post_init__(self) -> None:
        if self.lookahead_samples < 0:
            raise ValueError(f"lookahead_samples must be >= 0, got {self.lookahead_samples}")


def check_model_dir(codec: str, model_path: str | None, weights_file: str) -> Path:
    """The model directory, or an error naming the setting, the path and what is missing."""
    if not model_path:
        raise ValueError(
            f"{codec}: set plugins.{codec}.settings.model_path to a directory holding "
            f"config.json and {weights_file} (nothing is downloaded)"
        )
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{codec}: model_path {path} is not a directory")
    missing = [name for name in ("config.json", weights_file) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{codec}: {path} has no {' or '.join(missing)}")
    return path


def read_config(codec: str, path: Path) -> dict[str, Any]:
    """config.json, checked to describe the 24 kHz, three-level SNAC Orpheus speaks."""
    config = json.loads((path / "config.json").read_text())
    rate, strides = config.get("sampling_rate"), config.get("vq_strides")
    if rate != SAMPLE_RATE or strides != VQ_STRIDES or config.get("attn_window_size"):
        raise ValueError(
            f"{codec}: {path / 'config.json'} describes a {rate} Hz SNAC with vq_strides "
            f"{strides}; Orpheus needs the 24 kHz model (vq_strides {VQ_STRIDES}, no attention)"
        )
    return config


class SnacCodec:
    """SNAC 24 kHz on PyTorch, shared by every stream; each stream gets a `StreamingDecoder`."""

    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / FRAME_SAMPLES
    codebooks = SLOTS

    def __init__(self, settings: SnacSettings) -> None:
        self.settings = settings
        self.path = check_model_dir("snac", settings.model_path, WEIGHTS_FILE)
        self.config = read_config("snac", self.path)
        self._model: Any = None
        self._noise: list[Any] = []
        # One decode at a time: the noise offsets are set on the shared model per window.
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Load the weights (in a worker thread)."""
        self._model = await anyio.to_thread.run_sync(self._load)

    def _load(self) -> Any:
        try:
            import torch
            from snac import SNAC
            from torch.nn.utils import parametrize
        except ImportError as exc:
            raise RuntimeError(
                "snac: the codec needs torch and snac: pip install 'morpheus-tts[orpheus]'"
            ) from exc

        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = SNAC(**self.config)
        state = torch.load(self.path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        # Weight norm only matters in training; folding it saves recomputing every weight per call.
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self._noise = _replace_noise(model, self.settings)
        return model.to(device).eval()

    async def stop(self) -> None:
        """Drop the model so its memory returns."""
        self._model, self._noise = None, []
        gc.collect()

    def decoder(self) -> StreamingDecoder:
        """A fresh streaming decoder for one stream."""
        return StreamingDecoder(self.decode_window, self.settings.lookahead_samples)

    def decode_window(self, frames: np.ndarray, first_frame: int = 0) -> np.ndarray:
        """Offline decode of (frames, 7) codes starting at absolute frame `first_frame`."""
        import torch

        if self._model is None:
            raise RuntimeError("snac codec is not started")
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        device = next(self._model.parameters()).device
        codes = [
            torch.from_numpy(np.ascontiguousarray(c)).to(device).unsqueeze(0)
            for c in frames_to_levels(frames)
        ]
        with self._lock, torch.inference_mode():
            for stage in self._noise:
                stage.start = first_frame * LATENTS_PER_FRAME * stage.upsampling
            audio = self._model.decode(codes)
        return audio[0, 0].float().cpu().numpy()

    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Encode mono audio to (frames, 7) slot-order codes (whole frames only)."""
        import soxr
        import torch

        if self._model is None:
            raise RuntimeError("snac codec is not started")
        audio = np.asarray(audio, dtype=np.float32)
        if sample_rate != SAMPLE_RATE:
            audio = soxr.resample(audio, sample_rate, SAMPLE_RATE).astype(np.float32)
        device = next(self._model.parameters()).device
        with self._lock, torch.inference_mode():
            levels = self._model.encode(torch.from_numpy(audio).to(device).view(1, 1, -1))
        return levels_to_frames(*(level[0].cpu().numpy() for level in levels))


def _replace_noise(model: Any, settings: SnacSettings) -> list[Any]:
    """Swap each decoder NoiseBlock for identity or positional noise; return the latter."""
    import torch
    from snac.layers import DecoderBlock, NoiseBlock

    class PositionalNoise(torch.nn.Module):
        """`x + noise * linear(x)` with noise read from a fixed table at absolute positions."""

        def __init__(self, block: NoiseBlock, table: np.ndarray, upsampling: int) -> None:
            super().__init__()
            self.linear = block.linear
            self.register_buffer("table", torch.from_numpy(table), persistent=False)
            self.upsampling = upsampling
            self.start = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            index = torch.arange(self.start, self.start + x.shape[-1], device=x.device)
            noise = self.table[index % NOISE_PERIOD].to(x.dtype).view(1, 1, -1)
            return x + noise * self.linear(x)

    positional = []
    upsampling = 1
    blocks = [m for m in model.decoder.model if isinstance(m, DecoderBlock)]
    for stage, (block, rate) in enumerate(zip(blocks, model.decoder_rates, strict=True)):
        upsampling *= rate
        for index, layer in enumerate(block.block):
            if isinstance(layer, NoiseBlock):
                if settings.noise:
                    table = noise_table(settings.noise_seed, stage)
                    block.block[index] = PositionalNoise(layer, table, upsampling)
                    positional.append(block.block[index])
                else:
                    block.block[index] = torch.nn.Identity()
    return positional


@hookimpl
def morpheus_codecs() -> list[Component]:
    """Offer the `snac` codec."""
    return [
        Component(
            name="snac",
            kind="codec",
            create=SnacCodec,
            settings=SnacSettings,
            description="SNAC 24 kHz on PyTorch: Orpheus's codec, streamed without a lost frame",
        )
    ]
