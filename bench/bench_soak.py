"""Soak: four speech streams for N minutes with bursts of clients that leave mid-stream.

    python bench/bench_soak.py [--minutes 5] [--long] [--json out.json]

A real `morpheus serve` (the repository's plugins.toml, Piper's noise off) serves four client
threads that each loop over whole responses (pcm, mp3, opus, wav in turn, ~300 characters).
Every `--burst-every` seconds a burst of clients disconnects after the first bytes: eight
speech responses and two sessions whose SSE reader leaves mid-turn. Before the load (after one
warm-up request) and after it (once `/health` reports no active stream) the server's resident
memory and thread count are read from /proc, and reported as after/before ratios; time to first
audio of the first and the last minute is compared the same way. `--long` runs 30 minutes.

Pass: no 5xx, no failed complete request, every stream closed at the end, RSS after at most
1.25x its value after the first minute (allocator arenas and caches fill in that minute), threads
back to at most the count before plus 2. `--stall-timeout` sets `[server] stall_timeout_s`: with
14 streams on one Piper limiter a queued step can wait past the default 15 s.
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

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import LiveServer  # noqa: E402

TEXT = (
    "Morpheus streams speech while the text is still arriving. Slow listeners slow the engine "
    "down instead of filling memory. An interruption stops the audio within one chunk, and "
    "every chunk of audio can be traced from end to end. The library opens at nine and "
    "closes at six on weekdays."
)
FORMATS = ("pcm", "mp3", "opus", "wav")
STREAMS = 4
SETTLE_S = 15.0


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB) and Threads of a process, from /proc/PID/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "Threads"):
            values[key] = int(rest.split()[0])
    return values


def body(fmt: str) -> dict:
    return {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": fmt}


class Tally:
    """Counts shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.complete = 0
        self.failed: list[str] = []
        self.server_errors = 0
        self.disconnects = 0
        self.session_events: list[str] = []  # a turn that ended before its first audio
        self.ttfa: list[tuple[float, float]] = []  # (time since start, seconds)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def stream_loop(url: str, index: int, stop_at: float, started: float, tally: Tally) -> None:
    """One steady client: whole responses, one after another, until `stop_at`."""
    turn = index
    with httpx.Client(base_url=url, timeout=120) as client:
        while time.monotonic() < stop_at:
            fmt = FORMATS[turn % len(FORMATS)]
            turn += 1
            sent = time.monotonic()
            first: float | None = None
            try:
                with client.stream("POST", "/v1/audio/speech", json=body(fmt)) as response:
                    for _ in response.iter_bytes():
                        if first is None:
                            first = time.monotonic() - sent
                    if response.status_code >= 500:
                        tally.add(server_errors=1)
                    if response.status_code != 200:
                        with tally.lock:
                            tally.failed.append(f"{fmt}: HTTP {response.status_code}")
                        continue
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.failed.append(f"{fmt}: {type(exc).__name__}")
                continue
            tally.add(complete=1)
            with tally.lock:
                tally.ttfa.append((sent - started, first or 0.0))


def leave_speech(url: str, tally: Tally) -> None:
    """A client that reads the first bytes of a response and hangs up."""
    with httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/audio/speech", json=body("mp3")) as response:
            if response.status_code >= 500:
                tally.add(server_errors=1)
            for _ in response.iter_bytes():
                break
    tally.add(disconnects=1)


def leave_session(url: str, tally: Tally) -> None:
    """A session whose SSE reader leaves mid-turn; the session is then deleted."""
    with httpx.Client(base_url=url, timeout=60) as client:
        created = client.post("/v1/sessions", json={})
        if created.status_code >= 500:
            tally.add(server_errors=1)
        if created.status_code != 201:
            return
        session = created.json()["id"]
        client.post(f"/v1/sessions/{session}/text", json={"text": TEXT, "final": True})
        with client.stream("GET", f"/v1/sessions/{session}/events") as events:
            for line in events.iter_lines():
                if line.startswith("event: audio.delta"):
                    break
                if line.startswith("event: ") and line[7:] in ("error", "turn.done"):
                    with tally.lock:
                        tally.session_events.append(line[7:])
                    break
        client.delete(f"/v1/sessions/{session}")
    tally.add(disconnects=1)


def burst(url: str, tally: Tally) -> None:
    """Eight speech clients and two session readers leaving at once."""
    workers = [threading.Thread(target=leave_speech, args=(url, tally)) for _ in range(8)]
    workers += [threading.Thread(target=leave_session, args=(url, tally)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)


def wait_idle(url: str, timeout_s: float = 120.0) -> int:
    """Wait until /health reports no active stream; the count left at the deadline."""
    deadline = time.monotonic() + timeout_s
    active = -1
    while time.monotonic() < deadline:
        active = httpx.get(url + "/health", timeout=5).json()["active_streams"]
        if active == 0:
            return 0
        time.sleep(0.5)
    return active


def soak(minutes: float, burst_every_s: float, stall_timeout_s: float | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "plugins.toml"
        text = (ROOT / "plugins.toml").read_text().replace(
            'voice = "bundled"', 'voice = "bundled"\nnoise_scale = 0.0\nnoise_w_scale = 0.0')
        if stall_timeout_s is not None:
            text = text.replace("[server]\n", f"[server]\nstall_timeout_s = {stall_timeout_s}\n")
        config.write_text(text)
        server = LiveServer(config)
        try:
            server.wait_ready(timeout_s=120)
            pid = server.process.pid
            httpx.post(server.url + "/v1/audio/speech", json=body("pcm"), timeout=120)
            time.sleep(2)
            before = proc_status(pid)
            tally = Tally()
            started = time.monotonic()
            stop_at = started + 60 * minutes
            clients = [
                threading.Thread(target=stream_loop, args=(server.url, i, stop_at, started, tally))
                for i in range(STREAMS)
            ]
            for client in clients:
                client.start()
            bursts = 0
            peak = dict(before)
            warm: dict[str, int] | None = None
            while time.monotonic() < stop_at:
                time.sleep(min(burst_every_s, max(0.0, stop_at - time.monotonic())))
                if time.monotonic() < stop_at:
                    burst(server.url, tally)
                    bursts += 1
                now = proc_status(pid)
                peak = {k: max(peak[k], now[k]) for k in peak}
                if warm is None and time.monotonic() - started >= 60:
                    warm = now  # after a minute of load: the steady-state baseline
            for client in clients:
                client.join(timeout=300)
            left_open = wait_idle(server.url)
            # anyio prunes worker threads idle for 10 s when the next job arrives, and steps of
            # cancelled streams finish in their threads first: probe three times, 15 s apart,
            # each after one request (as before the load), and keep the lowest count.
            probes = []
            for _ in range(3):
                time.sleep(SETTLE_S)
                httpx.post(server.url + "/v1/audio/speech", json=body("pcm"), timeout=120)
                time.sleep(2)
                probes.append(proc_status(pid))
            after = {"VmRSS": probes[-1]["VmRSS"], "Threads": min(p["Threads"] for p in probes)}
            health = httpx.get(server.url + "/health", timeout=5).status_code
        finally:
            server.stop()
            problems = sorted({
                line.split(" request_id=")[0][24:] for line in server.log.read_text().splitlines()
                if " WARNING " in line or " ERROR " in line
            })
    first = [t for at, t in tally.ttfa if at < 60]
    last = [t for at, t in tally.ttfa if at >= 60 * minutes - 60]
    return {
        "minutes": minutes, "streams": STREAMS, "bursts": bursts,
        "complete": tally.complete, "disconnects": tally.disconnects,
        "failed": tally.failed, "server_errors": tally.server_errors,
        "session_turns_without_audio": tally.session_events,
        "server_log_problems": problems,
        "left_open": left_open, "health_after": health,
        "stall_timeout_s": stall_timeout_s,
        "rss_mib": {"before": before["VmRSS"] / 1024, "peak": peak["VmRSS"] / 1024,
                    "after": after["VmRSS"] / 1024,
                    "after_first_minute": warm["VmRSS"] / 1024 if warm else None},
        "threads": {"before": before["Threads"], "peak": peak["Threads"],
                    "after": after["Threads"]},
        "ttfa_ms": {"first_minute": 1000 * statistics.median(first) if first else None,
                    "last_minute": 1000 * statistics.median(last) if last else None},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--long", action="store_true", help="30 minutes")
    parser.add_argument("--burst-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--stall-timeout", type=float, default=None,
                        help="[server] stall_timeout_s for the run (default: plugins.toml's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = soak(30.0 if args.long else args.minutes, args.burst_every, args.stall_timeout)

    rss, threads, ttfa = result["rss_mib"], result["threads"], result["ttfa_ms"]
    rss_ratio = rss["after"] / rss["before"]
    print(f"## Soak: {result['minutes']:g} min, {STREAMS} streams, {result['bursts']} "
          "disconnect bursts\n")
    print(f"complete responses {result['complete']}, disconnects {result['disconnects']}, "
          f"failed {len(result['failed'])}, 5xx {result['server_errors']}, streams left open "
          f"{result['left_open']}, /health after {result['health_after']}, session turns "
          f"ending before audio {len(result['session_turns_without_audio'])}\n")
    print("| measure | before | peak | after | after / before |")
    print("|---|---:|---:|---:|---:|")
    print(f"| RSS MiB | {rss['before']:.0f} | {rss['peak']:.0f} | {rss['after']:.0f} | "
          f"{rss_ratio:.2f} |")
    print(f"| threads | {threads['before']} | {threads['peak']} | {threads['after']} | "
          f"{threads['after'] / threads['before']:.2f} |")
    if rss["after_first_minute"]:
        print(f"| RSS MiB vs the first minute | {rss['after_first_minute']:.0f} (at 1 min) | | "
              f"{rss['after']:.0f} | {rss['after'] / rss['after_first_minute']:.2f} |")
    if ttfa["first_minute"] and ttfa["last_minute"]:
        print(f"| TTFA ms (median) | {ttfa['first_minute']:.0f} (first min) | | "
              f"{ttfa['last_minute']:.0f} (last min) | "
              f"{ttfa['last_minute'] / ttfa['first_minute']:.2f} |")
    steady = rss["after"] / (rss["after_first_minute"] or rss["before"])
    ok = (not result["failed"] and result["server_errors"] == 0 and result["left_open"] == 0
          and steady <= 1.25 and threads["after"] <= threads["before"] + 2)
    print(f"\n{'PASS' if ok else 'FAIL'}")
    if result["failed"]:
        print("failures:", result["failed"][:10])
    for problem in result["server_log_problems"][:10]:
        print("server log:", problem)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
