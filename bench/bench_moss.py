"""MOSS-TTS-Realtime benchmark: frames/s of the real 1.7B shapes and of the real codec decoder.

    python bench/bench_moss.py [--frames 3] [--dtypes bfloat16,float32] [--codec-chunks 1,3]
                               [--device cpu] [--json out.json]

Real time is one frame per 80 ms: 12.5 frames/s of the LM (one backbone step over a 17-id row
plus the local transformer's 16 sequential passes) and 12.5 frames/s of codec decode. Weights
are random in the real shapes (speed does not depend on their values), built in memory with the
project's own modules: the `moss-realtime` network (Qwen3 backbone 2048 wide, 28 layers, 16/8
heads, vocab 151,936; local transformer 4 layers) and the `moss-audio-tokenizer` decoder (the
upstream config.json's decoder stack, 0.9B parameters, float32).

Also measured in the same run, as the baseline that explains the numbers: the memory bandwidth
of this machine (a large tensor copy). At batch 1 both parts are bandwidth bound: each LM frame
reads every weight once per pass (backbone once, local transformer 16 times: about 10-13 GB in
bf16), so frames/s ~ bandwidth / bytes per frame, and real time needs roughly 150 GB/s, i.e. a
discrete GPU (RTX 3060 12 GB and up) or an Apple M-Max; a CPU or a base M-chip falls short.

Measured on this project's 2-core CPU machine (torch 2.13 CPU, 2 threads) under a load average
of 10-11 from other work, `--frames 3` (docs/moss.md keeps the table):

    memory bandwidth (copy)          4.7 GB/s
    LM bf16  14.2 s/frame (backbone 4.0, local 10.2)   0.07 frames/s   0.006x real time
    LM fp32  12.9 s/frame (backbone 4.1, local 8.8)    0.08 frames/s   0.006x
    codec decode fp32, 1-frame calls                   0.19 frames/s   0.015x
    codec decode fp32, 3-frame calls                   0.14 frames/s   0.011x
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

import numpy as np
import torch
from morpheus_tts.plugins.engines.moss_prompt import AUDIO_PAD
from morpheus_tts.plugins.engines.moss_torch_model import MossRealtimeTorch

REAL_TIME_FPS = 12.5


def real_model_config() -> dict[str, Any]:
    """MOSS-TTS-Realtime 1.7B's shapes (Qwen3-1.7B backbone; upstream local defaults)."""
    return {
        "language_config": {
            "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "max_position_embeddings": 40960, "tie_word_embeddings": False,
        },
        "local_config": {},  # upstream defaults: 2048 wide, 4 layers, 6144, 16/8 heads
    }


def _transformer(i: int, o: int, d: int, ff: int, heads: int, layers: int) -> dict[str, Any]:
    return {"module_type": "Transformer", "causal": True, "d_model": d, "dim_feedforward": ff,
            "input_dimension": i, "output_dimension": o, "num_heads": heads,
            "num_layers": layers, "layer_scale": 0.01, "max_period": 10000,
            "norm": "layer_norm", "gating": "none", "positional_embedding": "rope"}


def real_codec_config() -> dict[str, Any]:
    """The upstream MOSS-Audio-Tokenizer config.json's decoder (encoder omitted)."""
    patch = {"module_type": "PatchedPretransform"}
    return {
        "sampling_rate": 24000, "downsample_rate": 1920,
        "causal_transformer_context_duration": 10, "encoder_kwargs": [],
        "decoder_kwargs": [
            _transformer(768, 1280, 1280, 5120, 20, 32), patch | {"patch_size": 2},
            _transformer(640, 768, 768, 3072, 12, 12), patch | {"patch_size": 2},
            _transformer(384, 768, 768, 3072, 12, 12), patch | {"patch_size": 2},
            _transformer(384, 240, 768, 3072, 12, 12), patch | {"patch_size": 240},
        ],
        "quantizer_kwargs": {"input_dim": 768, "rvq_dim": 512, "output_dim": 768,
                             "num_quantizers": 32, "codebook_size": 1024, "codebook_dim": 8},
    }


def randomize(model: torch.nn.Module) -> None:
    """Small uniform weights (fast to draw; no denormals)."""
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.02, 0.02)


def bandwidth_gb_s(device: str) -> float:
    """Best of 3 copies of a 512 MiB tensor: read + write bytes per second."""
    src = torch.empty(128 * 2**20, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def bench_lm(dtype: str, frames: int, device: str, prompt_rows: int) -> dict[str, Any]:
    """Prefill `prompt_rows`, then `frames` timed steps (backbone row + 16 local passes)."""
    from morpheus_tts.plugins.engines.moss_realtime import TorchBackend

    start = time.perf_counter()
    model = MossRealtimeTorch(real_model_config())
    randomize(model)
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    built = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    backend = TorchBackend(model)
    cache = backend.new_cache()
    rng = np.random.default_rng(0)
    rows = np.full((prompt_rows, 17), AUDIO_PAD, dtype=np.int64)
    rows[:, 0] = rng.integers(0, 151000, prompt_rows)
    start = time.perf_counter()
    hidden = backend.forward_rows(rows, cache)
    prefill = time.perf_counter() - start

    def pick(logits: np.ndarray, codebook: int) -> int:
        return int(np.argmax(logits[:1024]))

    times, backbone, local = [], [], []
    for _ in range(frames + 1):  # the first step warms up
        t0 = time.perf_counter()
        codes = backend.frame(hidden, pick)
        t1 = time.perf_counter()
        hidden = backend.forward_rows(np.concatenate([[151655], codes])[None], cache)
        t2 = time.perf_counter()
        times.append(t2 - t0)
        local.append(t1 - t0)
        backbone.append(t2 - t1)
    per_frame = min(times[1:])
    del model, backend, cache
    gc.collect()
    return {
        "dtype": dtype, "params": params, "build_s": round(built, 1),
        "prefill_rows": prompt_rows, "prefill_s": round(prefill, 2),
        "frame_s": round(per_frame, 3), "backbone_s": round(min(backbone[1:]), 3),
        "local_s": round(min(local[1:]), 3), "frames_per_s": round(1 / per_frame, 2),
        "x_real_time": round(1 / per_frame / REAL_TIME_FPS, 3),
    }


def bench_codec(chunks: list[int], device: str, repeats: int) -> list[dict[str, Any]]:
    """Streaming decode of the real decoder at each chunk size (frames per call)."""
    from morpheus_tts.plugins.codecs.moss_codec_model import DecoderState, MossCodecModel

    model = MossCodecModel(real_codec_config(), build_encoder=False)
    randomize(model)
    model = model.to(device).eval()
    rng = np.random.default_rng(1)
    results = []
    for chunk in chunks:
        state = DecoderState(model)
        best = float("inf")
        for i in range(repeats + 1):  # the first call warms up
            codes = torch.from_numpy(rng.integers(0, 1024, (16, chunk))).to(device)
            start = time.perf_counter()
            model.decode(codes, state)
            if device != "cpu":
                torch.cuda.synchronize()
            if i:
                best = min(best, time.perf_counter() - start)
        fps = chunk / best
        results.append({"chunk_frames": chunk, "call_s": round(best, 3),
                        "frames_per_s": round(fps, 2),
                        "x_real_time": round(fps / REAL_TIME_FPS, 3)})
    del model
    gc.collect()
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--codec-chunks", default="1,3")
    parser.add_argument("--prompt-rows", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                           "device": args.device}
    out["bandwidth_gb_s"] = round(bandwidth_gb_s(args.device), 1)
    print(f"memory bandwidth (copy): {out['bandwidth_gb_s']} GB/s", flush=True)  # noqa: T201
    out["lm"] = []
    for dtype in args.dtypes.split(","):
        row = bench_lm(dtype, args.frames, args.device, args.prompt_rows)
        out["lm"].append(row)
        print(f"LM {dtype}: {row['frame_s']} s/frame (backbone {row['backbone_s']}, local "  # noqa: T201
              f"{row['local_s']}) = {row['frames_per_s']} frames/s, "
              f"{row['x_real_time']}x real time; {row['params'] / 1e9:.2f}B params", flush=True)
    out["codec"] = bench_codec([int(c) for c in args.codec_chunks.split(",")], args.device,
                               repeats=2)
    for row in out["codec"]:
        print(f"codec decode, {row['chunk_frames']}-frame calls: {row['frames_per_s']} "  # noqa: T201
              f"frames/s, {row['x_real_time']}x real time", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)


if __name__ == "__main__":
    sys.exit(main())
