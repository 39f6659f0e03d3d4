"""Orpheus benchmark: SNAC decode speed and llama.cpp token rate against real time, on the CPU.

    python bench/bench_orpheus.py [--frames 48] [--repeats 3] [--mlx] [--json out.json]

Real time for Orpheus is one SNAC frame (7 tokens, 2048 samples at 24 kHz) per 85.3 ms:
11.72 frames/s of decode and 82 tokens/s of generation.

1. SNAC 24 kHz decode (random weights in the real architecture: speed does not depend on the
   weights), offline and streaming through `StreamingDecoder` at the chunk sizes the rate
   controller picks (1-9 frames). Streaming redecodes 3 frames of left context and 2.5 frames
   held back per chunk, so small chunks cost more per frame.
2. llama.cpp tokens/s on the tiny Orpheus-layout GGUF of the tests (hidden size 32): raw
   `Llama.generate`, and through the `orpheus` engine (prompt, frame assembly, chunking). The
   tiny model measures the floor set by sampling over Orpheus's 156,940-token vocabulary and
   the Python loop, not Orpheus-3B's compute.
Each number is the best of `--repeats` runs (the machine is shared; the best is the least
disturbed).

Measured on this project's 2-core CPU machines (torch 2.13 CPU, 2 threads; llama-cpp-python
0.3.36 built with GGML_NATIVE=OFF), best of 5, 48 frames:

    SNAC (PyTorch) offline          90 frames/s   7.7x real time
    streamed, 1-frame chunks        14 frames/s   1.2x
    streamed, 2-frame chunks        25 frames/s   2.2x
    streamed, 4-frame chunks        41 frames/s   3.5x   (28 tokens, the default)
    streamed, 5-frame chunks        45 frames/s   3.9x   (32-35 tokens, the rate target)
    streamed, 9-frame chunks        56 frames/s   4.8x
    SNAC (MLX CPU backend) offline 4.2 frames/s   0.36x  (4-frame chunks: 1.8 frames/s)
    tiny GGUF, generate, 1 thread  161 tokens/s   2.0x   (2 threads: 165; under load 2
                                                          threads fall to 5-15 tokens/s)
    tiny GGUF, orpheus engine      168 tokens/s   2.0x
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from morpheus_tts.host import SynthesisRequest  # noqa: E402
from morpheus_tts.plugins.codecs.snac import FRAME_SAMPLES, SAMPLE_RATE, SnacCodec, SnacSettings  # noqa: E402
from morpheus_tts.plugins.engines.orpheus import OrpheusEngine, OrpheusSettings  # noqa: E402
from orpheus_fixtures import write_snac_dir, write_snac_mlx_dir, write_tiny_orpheus_gguf  # noqa: E402

REAL_TIME_FRAMES_PER_S = SAMPLE_RATE / FRAME_SAMPLES
REAL_TIME_TOKENS_PER_S = 7 * REAL_TIME_FRAMES_PER_S
CHUNK_FRAMES = (1, 2, 4, 5, 9)


def best_seconds(run, repeats: int) -> float:
    """The fastest of `repeats` timed calls (after one warm-up call)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def streamed(codec, codes: np.ndarray, chunk: int) -> None:
    decoder = codec.decoder()
    for start in range(0, len(codes), chunk):
        decoder.decode(codes[start : start + chunk])
    decoder.flush()


def bench_snac(codec, frames: int, repeats: int) -> dict[str, float]:
    """frames/s offline and streamed at each chunk size."""
    codes = np.random.default_rng(0).integers(0, 4096, size=(frames, 7), dtype=np.int32)
    result = {"offline": frames / best_seconds(lambda: codec.decode_window(codes), repeats)}
    for chunk in CHUNK_FRAMES:
        seconds = best_seconds(lambda chunk=chunk: streamed(codec, codes, chunk), repeats)
        result[f"stream_{chunk}"] = frames / seconds
    return result


def bench_llama(gguf: Path, repeats: int) -> dict[str, float]:
    """tokens/s of raw generate (1 and 2 threads) and of the engine (1 thread)."""
    from llama_cpp import Llama

    tokens = 700
    result = {}
    for threads in (1, 2):
        llm = Llama(
            str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        prompt = [
            128259,
            *llm.tokenize(b"tara: Hello world.", add_bos=True),
            128009,
            128260,
            128261,
            128257,
        ]

        def generate(llm=llm, prompt=prompt) -> None:
            llm.set_seed(4)
            stream = llm.generate(
                prompt, temp=0.6, top_p=0.8, top_k=0, min_p=0.0, repeat_penalty=1.3
            )
            for _ in range(tokens):
                next(stream)

        result[f"generate_{threads}_threads"] = tokens / best_seconds(generate, repeats)
        llm.close()
    engine = OrpheusEngine(
        OrpheusSettings(model_path=str(gguf), n_ctx=2048, n_threads=1, max_tokens=tokens)
    )
    anyio.run(engine.start)
    request = SynthesisRequest(text="Hello world.", voice="tara", options={"seed": 4})
    frames = sum(len(chunk) for chunk in engine.synthesize(request))
    seconds = best_seconds(lambda: list(engine.synthesize(request)), repeats)
    result["engine_1_thread"] = 7 * frames / seconds
    anyio.run(engine.stop)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=48, help="frames per decode run (48 = 4 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mlx", action="store_true", help="also time the snac-mlx codec")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()

    import torch

    report: dict[str, object] = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        snac_dir = write_snac_dir(Path(tmp) / "snac")
        codec = SnacCodec(SnacSettings(model_path=str(snac_dir), device="cpu"))
        anyio.run(codec.start)
        report["snac_torch_frames_per_s"] = bench_snac(codec, args.frames, args.repeats)
        if args.mlx:
            from morpheus_tts.plugins.codecs.snac_mlx import SnacMlxCodec, SnacMlxSettings

            mlx_dir = write_snac_mlx_dir(Path(tmp) / "snac_mlx", snac_dir)
            mlx_codec = SnacMlxCodec(SnacMlxSettings(model_path=str(mlx_dir)))
            anyio.run(mlx_codec.start)
            frames = min(args.frames, 12)  # MLX's CPU backend is slow on Linux
            report["snac_mlx_frames_per_s"] = bench_snac(mlx_codec, frames, 1)
        gguf = write_tiny_orpheus_gguf(Path(tmp) / "tiny-orpheus.gguf")
        report["llama_tokens_per_s"] = bench_llama(gguf, args.repeats)

    print(
        f"real time: {REAL_TIME_FRAMES_PER_S:.2f} SNAC frames/s, "
        f"{REAL_TIME_TOKENS_PER_S:.1f} tokens/s"
    )
    for key in ("snac_torch_frames_per_s", "snac_mlx_frames_per_s"):
        for name, rate in (report.get(key) or {}).items():  # type: ignore[union-attr]
            print(
                f"{key:<26} {name:<12} {rate:8.1f} frames/s  "
                f"{rate / REAL_TIME_FRAMES_PER_S:5.2f}x real time"
            )
    for name, rate in report["llama_tokens_per_s"].items():  # type: ignore[union-attr]
        print(
            f"{'llama_tokens_per_s':<26} {name:<20} {rate:8.1f} tokens/s  "
            f"{rate / REAL_TIME_TOKENS_PER_S:5.2f}x real time"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
