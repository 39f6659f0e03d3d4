"""MOSS-TTS-Realtime on PyTorch: the context-aware, multi-turn streaming TTS, as a turn engine.

`open_turn()` takes a `TurnRequest` (session, voice, the user's text and audio); the turn's
`push_text()` takes text deltas as an LLM streams them and yields (1, 16) frames of MOSS Audio
Tokenizer codes, one per step, which the `moss-audio-tokenizer` codec decodes (24 kHz, 80 ms a
frame). Streaming, session memory, barge-in and eviction are described in
`plugins.engines.moss_session`; prompt packing in `plugins.engines.moss_prompt`; the network
in `plugins.engines.moss_torch_model`.

Weights load from local directories in the upstream layout: `model_path` (config.json,
model.safetensors, tokenizer.json of OpenMOSS-Team/MOSS-TTS-Realtime) and `codec_path` (the
MOSS-Audio-Tokenizer directory, whose encoder turns voice prompts and user audio into codes).
Nothing is downloaded. `python -m morpheus_tts.plugins.engines.moss_tiny OUT_DIR` writes tiny
random-weight checkpoints in that layout to try it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from morpheus_tts.host import Component, hookimpl
from morpheus_tts.plugins.engines.moss_session import Backend, MossRealtimeEngine
from morpheus_tts.plugins.engines.moss_settings import (
    MossRealtimeSettings,
    check_codes,
)

INSTALL_HINT = "pip install 'morpheus-tts[moss]'"
MAX_PROMPT_SECONDS = 60.0  # as the codec plugins: attention over the whole prompt


class TorchBackend:
    """The network of `moss_torch_model` behind the runtime-independent `Backend` calls."""

    def __init__(self, model: Any) -> None:
        import torch
        from morpheus_tts.plugins.engines import moss_torch_model as m

        self.torch, self.m, self.model = torch, m, model
        self.device = model.embed_tokens[0].weight.device
        self.dtype = model.embed_tokens[0].weight.dtype

    def new_cache(self) -> Any:
        """An empty DynamicCache."""
        return self.model.new_cache()

    def cache_length(self, cache: Any) -> int:
        """Rows in the cache."""
        return self.m.cache_length(cache)

    def crop(self, cache: Any, length: int) -> None:
        """Keep the first `length` rows."""
        self.m.crop_cache(cache, length)

    def forward_rows(self, rows: np.ndarray, cache: Any) -> Any:
        """Backbone over `rows`; the last hidden state (1, 1, H)."""
        with self.torch.inference_mode():
            return self.model.forward_rows(rows, cache)

    def frame(self, hidden: Any, pick: Callable[[np.ndarray, int], int]) -> np.ndarray:
        """The 16-position local loop; `pick` chooses each codebook's code from its logits."""
        local = self.model.local_transformer
        codes = np.zeros(16, dtype=np.int64)
        with self.torch.inference_mode():
            cache = local.new_cache(self.dtype, self.device)
            x = hidden
            for i in range(16):
                logits = local.step(x, i, cache).float().cpu().numpy()
                codes[i] = pick(logits, i)
                if i < 15:
                    x = local.embed(i, int(codes[i]), self.device)
        return codes


class MossRealtimeTorchEngine(MossRealtimeEngine):
    """`moss-realtime`: the PyTorch runtime."""

    name = "moss-realtime"

    def __init__(self, settings: MossRealtimeSettings) -> None:
        super().__init__(settings)
        self._codec: Any = None

    def _load(self) -> Backend:
        try:
            import torch
            from morpheus_tts.plugins.codecs.moss_audio_tokenizer import check_codec_dir
            from morpheus_tts.plugins.codecs.moss_codec_model import load_codec_model
            from morpheus_tts.plugins.engines.moss_torch_model import load_model
        except ImportError as exc:
            raise RuntimeError(f"{self.name} needs torch and transformers: {INSTALL_HINT}") from exc
        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        codec_dir = check_codec_dir(f"{self.name} codec_path", str(self.codec_path))
        dtype = getattr(torch, self.settings.dtype)
        model = load_model(self.path, dtype, device)
        self._codec = load_codec_model(codec_dir, device)
        return TorchBackend(model)

    async def stop(self) -> None:
        """Release the model, the codec encoder and every session."""
        self._codec = None
        await super().stop()

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono audio -> (frames, 16): the codec's first 16 quantizers."""
        import soxr
        import torch

        if self._codec is None:
            raise RuntimeError(f"{self.name} is not started")
        if not sample_rate:
            raise ValueError("user_audio_rate is required with user_audio")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) > MAX_PROMPT_SECONDS * sample_rate:
            raise ValueError(f"audio prompts are limited to {MAX_PROMPT_SECONDS:.0f} s")
        if sample_rate != 24000:
            audio = soxr.resample(audio, sample_rate, 24000).astype(np.float32)
        device = next(self._codec.parameters()).device
        codes = self._codec.encode(torch.from_numpy(audio).to(device), 16)
        return check_codes(codes.cpu().numpy().T)


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the `moss-realtime` engine."""
    return [
        Component(
            name="moss-realtime",
            kind="engine",
            create=MossRealtimeTorchEngine,
            settings=MossRealtimeSettings,
            description="MOSS-TTS-Realtime on PyTorch: multi-turn, delta-fed, voice-cloned",
        )
    ]
