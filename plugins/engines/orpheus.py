"""Orpheus TTS on llama.cpp: a Llama 3 model that speaks SNAC codes, in process or remote.

Two backends, picked by the settings:

- `model_path`: an Orpheus GGUF run in process by llama-cpp-python. `synthesize` returns a
  sync iterator: each `next()` generates tokens until one chunk of frames is whole (one blocking
  step the host runs in a worker thread).
- `server_url`: a llama.cpp server, or any OpenAI-compatible `/v1/completions` endpoint, streamed
  over one keep-alive httpx client. `synthesize` returns an async iterator.

Both yield int arrays shaped (frames, 7): SNAC codes in Orpheus slot order, the representation
the `snac` and `snac-mlx` codecs decode (see `plugins.engines.orpheus_tokens`). Chunks are
`request.chunk_size` tokens rounded to whole frames (default `chunk_tokens`, 28 = 4 frames); in
low-latency mode the first two chunks are 1 and 2 frames, so the 3 frames the codec needs
before its first exact sample come at the earliest moment.
"""

from __future__ import annotations

import gc
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
import numpy as np
from morpheus_tts.host import Component, EngineCapabilities, SynthesisRequest, hookimpl
from morpheus_tts.plugins.engines.orpheus_remote import RemoteCompletions
from morpheus_tts.plugins.engines.orpheus_tokens import (
    END_OF_AI,
    END_OF_TEXT,
    SLOTS,
    VOICES,
    FrameAssembler,
    prompt_ids,
)

log = logging.getLogger(__name__)

ORPHEUS_VOCAB = 156940
NOT_CONFIGURED = "orpheus: set plugins.orpheus.settings.model_path (a GGUF file) or server_url"
INSTALL_HINT = "pip install 'morpheus-tts[orpheus]'"
# Options other engines take that Orpheus has no use for (emotion tags go in the text).
IGNORED_OPTIONS = frozenset({"instructions"})


class Sampling(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Sampling settings; a request's `options` may override any of them.

    Args:
        temperature: softmax temperature (>= 0; 0 is greedy).
        top_p: nucleus mass, in (0, 1].
        repetition_penalty: >= 1.1; Orpheus drifts into loops and noise below it.
        max_tokens: tokens per segment at most (7 per 85 ms frame).
        seed: sampling seed; None draws a fresh one per segment.
    """

    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.3
    max_tokens: int = 1200
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty < 1.1:
            raise ValueError(
                f"repetition_penalty must be >= 1.1 (Orpheus loops below it), "
                f"got {self.repetition_penalty}"
            )
        if self.max_tokens < SLOTS:
            raise ValueError(f"max_tokens must be >= {SLOTS} (one frame), got {self.max_tokens}")


SAMPLING_FIELDS = Sampling.__struct_fields__


class OrpheusSettings(Sampling, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Settings of the `orpheus` engine (plus the sampling settings of `Sampling`).

    Args:
        model_path: an Orpheus GGUF, run in process by llama-cpp-python.
        server_url: base URL of a llama.cpp server or OpenAI-compatible endpoint, used instead.
        server_model: the `model` field sent to the server.
        api_key: bearer token for the server, if it wants one.
        timeout_s: seconds to wait for the server to connect or send the next token.
        n_ctx: context length of the in-process model.
        n_gpu_layers: layers offloaded to the GPU (-1: all).
        n_threads: CPU threads for generation and prompt evaluation (None: llama-cpp-python's
            default). On a busy machine fewer threads are faster: llama.cpp's threads spin.
        chunk_tokens: tokens per chunk when the request names no `chunk_size`.
        codec: the codec that decodes the frames: "snac" (PyTorch) or "snac-mlx".
    """

    model_path: str | None = None
    server_url: str | None = None
    server_model: str = "orpheus"
    api_key: str | None = None
    timeout_s: float = 30.0
    n_ctx: int = 8192
    n_gpu_layers: int = 0
    n_threads: int | None = None
    chunk_tokens: int = 28
    codec: Literal["snac", "snac-mlx"] = "snac"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_tokens < SLOTS:
            raise ValueError(f"chunk_tokens must be >= {SLOTS}, got {self.chunk_tokens}")

    def sampling(self, options: dict[str, Any]) -> Sampling:
        """The settings' sampling overridden by a request's options.

        Raises:
            ValueError: an unknown option, or a value out of range (the message names it).
        """
        options = {k: v for k, v in options.items() if k not in IGNORED_OPTIONS}
        unknown = sorted(set(options) - set(SAMPLING_FIELDS))
        if unknown:
            raise ValueError(
                f"orpheus: unknown option {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(SAMPLING_FIELDS)}"
            )
        merged = {name: getattr(self, name) for name in SAMPLING_FIELDS} | options
        try:
            return msgspec.convert(merged, Sampling)
        except msgspec.ValidationError as exc:
            raise ValueError(f"orpheus: bad option: {exc}") from exc


class ChunkPlan:
    """How many frames each chunk of a segment holds.

    Args:
        chunk_tokens: the size asked for, rounded to whole 7-token frames (at least one).
        low_latency: the first two chunks are 1 and 2 frames.
    """

    def __init__(self, chunk_tokens: int, low_latency: bool) -> None:
        self.frames = max(1, round(chunk_tokens / SLOTS))
        self._ramp = [1, 2] if low_latency else []

    def size(self, index: int) -> int:
        """Frames in chunk `index` (0-based)."""
        return min(self._ramp[index], self.frames) if index < len(self._ramp) else self.frames


class LocalLlama:
    """The in-process backend: llama-cpp-python's generate loop over an Orpheus GGUF."""

    def __init__(self, settings: OrpheusSettings, path: Path) -> None:
        self.settings, self.path = settings, path
        self._llm: Any = None
        self._owner: object | None = None  # the segment whose tokens are in the KV cache

    async def start(self) -> None:
        """Load the GGUF and check its vocabulary (in a worker thread)."""
        self._llm = await anyio.to_thread.run_sync(self._load)

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise RuntimeError(
                f"orpheus: model_path needs llama-cpp-python: {INSTALL_HINT}"
            ) from exc
        settings = self.settings
        llm = Llama(
            model_path=str(self.path),
            n_ctx=settings.n_ctx,
            n_gpu_layers=settings.n_gpu_layers,
            n_threads=settings.n_threads,
            n_threads_batch=settings.n_threads,
            verbose=False,
        )
        if llm.n_vocab() < ORPHEUS_VOCAB:
            vocab = llm.n_vocab()
            llm.close()
            raise ValueError(
                f"orpheus: {self.path} has {vocab} tokens; an Orpheus GGUF has {ORPHEUS_VOCAB} "
                f"(<custom_token_N> at 128256 + N)"
            )
        return llm

    async def stop(self) -> None:
        """Free the model and its context."""
        if self._llm is not None:
            self._llm.close()
        self._llm = None
        gc.collect()

    @property
    def ready(self) -> bool:
        """The model is loaded."""
        return self._llm is not None

    def synthesize(
        self, voice: str, text: str, sampling: Sampling, plan: ChunkPlan
    ) -> Iterator[np.ndarray]:
        """Generate one segment; each `next()` returns one chunk of frames."""
        llm = self._llm
        if llm is None:
            raise RuntimeError("orpheus engine is not started")

        def tokenize(prompt: str) -> list[int]:
            return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

        prompt = prompt_ids(tokenize, voice, text)
        limit = min(sampling.max_tokens, self.settings.n_ctx - len(prompt))
        if limit < SLOTS:
            raise ValueError(
                f"orpheus: the prompt takes {len(prompt)} of n_ctx={self.settings.n_ctx} tokens; "
                f"raise n_ctx or send shorter text"
            )
        stop = threading.Event()
        return LlamaSteps(self._chunks(prompt, limit, sampling, plan, stop), stop)

    def _chunks(
        self,
        prompt: list[int],
        limit: int,
        sampling: Sampling,
        plan: ChunkPlan,
        stop: threading.Event,
    ) -> Iterator[np.ndarray]:
        llm = self._llm
        me = object()
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        assembler = FrameAssembler(stop_ids={END_OF_TEXT, END_OF_AI, llm.token_eos()})
        generated: list[int] = []
        tokens: Iterator[int] | None = None
        index = 0
        try:
            while True:
                want = plan.size(index)
                while assembler.ready < want and not assembler.ended and len(generated) < limit:
                    if stop.is_set():
                        return  # cancelled: stop between tokens
                    if tokens is None or self._owner is not me:
                        # Another segment used the context since our last step: resume from
                        # our own tokens (llama.cpp keeps the longest common prefix cached).
                        tokens = self._open(prompt + generated, sampling, seed + len(generated))
                        self._owner = me
                    token = next(tokens)
                    generated.append(token)
                    assembler.push(token)
                finished = assembler.ended or len(generated) >= limit
                frames = assembler.take(None if finished else want)
                if len(frames):
                    yield frames
                    index += 1
                if finished:
                    log.debug(
                        "orpheus segment done",
                        extra={"tokens": len(generated), "rejected": assembler.rejected},
                    )
                    return
        finally:
            if self._owner is me:
                self._owner = None

    def _open(self, tokens: list[int], sampling: Sampling, seed: int) -> Iterator[int]:
        self._llm.set_seed(seed)
        return self._llm.generate(
            tokens,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,  # off, as upstream Orpheus samples
            min_p=0.0,
            repeat_penalty=sampling.repetition_penalty,
            reset=True,
        )


class LlamaSteps:
    """A segment's chunks, one per `next()`; `cancel()` stops the running step between tokens."""

    def __init__(self, chunks: Iterator[np.ndarray], stop: threading.Event) -> None:
        self._chunks, self._stop = chunks, stop

    def __iter__(self) -> LlamaSteps:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._chunks)

    def cancel(self) -> None:
        """Stop generating at the next token (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Release the generator (its KV-cache ownership)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class OrpheusEngine:
    """The `orpheus` engine: prompt, sampling and frame assembly over either backend."""

    def __init__(self, settings: OrpheusSettings) -> None:
        self.settings = settings
        if settings.model_path and settings.server_url:
            raise ValueError("orpheus: set model_path or server_url, not both")
        self._backend: LocalLlama | RemoteCompletions
        if settings.model_path:
            path = Path(settings.model_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"orpheus: model_path {path} does not exist; give an Orpheus GGUF file"
                )
            self._backend = LocalLlama(settings, path)
        elif settings.server_url:
            self._backend = RemoteCompletions(settings)
        else:
            raise ValueError(NOT_CONFIGURED)
        self.capabilities = EngineCapabilities(
            output="tokens",
            sample_rate=24000,
            voices=VOICES,
            codec=settings.codec,
            streaming=True,
            native_speed=False,
            languages=dict.fromkeys(VOICES, "en-US"),  # the English finetune's speakers
            chunk_unit="tokens",
        )

    async def start(self) -> None:
        """Load the model, or check that the server answers."""
        await self._backend.start()

    async def stop(self) -> None:
        """Release the model or close the connections."""
        await self._backend.stop()

    def health(self) -> dict[str, Any]:
        """Ready once loaded; names the backend and where it points."""
        backend = self._backend
        where = (
            {"backend": "llama.cpp in process", "model_path": str(backend.path)}
            if isinstance(backend, LocalLlama)
            else {"backend": "server", "server_url": backend.url}
        )
        return {"ready": backend.ready, "codec": self.settings.codec, **where}

    def synthesize(
        self, request: SynthesisRequest
    ) -> Iterator[np.ndarray] | AsyncIterator[np.ndarray]:
        """Speak one segment: a sync iterator in process, an async one against a server.

        Raises:
            ValueError: an unknown voice or option, or a sampling value out of range.
        """
        voice = request.voice or VOICES[0]
        if voice not in VOICES:
            raise ValueError(f"orpheus: unknown voice {voice!r}; voices: {', '.join(VOICES)}")
        sampling = self.settings.sampling(request.options)
        plan = ChunkPlan(request.chunk_size or self.settings.chunk_tokens, request.low_latency)
        return self._backend.synthesize(voice, request.text, sampling, plan)


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the `orpheus` engine."""
    return [
        Component(
            name="orpheus",
            kind="engine",
            create=OrpheusEngine,
            settings=OrpheusSettings,
            description="Orpheus TTS on llama.cpp (in process or a server), SNAC frames",
        )
    ]
