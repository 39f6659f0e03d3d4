"""MOSS-TTS-Realtime's network in PyTorch, written from its architecture (upstream parameter names).

- `embed_tokens.0` (text, vocab x H) plus `embed_tokens.1..16` (audio, 1027 x H): a row of 17
  ids embeds to the sum of its 17 embeddings.
- `language_model`: transformers' `Qwen3Model` (no LM head), run on those summed embeddings
  with a `DynamicCache`; only its last hidden state is used. Its own `embed_tokens` table is
  never used (embeddings are passed in), so it is built with one row and the checkpoint's copy
  (311M parameters at real size) is skipped on load.
- `local_transformer`: the depth transformer that turns one backbone hidden state into the 16
  codes of a frame. Qwen3-style blocks (RMSNorm, q/k norm, GQA, SwiGLU, no bias, final
  RMSNorm, RoPE at positions 0..15). Position 0's input is the backbone hidden state; position
  i's input is `model.embed_tokens[i-1](code[i-1])` (15 tables); `local_lm_heads[i]` (16 heads,
  1027 outputs) gives codebook i.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from morpheus_tts.plugins.engines.moss_settings import local_config
from torch import nn

RVQ = 16
AUDIO_VOCAB = 1027
AUDIO_PAD = 1024


class RMSNorm(nn.Module):
    """RMSNorm in float32, scaled by `weight`."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (-b, a) on the two halves of the last axis (Qwen's RoPE layout)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class LocalAttention(nn.Module):
    """GQA attention with per-head q/k RMSNorm over the frame's 16 positions."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden, self.head_dim = cfg["hidden_size"], cfg["head_dim"]
        self.heads, self.kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg["rms_norm_eps"])
        self.k_norm = RMSNorm(self.head_dim, cfg["rms_norm_eps"])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: list[torch.Tensor], pos: int) -> torch.Tensor:
        q = self.q_norm(self.q_proj(x).view(1, 1, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(1, 1, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(1, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        cache[0][:, :, pos] = k[:, :, 0]
        cache[1][:, :, pos] = v[:, :, 0]
        keys, values = cache[0][:, :, : pos + 1], cache[1][:, :, : pos + 1]
        rep = self.heads // self.kv_heads
        keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        # Plain attention: at 1 query x <= 16 keys, SDPA's GQA path costs far more than this.
        scores = (q @ keys.transpose(-1, -2)).float() * self.head_dim**-0.5
        out = scores.softmax(dim=-1).to(q.dtype) @ values
        return self.o_proj(out.transpose(1, 2).reshape(1, 1, -1))


class LocalMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LocalLayer(nn.Module):
    """Pre-norm Qwen3 block."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.self_attn = LocalAttention(cfg)
        self.mlp = LocalMLP(cfg["hidden_size"], cfg["intermediate_size"])
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def forward(self, x, cos, sin, cache, pos):  # noqa: D102 - see LocalTransformer.step
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class _LocalModel(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.embed_tokens = nn.ModuleList(
            nn.Embedding(AUDIO_VOCAB, cfg["hidden_size"]) for _ in range(RVQ - 1)
        )
        self.layers = nn.ModuleList(LocalLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class LocalTransformer(nn.Module):
    """The depth transformer: a frame's 16 codes, one position per codebook."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _LocalModel(cfg)
        self.local_lm_heads = nn.ModuleList(
            nn.Linear(cfg["hidden_size"], AUDIO_VOCAB, bias=False) for _ in range(RVQ)
        )
        theta = float(cfg.get("rope_parameters", {}).get("rope_theta", cfg["rope_theta"]))
        dim = cfg["head_dim"]
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        angles = torch.arange(RVQ, dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def new_cache(self, dtype: torch.dtype, device: torch.device) -> list[list[torch.Tensor]]:
        """Per-layer key/value buffers for the 16 positions of one frame."""
        shape = (1, self.cfg["num_key_value_heads"], RVQ, self.cfg["head_dim"])
        return [[torch.zeros(shape, dtype=dtype, device=device) for _ in range(2)]
                for _ in self.model.layers]

    def step(self, x: torch.Tensor, pos: int, cache: list[list[torch.Tensor]]) -> torch.Tensor:
        """Input (1, 1, H) at position `pos` -> logits (1027,) of codebook `pos`."""
        cos = self.rope_cos[pos].to(x.dtype)
        sin = self.rope_sin[pos].to(x.dtype)
        for layer, layer_cache in zip(self.model.layers, cache, strict=True):
            x = layer(x, cos, sin, layer_cache, pos)
        return self.local_lm_heads[pos](self.model.norm(x))[0, 0]

    def embed(self, codebook: int, code: int, device: torch.device) -> torch.Tensor:
        """Input of position `codebook + 1`: the embedding of `code` in table `codebook`."""
        index = torch.tensor([[code]], device=device)
        return self.model.embed_tokens[codebook](index)


class MossRealtimeTorch(nn.Module):
    """Embeddings + Qwen3 backbone + local transformer, with upstream parameter names."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from transformers.models.qwen3 import Qwen3Config, Qwen3Model

        language = dict(config["language_config"])
        self.text_vocab = int(language["vocab_size"])
        hidden = int(language["hidden_size"])
        self.qwen_config = Qwen3Config(**{**language, "vocab_size": 1, "pad_token_id": None})
        self.embed_tokens = nn.ModuleList([nn.Embedding(self.text_vocab, hidden)])
        self.embed_tokens.extend(nn.Embedding(AUDIO_VOCAB, hidden) for _ in range(RVQ))
        self.language_model = Qwen3Model(self.qwen_config)
        local = local_config(config)
        if local["hidden_size"] != hidden:
            raise ValueError(
                f"local_config.hidden_size {local['hidden_size']} must equal the backbone's "
                f"{hidden} (the backbone state enters the local transformer unprojected)"
            )
        self.local_transformer = LocalTransformer(local)
        params = inspect.signature(self.language_model.forward).parameters
        # transformers renamed the cache argument (past_key_values -> cache) within 5.x.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def new_cache(self) -> Any:
        """An empty backbone KV cache."""
        from transformers.cache_utils import DynamicCache

        return DynamicCache(config=self.qwen_config)

    def embed_rows(self, rows: np.ndarray) -> torch.Tensor:
        """(n, 17) ids -> (1, n, H) summed embeddings."""
        device = self.embed_tokens[0].weight.device
        ids = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(device)
        total = self.embed_tokens[0](ids[:, 0])
        for channel in range(1, RVQ + 1):
            total = total + self.embed_tokens[channel](ids[:, channel])
        return total[None]

    def forward_rows(self, rows: np.ndarray, cache: Any) -> torch.Tensor:
        """Append `rows` to the cache; return the last row's hidden state (1, 1, H)."""
        out = self.language_model(
            inputs_embeds=self.embed_rows(rows), use_cache=True, **{self._cache_arg: cache}
        )
        return out.last_hidden_state[:, -1:]


def cache_length(cache: Any) -> int:
    """Rows held in a backbone cache."""
    return int(cache.get_seq_length())


def crop_cache(cache: Any, length: int) -> None:
    """Keep the first `length` rows of every layer (transformers' own crop changed meaning in 5.x).

    Raises:
        TypeError: the cache's layers don't hold plain key/value tensors (not a DynamicCache).
    """
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise TypeError("the backbone cache cannot be cropped (not a dynamic full cache)")
        if getattr(layer, "is_initialized", True) and layer.keys is not None:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def load_model(path: Path, dtype: torch.dtype, device: str) -> MossRealtimeTorch:
    """Build from `path/config.json` and load the safetensors shards strictly."""
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    model = MossRealtimeTorch(config)
    files = sorted(path.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    state.pop("language_model.embed_tokens.weight", None)  # unused (see the module docstring)
    expected = set(model.state_dict()) - {"language_model.embed_tokens.weight"}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"moss-realtime: the weights in {path} do not match config.json: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict(state, strict=False)
    return model.to(device=device, dtype=dtype).eval()
