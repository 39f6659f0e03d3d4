"""Write tiny random-weight MOSS-TTS-Realtime and MOSS Audio Tokenizer checkpoints to try things.

    python -m morpheus_tts.plugins.engines.moss_tiny OUT_DIR [--seed N]

writes, in the upstream on-disk layouts:

- `OUT_DIR/MOSS-TTS-Realtime/`: config.json (`language_config` for Qwen3, `local_config`),
  model.safetensors (upstream parameter names, including the backbone's unused text table),
  tokenizer.json (a byte-level tokenizer with Qwen's chat tokens and MOSS's `<|audio_pad|>` /
  `<|text_pad|>`) and tokenizer_config.json;
- `OUT_DIR/MOSS-Audio-Tokenizer/`: config.json (the real patch chain 240-2-2-2 with one-layer
  32-wide transformers and a 32 x 1024 x 8 residual LFQ) and model.safetensors with the
  quantizer's weight-normed projections as `parametrizations.weight.original0/1`;
- `OUT_DIR/plugins.toml`: loads `moss-realtime` (PyTorch), `moss-realtime-mlx`, both codecs,
  the sentence chunker and the crossfade stitcher, from those directories.

The weights are random, so the speech is noise; the shapes, names, formats and code paths are
the real ones (what the tests load). Needs the `[moss]` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MODEL_DIR = "MOSS-TTS-Realtime"
CODEC_DIR = "MOSS-Audio-Tokenizer"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_pad|>", "<|text_pad|>"]


def _transformer(i: int, o: int) -> dict[str, Any]:
    return {
        "module_type": "Transformer", "causal": True, "conv_layout": True, "d_model": 32,
        "dim_feedforward": 64, "gating": "none", "input_dimension": i, "layer_scale": 0.01,
        "max_period": 10000, "norm": "layer_norm", "num_heads": 2, "num_layers": 1,
        "output_dimension": o, "positional_embedding": "rope",
    }


def _patch(size: int) -> dict[str, Any]:
    return {"module_type": "PatchedPretransform", "patch_size": size}


def tiny_codec_config() -> dict[str, Any]:
    """The tiny codec's config.json (upstream keys)."""
    return {
        "architectures": ["MossAudioTokenizerModel"],
        "model_type": "speech_tokenizer",
        "sample_rate": 24000, "sampling_rate": 24000, "downsample_rate": 1920,
        "causal_transformer_context_duration": 10, "code_dim": 32, "number_channels": 1,
        "encoder_kwargs": [
            _patch(240), _transformer(240, 24), _patch(2), _transformer(48, 24), _patch(2),
            _transformer(48, 40), _patch(2), _transformer(80, 32),
        ],
        "decoder_kwargs": [
            _transformer(32, 80), _patch(2), _transformer(40, 48), _patch(2),
            _transformer(24, 48), _patch(2), _transformer(24, 240), _patch(240),
        ],
        "quantizer_type": "rlfq",
        "quantizer_kwargs": {
            "input_dim": 32, "rvq_dim": 16, "output_dim": 32, "num_quantizers": 32,
            "codebook_size": 1024, "codebook_dim": 8, "quantizer_type": "rlfq",
        },
    }


def tiny_model_config(vocab_size: int, audio_pad_id: int, text_pad_id: int) -> dict[str, Any]:
    """The tiny model's config.json (upstream keys; Qwen3 as transformers writes it)."""
    from transformers.models.qwen3 import Qwen3Config

    language = Qwen3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=40960, tie_word_embeddings=False,
    ).to_dict()
    for key in ("transformers_version", "architectures", "dtype", "torch_dtype"):
        language.pop(key, None)
    return {
        "architectures": ["MossTTSRealtime"], "model_type": "moss_tts_realtime",
        "language_config": language,
        "local_config": {
            "head_dim": 16, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_type": "linear",
            "max_position_embeddings": 33, "hidden_act": "silu", "pad_token_id": 1024,
        },
        "rvq": 16, "audio_pad_token": 1024, "audio_vocab_size": 1027,
        "reference_audio_pad": audio_pad_id, "text_pad": text_pad_id,
    }


def write_tokenizer(out: Path) -> dict[str, int]:
    """A byte-level tokenizer (256 byte tokens, no merges) plus the chat and pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "model_max_length": 40960,
    }, indent=2))
    return {name: tok.token_to_id(name) for name in SPECIALS} | {"vocab": tok.get_vocab_size()}


def _randomize(module: Any, torch: Any, generator: Any) -> None:
    for name, param in module.named_parameters():
        if name.endswith("layer_scale_1.scale") or name.endswith("layer_scale_2.scale"):
            param.data.fill_(0.01)  # the real init
        elif "norm" in name and name.endswith("weight"):
            param.data.fill_(1.0)
        elif name.endswith("bias") and "norm" in name:
            param.data.zero_()
        else:
            param.data.normal_(0.0, 0.02 if "embed" in name else 0.2, generator=generator)


def write_codec(out: Path, seed: int) -> Path:
    """The tiny codec in the upstream layout (weight norm as parametrizations)."""
    import torch
    from morpheus_tts.plugins.codecs.moss_codec_model import MossCodecModel, Projection
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = tiny_codec_config()
    model = MossCodecModel(config)
    generator = torch.Generator().manual_seed(seed)
    _randomize(model, torch, generator)
    for param in model.quantizer.parameters():
        if param.dim() == 2:  # codebooks: unit-scale rows, as trained codebooks roughly are
            param.data.normal_(0.0, 1.0, generator=generator)
    last = model.decoder[-2]  # keep the random decoder's output near [-1, 1]
    last.output_proj.weight.data.mul_(0.01)
    state = {}
    projections = {n for n, m in model.named_modules() if isinstance(m, Projection)}
    for name, value in model.state_dict().items():
        base = name.rsplit(".", 1)[0]
        if base in projections and name.endswith(".weight"):
            v = value.contiguous()
            g = v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt() * 1.5
            state[f"{base}.parametrizations.weight.original0"] = g.contiguous()
            state[f"{base}.parametrizations.weight.original1"] = v
        else:
            state[name] = value.contiguous()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def write_model(out: Path, seed: int) -> Path:
    """The tiny MOSS-TTS-Realtime in the upstream layout."""
    import torch
    from morpheus_tts.plugins.engines.moss_torch_model import MossRealtimeTorch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out)
    config = tiny_model_config(ids["vocab"], ids["<|audio_pad|>"], ids["<|text_pad|>"])
    model = MossRealtimeTorch(config)
    _randomize(model, torch, torch.Generator().manual_seed(seed + 1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    hidden = config["language_config"]["hidden_size"]
    # Upstream's checkpoint also holds Qwen3Model's own (unused) text table.
    state["language_model.embed_tokens.weight"] = torch.zeros(ids["vocab"], hidden)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


PLUGINS_TOML = """\
# Tiny random-weight MOSS checkpoints written by morpheus_tts.plugins.engines.moss_tiny.
[server]
default_engine = "moss-realtime"
chunker = "sentence"
stitcher = "crossfade"
sample_rate = 24000

[plugins.moss-realtime]
module = "morpheus_tts.plugins.engines.moss_realtime"
settings = {{ model_path = "{model}", codec_path = "{codec}", codec = "moss-audio-tokenizer" }}

[plugins.moss-realtime-mlx]
module = "morpheus_tts.plugins.engines.moss_realtime_mlx"
settings = {{ model_path = "{model}", codec_path = "{codec}", codec = "moss-audio-tokenizer-mlx" }}

[plugins.moss-audio-tokenizer]
module = "morpheus_tts.plugins.codecs.moss_audio_tokenizer"
settings = {{ model_path = "{codec}" }}

[plugins.moss-audio-tokenizer-mlx]
module = "morpheus_tts.plugins.codecs.moss_audio_tokenizer_mlx"
settings = {{ model_path = "{codec}" }}

[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"

[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""


def write_all(out: Path, seed: int = 0) -> Path:
    """Both checkpoints and `out/plugins.toml`; returns the plugins.toml path."""
    out = Path(out).resolve()
    codec = write_codec(out / CODEC_DIR, seed)
    model = write_model(out / MODEL_DIR, seed)
    toml = out / "plugins.toml"
    toml.write_text(PLUGINS_TOML.format(model=model.as_posix(), codec=codec.as_posix()))
    return toml


def main(argv: list[str] | None = None) -> None:
    """Command line: write the tiny checkpoints to OUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    toml = write_all(args.out_dir, args.seed)
    sys.stdout.write(f"wrote {toml.parent / MODEL_DIR}, {toml.parent / CODEC_DIR} and {toml}\n")


if __name__ == "__main__":
    main()
