"""Settings and checks of the `moss-realtime` engines (runtime-independent, no torch or MLX)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from morpheus_tts.plugins.engines.moss_prompt import CHANNELS

DEFAULT_VOICE = "default"
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "repetition_window")
IGNORED_OPTIONS = frozenset({"instructions"})
MODEL_FILES = ("config.json", "tokenizer.json")


class MossRealtimeSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Settings of the `moss-realtime` engines; a request's `options` may override sampling,
    `seed` and `max_frames`.

    Args:
        model_path: MOSS-TTS-Realtime directory (config.json, *.safetensors, tokenizer.json).
        codec_path: MOSS-Audio-Tokenizer directory, used to encode voice prompts and user audio.
        codec: name of the codec component that decodes the frames.
        device: torch device, "auto" for CUDA when available (torch engine only).
        dtype: "float32", "bfloat16" or "float16" for the model weights.
        temperature, top_p, top_k, repetition_penalty, repetition_window: the realtime preset.
        max_frames: frames per turn at most (80 ms each).
        max_context_rows: rows a session's KV cache may hold (see `moss_session`).
        turn_reserve_rows: room kept for a turn's speech when deciding to start afresh.
        seed: sampling seed; None draws a fresh one per turn.
    """

    model_path: str | None = None
    codec_path: str | None = None
    codec: str = "moss-audio-tokenizer"
    device: str = "auto"
    dtype: str = "float32"
    temperature: float = 0.8
    top_p: float = 0.6
    top_k: int = 30
    repetition_penalty: float = 1.1
    repetition_window: int = 50
    max_frames: int = 1000
    max_context_rows: int = 16384
    turn_reserve_rows: int = 1024
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        check_sampling(msgspec.structs.asdict(self))
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.max_context_rows <= self.turn_reserve_rows:
            raise ValueError("max_context_rows must be larger than turn_reserve_rows")


def check_sampling(values: dict[str, Any]) -> None:
    """Raise ValueError naming the first sampling value out of range."""
    if values["temperature"] < 0:
        raise ValueError(f"temperature must be >= 0, got {values['temperature']}")
    if not 0 < values["top_p"] <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {values['top_p']}")
    if values["top_k"] < 1:
        raise ValueError(f"top_k must be >= 1, got {values['top_k']}")
    if values["repetition_penalty"] <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {values['repetition_penalty']}")


def check_model_dir(engine: str, model_path: str | None, codec_path: str | None) -> Path:
    """The model directory, or an error naming the setting, the path and what is missing."""
    if not model_path:
        raise ValueError(
            f"{engine}: set plugins.{engine}.settings.model_path to a MOSS-TTS-Realtime "
            f"directory (config.json, model.safetensors, tokenizer.json; nothing is downloaded)"
        )
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{engine}: model_path {path} is not a directory")
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if not list(path.glob("*.safetensors")):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(f"{engine}: {path} has no {' or '.join(missing)}")
    if not codec_path:
        raise ValueError(
            f"{engine}: set plugins.{engine}.settings.codec_path to a MOSS-Audio-Tokenizer "
            f"directory (voice prompts and user audio are encoded with it)"
        )
    return path


def local_config(config: dict[str, Any]) -> dict[str, Any]:
    """The local transformer's settings with upstream's defaults filled in."""
    local = {
        "head_dim": 128, "hidden_size": 2048, "rms_norm_eps": 1e-6, "num_hidden_layers": 4,
        "intermediate_size": 6144, "num_attention_heads": 16, "num_key_value_heads": 8,
        "rope_theta": 1000000, "hidden_act": "silu",
    }
    local.update(config.get("local_config") or {})
    if local.get("hidden_act", "silu") != "silu":
        raise ValueError(f"local_config.hidden_act must be silu, got {local['hidden_act']}")
    return local


def check_codes(codes: np.ndarray) -> np.ndarray:
    """(frames, 16) int codes, as every runtime's encoder returns them."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != CHANNELS:
        raise ValueError(f"expected codes (frames, {CHANNELS}), got {codes.shape}")
    return codes.astype(np.int64)
