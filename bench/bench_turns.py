"""Hang-ups and bursts against a live Piper server: is the engine freed, is queueing a stall?

1. Time to first audio (first body byte of a streamed `pcm` response) on an idle server, then
   right after a client hung up on a response whose engine step was still running (one Piper
   step is one sentence, so the hung-up request leaves a long step behind). Reported as
   medians and their ratio (target <= 1.2: a cancelled step is terminated, not waited for).
2. A burst of concurrent short requests: the status codes (target: no 5xx; 429 with
   Retry-After only where admission control, `$MORPHEUS_MAX_STREAMS`, refuses).

Run: `python bench/bench_turns.py [--rounds 5] [--burst 100] [--max-streams 0]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHORT = "Hello there, how are you today?"
LONG_SENTENCE = "This sentence goes on and on about the weather " * 12 + "."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(max_streams: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / "bench_turns.log", "wb")  # noqa: SIM115
    env = {**os.environ, "MORPHEUS_NO_ENTRY_POINTS": "1", "MORPHEUS_MAX_STREAMS": str(max_streams)}
    process = subprocess.Popen(
        [sys.executable, "-m", "morpheus_tts.api.cli", "--config", str(ROOT / "plugins.toml"),
         "serve", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready")


def body(text: str) -> dict:
    return {"model": "piper", "voice": "joe", "input": text, "response_format": "pcm"}


async def ttfa(http: httpx.AsyncClient, text: str) -> float:
    started = time.perf_counter()
    async with http.stream("POST", "/v1/audio/speech", json=body(text)) as response:
        async for _ in response.aiter_raw():
            return time.perf_counter() - started
    raise RuntimeError("no audio")


async def hang_up(http: httpx.AsyncClient) -> None:
    """Take the first audio of a two-sentence response, then leave mid-second-sentence."""
    text = f"{SHORT} {LONG_SENTENCE}"
    async with http.stream("POST", "/v1/audio/speech", json=body(text)) as response:
        async for _ in response.aiter_raw():
            break  # the engine is now inside the long sentence's one step


async def measure_ttfa(url: str, rounds: int) -> tuple[list[float], list[float]]:
    idle, after = [], []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await ttfa(http, SHORT)  # warm the connection and the voice
        for _ in range(rounds):
            await asyncio.sleep(1.0)
            idle.append(await ttfa(http, SHORT))
            await hang_up(http)
            after.append(await ttfa(http, SHORT))
    return idle, after


async def burst(url: str, count: int) -> tuple[Counter, int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def one(n: int) -> tuple[int, bool]:
            response = await http.post("/v1/audio/speech", json=body(f"Short request {n}."))
            return response.status_code, "retry-after" in response.headers

        results = await asyncio.gather(*(one(n) for n in range(count)))
    statuses = Counter(status for status, _ in results)
    retry_after = sum(1 for status, header in results if status == 429 and header)
    return statuses, retry_after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--max-streams", type=int, default=0)
    args = parser.parse_args()
    process, url = start_server(args.max_streams)
    try:
        idle, after = asyncio.run(measure_ttfa(url, args.rounds))
        idle_ms, after_ms = 1000 * statistics.median(idle), 1000 * statistics.median(after)
        print(f"TTFA idle:          median {idle_ms:5.0f} ms  {[round(1e3 * x) for x in idle]}")
        print(f"TTFA after hang-up: median {after_ms:5.0f} ms  {[round(1e3 * x) for x in after]}")
        print(f"ratio after/idle:     {after_ms / idle_ms:.2f} (target <= 1.2)")
        started = time.perf_counter()
        statuses, retry_after = asyncio.run(burst(url, args.burst))
        wall = time.perf_counter() - started
        five_xx = sum(n for status, n in statuses.items() if status >= 500)
        print(f"burst of {args.burst} (MORPHEUS_MAX_STREAMS={args.max_streams}): "
              f"{dict(sorted(statuses.items()))} in {wall:.1f} s; 5xx: {five_xx}; "
              f"429 with Retry-After: {retry_after}/{statuses.get(429, 0)}")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
