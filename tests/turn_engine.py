"""A turn-shaped test engine ("turnstub"), loaded through the registry like any plugin.

It needs lookahead the way a real incremental model does: a word is spoken only once the text
after it shows the word is whole (a space follows) or the text has ended, so "Hel" + "lo " is
one word, "Hello". Each word is one blocking step yielding `samples_per_word` of a tone whose
pitch encodes the word, its phase continuing across words and deltas (one continuous signal:
any crossfade or seam inside a turn would show).

It records every call (`calls`, and as JSON lines in `log_path` when set, for tests that run
it in a server subprocess): the TurnRequest fields, interrupts with their `heard`, closes and
`end_session`. With `voice_cloning`, `add_voice` takes a reference recording and the cloned
voice speaks at the reference's dominant frequency: a real, deterministic change of output.
A step waits `step_delay_ms` on an event that `cancel()` sets, so a cancelled step returns at
once (`CancellableSteps`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
from morpheus_tts.host import Component, EngineCapabilities, TurnRequest, hookimpl

MAX_VOICE_SECONDS = 30.0


class TurnStubSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the `turnstub` engine."""

    sample_rate: int = 24000
    samples_per_word: int = 2400
    step_delay_ms: float = 0.0
    voice_cloning: bool = False
    log_path: str | None = None


def word_pitch(word: str) -> float:
    """The tone's frequency for `word`, Hz."""
    return 300.0 + 10.0 * (sum(map(ord, word)) % 30)


class _Steps:
    """One sync step iterator over words; `cancel()` cuts the step's wait short."""

    def __init__(self, turn: StubTurn, words: list[str]) -> None:
        self._turn, self._words = turn, list(words)
        self._cancelled = threading.Event()

    def __iter__(self) -> _Steps:
        return self

    def __next__(self) -> np.ndarray:
        if not self._words or self._cancelled.is_set():
            raise StopIteration
        engine = self._turn.engine
        if engine.settings.step_delay_ms and self._cancelled.wait(
            engine.settings.step_delay_ms / 1000
        ):
            raise StopIteration  # cancelled mid-step
        return self._turn.speak(self._words.pop(0))

    def cancel(self) -> None:
        self._cancelled.set()
        self._turn.engine.record("cancel")


class StubTurn:
    """One open turn: text buffered until a word is whole."""

    def __init__(self, engine: TurnStubEngine, request: TurnRequest) -> None:
        self.engine, self.request = engine, request
        self.pending = ""
        self.samples_out = 0
        self.closed = False
        self.pitch = engine.cloned.get(request.voice or "")

    def speak(self, word: str) -> np.ndarray:
        s = self.engine.settings
        n = s.samples_per_word
        t = (np.arange(n) + self.samples_out) / s.sample_rate
        hz = self.pitch or word_pitch(word)
        self.samples_out += n
        self.engine.emitted += n
        return (0.25 * np.sin(2 * np.pi * hz * t)).astype(np.float32)

    def push_text(self, delta: str) -> Iterator[np.ndarray]:
        self.pending += delta
        *whole, self.pending = self.pending.split(" ")
        self.engine.record("push_text", delta=delta)
        return _Steps(self, [w for w in whole if w])

    def end_text(self) -> Iterator[np.ndarray]:
        words, self.pending = self.pending.split(), ""
        self.engine.record("end_text")
        return _Steps(self, words)

    def interrupt(self, heard: int) -> None:
        self.engine.record("interrupt", heard=heard, samples_out=self.samples_out)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine.record("close", samples_out=self.samples_out)


class TurnStubEngine:
    """The turn-shaped stub engine."""

    def __init__(self, settings: TurnStubSettings) -> None:
        self.settings = settings
        self.capabilities = EngineCapabilities(
            output="pcm", sample_rate=settings.sample_rate, voices=("stub",),
            streaming=True, incremental_text=True, voice_cloning=settings.voice_cloning,
        )
        self.calls: list[dict[str, Any]] = []
        self.cloned: dict[str, float] = {}
        self.emitted = 0
        self._lock = threading.Lock()

    def record(self, call: str, **fields: Any) -> None:
        entry = {"call": call, **fields}
        with self._lock:
            self.calls.append(entry)
            if self.settings.log_path:
                with open(self.settings.log_path, "a") as log:
                    log.write(json.dumps(entry) + "\n")

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"ready": True}

    def synthesize(self, request: Any) -> Iterator[np.ndarray]:
        raise NotImplementedError("turnstub speaks in turns only")

    def open_turn(self, request: TurnRequest) -> StubTurn:
        if request.options:
            raise ValueError(f"turnstub takes no options, got {sorted(request.options)}")
        self.record(
            "open_turn", session_id=request.session_id, turn=request.turn, voice=request.voice,
            options=request.options, user_text=request.user_text,
        )
        return StubTurn(self, request)

    def end_session(self, session_id: str) -> None:
        self.record("end_session", session_id=session_id)

    def add_voice(self, name: str, audio: np.ndarray, sample_rate: int) -> None:
        if len(audio) > MAX_VOICE_SECONDS * sample_rate:
            raise ValueError(f"turnstub: a voice prompt is at most {MAX_VOICE_SECONDS:g} s")
        spectrum = np.abs(np.fft.rfft(audio))
        self.cloned[name] = float(np.argmax(spectrum) * sample_rate / len(audio))
        self._set_voices()
        self.record("add_voice", name=name, hz=self.cloned[name])

    def remove_voice(self, name: str) -> None:
        del self.cloned[name]
        self._set_voices()
        self.record("remove_voice", name=name)

    def _set_voices(self) -> None:
        self.capabilities = msgspec.structs.replace(
            self.capabilities, voices=("stub", *self.cloned)
        )


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the `turnstub` engine."""
    return [
        Component(name="turnstub", kind="engine", create=TurnStubEngine,
                  settings=TurnStubSettings, description="turn-shaped test engine")
    ]
