"""Tracing benchmark: what a span per chunk costs, tracing on against off, same run.

    python bench/bench_tracing.py [--repeats 7] [--json out.json]

Three observers on one runtime, their runs interleaved (the order rotating each round) so
machine noise hits all alike; medians reported:
- bare: no observer at all (a Runtime outside the server);
- off: the server with tracing off (Prometheus metrics and logs only);
- on: the server with tracing on: a `tts.request`, `tts.segment` and `tts.chunk` spans, batch-
  exported over OTLP/HTTP to a receiver on 127.0.0.1 (started here, so export really happens).

Workloads:
1. Piper, a ~150-character reply: time to first audio. 2. Piper, ~1000 characters: real-time
factor (audio seconds per wall second). Target: tracing on at most 3% slower than off on both.
3. The fault engine at 20 ms chunks with no synthesis time: the pipeline's own cost per chunk,
so the tracing overhead per chunk shows undiluted (microseconds).

Wall clock on a shared machine is noisy (other processes' load swings within a minute), so
"on vs off" is the median of per-round ratios (the three runs of a round are back to back),
and each run also reports the process CPU time it cost per second of audio, the spans' export
included (the batch is flushed after each traced run, outside its wall-clock timing but inside
its CPU time).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings  # noqa: E402
from morpheus_tts.host.runtime import Runtime, SpeakRequest  # noqa: E402
from morpheus_tts.observability import NULL_OBSERVER, Telemetry, UtteranceObserver  # noqa: E402
from morpheus_tts.observability.metrics import Metrics  # noqa: E402
from morpheus_tts.observability.tracing import configure_tracing  # noqa: E402

FAULT_TEXT = "One sentence of tones. " * 12


def _spine_texts() -> tuple[str, str]:
    """bench_spine.py's reply and paragraph (loaded by path: bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "bench_spine", Path(__file__).with_name("bench_spine.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.REPLY, module.PARAGRAPH


REPLY, PARAGRAPH = _spine_texts()


class _Receiver(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and counts the bytes (decoding is the collector's cost)."""

    received = 0

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


def start_receiver() -> ThreadingHTTPServer:
    """An OTLP/HTTP sink on a free port of 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


Run = tuple[float, float, float, int, float]


async def run_once(runtime: Runtime, text: str, flush: Callable[[], object] | None = None) -> Run:
    """(time to first audio, wall time, audio seconds, chunks, CPU seconds) of one utterance."""
    cpu = time.process_time()
    started = time.perf_counter()
    first = None
    samples = chunks = 0
    async with runtime.speak(SpeakRequest(), text) as utterance:
        async for chunk in utterance.audio:
            if first is None and len(chunk.samples):
                first = time.perf_counter() - started
            samples += len(chunk.samples)
            chunks += 1
    wall = time.perf_counter() - started
    if flush is not None:
        flush()  # export this run's spans now, on this run's CPU bill
    return first or 0.0, wall, samples / 24000, chunks, time.process_time() - cpu


async def workload(
    runtime: Runtime,
    observers: dict[str, tuple[UtteranceObserver, Callable[[], object] | None]],
    text: str,
    repeats: int,
) -> dict[str, dict[str, float]]:
    """Medians per observer: first audio (ms), RTF, wall and CPU per chunk (us), CPU per
    audio second (ms)."""
    names = list(observers)
    rows: dict[str, list[Run]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % 3:] + names[: round_ % 3]:
            runtime.observer, flush = observers[name]
            rows[name].append(await run_once(runtime, text, flush))
    pairs = list(zip(rows["off"], rows["on"], strict=True))
    result: dict[str, dict[str, float]] = {
        "on_vs_off": {
            "first_audio": statistics.median(on[0] / off[0] for off, on in pairs),
            "slowdown": statistics.median((on[1] / on[2]) / (off[1] / off[2]) for off, on in pairs),
            "cpu": statistics.median((on[4] / on[2]) / (off[4] / off[2]) for off, on in pairs),
        }
    }
    for name, runs in rows.items():
        result[name] = {
            "first_audio_ms": 1000 * statistics.median(r[0] for r in runs),
            "rtf": statistics.median(r[2] / r[1] for r in runs),
            "us_per_chunk": 1e6 * statistics.median(r[1] / r[3] for r in runs),
            "cpu_us_per_chunk": 1e6 * statistics.median(r[4] / r[3] for r in runs),
            "cpu_ms_per_audio_s": 1000 * statistics.median(r[4] / r[2] for r in runs),
        }
    return result


def fault_runtime() -> Runtime:
    """The scripted engine with no synthesis time: only the pipeline's own cost remains."""
    return Runtime(
        MorpheusConfig(
            server=ServerSettings(default_engine="fault"),
            plugins={
                "fault": PluginEntry(module="morpheus_tts.plugins.engines.fault",
                    settings={"chunk_ms": 20}),
                "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
                "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
            },
        ),
        entry_points=False,
    )


async def main(repeats: int) -> dict:
    receiver = start_receiver()
    os.environ.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "morpheus-bench",
    })
    provider = configure_tracing()
    assert provider is not None
    from prometheus_client import CollectorRegistry

    observers: dict[str, tuple[UtteranceObserver, Callable[[], object] | None]] = {
        "bare": (NULL_OBSERVER, None),
        "off": (Telemetry(metrics=Metrics(CollectorRegistry())), None),
        "on": (
            Telemetry(tracer_provider=provider, metrics=Metrics(CollectorRegistry())),
            provider.force_flush,
        ),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    piper = Runtime(entry_points=False)
    async with piper.running():
        await run_once(piper, "Warm up.")
        results["piper_reply"] = await workload(piper, observers, REPLY, repeats)
        results["piper_paragraph"] = await workload(piper, observers, PARAGRAPH, repeats)
    fault = fault_runtime()
    async with fault.running():
        await run_once(fault, "Warm up.")
        results["fault_chunks"] = await workload(fault, observers, FAULT_TEXT, repeats * 3)
    provider.shutdown()
    receiver.shutdown()
    return {"repeats": repeats, "exported_bytes": _Receiver.received, **results}


def table(result: dict) -> str:
    """The markdown table the README quotes."""
    reply, paragraph, fault = (
        result["piper_reply"], result["piper_paragraph"], result["fault_chunks"]
    )

    def change(ratio: float) -> str:
        return f"{100 * (ratio - 1):+.1f}%"

    lines = [
        "| workload | bare | tracing off | tracing on | on vs off |",
        "|---|---|---|---|---|",
        "| Piper reply: time to first audio (ms) | "
        + " | ".join(f"{reply[k]['first_audio_ms']:.1f}" for k in ("bare", "off", "on"))
        + f" | {change(reply['on_vs_off']['first_audio'])} |",
        "| Piper paragraph: real-time factor (x) | "
        + " | ".join(f"{paragraph[k]['rtf']:.2f}" for k in ("bare", "off", "on"))
        + f" | {change(paragraph['on_vs_off']['slowdown'])} wall per audio second |",
        "| Piper paragraph: CPU per audio second (ms) | "
        + " | ".join(f"{paragraph[k]['cpu_ms_per_audio_s']:.1f}" for k in ("bare", "off", "on"))
        + f" | {change(paragraph['on_vs_off']['cpu'])} |",
        "| fault engine: wall per 20 ms chunk (us) | "
        + " | ".join(f"{fault[k]['us_per_chunk']:.0f}" for k in ("bare", "off", "on"))
        + f" | {fault['on']['us_per_chunk'] - fault['off']['us_per_chunk']:+.0f} us |",
        "| fault engine: CPU per 20 ms chunk, export included (us) | "
        + " | ".join(f"{fault[k]['cpu_us_per_chunk']:.0f}" for k in ("bare", "off", "on"))
        + f" | {fault['on']['cpu_us_per_chunk'] - fault['off']['cpu_us_per_chunk']:+.0f} us |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    outcome = anyio.run(main, args.repeats)
    sys.stdout.write(table(outcome) + f"\n\n{outcome['exported_bytes']} bytes exported\n")
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=2))
