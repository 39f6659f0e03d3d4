"""The plugin registry: loads plugins from plugins.toml and entry points, at start and at runtime.

Every plugin is a module registered with one pluggy PluginManager (project `morpheus`). Loading
calls its hooks, validates its settings, creates its components and starts its engines; any
failure on the way leaves every other plugin untouched and is recorded on the plugin's record
(state "failed" with the reason), which `morpheus plugins` and `GET /plugins` show.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any, Literal

import anyio
import msgspec
import pluggy
from morpheus_tts.host import discovery, hookspecs
from morpheus_tts.host.config import (
    MorpheusConfig,
    PluginEntry,
    convert_settings,
    is_builtin_module,
    read_environment,
)
from morpheus_tts.host.contracts import Chunker, Codec, Component, Engine, Kind, Stitcher
from morpheus_tts.host.errors import MorpheusError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = discovery.ENTRY_POINT_GROUP

State = Literal["loaded", "failed", "disabled", "draining"]


class UnknownComponentError(MorpheusError, LookupError):
    """A request named an engine, voice, chunker or stitcher that is not loaded."""

    def __init__(self, kind: str, name: str, available: list[str], where: str = "") -> None:
        self.kind, self.name, self.available = kind, name, available
        listing = ", ".join(sorted(available)) or "none loaded"
        super().__init__(f"unknown {kind} {name!r}{where}; available: {listing}")


class EngineUnloadedError(MorpheusError, RuntimeError):
    """The engine was unloaded while an utterance was still using it."""


class PluginRecord(msgspec.Struct, kw_only=True):
    """What the host knows about one plugin, loaded or not."""

    name: str
    source: str
    module: str | None = None
    entry_point: str | None = None
    version: str | None = None
    state: State = "disabled"
    error: str | None = None
    components: list[str] = []


TURN_METHODS = ("open_turn", "end_session")  # what `incremental_text=True` promises


def check_engine(name: str, engine: Engine) -> None:
    """Fail a load whose engine does not keep the promises of its capabilities.

    Raises:
        TypeError: `incremental_text=True` without `open_turn`/`end_session`, or
            `voice_cloning=True` without `add_voice`/`remove_voice` (the message names them).
    """
    caps = engine.capabilities
    promised = [
        (caps.incremental_text, "incremental_text=True", TURN_METHODS),
        (caps.voice_cloning, "voice_cloning=True", ("add_voice", "remove_voice")),
    ]
    for flag, what, methods in promised:
        missing = [m for m in methods if not callable(getattr(engine, m, None))]
        if flag and missing:
            raise TypeError(
                f"engine {name!r} declares {what} but does not implement "
                f"{', '.join(missing)}; add {'/'.join(missing)} or drop the flag"
            )


class LoadedEngine:
    """A started engine with the limiter that bounds its blocking calls.

    The limiter has `capabilities.max_concurrent_streams` tokens (1: one step at a time).
    `available` turns False when failover gave up on the engine, and True again once a
    background probe heard it speak (`host.availability`).
    """

    def __init__(self, name: str, plugin: str, engine: Engine) -> None:
        self.name, self.plugin, self.engine = name, plugin, engine
        self.limiter = anyio.CapacityLimiter(engine.capabilities.max_concurrent_streams)
        self.available = True
        self.unavailable_reason: str | None = None
        self._aborts: dict[int, Callable[[BaseException], None]] = {}
        self._next_key = 0
        self._idle: anyio.Event | None = None

    @property
    def open_utterances(self) -> int:
        """Utterances opened on this engine and not yet finished (its active streams)."""
        return len(self._aborts)

    @property
    def turn_shaped(self) -> bool:
        """Text deltas go straight in (`open_turn`) instead of through the chunker."""
        return self.engine.capabilities.incremental_text

    def track(self, abort: Callable[[BaseException], None]) -> int:
        """Register an open utterance; `abort(exc)` stops it with `exc`. Returns its key."""
        self._next_key += 1
        self._aborts[self._next_key] = abort
        return self._next_key

    def untrack(self, key: int) -> None:
        """The utterance registered under `key` has finished."""
        self._aborts.pop(key, None)
        if not self._aborts and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no utterance is open on this engine."""
        while self._aborts:
            self._idle = anyio.Event()
            await self._idle.wait()

    def abort_all(self, exc: BaseException) -> None:
        """Stop every open utterance with `exc` (unload without drain)."""
        for abort in list(self._aborts.values()):
            abort(exc)


class Registry:
    """Holds the plugin manager and every component of every loaded plugin.

    Args:
        config: the decoded plugins.toml.
        entry_points: also load installed distributions of the `morpheus.plugins` group
            (off when `$MORPHEUS_NO_ENTRY_POINTS` is set).
    """

    def __init__(self, config: MorpheusConfig, *, entry_points: bool | None = None) -> None:
        self.config = config
        self.entry_points = (
            not read_environment().no_entry_points if entry_points is None else entry_points
        )
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.engines: dict[str, LoadedEngine] = {}
        self.codecs: dict[str, Codec] = {}
        self.chunkers: dict[str, Callable[[], Chunker]] = {}
        self.stitchers: dict[str, Callable[..., Stitcher]] = {}
        self._owner: dict[tuple[Kind, str], str] = {}
        self._draining: dict[str, LoadedEngine] = {}
        self._entries: dict[str, PluginEntry] = {}  # the entries of the loaded plugins

    # -- discovery ---------------------------------------------------------------------------

    def installed_entry_points(self) -> dict[str, metadata.EntryPoint]:
        """The `morpheus.plugins` entry points loaded at start, by name (none when off)."""
        return discovery.installed_entry_points() if self.entry_points else {}

    async def load_all(self) -> None:
        """Load plugins.toml's plugins in order, then entry points it does not mention."""
        for name, entry in self.config.plugins.items():
            if not entry.enabled:
                self.records[name] = PluginRecord(
                    name=name, source=_source(entry), module=entry.module,
                    entry_point=entry.entry_point, state="disabled",
                )
                continue
            await self.load(name, entry)
        named = {e.entry_point for e in self.config.plugins.values()} | set(self.records)
        for ep_name in self.installed_entry_points():
            if ep_name not in named:
                await self.load(ep_name, PluginEntry(entry_point=ep_name))

    # -- load / unload -----------------------------------------------------------------------

    async def load(self, name: str, entry: PluginEntry) -> PluginRecord:
        """Import, register and start one plugin. Never raises for the plugin's own faults.

        Raises:
            ValueError: a plugin of that name is already loaded.
        """
        if name in self.records and self.records[name].state in ("loaded", "draining"):
            raise ValueError(f"plugin {name!r} is already loaded; unload it first")
        record = PluginRecord(
            name=name, source=_source(entry), module=entry.module, entry_point=entry.entry_point
        )
        self.records[name] = record
        try:
            code = discovery.import_plugin(entry)
            record.version, record.source = code.version, code.source
            peers = [self._entries[other] for other in self._entries if other != name]
            components = discovery.named_for_entry(
                name, entry, discovery.offered_components(name, code.obj),
                [*peers, *(e for n, e in self.config.plugins.items() if n != name)],
            )
            shared = self.pm.is_registered(code.obj)
            self.pm.register(discovery.EntryView(code.obj) if shared else code.obj, name=name)
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's, not ours
            return self._fail(record, exc)
        try:
            await self._start_components(name, components, entry.settings, record)
        except Exception as exc:  # noqa: BLE001
            await self._release(name)
            return self._fail(record, exc)
        self._entries[name] = entry
        record.state = "loaded"
        log.info("plugin loaded", extra={"plugin": name, "components": record.components})
        return record

    async def unload(
        self, name: str, *, drain: bool = False, drain_timeout_s: float = 30.0
    ) -> PluginRecord:
        """Stop a plugin's engines, drop its components and unregister it; memory returns.

        New requests stop seeing its engines at once. With `drain`, open utterances may finish
        (up to `drain_timeout_s`); the rest end with `EngineUnloadedError`.

        Raises:
            UnknownComponentError: no plugin of that name is known.
        """
        record = self.records.get(name)
        if record is None:
            raise UnknownComponentError("plugin", name, list(self.records))
        for kind, component in [k for k, owner in self._owner.items() if owner == name]:
            if kind == "engine" and component not in self._draining:
                self._draining[component] = self.engines.pop(component)
        hidden = [e for e in self._draining.values() if e.plugin == name]
        if drain and any(loaded.open_utterances for loaded in hidden):
            record.state = "draining"
            with anyio.move_on_after(drain_timeout_s):
                for loaded in hidden:
                    await loaded.wait_idle()
        for loaded in hidden:
            loaded.abort_all(EngineUnloadedError(f"engine {loaded.name!r} was unloaded"))
        await self._release(name)
        self.records.pop(name, None)
        gc.collect()
        return msgspec.structs.replace(record, state="disabled", components=[])

    async def _start_components(
        self, name: str, components: list[Component], settings: dict[str, Any],
        record: PluginRecord,
    ) -> None:
        for component in components:
            key = (component.kind, component.name)
            if key in self._owner:
                raise ValueError(
                    f"{component.kind} {component.name!r} is already offered by plugin "
                    f"{self._owner[key]!r}"
                )
            parsed = convert_settings(settings, component.settings, f"plugins.{name}.settings")
            await self._add(name, component, parsed)
            self._owner[key] = name
            record.components.append(f"{component.kind}:{component.name}")

    async def _add(self, plugin: str, component: Component, settings: Any) -> None:
        match component.kind:
            case "engine":
                engine = component.create(settings)
                check_engine(component.name, engine)
                await engine.start()
                self.engines[component.name] = LoadedEngine(component.name, plugin, engine)
            case "codec":
                codec = component.create(settings)
                await codec.start()
                self.codecs[component.name] = codec
            case "chunker":
                factory = functools.partial(component.create, settings)
                factory()  # fail at load, not on the first request
                self.chunkers[component.name] = factory
            case "stitcher":
                self.stitchers[component.name] = functools.partial(component.create, settings)

    async def _release(self, name: str) -> None:
        for key, owner in list(self._owner.items()):
            if owner != name:
                continue
            kind, component = key
            del self._owner[key]
            if kind == "engine":
                loaded = self.engines.pop(component, None) or self._draining.pop(component)
                # Wait for an in-flight blocking step before freeing the model under it.
                async with loaded.limiter:
                    await loaded.engine.stop()
            elif kind == "codec":
                await self.codecs.pop(component).stop()
            elif kind == "chunker":
                del self.chunkers[component]
            else:
                del self.stitchers[component]
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self._entries.pop(name, None)

    def _fail(self, record: PluginRecord, exc: BaseException) -> PluginRecord:
        record.state = "failed"
        record.error = f"{type(exc).__name__}: {exc}"
        record.components = []
        log.warning("plugin failed", extra={"plugin": record.name, "error": record.error})
        return record

    # -- lookups -----------------------------------------------------------------------------

    def engine(self, name: str) -> LoadedEngine:
        """The loaded engine called `name`."""
        try:
            return self.engines[name]
        except KeyError:
            raise UnknownComponentError("engine", name, list(self.engines)) from None

    def new_chunker(self, name: str) -> Chunker:
        """A fresh chunker for one stream."""
        if name not in self.chunkers:
            raise UnknownComponentError("chunker", name, list(self.chunkers))
        return self.chunkers[name]()

    def new_stitcher(self, name: str, sample_rate: int) -> Stitcher:
        """A fresh stitcher for one stream, producing `sample_rate` Hz."""
        if name not in self.stitchers:
            raise UnknownComponentError("stitcher", name, list(self.stitchers))
        return self.stitchers[name](sample_rate=sample_rate)

    def codec(self, name: str) -> Codec:
        """The loaded codec called `name`."""
        if name not in self.codecs:
            raise UnknownComponentError("codec", name, list(self.codecs))
        return self.codecs[name]

    async def close(self) -> None:
        """Unload everything (server shutdown)."""
        for name in reversed(list(self.records)):
            if self.records[name].state in ("loaded", "draining"):
                await self._release(name)
        self.records.clear()
        gc.collect()


def _source(entry: PluginEntry) -> str:
    if entry.module is not None:
        return "built-in" if is_builtin_module(entry.module) else "plugins.toml"
    return "entry point"
