"""Narration through the real API, judged at the client: underflows, lateness, buffer depth.

    python bench/bench_narration.py [--config plugins.toml] [--seconds 300] [--json out.json]

Starts `morpheus serve` on 127.0.0.1 with `--config` and runs three streams at once:

- `session`: a WebSocket session (`/v1/realtime`, paced by default) fed the narration as
  sentence deltas, the way a voice agent's LLM sends it; at least `--seconds` of audio;
- `http_paced`: `POST /v1/audio/speech`, pcm, `"pace": true`, 4096 characters (the input limit);
- `http_unpaced`: the same request without pacing: the baseline, measured in the same run.

Each client plays what it receives on its own clock: playback starts with the first audio
and each sample is due at first + offset / rate, plus any time spent rebuffering. Audio that
arrives after it was due is an underflow (a dry spell counts once) and the wait is added to
the clock. Reported per stream: underflows, the p50/p99/max lateness of arrivals against
the clock (negative: early), the deepest client buffer, the audio and wall seconds, and the
ratio of each paced stream's deepest buffer to the unpaced baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import ROOT, free_port, http_ok, narration, subprocess_server  # noqa: E402

MAX_INPUT_CHARS = 4096


class ClientClock:
    """A listener that plays what arrives in real time, rebuffering when it runs dry."""

    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self.first: float | None = None
        self.samples = 0
        self.rebuffered_s = 0.0
        self.underflows = 0
        self.lateness_ms: list[float] = []
        self.max_buffer_ms = 0.0

    def arrived(self, samples: int, at: float) -> None:
        """`samples` more arrived at time `at` (perf_counter seconds)."""
        if samples <= 0:
            return
        if self.first is None:
            self.first = at
        due = self.first + self.samples / self.rate + self.rebuffered_s
        late = at - due
        self.lateness_ms.append(1000 * late)
        if late > 0 and self.samples:
            self.underflows += 1
            self.rebuffered_s += late
        self.samples += samples
        played_s = at - self.first - self.rebuffered_s
        self.max_buffer_ms = max(self.max_buffer_ms, 1000 * (self.samples / self.rate - played_s))

    def report(self, started: float, ended: float) -> dict[str, Any]:
        late = self.lateness_ms or [float("nan")]
        return {
            "audio_s": round(self.samples / self.rate, 1),
            "wall_s": round(ended - started, 1),
            "ttfa_ms": None if self.first is None else round(1000 * (self.first - started)),
            "underflows": self.underflows,
            "rebuffered_ms": round(1000 * self.rebuffered_s, 1),
            "lateness_p50_ms": round(float(np.percentile(late, 50)), 1),
            "lateness_p99_ms": round(float(np.percentile(late, 99)), 1),
            "lateness_max_ms": round(max(late), 1),
            "max_buffer_ms": round(self.max_buffer_ms),
        }


async def http_stream(url: str, text: str, *, pace: bool) -> dict[str, Any]:
    """Speak `text` as pcm over HTTP, reading bytes as they arrive."""
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm",
            "pace": pace}
    clock, carry = ClientClock(24000), 0
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=60)) as client:
        async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            response.raise_for_status()
            async for data in response.aiter_raw():
                carry += len(data)
                clock.arrived(carry // 2, time.perf_counter())  # whole 16-bit samples
                carry %= 2
    return clock.report(started, time.perf_counter())


async def session_stream(url: str, text: str) -> dict[str, Any]:
    """Speak `text` in one session turn, sent as sentence deltas over a WebSocket."""
    sentences = [s.strip() + "." for s in text.split(".") if s.strip()]
    clock: ClientClock | None = None
    metrics: dict[str, Any] = {}
    started = time.perf_counter()
    async with connect(url.replace("http", "ws", 1) + "/v1/realtime", max_size=None) as ws:
        for i, sentence in enumerate(sentences):
            final = i == len(sentences) - 1
            await ws.send(json.dumps({"type": "text", "text": sentence + " ", "final": final}))
        async for message in ws:
            if isinstance(message, bytes):
                rate, frames, _ = struct.unpack("<III", message[4:16])
                clock = clock or ClientClock(rate)
                clock.arrived(frames, time.perf_counter())
            elif (event := json.loads(message))["type"] == "metrics":
                metrics = event
                break
            elif event["type"] == "error":
                raise RuntimeError(event)
    assert clock is not None, "the session sent no audio"
    report = clock.report(started, time.perf_counter())
    report["server_underflows"], report["server_pauses"] = metrics["underflows"], metrics["pauses"]
    return report


async def run_all(url: str, seconds: float) -> dict[str, Any]:
    story = narration(seconds)
    http_text = story[:MAX_INPUT_CHARS].rsplit(".", 1)[0] + "."
    session, paced, unpaced = await asyncio.gather(
        session_stream(url, story),
        http_stream(url, http_text, pace=True),
        http_stream(url, http_text, pace=False),
    )
    for report in (session, paced):
        report["max_buffer_vs_unpaced"] = round(
            report["max_buffer_ms"] / max(1, unpaced["max_buffer_ms"]), 4
        )
    return {"session": session, "http_paced": paced, "http_unpaced": unpaced}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| stream | audio s | wall s | TTFA ms | underflows | lateness p50 / p99 / max ms | "
        "max buffer ms | buffer vs unpaced |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['audio_s']} | {r['wall_s']} | {r['ttfa_ms']} | {r['underflows']} | "
            f"{r['lateness_p50_ms']} / {r['lateness_p99_ms']} / {r['lateness_max_ms']} | "
            f"{r['max_buffer_ms']} | {r.get('max_buffer_vs_unpaced', '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "plugins.toml"))
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "morpheus_tts.api.cli", "--config", args.config,
        "serve", "--port",
               str(port), "--log-level", "warning"]
    with tempfile.TemporaryDirectory() as workdir:
        log = Path(workdir) / "server.log"
        with subprocess_server(command, lambda: http_ok(f"{url}/health"), log):
            results = asyncio.run(run_all(url, args.seconds))
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
