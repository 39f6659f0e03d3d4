"""MOSS-TTS-Realtime as a turn-shaped engine, independent of the runtime (torch or MLX).

A runtime supplies a `Backend` (backbone forward over rows with a KV cache, cache length and
crop, the local transformer's 16-code loop); this module holds everything else: sessions, the
streaming turn (`MossTurn`), voices and the engine contract (settings: `moss_settings`).

Streaming rules (upstream's streaming session):

- text deltas are cut into segments (`TextSegmenter`) and tokenized; nothing runs until 12
  tokens are pending, then the turn's prompt rows and exactly 12 text rows are prefilled in one
  forward (BOS at channel 1 of the last row) and frame 0 is drawn. If the text ends first, all
  pending tokens are prefilled (possibly more than 12);
- each further pending token is one step: row `[token, previous frame]` -> one frame; after the
  text ends, steps feed `<|text_pad|>` until codebook 0 draws EOS (that frame is never fed back
  nor yielded) or `max_frames` frames were made.

Session memory: the backbone KV cache survives a session's turns. Each turn's prompt (the user
turn, then the assistant boundary) continues the cache. Bounded by `max_context_rows`: when the
cache plus `turn_reserve_rows` would pass it, the next turn starts from a fresh context (system
and voice prompt again, earlier turns dropped); a turn that reaches the cap ends there.
Barge-in (`interrupt(heard)`) crops the cache to the turn's prompt plus the frames heard, as if
the rest had never been generated; `end_session` frees the cache.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np
from morpheus_tts.host import EngineCapabilities, TurnRequest
from morpheus_tts.plugins.engines.moss_prompt import (
    AUDIO_EOS,
    DELAY_TOKENS,
    MossTokenizer,
    Sampler,
    TextSegmenter,
    normalize_codes,
    prefill_rows,
    turn_rows,
)
from morpheus_tts.plugins.engines.moss_settings import (
    DEFAULT_VOICE,
    IGNORED_OPTIONS,
    SAMPLING_KEYS,
    MossRealtimeSettings,
    check_model_dir,
    check_sampling,
)

log = logging.getLogger(__name__)

class Backend(Protocol):
    """What a runtime provides: the network, stepped one call at a time."""

    def new_cache(self) -> Any:
        """An empty backbone KV cache."""

    def cache_length(self, cache: Any) -> int:
        """Rows in the cache."""

    def crop(self, cache: Any, length: int) -> None:
        """Keep the cache's first `length` rows."""

    def forward_rows(self, rows: np.ndarray, cache: Any) -> Any:
        """Run (n, 17) rows through the backbone, appending to the cache; return the last
        row's hidden state (runtime-native)."""

    def frame(self, hidden: Any, pick: Callable[[np.ndarray, int], int]) -> np.ndarray:
        """The local transformer: 16 codes, `pick(logits (1027,), codebook)` choosing each."""


class SessionState:
    """A session's context: the backbone cache and the voice it was started with."""

    def __init__(self, backend: Backend, voice: str) -> None:
        self.cache = backend.new_cache()
        self.voice = voice
        self.turns = 0
        self.open_turn: MossTurn | None = None
        self.last_turn: MossTurn | None = None  # the newest turn, for health()


class MossTurn:
    """One turn (`EngineTurn`): see the module docstring for the streaming rules."""

    def __init__(self, engine: MossRealtimeEngine, request: TurnRequest, state: SessionState,
                 options: dict[str, Any], fresh: bool) -> None:
        self.engine, self.request, self.state = engine, request, state
        self.backend = engine.backend
        self.sampler = Sampler(options, options.get("seed"))
        self.max_frames = int(options["max_frames"])
        self.fresh = fresh  # the turn starts the context: system (and voice) prompt first
        self.segmenter = TextSegmenter()
        self.pending: list[int] = []
        self.frames: list[np.ndarray] = []
        self.prefilled = self.text_ended = self.finished = self.closed = False
        self.base = self.prompt_end = self.after_prefill = 0
        self.fed = 0  # frames fed back into the cache
        self.heard: int | None = None  # what interrupt() kept, once interrupted

    # -- EngineTurn ------------------------------------------------------------------------

    def push_text(self, delta: str) -> Iterator[np.ndarray]:
        """Add a text delta; yield the frames now due, one step per `next()`."""
        self._check_open()
        for segment in self.segmenter.push(delta):
            self.pending.extend(self.engine.tokenizer.encode(segment))
        yield from self._advance()

    def end_text(self) -> Iterator[np.ndarray]:
        """No more text: yield the rest until EOS or `max_frames`."""
        self._check_open()
        self.text_ended = True
        for segment in self.segmenter.flush():
            self.pending.extend(self.engine.tokenizer.encode(segment))
        yield from self._advance()
        while self.prefilled and not self.finished:
            frame = self._step(self.engine.tokenizer.text_pad_id)
            if frame is not None:
                yield frame
        self.finished = True

    def interrupt(self, heard: int) -> None:
        """End the turn now, keeping its prompt and first `heard` frames in the context."""
        if self.closed or self.finished and not self.prefilled:
            self.finished = True
            return
        heard = max(0, min(int(heard), len(self.frames)))
        self.heard = heard
        with self.engine.lock:
            if not self.prefilled:
                if self.request.session_id is not None:
                    self._run_prompt_only()
            elif heard == 0:
                self.backend.crop(self.state.cache, self.prompt_end)
            else:
                while self.fed < heard:  # the last heard frame was drawn but not fed back yet
                    self._feed(self.frames[self.fed], self._next_text_token(), keep_hidden=False)
                self.backend.crop(self.state.cache, self.after_prefill + heard)
        self.finished = True

    def close(self) -> None:
        """The turn is over; a turn left unfinished keeps what it made. Idempotent."""
        if self.closed:
            return
        if not self.finished:
            self.interrupt(len(self.frames))
        self.closed = True
        if self.state.open_turn is self:
            self.state.open_turn = None
        if self.request.session_id is None:
            self.state.cache = None
            gc.collect()

    # -- steps -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("moss-realtime: this turn is closed")

    def _advance(self) -> Iterator[np.ndarray]:
        if not self.prefilled and not self.finished:
            ready = len(self.pending) >= DELAY_TOKENS or (self.text_ended and self.pending)
            if ready:
                frame = self._prefill()
                if frame is not None:
                    yield frame
            elif self.text_ended:
                self.finished = True  # no text at all: nothing to say
        while self.prefilled and self.pending and not self.finished:
            frame = self._step(self.pending.pop(0))
            if frame is not None:
                yield frame

    def _prompt(self) -> np.ndarray:
        request, engine = self.request, self.engine
        user_codes = None
        if request.user_audio is not None and len(request.user_audio):
            user_codes = engine.encode_audio(request.user_audio, request.user_audio_rate or 0)
        voice = engine.voices.get(self.state.voice) if self.fresh else None
        return turn_rows(engine.tokenizer, include_system=self.fresh, voice_codes=voice,
                         user_text=request.user_text, user_audio_codes=user_codes)

    def _run_prompt_only(self) -> None:
        self.backend.forward_rows(self._prompt(), self.state.cache)

    def _prefill(self) -> np.ndarray | None:
        count = len(self.pending) if self.text_ended else DELAY_TOKENS
        text, self.pending = self.pending[:count], self.pending[count:]
        prompt = self._prompt()
        with self.engine.lock:
            cache = self.state.cache
            self.base = self.backend.cache_length(cache)
            self.prompt_end = self.base + len(prompt)
            hidden = self.backend.forward_rows(np.concatenate([prompt, prefill_rows(text)]), cache)
            self.after_prefill = self.backend.cache_length(cache)
            self.prefilled = True
            # The prefill frame is drawn without a repetition penalty (no history yet).
            return self._draw(hidden, history=None)

    def _step(self, text_token: int) -> np.ndarray | None:
        with self.engine.lock:
            if self._at_cap():
                self.finished = True
                return None
            hidden = self._feed(self.frames[-1], text_token, keep_hidden=True)
            return self._draw(hidden, history=np.stack(self.frames))

    def _feed(self, frame: np.ndarray, text_token: int, keep_hidden: bool) -> Any:
        row = np.concatenate([[text_token], frame]).astype(np.int64)[None]
        hidden = self.backend.forward_rows(row, self.state.cache)
        self.fed += 1
        return hidden if keep_hidden else None

    def _draw(self, hidden: Any, history: np.ndarray | None) -> np.ndarray | None:
        frame = self.backend.frame(hidden, lambda logits, i: self.sampler.pick(logits, history, i))
        if frame[0] == AUDIO_EOS:
            self.finished = True
            return None
        self.frames.append(frame)
        if len(self.frames) >= self.max_frames:
            self.finished = True
        return frame[None].astype(np.int32)

    def _at_cap(self) -> bool:
        return self.backend.cache_length(self.state.cache) >= self.engine.settings.max_context_rows

    def _next_text_token(self) -> int:
        return self.pending[0] if self.pending else self.engine.tokenizer.text_pad_id


def _turn_health(turn: MossTurn | None) -> dict[str, Any] | None:
    if turn is None:
        return None
    return {"turn": turn.request.turn, "fresh": turn.fresh, "base": turn.base,
            "prompt_end": turn.prompt_end, "after_prefill": turn.after_prefill,
            "frames": len(turn.frames), "heard": turn.heard}


class MossRealtimeEngine:
    """The engine contract over a `Backend`; runtimes subclass it and fill `_load`."""

    name = "moss-realtime"

    def __init__(self, settings: MossRealtimeSettings) -> None:
        self.settings = settings
        self.path = check_model_dir(self.name, settings.model_path, settings.codec_path)
        self.codec_path = Path(settings.codec_path or "").expanduser()
        self.capabilities = EngineCapabilities(
            output="tokens", sample_rate=24000, voices=(DEFAULT_VOICE,), codec=settings.codec,
            streaming=True, incremental_text=True, voice_cloning=True,
        )
        self.backend: Any = None
        self.tokenizer: MossTokenizer | None = None
        self.voices: dict[str, np.ndarray | None] = {DEFAULT_VOICE: None}
        self.sessions: dict[str, SessionState] = {}
        # Steps already run one at a time behind the host's limiter; the lock also covers
        # interrupt/close/add_voice, which may come from other threads.
        self.lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model, tokenizer and codec encoder (in a worker thread)."""
        import anyio

        await anyio.to_thread.run_sync(self._start_sync)

    def _start_sync(self) -> None:
        self.tokenizer = MossTokenizer(self.path)
        self.backend = self._load()

    def _load(self) -> Backend:
        raise NotImplementedError

    def encode_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono audio -> (frames, 16) codes with the engine's codec encoder."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Release the model and every session."""
        self.sessions.clear()
        self.backend = None
        gc.collect()

    def health(self) -> dict[str, Any]:
        """Readiness, the sessions held and their cache rows, and per session its newest turn
        (`open` while one is): `base` (the cache rows it continued; 0 when it started the
        context), `prompt_end`, `after_prefill`, `frames` drawn and `heard` (what a barge-in
        kept, else None)."""
        # No lock: a step holds it for a whole forward, and this runs on the server's event
        # loop. A snapshot of the dict (atomic) and of each cache reference is enough.
        backend, rows, detail = self.backend, {}, {}
        for sid, state in list(self.sessions.items()) if backend else ():
            cache = state.cache
            if cache is None:
                continue
            rows[sid] = backend.cache_length(cache)
            detail[sid] = {"rows": rows[sid], "turns": state.turns,
                           "open": state.open_turn is not None,
                           "last_turn": _turn_health(state.last_turn)}
        return {"ready": backend is not None, "sessions": len(self.sessions),
                "cache_rows": rows, "session_detail": detail}

    def synthesize(self, request: Any) -> Iterator[np.ndarray]:
        """One segment as a one-shot turn (for hosts that only speak segments)."""
        # Segment-shaped hosts pass their session id in the options; a segment is one-shot.
        options = {k: v for k, v in request.options.items() if k != "session_id"}
        turn = self.open_turn(TurnRequest(session_id=None, turn=1, voice=request.voice,
                                          options=options))
        try:
            yield from turn.push_text(request.text)
            yield from turn.end_text()
        finally:
            turn.close()

    # -- turns -----------------------------------------------------------------------------

    def open_turn(self, request: TurnRequest) -> MossTurn:
        """Open a turn (cheap; the prefill runs in the first step that has enough text)."""
        if self.backend is None:
            raise RuntimeError(f"{self.name} is not started")
        voice = request.voice or DEFAULT_VOICE
        if voice not in self.voices:
            raise ValueError(f"voice {voice!r} is not one of {sorted(self.voices)}")
        options = self._options(request.options)
        with self.lock:
            state = self.sessions.get(request.session_id) if request.session_id else None
            fresh = state is None
            if state is None:
                state = SessionState(self.backend, voice)
                if request.session_id is not None:
                    self.sessions[request.session_id] = state
            if state.open_turn is not None:
                state.open_turn.close()
            if not fresh and (state.voice != voice or self._must_evict(state)):
                # A new voice, or a context too full for another turn: start afresh.
                state.cache, state.voice, fresh = self.backend.new_cache(), voice, True
            turn = MossTurn(self, request, state, options, fresh)
            state.open_turn, state.last_turn, state.turns = turn, turn, state.turns + 1
        return turn

    def _must_evict(self, state: SessionState) -> bool:
        rows = self.backend.cache_length(state.cache)
        return rows + self.settings.turn_reserve_rows > self.settings.max_context_rows

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = {k: getattr(self.settings, k) for k in (*SAMPLING_KEYS, "max_frames", "seed")}
        for key, value in options.items():
            if key in IGNORED_OPTIONS:
                continue
            if key not in merged:
                raise ValueError(f"option {key!r} is not one of {sorted(merged)}")
            merged[key] = value
        check_sampling(merged)
        return merged

    def end_session(self, session_id: str) -> None:
        """Free the session's cache."""
        with self.lock:
            state = self.sessions.pop(session_id, None)
            if state is not None:
                state.cache = None
        gc.collect()

    # -- voices ----------------------------------------------------------------------------

    def add_voice(self, name: str, audio: np.ndarray, sample_rate: int) -> None:
        """Encode a reference recording once (first 16 quantizers) and keep its codes."""
        if not name or name == DEFAULT_VOICE:
            raise ValueError(f"voice name must be non-empty and not {DEFAULT_VOICE!r}")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) < sample_rate * 0.08:
            raise ValueError("a voice prompt needs at least one 80 ms frame of audio")
        codes = normalize_codes(self.encode_audio(audio, sample_rate))
        with self.lock:
            self.voices[name] = codes
            self._publish_voices()

    def remove_voice(self, name: str) -> None:
        """Forget a voice added by `add_voice`."""
        if name == DEFAULT_VOICE or name not in self.voices:
            raise KeyError(f"no added voice {name!r}")
        with self.lock:
            del self.voices[name]
            self._publish_voices()

    def _publish_voices(self) -> None:
        self.capabilities = msgspec.structs.replace(self.capabilities, voices=tuple(self.voices))
