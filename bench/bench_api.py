"""HTTP API benchmark: what `POST /v1/audio/speech` adds, and four concurrent long streams.

    python bench/bench_api.py [--repeats 15] [--json out.json]

1. Time to first audio on the same text: the in-process pipeline (`Runtime.speak`, first
   stitched chunk) against a real `morpheus serve` over HTTP (request sent to first body byte),
   as pcm and as mp3. Runs rotate order, with a pause between them, so machine noise and
   onnxruntime's spinning threads hit every path alike; medians are reported.
   On a busy machine Piper's own time varies by more than the API costs, so the API's share is
   also measured within each HTTP request: the client's time minus the pipeline time the
   server reports in `Server-Timing`. Target: the API adds at most 10% (judged on pcm, the
   pipeline's own output; mp3 is reported beside it with its encoder's share).
2. Four concurrent ~1000-character pcm streams, started together. For each: time to first
   audio, delivery speed (audio seconds per wall second, request to last byte), and a
   simulated listener that starts playing once it holds 300 ms and counts underflows (the
   buffer running dry before the end). Run unpaced (the API's default: as fast as made) and
   paced (`"pace": true`: synthesis held to playback). Target: each stream at least 1.5x real
   time unpaced, no underflow in either mode.
Both sides use the repository's plugins.toml with Piper's noise off, so every run speaks
the same audio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent

from conftest import LiveServer  # noqa: E402
from morpheus_tts.host.config import load_config  # noqa: E402
from morpheus_tts.host.runtime import Runtime, SpeakRequest  # noqa: E402

REPLY = (
    "Thanks for waiting, I looked through the whole order history on your account and found "
    "the missing package from March. It ships tomorrow. Anything else?"
)
SENTENCES = [
    "Morpheus streams speech while the text is still arriving.",
    "A plugin host loads engines, codecs, chunkers and stitchers at runtime.",
    "Slow listeners slow the engine down instead of filling memory.",
    "An interruption stops the audio within one chunk.",
    "The default voice ships inside a Python package.",
    "Other engines plug in behind the same interface.",
    "Every chunk of audio can be traced from end to end.",
    "The weather tomorrow looks bright, with a light breeze from the west.",
    "Please remember to bring the blue folder to the meeting on Thursday.",
    "The library opens at nine and closes at six on weekdays.",
]
BYTES_PER_SECOND = 24000 * 2  # pcm: 24 kHz, 16-bit mono
PREBUFFER_S = 0.3
SETTLE_S = 0.2  # pause between time-to-first-audio runs


def long_text(offset: int, chars: int = 1000) -> str:
    """About `chars` characters of distinct sentences, rotated by `offset`."""
    words: list[str] = []
    index = offset
    while sum(len(w) + 1 for w in words) < chars:
        words.append(SENTENCES[index % len(SENTENCES)])
        index += 3
    return " ".join(words)


def deterministic_config(directory: Path) -> Path:
    """The repository's plugins.toml with Piper's noise off."""
    text = (ROOT / "plugins.toml").read_text().replace(
        'voice = "bundled"', 'voice = "bundled"\nnoise_scale = 0.0\nnoise_w_scale = 0.0'
    )
    path = directory / "plugins.toml"
    path.write_text(text)
    return path


# -- 1. time to first audio ------------------------------------------------------------------


# Each run is read to the end: a cancelled run would leave its engine step computing (threads
# cannot be stopped mid-step) and slow down the next measurement.


async def in_process_ttfa(runtime: Runtime, text: str) -> float:
    """Seconds from opening the utterance to its first non-empty stitched chunk."""
    started = time.perf_counter()
    first = None
    async with runtime.speak(SpeakRequest(pace=False), text) as utterance:
        async for chunk in utterance.audio:
            if first is None and len(chunk.samples):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("no audio")
    return first


def http_ttfa(client: httpx.Client, url: str, text: str, fmt: str) -> tuple[float, float]:
    """(seconds from sending the request to the first audio byte, the server's own pipeline
    time to first audio for that request, from its `Server-Timing` header)."""
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt}
    started = time.perf_counter()
    first = None
    with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        server_s = float(response.headers["server-timing"].split("dur=")[1]) / 1000
        for data in response.iter_raw():
            if first is None and data:
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("no audio")
    return first, server_s


def bench_ttfa(config: Path, url: str, repeats: int) -> dict[str, list[float]]:
    """Per path, the time to first audio of each run; `* added` is the same request's HTTP
    time minus the server's own pipeline time (what the API layer adds, free of the run-to-run
    noise of a shared machine)."""
    results: dict[str, list[float]] = {
        "in-process": [], "http pcm": [], "http mp3": [], "pcm added": [], "mp3 added": [],
    }

    async def run() -> None:
        runtime = Runtime(load_config(config))
        async with runtime.running():
            with httpx.Client(timeout=60) as client:
                for _ in range(2):  # warm both sides
                    await in_process_ttfa(runtime, REPLY)
                    http_ttfa(client, url, REPLY, "pcm")
                paths = ["in-process", "pcm", "mp3"]
                for run_index in range(repeats):
                    # Rotate the order, and let each run's onnxruntime threads (which spin for
                    # a while after their work) go idle before the next run starts.
                    for path in paths[run_index % 3:] + paths[:run_index % 3]:
                        await anyio.sleep(SETTLE_S)
                        if path == "in-process":
                            results[path].append(await in_process_ttfa(runtime, REPLY))
                            continue
                        client_s, server_s = http_ttfa(client, url, REPLY, path)
                        results[f"http {path}"].append(client_s)
                        results[f"{path} added"].append(client_s - server_s)

    anyio.run(run)
    return results


# -- 2. concurrent streams -------------------------------------------------------------------


def listen(url: str, text: str, pace: bool, out: dict) -> None:
    """Stream one pcm response, recording (seconds since start, bytes so far) per read."""
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm",
            "pace": pace}
    arrivals: list[tuple[float, int]] = []
    total = 0
    with httpx.Client(timeout=300) as client:
        started = time.perf_counter()
        with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            response.raise_for_status()
            for data in response.iter_raw():
                total += len(data)
                arrivals.append((time.perf_counter() - started, total))
    out.update(arrivals=arrivals)


def playback(arrivals: list[tuple[float, int]]) -> tuple[int, float]:
    """A listener that starts once it holds 300 ms: (underflows, smallest margin in ms)."""
    start_at = next(t for t, total in arrivals if total / BYTES_PER_SECOND >= PREBUFFER_S)
    underflows, margin, held = 0, float("inf"), 0.0
    for t, total in arrivals:
        if t > start_at:
            left = held - (t - start_at)  # audio still queued when this read lands
            margin = min(margin, left)
            if left < 0:
                underflows += 1
                start_at += -left  # the listener rebuffers, then resumes
        held = total / BYTES_PER_SECOND
    return underflows, 1000.0 * margin


def bench_concurrent(url: str, pace: bool, streams: int = 4) -> list[dict]:
    outs: list[dict] = [{} for _ in range(streams)]
    threads = [
        threading.Thread(target=listen, args=(url, long_text(i), pace, outs[i]))
        for i in range(streams)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = []
    for i, out in enumerate(outs):
        arrivals = out["arrivals"]
        audio_s = arrivals[-1][1] / BYTES_PER_SECOND
        underflows, margin_ms = playback(arrivals)
        rows.append({
            "stream": i, "chars": len(long_text(i)), "ttfa_ms": 1000 * arrivals[0][0],
            "audio_s": audio_s, "wall_s": arrivals[-1][0],
            "speed_x": audio_s / arrivals[-1][0], "underflows": underflows,
            "min_margin_ms": margin_ms,
        })
    return rows


# -- report ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = deterministic_config(Path(tmp))
        server = LiveServer(config)
        try:
            server.wait_ready()
            ttfa = bench_ttfa(config, server.url, args.repeats)
            unpaced = bench_concurrent(server.url, pace=False)
            paced = bench_concurrent(server.url, pace=True)
        finally:
            server.stop()

    base = statistics.median(ttfa["in-process"])
    print(f"## Time to first audio ({len(REPLY)} characters, {args.repeats} runs)\n")
    print("| path | median ms | min ms | p90 ms | median vs in-process |")
    print("|---|---:|---:|---:|---:|")
    for name in ("in-process", "http pcm", "http mp3"):
        values = ttfa[name]
        median = statistics.median(values)
        print(f"| {name} | {1000 * median:.0f} | {1000 * min(values):.0f} | "
              f"{1000 * statistics.quantiles(values, n=10)[-1]:.0f} | "
              f"{100 * (median / base - 1):+.1f}% |")
    print("\nWhat the API adds to the same request (client time to first byte minus the "
          "server's pipeline time from `Server-Timing`):\n")
    print("| format | median ms | p90 ms | share of in-process median |")
    print("|---|---:|---:|---:|")
    for fmt in ("pcm", "mp3"):
        added = ttfa[f"{fmt} added"]
        print(f"| {fmt} | {1000 * statistics.median(added):.1f} | "
              f"{1000 * statistics.quantiles(added, n=10)[-1]:.1f} | "
              f"{100 * statistics.median(added) / base:.1f}% |")
    overhead = statistics.median(ttfa["pcm added"]) / base
    codec = statistics.median(ttfa["mp3 added"]) / base
    print(f"\nThe API adds {100 * overhead:.1f}% to the pipeline's PCM (target: at most 10%): "
          f"{'PASS' if overhead <= 0.10 else 'FAIL'}; mp3 encoding included: "
          f"{100 * codec:.1f}%\n")

    for title, rows in (("unpaced (default)", unpaced), ('paced ("pace": true)', paced)):
        print(f"## Four concurrent pcm streams, {title}\n")
        print("| stream | chars | TTFA ms | audio s | wall s | speed x RT | underflows | "
              "min margin ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['stream']} | {r['chars']} | {r['ttfa_ms']:.0f} | {r['audio_s']:.1f} | "
                  f"{r['wall_s']:.1f} | {r['speed_x']:.2f} | {r['underflows']} | "
                  f"{r['min_margin_ms']:.0f} |")
        print()
    fast = all(r["speed_x"] >= 1.5 for r in unpaced)
    smooth = all(r["underflows"] == 0 for r in unpaced + paced)
    print(f"Unpaced streams at least 1.5x real time: {'PASS' if fast else 'FAIL'}; "
          f"no underflow with a 300 ms buffer: {'PASS' if smooth else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(
            {"ttfa_s": ttfa, "unpaced": unpaced, "paced": paced}, indent=2
        ))
    return 0 if overhead <= 0.10 and fast and smooth else 1


if __name__ == "__main__":
    sys.exit(main())
