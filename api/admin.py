"""Operating the server at runtime: `/plugins`, `/adapters` and `/config`.

Reads are open. Writes (`POST /plugins`, `DELETE /plugins/{name}`, `POST /config`) need the
admin key when one is configured (`$MORPHEUS_ADMIN_KEY` or `[server] admin_key`), sent as
`Authorization: Bearer <key>` or `X-Admin-Key: <key>`. `POST /plugins` imports a module only if
it matches a pattern of `[server] plugin_modules` (fnmatch, default `["morpheus_tts.plugins.*"]`);
installed entry points are always allowed, since installing a distribution already trusted it.
Changes apply to new requests at once; nothing is written back to plugins.toml.
"""

from __future__ import annotations

import hmac
import re
from fnmatch import fnmatchcase
from typing import Any

import msgspec
from litestar import Request, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, FromQuery
from morpheus_tts.api.errors import OpenAIError, decode_body, invalid_value, scrub
from morpheus_tts.api.openapi import documented, error_responses
from morpheus_tts.api.security import ADMIN_KEY_ENV, configured_admin_key
from morpheus_tts.host.config import ConfigError, PluginEntry
from morpheus_tts.host.registry import PluginRecord, Registry, UnknownComponentError
from morpheus_tts.host.runtime import Runtime

PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def admin_key(runtime: Runtime) -> str | None:
    """The configured admin key: the environment wins over plugins.toml."""
    return configured_admin_key(runtime)


async def require_admin_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Litestar guard: 401 unless the request carries the admin key (open when none is set).

    Async, like every guard here: Litestar runs a sync guard in a worker thread per request.
    """
    expected = admin_key(connection.app.state.runtime)
    if not expected:
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else connection.headers.get("x-admin-key")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise OpenAIError(
            401,
            "This endpoint needs the admin key: send `Authorization: Bearer <key>` or "
            f"`X-Admin-Key: <key>` (the server's ${ADMIN_KEY_ENV} or [server] admin_key).",
            code="invalid_admin_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _runtime(state: State) -> Runtime:
    return state.runtime


# -- /plugins --------------------------------------------------------------------------------


class PluginLoad(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /plugins`: exactly one of `module` or `entry_point`, plus its settings."""

    name: str
    module: str | None = None
    entry_point: str | None = None
    settings: dict[str, Any] = {}


def plugin_json(record: PluginRecord, registry: Registry) -> dict[str, Any]:
    """One plugin as `GET /plugins` lists it."""
    kinds = sorted({component.split(":", 1)[0] for component in record.components})
    engines = {}
    for component in record.components:
        kind, _, name = component.partition(":")
        loaded = registry.engines.get(name) if kind == "engine" else None
        if loaded is not None:
            engines[name] = _engine_health(loaded.engine)
    ready = record.state == "loaded" and all(h.get("ready") for h in engines.values())
    return {
        "name": record.name,
        "kind": ",".join(kinds) or None,
        "components": record.components,
        "source": record.source,
        "module": record.module,
        "entry_point": record.entry_point,
        "version": record.version,
        "state": record.state,
        "health": {"ready": ready, "engines": engines},
        "error": scrub(record.error) if record.error else None,
    }


def _engine_health(engine: Any) -> dict[str, Any]:
    try:
        return dict(engine.health())
    except Exception as exc:  # noqa: BLE001 - a broken health() is itself the health report
        return {"ready": False, "error": f"{type(exc).__name__}: {exc}"}


@get("/plugins", sync_to_thread=False)
def list_plugins(state: State) -> dict[str, Any]:
    """Every plugin the host knows: loaded, failed, draining or disabled."""
    registry = _runtime(state).registry
    return {"plugins": [plugin_json(r, registry) for r in registry.records.values()]}


@post(
    "/plugins", guards=[require_admin_key], status_code=201,
    operation_class=documented(PluginLoad), responses=error_responses(400, 401, 403, 409, 422),
)
async def load_plugin(request: Request, state: State) -> dict[str, Any]:
    """Load a plugin now: `{name, module | entry_point, settings}`."""
    body = decode_body(await request.body(), PluginLoad)
    runtime = _runtime(state)
    if not PLUGIN_NAME.match(body.name):
        raise invalid_value(
            "plugin names are 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
            "digit",
            "name",
        )
    if (body.module is None) == (body.entry_point is None):
        raise invalid_value("give exactly one of `module` or `entry_point`", "module")
    if body.module is not None:
        allowed = runtime.config.server.plugin_modules
        if not any(fnmatchcase(body.module, pattern) for pattern in allowed):
            raise OpenAIError(
                403,
                f"module {body.module!r} is not in the allow-list {allowed}; add a pattern to "
                "[server] plugin_modules in plugins.toml, or install the plugin as a "
                "distribution and load it by `entry_point`",
                param="module",
                code="module_not_allowed",
            )
    existing = runtime.registry.records.get(body.name)
    if existing is not None and existing.state in ("loaded", "draining"):
        raise OpenAIError(
            409,
            f"plugin {body.name!r} is already {existing.state}; DELETE /plugins/{body.name} "
            "first",
            param="name",
            code="plugin_exists",
        )
    entry = PluginEntry(module=body.module, entry_point=body.entry_point, settings=body.settings)
    record = await runtime.load_plugin(body.name, entry)
    if body.module is not None and record.source == "plugins.toml":
        record.source = "api"  # the registry labels every non-built-in module by the file
    if record.state == "failed":
        raise OpenAIError(
            422,
            f"plugin {body.name!r} failed to load: {scrub(record.error or 'unknown error')}",
            param="module" if body.module else "entry_point",
            code="plugin_load_failed",
        )
    return plugin_json(record, runtime.registry)


@delete(
    "/plugins/{name:str}", guards=[require_admin_key], status_code=200,
    responses=error_responses(401, 404),
)
async def unload_plugin(
    state: State, name: FromPath[str], drain: FromQuery[bool] = False
) -> dict[str, Any]:
    """Unload a plugin now.

    `?drain=true` lets open streams finish (up to `[server] drain_timeout_s`); otherwise they
    end at once with an error event.
    """
    runtime = _runtime(state)
    try:
        record = await runtime.unload_plugin(name, drain=drain)
    except UnknownComponentError as exc:
        raise OpenAIError(404, str(exc), param="name", code="plugin_not_found") from None
    return {"name": record.name, "state": "unloaded", "drained": drain}


# -- /adapters -------------------------------------------------------------------------------


@get("/adapters", sync_to_thread=False)
def list_adapters(state: State) -> dict[str, Any]:
    """The loaded engines with their health and capabilities."""
    runtime = _runtime(state)
    default = runtime.default_engine
    adapters = [
        {
            "name": name,
            "plugin": loaded.plugin,
            "default": name == default,
            "health": _engine_health(loaded.engine),
            "capabilities": msgspec.to_builtins(loaded.engine.capabilities),
            "open_streams": loaded.open_utterances,
        }
        for name, loaded in sorted(runtime.registry.engines.items())
    ]
    return {"default": default, "failover": runtime.config.server.failover, "adapters": adapters}


# -- /config ---------------------------------------------------------------------------------


class ConfigUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /config`: the `[server]` settings that may change at runtime; omit the rest.

    `tts_backend` is the original spec's name for `default_engine`.
    """

    tts_backend: str | msgspec.UnsetType = msgspec.UNSET
    default_engine: str | msgspec.UnsetType = msgspec.UNSET
    default_voice: str | None | msgspec.UnsetType = msgspec.UNSET
    chunker: str | msgspec.UnsetType = msgspec.UNSET
    stitcher: str | msgspec.UnsetType = msgspec.UNSET
    failover: list[str] | msgspec.UnsetType = msgspec.UNSET
    first_chunk_tokens: int | msgspec.UnsetType = msgspec.UNSET
    target_chunk_tokens: int | msgspec.UnsetType = msgspec.UNSET
    min_chunk_tokens: int | msgspec.UnsetType = msgspec.UNSET
    max_chunk_tokens: int | msgspec.UnsetType = msgspec.UNSET
    lock_chunk_tokens: int | None | msgspec.UnsetType = msgspec.UNSET
    playback_buffer_ms: float | msgspec.UnsetType = msgspec.UNSET
    buffer_min_ms: float | msgspec.UnsetType = msgspec.UNSET
    buffer_max_ms: float | msgspec.UnsetType = msgspec.UNSET
    session_idle_timeout_s: float | msgspec.UnsetType = msgspec.UNSET
    max_sessions: int | msgspec.UnsetType = msgspec.UNSET
    drain_timeout_s: float | msgspec.UnsetType = msgspec.UNSET


def config_json(runtime: Runtime) -> dict[str, Any]:
    """The running `[server]` settings (never the admin key itself, nor where the file is)."""
    server = msgspec.to_builtins(runtime.config.server)
    server.pop("admin_key", None)
    return {
        "tts_backend": runtime.default_engine,
        **server,
        "admin_key_set": admin_key(runtime) is not None,
        "engines": sorted(runtime.registry.engines),
        "config_error": scrub(runtime.config_error) if runtime.config_error else None,
    }


@get("/config", sync_to_thread=False)
def get_config(state: State) -> dict[str, Any]:
    """The settings new requests get."""
    return config_json(_runtime(state))


@post(
    "/config", guards=[require_admin_key], status_code=200,
    operation_class=documented(ConfigUpdate), responses=error_responses(400, 401),
)
async def update_config(request: Request, state: State) -> dict[str, Any]:
    """Change settings for new requests at once (`{"tts_backend": "piper"}` switches engine)."""
    body = decode_body(await request.body(), ConfigUpdate)
    changes = {
        field: value
        for field in body.__struct_fields__
        if (value := getattr(body, field)) is not msgspec.UNSET
    }
    backend = changes.pop("tts_backend", None)
    if backend is not None:
        if changes.setdefault("default_engine", backend) != backend:
            raise invalid_value("tts_backend and default_engine disagree; send one", "tts_backend")
    runtime = _runtime(state)
    for name in changes.get("failover", []):
        if name not in runtime.registry.engines:
            available = ", ".join(sorted(runtime.registry.engines)) or "none loaded"
            message = f"failover engine {name!r} is not loaded; available: {available}"
            raise invalid_value(message, "failover", code="engine_not_found")
    try:
        _check_voice(runtime, changes)
        runtime.update_server(**changes)
    except ConfigError as exc:
        named = [field for field in changes if f"server.{field}" in str(exc)]
        raise invalid_value(str(exc), named[0] if named else None) from None
    except UnknownComponentError as exc:
        param = {"engine": "default_engine", "voice": "default_voice"}.get(exc.kind, exc.kind)
        raise invalid_value(str(exc), param, code=f"{exc.kind}_not_found") from None
    return config_json(runtime)


def _check_voice(runtime: Runtime, changes: dict[str, Any]) -> None:
    voice = changes.get("default_voice")
    if voice is None:
        return
    engine = runtime.registry.engine(changes.get("default_engine", runtime.default_engine))
    voices = list(engine.engine.capabilities.voices)
    if voice not in voices:
        raise UnknownComponentError("voice", voice, voices, where=f" for engine {engine.name!r}")


ROUTES = [list_plugins, load_plugin, unload_plugin, list_adapters, get_config, update_config]
