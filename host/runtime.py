"""The runtime: configuration, the plugin registry, and utterances resolved against them.

Front-ends (the CLI, the HTTP API) hold one Runtime: `start()` loads the plugins, `speak()`
opens an utterance for a request, `close()` unloads everything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgspec

from host.config import MorpheusConfig, load_config
from host.pipeline import Utterance, UtteranceSpec, open_utterance
from host.registry import LoadedEngine, Registry, UnknownComponentError
from host.speed import MAX_SPEED, MIN_SPEED
from host.streams import AudioStream, StreamHost

log = logging.getLogger(__name__)


class SpeakRequest(msgspec.Struct, frozen=True, kw_only=True):
    """How to speak: anything left None falls back to the `[server]` defaults.

    Args:
        engine: engine name.
        voice: one of the engine's voices.
        speed: 0.25-4.0.
        options: engine-specific knobs.
        low_latency: prefer an early first chunk.
    """

    engine: str | None = None
    voice: str | None = None
    speed: float = 1.0
    options: dict[str, Any] = {}
    low_latency: bool = False


class Runtime:
    """Configuration plus loaded plugins; the one object front-ends talk to.

    Args:
        config: decoded plugins.toml; None reads it with `load_config()`.
        entry_points: load installed `morpheus.plugins` distributions (None: unless
            `$MORPHEUS_NO_ENTRY_POINTS` is set).
    """

    def __init__(
        self, config: MorpheusConfig | None = None, *, entry_points: bool | None = None
    ) -> None:
        self.config = config if config is not None else load_config()
        self.registry = Registry(self.config, entry_points=entry_points)
        self.streams = StreamHost()

    async def start(self) -> None:
        """Load every configured and installed plugin."""
        await self.registry.load_all()

    async def close(self) -> None:
        """Unload every plugin, stopping engines."""
        await self.registry.close()

    @asynccontextmanager
    async def running(self, *, load_in_background: bool = False) -> AsyncIterator[Runtime]:
        """Load plugins, run background streams for the duration of the block, then close.

        Args:
            load_in_background: enter the block at once and load plugins meanwhile (a server
                opens its port immediately and `ready()` turns true once the default engine
                is warm); otherwise the block starts after loading.
        """
        try:
            async with self.streams.running():
                if load_in_background:
                    self.streams.start_soon(self.start)
                else:
                    await self.start()
                yield self
        finally:
            await self.close()

    @property
    def default_engine(self) -> str:
        """The engine requests get when they name none."""
        return self.config.server.default_engine

    def ready(self) -> bool:
        """True once the default engine is loaded and warmed up."""
        loaded = self.registry.engines.get(self.default_engine)
        return loaded is not None and bool(loaded.engine.health().get("ready"))

    def resolve_voice(self, loaded: LoadedEngine, voice: str | None) -> str:
        """The voice a request gets: its own, else the configured default, else the engine's."""
        voices = loaded.engine.capabilities.voices
        if voice is None:
            default = self.config.server.default_voice
            return default if default in voices else voices[0]
        if voice not in voices:
            raise UnknownComponentError(
                "voice", voice, list(voices), where=f" for engine {loaded.name!r}"
            )
        return voice

    def resolve(self, request: SpeakRequest) -> UtteranceSpec:
        """Check a request against what is loaded and build its utterance.

        Raises:
            UnknownComponentError: engine, voice, chunker or stitcher not loaded (the message
                lists what is).
            ValueError: speed out of range.
        """
        if not MIN_SPEED <= request.speed <= MAX_SPEED:
            raise ValueError(
                f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {request.speed}"
            )
        loaded = self.registry.engine(request.engine or self.default_engine)
        caps = loaded.engine.capabilities
        server = self.config.server
        return UtteranceSpec(
            engine=loaded,
            voice=self.resolve_voice(loaded, request.voice),
            chunker=None if caps.incremental_text else self.registry.new_chunker(server.chunker),
            stitcher=self.registry.new_stitcher(server.stitcher, server.sample_rate),
            codec=self.registry.codec(caps.codec) if caps.output == "tokens" else None,
            speed=request.speed,
            options=request.options,
            low_latency=request.low_latency,
        )

    def speak(
        self, request: SpeakRequest, text: str | None = None
    ) -> AbstractAsyncContextManager[Utterance]:
        """Open an utterance: `async with runtime.speak(req, text) as utt: ...utt.audio`."""
        return open_utterance(self.resolve(request), text)

    def stream(self, request: SpeakRequest, text: str | None = None) -> AudioStream:
        """Validate `request` now, then run the utterance in the background (inside `running()`).

        This is what HTTP responses use: iterate the returned stream for audio; close it to
        cancel. Raises the same errors as `resolve`, before any audio exists.
        """
        return self.streams.spawn(self.speak(request, text))
