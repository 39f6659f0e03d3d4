"""MOSS-TTS-Realtime on MLX: the `moss-realtime` engine's contract for Apple silicon.

The same network as `plugins.engines.moss_torch_model`, written in MLX from the architecture
and loaded from the same upstream `model.safetensors` (same parameter names): 17 summed
embeddings, a Qwen3 backbone (pre-norm blocks with q/k RMSNorm, GQA, SwiGLU, RoPE with
`rope_theta`), and the local transformer with its 15 embedding tables and 16 heads. Streaming,
sessions, barge-in, eviction and sampling are the shared ones of `plugins.engines.moss_session`,
so a turn runs exactly as on PyTorch; logits agree with the PyTorch engine to float32 rounding
(tests check 1e-4 relative).

Voice prompts and user audio are encoded with mlx-audio's MossAudioTokenizer (`codec_path`); the
frames are decoded by the `moss-audio-tokenizer-mlx` codec (`codec` setting). MLX runs on the
CPU on Linux. Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from morpheus_tts.host import Component, hookimpl
from morpheus_tts.plugins.engines.moss_session import Backend, MossRealtimeEngine
from morpheus_tts.plugins.engines.moss_settings import (
    MossRealtimeSettings,
    check_codes,
    local_config,
)

INSTALL_HINT = "pip install 'morpheus-tts[moss-mlx]'"
RVQ = 16


class Block:
    """One Qwen3 block over weights `prefix.*` (backbone and local transformer alike)."""

    def __init__(self, w: dict[str, Any], prefix: str, cfg: dict[str, Any], theta: float) -> None:
        def get(name: str) -> Any:
            return w[f"{prefix}.{name}"]

        self.q, self.k, self.v, self.o = (get(f"self_attn.{n}_proj.weight") for n in "qkvo")
        self.q_norm, self.k_norm = get("self_attn.q_norm.weight"), get("self_attn.k_norm.weight")
        self.ln1 = get("input_layernorm.weight")
        self.ln2 = get("post_attention_layernorm.weight")
        self.gate, self.up = get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")
        self.down = get("mlp.down_proj.weight")
        self.heads, self.kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim, self.eps, self.theta = cfg["head_dim"], cfg["rms_norm_eps"], theta

    def __call__(self, x: Any, cache: list[Any], offset: int) -> Any:
        import mlx.core as mx

        batch, time, _ = x.shape
        h = mx.fast.rms_norm(x, self.ln1, self.eps)

        def heads(proj: Any, count: int) -> Any:
            return (h @ proj.T).reshape(batch, time, count, self.head_dim).transpose(0, 2, 1, 3)

        q = mx.fast.rms_norm(heads(self.q, self.heads), self.q_norm, self.eps)
        k = mx.fast.rms_norm(heads(self.k, self.kv_heads), self.k_norm, self.eps)
        v = heads(self.v, self.kv_heads)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=1.0,
                         offset=offset)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=1.0,
                         offset=offset)
        if cache[0] is not None:
            k, v = mx.concatenate([cache[0], k], axis=2), mx.concatenate([cache[1], v], axis=2)
        cache[0], cache[1] = k, v
        mask = None
        if time > 1:
            query_pos = mx.arange(offset, offset + time)[:, None]
            mask = mx.arange(k.shape[2])[None, :] <= query_pos
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        x = x + out.transpose(0, 2, 1, 3).reshape(batch, time, -1) @ self.o.T
        h = mx.fast.rms_norm(x, self.ln2, self.eps)
        return x + (nn_silu(h @ self.gate.T) * (h @ self.up.T)) @ self.down.T


def nn_silu(x: Any) -> Any:
    """x * sigmoid(x)."""
    import mlx.core as mx

    return x * mx.sigmoid(x)


class MlxCache:
    """The backbone's per-layer [keys, values] and its row count."""

    def __init__(self, layers: int) -> None:
        self.layers: list[list[Any]] = [[None, None] for _ in range(layers)]
        self.length = 0


class MlxBackend:
    """The network in MLX behind the runtime-independent `Backend` calls."""

    def __init__(self, path: Path, dtype: str) -> None:
        import mlx.core as mx

        config = json.loads((path / "config.json").read_text())
        weights: dict[str, Any] = {}
        for file in sorted(path.glob("*.safetensors")):
            weights.update(mx.load(str(file)))
        weights.pop("language_model.embed_tokens.weight", None)
        target = getattr(mx, dtype)
        self.w = {k: v.astype(target) for k, v in weights.items()}
        # Materialise now: MLX streams are per thread, and steps run in other worker threads.
        mx.eval(list(self.w.values()))
        lang, local = config["language_config"], local_config(config)
        theta = float((lang.get("rope_parameters") or {}).get("rope_theta",
                                                              lang.get("rope_theta", 1e6)))
        try:
            self.embeds = [self.w[f"embed_tokens.{i}.weight"] for i in range(RVQ + 1)]
            self.backbone = [Block(self.w, f"language_model.layers.{i}", lang, theta)
                             for i in range(lang["num_hidden_layers"])]
            self.norm = self.w["language_model.norm.weight"]
            local_theta = float((local.get("rope_parameters") or {}).get("rope_theta",
                                                                        local["rope_theta"]))
            lt = "local_transformer.model"
            self.local = [Block(self.w, f"{lt}.layers.{i}", local, local_theta)
                          for i in range(local["num_hidden_layers"])]
            self.local_embeds = [self.w[f"{lt}.embed_tokens.{i}.weight"] for i in range(RVQ - 1)]
            self.local_norm = self.w[f"{lt}.norm.weight"]
            self.heads = [self.w[f"local_transformer.local_lm_heads.{i}.weight"]
                          for i in range(RVQ)]
        except KeyError as exc:
            raise ValueError(f"moss-realtime-mlx: {path} has no weight {exc}") from exc
        self.eps, self.local_eps = lang["rms_norm_eps"], local["rms_norm_eps"]

    def new_cache(self) -> MlxCache:
        """An empty backbone cache."""
        return MlxCache(len(self.backbone))

    def cache_length(self, cache: MlxCache) -> int:
        """Rows in the cache."""
        return cache.length

    def crop(self, cache: MlxCache, length: int) -> None:
        """Keep the first `length` rows."""
        for layer in cache.layers:
            if layer[0] is not None:
                layer[0], layer[1] = layer[0][:, :, :length], layer[1][:, :, :length]
        cache.length = min(cache.length, length)

    def forward_rows(self, rows: np.ndarray, cache: MlxCache) -> Any:
        """Backbone over (n, 17) rows; the last row's hidden state (1, 1, H)."""
        import mlx.core as mx

        ids = mx.array(np.asarray(rows, dtype=np.int32))
        x = sum(self.embeds[c][ids[:, c]] for c in range(RVQ + 1))[None]
        for block, layer_cache in zip(self.backbone, cache.layers, strict=True):
            x = block(x, layer_cache, cache.length)
        cache.length += len(rows)
        hidden = mx.fast.rms_norm(x[:, -1:], self.norm, self.eps)
        mx.eval(hidden, *[t for layer in cache.layers for t in layer])
        return hidden

    def frame(self, hidden: Any, pick: Callable[[np.ndarray, int], int]) -> np.ndarray:
        """The 16-position local loop; `pick` chooses each codebook's code from its logits."""
        import mlx.core as mx

        caches = [[None, None] for _ in self.local]
        codes = np.zeros(RVQ, dtype=np.int64)
        x = hidden
        for i in range(RVQ):
            for block, layer_cache in zip(self.local, caches, strict=True):
                x = block(x, layer_cache, i)
            logits = (mx.fast.rms_norm(x, self.local_norm, self.local_eps) @ self.heads[i].T)
            codes[i] = pick(np.array(logits.astype(mx.float32))[0, 0], i)
            if i < RVQ - 1:
                x = self.local_embeds[i][mx.array([[int(codes[i])]])]
        return codes


class MossRealtimeMlxEngine(MossRealtimeEngine):
    """`moss-realtime-mlx`: the MLX runtime."""

    name = "moss-realtime-mlx"

    def __init__(self, settings: MossRealtimeSettings) -> None:
        super().__init__(settings)
        self._codec: Any = None

    def _load(self) -> Backend:
        try:
            import mlx.core  # noqa: F401
            from morpheus_tts.plugins.codecs.moss_audio_tokenizer import check_codec_dir
            from morpheus_tts.plugins.codecs.moss_audio_tokenizer_mlx import load_mlx_codec
        except ImportError as exc:
            raise RuntimeError(f"{self.name} needs mlx and mlx-audio: {INSTALL_HINT}") from exc
        codec_dir = check_codec_dir(f"{self.name} codec_path", str(self.codec_path))
        backend = MlxBackend(self.path, self.settings.dtype)
        self._codec = load_mlx_codec(codec_dir)
        return backend

    async def stop(self) -> None:
        """Release the model, the codec encoder and every session."""
        self._codec = None
        await super().stop()

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono audio -> (frames, 16): the codec's first 16 quantizers."""
        from morpheus_tts.plugins.codecs.moss_audio_tokenizer_mlx import encode_mlx

        if self._codec is None:
            raise RuntimeError(f"{self.name} is not started")
        if not sample_rate:
            raise ValueError("user_audio_rate is required with user_audio")
        return check_codes(encode_mlx(self._codec, audio, sample_rate, RVQ))


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the `moss-realtime-mlx` engine."""
    return [
        Component(
            name="moss-realtime-mlx",
            kind="engine",
            create=MossRealtimeMlxEngine,
            settings=MossRealtimeSettings,
            description="MOSS-TTS-Realtime on MLX: multi-turn, delta-fed, voice-cloned",
        )
    ]
