"""A fault-injection engine for tests and benchmarks: scripted timing, stalls, errors, silence.

It speaks a tone whose pitch encodes the segment (so tests can tell segments and streams apart)
and follows a script: a first-chunk delay, a per-chunk delay, a stall, an exception after N
chunks, or no audio at all. Not loaded by default; name it in plugins.toml to use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
import numpy as np
from morpheus_tts.host import Component, EngineCapabilities, SynthesisRequest, hookimpl


class FaultSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the `fault` engine.

    Args:
        sample_rate: rate of the tone it yields, Hz.
        chunk_ms: audio per chunk.
        chunks_per_segment: chunks each segment yields (0: proportional to the text, 60 ms
            per character).
        first_delay_ms: extra wait before a segment's first chunk.
        step_delay_ms: wait before every chunk (engine speed: chunk_ms / step_delay_ms is its
            real-time factor).
        stall_after: chunk index (counted over the engine's life) at which it stalls for
            `stall_ms`; -1 never.
        stall_ms: how long the stall lasts.
        fail_after: chunk index after which it raises RuntimeError; -1 never.
        silent: accept text and yield nothing.
        start_delay_ms: how long `start()` takes (a model load, for readiness tests).
        voices: the voice names it answers to.
        token_ms: > 0 makes it behave like a token engine for rate control: each chunk holds
            `request.chunk_size` units of `token_ms` audio (the rest of the segment's audio
            stays 60 ms per character).
        token_delay_ms: extra wait per unit of a chunk (with `token_ms`): the engine's speed.
    """

    sample_rate: int = 24000
    chunk_ms: float = 100.0
    chunks_per_segment: int = 0
    first_delay_ms: float = 0.0
    step_delay_ms: float = 0.0
    stall_after: int = -1
    stall_ms: float = 0.0
    fail_after: int = -1
    silent: bool = False
    start_delay_ms: float = 0.0
    voices: tuple[str, ...] = ("tone",)
    token_ms: float = 0.0
    token_delay_ms: float = 0.0


class FaultEngine:
    """Yields tones on a script; each `next()` is one blocking step, like a real model."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self.capabilities = EngineCapabilities(
            output="pcm", sample_rate=settings.sample_rate, voices=settings.voices,
            streaming=True,
        )
        self.steps_started = 0
        self.steps_finished = 0
        self.texts: list[str] = []  # every segment it was asked to speak, in order
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.started = False

    async def start(self) -> None:
        """Nothing to load; waits `start_delay_ms` as if it did."""
        await anyio.sleep(self.settings.start_delay_ms / 1000)
        self.started = True

    async def stop(self) -> None:
        """Release stalled steps."""
        self._stopped.set()
        self.started = False

    def health(self) -> dict[str, Any]:
        """Always ready once started."""
        return {"ready": self.started, "steps": self.steps_finished}

    def synthesize(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """One tone chunk per step, following the script."""
        s = self.settings
        self.texts.append(request.text)
        if s.silent:
            return
        for index, (n, units) in enumerate(self._chunk_plan(request)):
            with self._lock:
                step = self.steps_started
                self.steps_started += 1
            delay = s.step_delay_ms + units * s.token_delay_ms
            delay += s.first_delay_ms if index == 0 else 0.0
            if delay:
                time.sleep(delay / 1000)
            if step == s.stall_after:
                self._stopped.wait(s.stall_ms / 1000)
            if 0 <= s.fail_after <= step:
                raise RuntimeError(f"fault engine: scripted failure at chunk {step}")
            with self._lock:
                self.steps_finished += 1
            yield tone(request.text, n, s.sample_rate, offset=index * n)

    def _chunk_plan(self, request: SynthesisRequest) -> list[tuple[int, int]]:
        """(samples, units) per chunk: fixed chunks, or `chunk_size` units of `token_ms`."""
        s = self.settings
        if s.token_ms <= 0:
            count = s.chunks_per_segment or max(1, round(len(request.text) * 60 / s.chunk_ms))
            return [(round(s.sample_rate * s.chunk_ms / 1000), 0)] * count
        units = request.chunk_size or 32
        total_ms = s.chunks_per_segment * s.chunk_ms or len(request.text) * 60.0
        total_units = max(1, round(total_ms / s.token_ms))
        plan = []
        while total_units > 0:
            take = min(units, total_units)
            plan.append((round(s.sample_rate * take * s.token_ms / 1000), take))
            total_units -= take
        return plan


def pitch_of(text: str) -> float:
    """The tone's frequency for `text`, Hz: tests tell segments and turns apart by it."""
    return 220.0 + 20.0 * (sum(map(ord, text)) % 20)


def tone(text: str, samples: int, sample_rate: int, offset: int = 0) -> np.ndarray:
    """`samples` of the tone for `text`, continuing the phase from sample `offset`."""
    t = (np.arange(samples) + offset) / sample_rate
    return (0.3 * np.sin(2 * np.pi * pitch_of(text) * t)).astype(np.float32)


def _create(settings: FaultSettings) -> FaultEngine:
    return FaultEngine(settings)


def component(name: str) -> Component:
    """The scripted engine under `name`."""
    return Component(
        name=name, kind="engine", create=_create, settings=FaultSettings,
        description="scripted tones with delays, stalls, failures (tests, benchmarks)",
    )


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the scripted engine."""
    return [component("fault")]
