"""The runtime: configuration, the plugin registry, and utterances resolved against them.

Front-ends (the CLI, the HTTP API) hold one Runtime: `start()` loads the plugins, `speak()`
opens an utterance for a request, `close()` unloads everything. While `running()`, edits to
plugins.toml apply without a restart: the `[server]` table is replaced and the plugins whose
tables changed are unloaded (drained) and loaded again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import msgspec
from morpheus_tts.host.availability import Availability
from morpheus_tts.host.config import (
    ConfigError,
    MorpheusConfig,
    PluginEntry,
    ServerSettings,
    convert_settings,
    load_config,
)
from morpheus_tts.host.contracts import VoiceComposer
from morpheus_tts.host.failover import Candidate
from morpheus_tts.host.observer import NULL_OBSERVER, UtteranceObserver
from morpheus_tts.host.pipeline import Utterance, UtteranceSpec, open_utterance
from morpheus_tts.host.rate import RateSettings
from morpheus_tts.host.registry import LoadedEngine, PluginRecord, Registry, UnknownComponentError
from morpheus_tts.host.reload import check_reload
from morpheus_tts.host.speed import MAX_SPEED, MIN_SPEED
from morpheus_tts.host.streams import AudioStream, StreamHost
from morpheus_tts.observability.logs import current_request_id
from morpheus_tts.observability.tracing import carrier_from_traceparent, current_carrier

log = logging.getLogger(__name__)


class SpeakRequest(msgspec.Struct, frozen=True, kw_only=True):
    """How to speak: anything left None falls back to the `[server]` defaults.

    Args:
        engine: engine name.
        voice: one of the engine's voices.
        speed: 0.25-4.0.
        options: engine-specific knobs.
        low_latency: prefer an early first chunk.
        pace: pause the engine while the client's buffer is full (None: `[server]
            pace_playback`); False for whole-file responses that should not wait for playback.
        traceparent: a W3C `traceparent` to continue (sent in a body or a WebSocket message);
            None continues the current span (the HTTP request's), if any. Malformed: ignored.
        response_format: the format the caller encodes to (a span attribute).
        session_id: the realtime session this utterance is a turn of (None: one-shot).
        turn: the turn's number within its session (1 for one-shot).
        user_text: what the user said this turn (turn-shaped, context-aware engines).
        sample_rate: output rate (None: `[server] sample_rate`); the OpenAI API asks for
            24 kHz, so the stitcher's resampler is the only one.
    """

    engine: str | None = None
    voice: str | None = None
    speed: float = 1.0
    options: dict[str, Any] = {}
    low_latency: bool = False
    pace: bool | None = None
    traceparent: str | None = None
    response_format: str | None = None
    session_id: str | None = None
    turn: int = 1
    user_text: str | None = None
    sample_rate: int | None = None


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
        self.observer: UtteranceObserver = NULL_OBSERVER  # the server sets a Telemetry
        self.config_error: str | None = None  # why the last plugins.toml edit was refused
        self.availability = Availability(
            self.streams.start_soon,
            lambda loaded: self.registry.engines.get(loaded.name) is loaded,
            stall_timeout_s=self.config.server.stall_timeout_s,
        )
        self._file_plugins = dict(self.config.plugins)
        self._file_bytes: bytes | None = None
        self._lock: anyio.Lock | None = None

    @property
    def plugin_lock(self) -> anyio.Lock:
        """Serialises plugin loads, unloads and plugins.toml reloads."""
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    async def start(self) -> None:
        """Load every configured and installed plugin."""
        async with self.plugin_lock:
            if self.config.path is not None:
                self._file_bytes = await anyio.Path(self.config.path).read_bytes()
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
                if self.config.path and self.config.server.config_reload_interval_s > 0:
                    self.streams.start_soon(self._watch_config)
                yield self
        finally:
            await self.close()

    @property
    def default_engine(self) -> str:
        """The engine requests get when they name none."""
        return self.config.server.default_engine

    def ready(self) -> bool:
        """True once the default engine is warmed up and the chunker and stitcher are loaded."""
        server, registry = self.config.server, self.registry
        loaded = registry.engines.get(self.default_engine)
        return (
            loaded is not None
            and bool(loaded.engine.health().get("ready"))
            and server.chunker in registry.chunkers
            and server.stitcher in registry.stitchers
        )

    def resolve_voice(self, loaded: LoadedEngine, voice: str | None) -> str:
        """The voice a request gets: its own, else the configured default, else the engine's."""
        voices = loaded.engine.capabilities.voices
        if voice is None:
            default = self.config.server.default_voice
            return default if default in voices else voices[0]
        composer = loaded.engine
        if voice not in voices and not (
            isinstance(composer, VoiceComposer) and composer.accepts_voice(voice)
        ):
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
            chunker=self.registry.new_chunker(server.chunker),
            stitcher=self.registry.new_stitcher(
                server.stitcher, request.sample_rate or server.sample_rate
            ),
            codec=self.registry.codec(caps.codec) if caps.output == "tokens" else None,
            speed=request.speed,
            options=request.options,
            low_latency=request.low_latency,
            **self._realtime(loaded, request),
            observer=self.observer,
            # Captured here, in the caller's task: the utterance runs in a background task.
            trace=carrier_from_traceparent(request.traceparent) or current_carrier(),
            request_id=current_request_id(),
            response_format=request.response_format,
            session_id=request.session_id,
            turn=request.turn,
            user_text=request.user_text,
            on_unavailable=self.availability.mark_unavailable,
        )

    def _realtime(self, loaded: LoadedEngine, request: SpeakRequest) -> dict[str, Any]:
        """Rate control and failover for a spec: `[server]` settings, the loaded chain.

        The chain keeps the engines of the request engine's shape: a turn-shaped engine fails
        over to turn-shaped ones, a segment engine to segment engines.
        """
        server = self.config.server
        chain = [self.registry.engines[name] for name in server.failover
                 if name in self.registry.engines and name != loaded.name
                 and self.registry.engines[name].turn_shaped == loaded.turn_shaped]
        codecs = {
            e.engine.capabilities.codec: self.registry.codecs[e.engine.capabilities.codec]
            for e in [loaded, *chain] if e.engine.capabilities.codec in self.registry.codecs
        }
        return dict(
            rate=RateSettings.from_server(server, pace=request.pace),
            failover=tuple(Candidate(e, self.resolve_voice(e, None)) for e in chain),
            codecs=codecs,
            stall_timeout_s=server.stall_timeout_s,
            barge_in_fade_ms=server.barge_in_fade_ms,
        )

    def speak(
        self, request: SpeakRequest, text: str | None = None
    ) -> AbstractAsyncContextManager[Utterance]:
        """Open an utterance: `async with runtime.speak(req, text) as utt: ...utt.audio`.

        If its engine is unloaded meanwhile (without drain), the utterance stops and leaving
        the block raises `EngineUnloadedError`.
        """
        return _tracked(self.resolve(request), text)

    def stream(self, request: SpeakRequest, text: str | None = None) -> AudioStream:
        """Validate `request` now, then run the utterance in the background (inside `running()`).

        This is what HTTP responses use: iterate the returned stream for audio; close it to
        cancel. Raises the same errors as `resolve`, before any audio exists.
        """
        return self.streams.spawn(self.speak(request, text))

    # -- changes at runtime ------------------------------------------------------------------

    def update_server(self, **changes: Any) -> ServerSettings:
        """Change `[server]` settings for new requests at once (plugins.toml is not written).

        Raises:
            ConfigError: a value is invalid (the message names the key).
            UnknownComponentError: an engine, chunker or stitcher named is not loaded.
        """
        current = msgspec.to_builtins(self.config.server)
        server = convert_settings({**current, **changes}, ServerSettings, "server")
        for engine in [server.default_engine, *server.failover]:
            self.registry.engine(engine)
        if server.chunker not in self.registry.chunkers:
            raise UnknownComponentError("chunker", server.chunker, list(self.registry.chunkers))
        if server.stitcher not in self.registry.stitchers:
            raise UnknownComponentError(
                "stitcher", server.stitcher, list(self.registry.stitchers)
            )
        self._set_config(msgspec.structs.replace(self.config, server=server))
        return server

    def set_default_engine(self, name: str) -> None:
        """New requests that name no engine get `name` (which must be loaded)."""
        self.update_server(default_engine=name)

    async def load_plugin(self, name: str, entry: PluginEntry) -> PluginRecord:
        """Load one plugin now (see `Registry.load`); new requests can use it at once."""
        async with self.plugin_lock:
            return await self.registry.load(name, entry)

    async def unload_plugin(self, name: str, *, drain: bool = False) -> PluginRecord:
        """Unload one plugin now (see `Registry.unload`); new requests stop seeing it at once."""
        async with self.plugin_lock:
            return await self.registry.unload(
                name, drain=drain, drain_timeout_s=self.config.server.drain_timeout_s
            )

    async def reload_config(self) -> bool:
        """Apply plugins.toml again if it changed on disk; returns True when it did.

        The whole edit is checked first (`host.reload.check_reload`: every changed plugin table
        imported and its settings converted, the `[server]` names still offered); an edit that
        fails any check changes nothing, and the reasons are kept in `config_error` (and
        logged) until the file is valid again or back to what is running. Plugins loaded
        through the API are left alone.
        """
        path = self.config.path
        if path is None or self._file_bytes is None:
            return False  # no file, or not started yet
        async with self.plugin_lock:
            try:
                data = await anyio.Path(path).read_bytes()
                if data == self._file_bytes:
                    self._clear_refusal()  # edited back to what is running: nothing to refuse
                    return False
                new = load_config(path)
                try:
                    check_reload(self.registry, self._file_plugins, new)
                except ConfigError as exc:
                    raise ConfigError(f"{path}: {exc}") from None
            except (OSError, ConfigError) as exc:
                self._refuse(str(exc))
                return False
            self.registry.config = new  # entries are named against the new file's tables
            await self._apply_plugins(new.plugins)
            self._file_bytes, self.config_error = data, None
            self._set_config(new)
        log.info("plugins.toml reloaded", extra={"path": path})
        return True

    async def _apply_plugins(self, plugins: dict[str, PluginEntry]) -> None:
        """Unload the file's plugins whose tables changed or went, then load the new ones."""
        registry, old = self.registry, self._file_plugins
        for name, entry in old.items():
            record = registry.records.get(name)
            if plugins.get(name) == entry or record is None:
                continue
            if record.state in ("loaded", "draining"):
                timeout = self.config.server.drain_timeout_s
                await registry.unload(name, drain=True, drain_timeout_s=timeout)
            else:
                registry.records.pop(name, None)
        for name, entry in plugins.items():
            if old.get(name) == entry and name in registry.records:
                continue
            record = registry.records.get(name)
            if record is not None and record.state in ("loaded", "draining"):
                log.warning("plugins.toml names a plugin loaded otherwise", extra={"plugin": name})
            elif entry.enabled:
                await registry.load(name, entry)
            else:
                registry.records[name] = PluginRecord(
                    name=name, source="plugins.toml", module=entry.module,
                    entry_point=entry.entry_point, state="disabled",
                )
        self._file_plugins = dict(plugins)

    def _refuse(self, reason: str) -> None:
        if reason != self.config_error:
            log.error("plugins.toml not applied; nothing changed", extra={"error": reason})
        self.config_error = reason

    def _clear_refusal(self) -> None:
        if self.config_error is not None:
            log.info("plugins.toml matches the running configuration again")
        self.config_error = None

    async def _watch_config(self) -> None:
        while True:
            await anyio.sleep(self.config.server.config_reload_interval_s)
            await self.reload_config()

    def _set_config(self, config: MorpheusConfig) -> None:
        self.config = config
        self.registry.config = config


@asynccontextmanager
async def _tracked(spec: UtteranceSpec, text: str | None) -> AsyncIterator[Utterance]:
    """An utterance its engine knows about, so unloading can drain or abort it.

    It counts as open until every stage has stopped, including an engine step in flight.
    """
    aborted: list[BaseException] = []
    running: list[Utterance] = []

    def abort(exc: BaseException) -> None:
        aborted.append(exc)
        for utterance in running:
            utterance.cancel()

    key = spec.engine.track(abort)
    try:
        async with open_utterance(spec, text) as utterance:
            running.append(utterance)
            if aborted:
                utterance.cancel()
            yield utterance
    finally:
        spec.engine.untrack(key)
    if aborted:
        raise aborted[0]
