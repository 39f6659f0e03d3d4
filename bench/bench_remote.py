"""What a Morpheus in front of another Morpheus (`openai-remote`) adds to time to first audio.

    python bench/bench_remote.py [--repeats 15] [--json out.json]

Two `morpheus serve` on 127.0.0.1: the remote speaks Piper with noise 0 (every run the same
audio), the proxy's default engine is `openai-remote` pointed at it. The same client asks each
for the same streamed `pcm`, alternating, and times request to first body byte. Reported:
medians of both, and the median of the per-pair difference (proxied minus the direct request
just before it), which cancels most machine noise. The proxied audio is also checked to be
the direct audio (one sentence: bit for bit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import LiveServer  # noqa: E402

TEXTS = {
    "one sentence": "The proxy speaks exactly what the server says.",
    "reply": ("Thanks for waiting, I looked through the order history and found the missing "
              "package. It ships tomorrow. Anything else?"),
}
COMMON = """
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""
REMOTE = """[server]
default_engine = "piper"
[plugins.piper]
module = "morpheus_tts.plugins.engines.piper"
settings = { voice = "bundled", noise_scale = 0.0, noise_w_scale = 0.0 }
""" + COMMON


def proxy_config(url: str) -> str:
    return f"""[server]
default_engine = "openai-remote"
[plugins.remote]
module = "morpheus_tts.plugins.engines.openai_remote"
settings = {{ base_url = "{url}/v1", voices = ["joe"] }}
""" + COMMON


def first_byte(url: str, model: str, text: str) -> tuple[float, bytes]:
    body = {"model": model, "input": text, "voice": "joe", "response_format": "pcm"}
    started = time.perf_counter()
    first = None
    data = b""
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=120) as response:
        response.raise_for_status()
        for piece in response.iter_raw():
            if first is None and piece:
                first = time.perf_counter() - started
            data += piece
    return first or 0.0, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "r").mkdir()
        (Path(tmp) / "p").mkdir()
        (Path(tmp) / "r" / "plugins.toml").write_text(REMOTE)
        remote = LiveServer(Path(tmp) / "r" / "plugins.toml")
        proxy = None
        try:
            remote.wait_ready()
            (Path(tmp) / "p" / "plugins.toml").write_text(proxy_config(remote.url))
            proxy = LiveServer(Path(tmp) / "p" / "plugins.toml")
            proxy.wait_ready()
            for label, text in TEXTS.items():
                first_byte(remote.url, "piper", text)
                first_byte(proxy.url, "openai-remote", text)
                runs: dict[str, list[float]] = {"direct": [], "proxied": [], "added": []}
                for _ in range(args.repeats):
                    direct, direct_audio = first_byte(remote.url, "piper", text)
                    proxied, proxied_audio = first_byte(proxy.url, "openai-remote", text)
                    if label == "one sentence" and proxied_audio != direct_audio:
                        raise AssertionError("the proxied audio differs from the direct audio")
                    runs["direct"].append(1000 * direct)
                    runs["proxied"].append(1000 * proxied)
                    runs["added"].append(1000 * (proxied - direct))
                results[label] = runs
        finally:
            if proxy is not None:
                proxy.stop()
            remote.stop()

    print(f"## Time to first audio, direct vs through an openai-remote proxy "
          f"({args.repeats} pairs, medians)\n")
    print("| text | direct ms | proxied ms | added ms (paired) | added % |")
    print("|---|---:|---:|---:|---:|")
    for label, runs in results.items():
        direct, proxied = statistics.median(runs["direct"]), statistics.median(runs["proxied"])
        added = statistics.median(runs["added"])
        print(f"| {label} | {direct:.1f} | {proxied:.1f} | {added:+.1f} | "
              f"{100 * added / direct:+.1f}% |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
