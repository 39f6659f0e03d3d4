"""The MOSS Audio Tokenizer in PyTorch, written from its architecture, with explicit stream state.

The codec is pure transformer (no convolutions): 24 kHz mono audio is cut into patches of 240
samples, run through causal windowed transformers with patch-merging steps (240 -> 2 -> 2 -> 2,
1920 samples per 80 ms frame), quantized by a residual LFQ (32 stages of 1024 codes), and decoded
by the mirror image. Every module is causal, so a frame's samples depend only on earlier frames:
a stream decoded frame by frame equals the offline decode of the whole sequence.

Unlike the upstream implementation, which keeps its streaming caches on the modules (one stream
per model instance), the modules here are stateless: a stream's key/value caches live in a
`DecoderState` the caller owns, so any number of streams share one set of weights.

Weights load from a directory in the upstream on-disk layout (`config.json` with
`encoder_kwargs` / `decoder_kwargs` / `quantizer_kwargs`, and `model.safetensors` with names such
as `decoder.0.transformer.layers.3.self_attn.in_projs.0.weight`). The weight-normed 1x1
projections of the quantizer (`parametrizations.weight.original0/1`) are merged into plain
weights on load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-5


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (parameter `scale`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def rope_interleaved(x: torch.Tensor, start: int, max_period: float) -> torch.Tensor:
    """Rotary embedding on interleaved pairs (x[2i], x[2i+1]) at positions start, start+1, ..."""
    _, _, time, dim = x.shape
    freqs = torch.exp(
        torch.arange(dim // 2, dtype=torch.float32, device=x.device)
        * (-math.log(max_period) * 2 / dim)
    )
    positions = torch.arange(start, start + time, dtype=torch.float32, device=x.device)
    phase = positions[:, None] * freqs[None, :]
    cos, sin = phase.cos(), phase.sin()
    pairs = x.float().reshape(*x.shape[:-1], dim // 2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return out.reshape(x.shape).to(x.dtype)


class LayerCache:
    """One attention layer's stream state: the last `context - 1` keys/values and the offset."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.offset = 0


class CodecAttention(nn.Module):
    """Causal multi-head self-attention over a window of `context` positions, with RoPE."""

    def __init__(self, d_model: int, num_heads: int, context: int, max_period: float) -> None:
        super().__init__()
        self.num_heads, self.context, self.max_period = num_heads, context, max_period
        # Upstream names: in_projs.0 / out_projs.0 (one weight set; no per-step weights).
        self.in_projs = nn.ModuleList([nn.Linear(d_model, 3 * d_model, bias=False)])
        self.out_projs = nn.ModuleList([nn.Linear(d_model, d_model, bias=False)])

    def forward(self, x: torch.Tensor, cache: LayerCache | None) -> torch.Tensor:
        batch, time, dim = x.shape
        qkv = self.in_projs[0](x).reshape(batch, time, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        start = cache.offset if cache else 0
        q = rope_interleaved(q, start, self.max_period)
        k = rope_interleaved(k, start, self.max_period)
        if cache is not None and cache.keys is not None:
            k = torch.cat([cache.keys, k], dim=2)
            v = torch.cat([cache.values, v], dim=2)
        key_start = start + time - k.shape[2]
        query_pos = torch.arange(start, start + time, device=x.device)[:, None]
        key_pos = torch.arange(key_start, start + time, device=x.device)[None, :]
        delta = query_pos - key_pos
        allowed = (delta >= 0) & (delta < self.context)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        if cache is not None:
            keep = self.context - 1
            cache.keys = k[:, :, -keep:] if keep > 0 else None
            cache.values = v[:, :, -keep:] if keep > 0 else None
            cache.offset = start + time
        return self.out_projs[0](out.transpose(1, 2).reshape(batch, time, dim))


class CodecTransformerLayer(nn.Module):
    """Pre-LN block: LayerNorm -> attention -> LayerScale, LayerNorm -> GELU MLP -> LayerScale."""

    def __init__(self, spec: dict[str, Any], context: int) -> None:
        super().__init__()
        d, ff = int(spec["d_model"]), int(spec["dim_feedforward"])
        if spec.get("norm", "layer_norm") != "layer_norm" or spec.get("gating", "none") != "none":
            raise ValueError(
                f"moss codec: only norm=layer_norm and gating=none are supported, got {spec}"
            )
        self.self_attn = CodecAttention(
            d, int(spec["num_heads"]), context, float(spec.get("max_period", 10000))
        )
        self.norm1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.linear1 = nn.Linear(d, ff, bias=False)
        self.linear2 = nn.Linear(ff, d, bias=False)
        self.layer_scale_1 = LayerScale(d)
        self.layer_scale_2 = LayerScale(d)

    def forward(self, x: torch.Tensor, cache: LayerCache | None) -> torch.Tensor:
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), cache))
        return x + self.layer_scale_2(self.linear2(F.gelu(self.linear1(self.norm2(x)))))


class _Layers(nn.Module):
    def __init__(self, spec: dict[str, Any], context: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CodecTransformerLayer(spec, context) for _ in range(int(spec["num_layers"]))
        )


class ProjectedTransformer(nn.Module):
    """input_proj -> transformer layers -> output_proj, on channel-first (B, C, T) tensors."""

    ratio = 1

    def __init__(self, spec: dict[str, Any], context: int) -> None:
        super().__init__()
        d = int(spec["d_model"])
        i, o = int(spec["input_dimension"]), int(spec["output_dimension"])
        self.input_proj = nn.Linear(i, d, bias=False) if i != d else nn.Identity()
        self.transformer = _Layers(spec, context)
        self.output_proj = nn.Linear(d, o, bias=False) if o != d else nn.Identity()

    def new_cache(self) -> list[LayerCache]:
        """Fresh stream state for this module's layers."""
        return [LayerCache() for _ in self.transformer.layers]

    def forward(self, x: torch.Tensor, cache: list[LayerCache] | None = None) -> torch.Tensor:
        x = self.input_proj(x.transpose(1, 2))
        for index, layer in enumerate(self.transformer.layers):
            x = layer(x, cache[index] if cache is not None else None)
        return self.output_proj(x).transpose(1, 2)


class Patch(nn.Module):
    """Moves `patch` consecutive time steps into channels (encoder) or back (decoder)."""

    def __init__(self, patch: int, down: bool) -> None:
        super().__init__()
        self.patch, self.down = patch, down
        self.ratio = patch

    def forward(self, x: torch.Tensor, cache: None = None) -> torch.Tensor:
        batch, channels, time = x.shape
        if self.down:
            x = x.reshape(batch, channels, time // self.patch, self.patch)
            return x.permute(0, 1, 3, 2).reshape(batch, channels * self.patch, -1)
        x = x.reshape(batch, channels // self.patch, self.patch, time)
        return x.permute(0, 1, 3, 2).reshape(batch, channels // self.patch, time * self.patch)


class Projection(nn.Module):
    """A 1x1 convolution stored as (out, in, 1) `weight` plus `bias` (weight norm merged)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim_out, dim_in, 1))
        self.bias = nn.Parameter(torch.zeros(dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oi,bit->bot", self.weight[:, :, 0], x) + self.bias[None, :, None]


def _projection(dim_in: int, dim_out: int) -> nn.Module:
    return Projection(dim_in, dim_out) if dim_in != dim_out else nn.Identity()


class LFQStage(nn.Module):
    """One quantizer stage: in_proj to codebook space, nearest L2-normalised code, out_proj."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.in_proj = _projection(dim, codebook_dim)
        self.out_proj = _projection(codebook_dim, dim)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def quantize(self, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dim, T) residual -> (its quantized value, codes (B, T))."""
        latents = F.normalize(self.in_proj(residual).transpose(1, 2).float(), dim=-1)
        book = F.normalize(self.codebook.weight.float(), dim=-1)
        codes = (latents @ book.T).argmax(dim=-1)
        return self.decode(codes), codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, T) -> (B, dim, T): the raw codebook rows through out_proj."""
        return self.out_proj(self.codebook(codes).transpose(1, 2).float())


class ResidualLFQ(nn.Module):
    """input_proj -> residual LFQ stages -> output_proj; a prefix of stages decodes too."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        kind = spec.get("quantizer_type", "rlfq")
        if kind not in ("rlfq", "random_prefix_rlfq"):
            raise ValueError(f"moss codec: quantizer_type {kind!r} is not supported (rlfq only)")
        dim_in = int(spec["input_dim"])
        self.rvq_dim = int(spec.get("rvq_dim") or dim_in)
        dim_out = int(spec.get("output_dim") or dim_in)
        self.num_quantizers = int(spec["num_quantizers"])
        self.codebook_size = int(spec["codebook_size"])
        self.input_proj = _projection(dim_in, self.rvq_dim)
        self.output_proj = _projection(self.rvq_dim, dim_out)
        self.quantizers = nn.ModuleList(
            LFQStage(self.rvq_dim, self.codebook_size, int(spec["codebook_dim"]))
            for _ in range(self.num_quantizers)
        )

    def encode(self, latents: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        """(B, dim, T) encoder output -> codes (nq, B, T)."""
        residual = self.input_proj(latents.float())
        codes = []
        for stage in self.quantizers[:num_quantizers]:
            quantized, stage_codes = stage.quantize(residual)
            residual = residual - quantized
            codes.append(stage_codes)
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (nq, B, T), nq <= num_quantizers -> (B, dim, T) decoder input."""
        total = sum(stage.decode(c) for stage, c in zip(self.quantizers, codes, strict=False))
        return self.output_proj(total)


def _build_stack(specs: list[dict[str, Any]], rate: float, duration: float, down: bool):
    modules, rates = [], []
    for spec in specs:
        kind = spec.get("module_type")
        if kind == "PatchedPretransform":
            module: nn.Module = Patch(int(spec["patch_size"]), down)
        elif kind == "Transformer":
            if not spec.get("causal", True):
                raise ValueError("moss codec: only causal transformers are supported")
            module = ProjectedTransformer(spec, context=int(rate * duration))
        else:
            raise ValueError(f"moss codec: unknown module_type {kind!r}")
        modules.append(module)
        rates.append(rate)
        rate = rate / module.ratio if down else rate * module.ratio
    return nn.ModuleList(modules), rate


class DecoderState:
    """One stream's decoder caches (per transformer module, per layer)."""

    def __init__(self, model: MossCodecModel) -> None:
        self.caches = [
            m.new_cache() if isinstance(m, ProjectedTransformer) else None for m in model.decoder
        ]
        self.frames = 0


class MossCodecModel(nn.Module):
    """Encoder, residual LFQ and decoder built from an upstream `config.json` dictionary."""

    def __init__(self, config: dict[str, Any], build_encoder: bool = True) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = int(config.get("sampling_rate", config.get("sample_rate", 24000)))
        self.downsample_rate = int(config["downsample_rate"])
        channels = int(config.get("number_channels", 1))
        if channels != 1:
            raise ValueError(f"moss codec: only mono checkpoints are supported, got {channels}")
        self.context_duration = float(config.get("causal_transformer_context_duration", 10))
        # build_encoder=False gives a decode-only model (benchmarks; less memory).
        specs = config["encoder_kwargs"] if build_encoder else []
        self.encoder, _ = _build_stack(
            specs, float(self.sample_rate), self.context_duration, down=True
        )
        frame_rate = self.sample_rate / self.downsample_rate
        quantizer = dict(config["quantizer_kwargs"])
        quantizer.setdefault("quantizer_type", config.get("quantizer_type", "rlfq"))
        self.quantizer = ResidualLFQ(quantizer)
        self.decoder, _ = _build_stack(
            config["decoder_kwargs"], frame_rate, self.context_duration, down=False
        )
        self.frame_rate = self.sample_rate / self.downsample_rate

    @property
    def num_quantizers(self) -> int:
        """Quantizer stages in the checkpoint (32 upstream)."""
        return self.quantizer.num_quantizers

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor, num_quantizers: int | None = None) -> torch.Tensor:
        """Mono (T,) samples -> codes (nq, frames); the last partial frame is zero-padded."""
        pad = (-audio.shape[-1]) % self.downsample_rate
        x = F.pad(audio.float().reshape(1, 1, -1), (0, pad))
        for module in self.encoder:
            x = module(x)
        return self.quantizer.encode(x, num_quantizers or self.num_quantizers)[:, 0]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, state: DecoderState | None = None) -> torch.Tensor:
        """Codes (nq, frames) -> (frames * downsample_rate,) samples.

        With `state`, decoding continues that stream (its caches advance); without, the codes
        are a whole sequence.
        """
        x = self.quantizer.decode(codes.long()[:, None, :])
        for index, module in enumerate(self.decoder):
            x = module(x, state.caches[index] if state is not None else None)
        if state is not None:
            state.frames += codes.shape[-1]
        return x[0, 0]


def merge_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each `X.parametrizations.weight.original0/1` pair (g, v) by `X.weight`.

    weight = g * v / ||v||, the norm taken over every dim but the first (PyTorch's weight_norm
    with dim=0).

    Raises:
        ValueError: a pair is incomplete (the error names the key).
    """
    merged = {}
    for key, value in state.items():
        if ".parametrizations.weight.original" not in key:
            merged[key] = value
            continue
        base = key.split(".parametrizations.weight.original")[0]
        if f"{base}.weight" in merged:
            continue
        g = state.get(f"{base}.parametrizations.weight.original0")
        v = state.get(f"{base}.parametrizations.weight.original1")
        if g is None or v is None:
            raise ValueError(f"moss codec: weight-norm pair of {base} is incomplete ({key})")
        norm = v.float().pow(2).sum(dim=tuple(range(1, v.dim())), keepdim=True).sqrt()
        merged[f"{base}.weight"] = (g.float() * v.float() / norm).to(v.dtype)
    return merged


def load_codec_model(path: Path, device: str = "cpu") -> MossCodecModel:
    """Build the codec from `path/config.json` and load `path/model.safetensors` strictly."""
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    model = MossCodecModel(config)
    state = merge_weight_norm(load_file(str(path / "model.safetensors")))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"moss codec: {path / 'model.safetensors'} does not match config.json: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval()
