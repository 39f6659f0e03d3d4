"""The four plugin contracts: Engine, Codec, Chunker and Stitcher.

A plugin module offers components through the hooks in `host.hookspecs`. Each component is a
`Component`: a name, the kind, a msgspec Struct for its settings and a factory. What the factory
returns depends on the kind:

- engine: an `Engine`, created once when the plugin loads, started, and shared by streams;
- codec: a `Codec`, created once; it hands each stream its own `CodecDecoder`;
- chunker: a per-stream `Chunker` (the factory is called once per utterance);
- stitcher: a per-stream `Stitcher` (the factory is called once per utterance, with the output
  sample rate).

Audio is mono float32 in [-1, 1] everywhere; sample rates are in Hz.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec
import numpy as np
from morpheus_tts.host.errors import MorpheusError

Kind = Literal["engine", "codec", "chunker", "stitcher"]


class NoSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Settings of a component that takes none."""


class Component(msgspec.Struct, frozen=True):
    """One named component offered by a plugin.

    Args:
        name: the name users pick it by (`--engine piper`, `chunker = "sentence"`).
        kind: which contract `create` fulfils.
        create: factory called with the validated settings Struct (and, for stitchers, the
            output sample rate as keyword `sample_rate`).
        settings: the msgspec Struct type the plugin's settings table is converted to; unknown
            keys are rejected when it sets `forbid_unknown_fields=True`.
        description: one line for `morpheus plugins`.
    """

    name: str
    kind: Kind
    create: Callable[..., Any]
    settings: type[msgspec.Struct] = NoSettings
    description: str = ""


class SynthesisRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What an engine is asked to speak: one text segment.

    Args:
        text: the segment, already cut by the chunker (tags such as `<laugh>` left whole).
        voice: a voice from the engine's `capabilities.voices`, or None for its default.
        speed: playback speed (0.25-4.0). Engines with `native_speed` apply it; for the others
            the host time-stretches.
        options: engine-specific knobs from the request (sampling settings, seeds).
        chunk_size: the size the rate controller asks for, in the engine's own units (tokens
            for token engines); waveform engines may ignore it.
        low_latency: prefer an early first chunk over throughput.
    """

    text: str
    voice: str | None = None
    speed: float = 1.0
    options: dict[str, Any] = {}
    chunk_size: int | None = None
    low_latency: bool = False


class EngineCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What an engine can do, served to clients and used by the host to wire the pipeline.

    Args:
        output: "pcm" (yields float32 samples) or "tokens" (yields codec frames).
        sample_rate: rate of the PCM it yields (for token engines: its codec's rate).
        voices: the voice names it accepts; the first is its default.
        codec: name of the codec component that decodes its frames (token engines).
        streaming: it yields several chunks per segment rather than one.
        incremental_text: it takes text deltas directly (the host skips the chunker).
        native_speed: it applies `SynthesisRequest.speed` itself.
        voice_cloning: it accepts a reference voice prompt (`VoicePrompts.add_voice`).
        languages: voice name -> the BCP 47 language it speaks (`en-US`); a voice missing
            here speaks an unknown language (listings show none).
        chunk_unit: what `SynthesisRequest.chunk_size` counts for it: "tokens" (Orpheus: 7
            per frame) or "frames" (codec frames, MOSS-TTS-Realtime: 12.5 per second); the
            rate controller's sizes are in this unit. None: it ignores chunk sizes.
        max_concurrent_streams: blocking steps it runs at once (the size of its capacity
            limiter); more than 1 only for engines whose steps share no mutable state.
    """

    output: Literal["pcm", "tokens"] = "pcm"
    sample_rate: int
    voices: tuple[str, ...]
    codec: str | None = None
    streaming: bool = False
    incremental_text: bool = False
    native_speed: bool = False
    voice_cloning: bool = False
    languages: dict[str, str] = {}
    chunk_unit: Literal["tokens", "frames"] | None = None
    max_concurrent_streams: int = 1

    def __post_init__(self) -> None:
        if self.max_concurrent_streams < 1:
            raise ValueError(
                f"max_concurrent_streams must be >= 1, got {self.max_concurrent_streams}"
            )


class EngineRequestError(MorpheusError, ValueError):
    """The request can never succeed on this engine (an unknown option or voice, a value out
    of range). Raise it (or a plain ValueError from `synthesize()`/`open_turn()` themselves,
    before the first step) and the host neither retries nor fails over: the client is told.
    """


@runtime_checkable
class CancellableSteps(Protocol):
    """A sync step iterator that can stop a step while it runs (optional, for any engine).

    When the utterance is cancelled (client gone, barge-in) while a step runs in its worker
    thread, the host calls `cancel()` from the event loop; the running step should return or
    raise soon after (Piper: onnxruntime `RunOptions.terminate`; llama.cpp: stop between
    tokens), so the engine is free for the next request. The iterator is not used again.
    """

    def __next__(self) -> np.ndarray:
        """One blocking step."""

    def cancel(self) -> None:
        """Stop the running step soon; thread-safe, idempotent."""


EngineOutput = Iterator[np.ndarray] | AsyncIterator[np.ndarray]


@runtime_checkable
class Engine(Protocol):
    """A speech engine: weights loaded once, then many segments synthesized.

    Lifetimes: the host calls `start()` once after creating it (load weights, warm up) and
    `stop()` once when the plugin unloads (release every model reference so memory returns).
    """

    capabilities: EngineCapabilities

    async def start(self) -> None:
        """Load weights and warm up. Blocking work belongs in a worker thread."""

    async def stop(self) -> None:
        """Release the model; the engine is not used again."""

    def health(self) -> dict[str, Any]:
        """Return at least `{"ready": bool}`, plus anything useful to an operator."""

    def synthesize(self, request: SynthesisRequest) -> EngineOutput:
        """Speak one segment.

        Returns either a *sync* iterator, whose every `next()` is one blocking step (one
        inference call) that the host runs in a worker thread behind the engine's capacity
        limiter, or an *async* iterator for engines that wait on I/O (remote servers).

        Yields:
            float32 arrays of samples at `capabilities.sample_rate` (pcm engines), or int
            arrays shaped (frames, codebooks) (token engines).
        """


class TurnRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One turn of a turn-shaped engine (`capabilities.incremental_text`).

    Args:
        session_id: the realtime session the turn belongs to; None for a one-shot utterance
            (`/v1/audio/speech`), whose state the engine frees on `EngineTurn.close()`.
        turn: 1, 2, ... within the session (1 for one-shot).
        voice: a voice from `capabilities.voices` (built-in or added by `add_voice`), or None
            for the engine's default.
        options: engine-specific knobs from the request; never session ids or API fields.
        low_latency: prefer an early first chunk over throughput.
        user_text: what the user said this turn (context-aware engines condition on it).
        user_audio: mono float32 of the user's turn, at `user_audio_rate` Hz.
        user_audio_rate: sample rate of `user_audio`.
    """

    session_id: str | None
    turn: int
    voice: str | None
    options: dict[str, Any] = {}
    low_latency: bool = False
    user_text: str | None = None
    user_audio: np.ndarray | None = None
    user_audio_rate: int | None = None


class EngineTurn(Protocol):
    """One open turn. Every iterator is *sync*: each `next()` is one blocking step that the host
    runs in a worker thread behind the engine's capacity limiter, so the event loop never stalls
    and cancellation is noticed between steps. Iterators yield what `Engine.synthesize` yields:
    float32 samples (pcm engines) or int frames shaped (frames, codebooks) (token engines); an
    iterator may also offer `cancel()` (`CancellableSteps`).

    Lifetime, as the host drives it: `push_text` for every text delta (its iterator run to the
    end before the next delta), then `end_text` once, then `close`. On barge-in, or when the
    turn fails and is replayed elsewhere, the host instead calls `interrupt(heard)` then
    `close`, holding the engine's limiter, so no step of the turn runs meanwhile. All of a
    turn's output is one segment: one codec decoder, no crossfade inside it.
    """

    def push_text(self, delta: str) -> Iterator[np.ndarray]:
        """Add a text delta (any size, even part of a word); yield the output now due."""

    def end_text(self) -> Iterator[np.ndarray]:
        """No more text this turn: yield the rest, up to the engine's own end."""

    def interrupt(self, heard: int) -> None:
        """Barge-in, called between steps: end the turn now, keeping in the session's context
        its first `heard` units of output (frames for token engines, samples at
        `capabilities.sample_rate` for pcm engines); drop everything else. `heard` is what the
        client was actually sent (an upper bound of what it played), 0 when nothing was."""

    def close(self) -> None:
        """The turn is over (normally or after `interrupt`); idempotent."""


@runtime_checkable
class IncrementalEngine(Engine, Protocol):
    """A turn-shaped engine: text deltas go straight in, state survives a session's turns."""

    def open_turn(self, request: TurnRequest) -> EngineTurn:
        """Open a turn. Cheap and non-blocking: heavy work happens in the first step."""

    def end_session(self, session_id: str) -> None:
        """The session ended (deleted or expired): free its state. Called once per session,
        after its last turn closed; never for one-shot turns (`session_id=None`)."""


@runtime_checkable
class VoicePrompts(Protocol):
    """An engine that clones voices (`capabilities.voice_cloning`)."""

    def add_voice(self, name: str, audio: np.ndarray, sample_rate: int) -> None:
        """Register `name` from a reference recording (mono float32 at `sample_rate` Hz),
        encoded once (with the engine's codec). From then on `capabilities.voices` lists
        `name` (the engine replaces its capabilities) and requests may use it.

        Raises:
            ValueError: the recording is unusable (too short, silent); the message says why.
        """

    def remove_voice(self, name: str) -> None:
        """Forget a voice added by `add_voice` (it leaves `capabilities.voices`).

        Raises:
            KeyError: `name` was not added by `add_voice`.
        """


@runtime_checkable
class VoiceComposer(Protocol):
    """An engine that also speaks voices composed per request, beyond `capabilities.voices`
    (Kokoro's blends, `af_bella(2)+af_sky(1)`)."""

    def accepts_voice(self, voice: str) -> bool:
        """True if `voice` is a valid composition; it then reaches `SynthesisRequest.voice`.
        Cheap and non-blocking: it runs while a request is resolved."""


class CodecDecoder(Protocol):
    """One stream's decoder state: every output sample is emitted exactly once."""

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """Decode new frames (frames, codebooks) and return the samples now final."""

    def flush(self) -> np.ndarray:
        """Return the samples held back for context; the decoder is finished."""


@runtime_checkable
class Codec(Protocol):
    """A neural audio codec (SNAC, MOSS Audio Tokenizer)."""

    sample_rate: int
    frame_rate: float
    codebooks: int

    async def start(self) -> None:
        """Load weights."""

    async def stop(self) -> None:
        """Release the model."""

    def decoder(self) -> CodecDecoder:
        """A fresh stateful decoder for one stream."""

    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Encode a voice prompt to frames (frames, codebooks)."""


@runtime_checkable
class Chunker(Protocol):
    """Cuts one stream's incoming text into segments an engine speaks well."""

    def push(self, text: str) -> list[str]:
        """Add a text delta; return the segments that are now complete, in order."""

    def flush(self) -> list[str]:
        """The text has ended: return whatever remains as segments."""

    def reset(self) -> None:
        """Forget buffered text (barge-in)."""


@runtime_checkable
class Stitcher(Protocol):
    """Joins one stream's chunks into seamless audio at the output sample rate."""

    sample_rate: int

    def push(self, samples: np.ndarray, sample_rate: int, segment: int) -> np.ndarray:
        """Add a chunk of `segment`; return output samples that are now final."""

    def flush(self) -> np.ndarray:
        """The stream has ended: return the samples held back."""

    def fade_out(self, fade_ms: float) -> np.ndarray:
        """Barge-in: return held-back audio faded to silence over `fade_ms`; drop the rest."""
