"""What clients read to fill their pickers: `GET /v1/audio/voices`, `/v1/audio/models`, `/v1/`.

Open WebUI's audio settings read `{base}/audio/voices` as `{"voices": [{"id", "name"}]}` and
`{base}/audio/models` as `{"models": [{"id"}]}`, and send no API key with either; LiveKit's
OpenAI plugin prewarms its connection with `GET {base}/`. So these three answer without a key,
unless `[server] discovery_requires_key` is true (then `$MORPHEUS_API_KEY` guards them like the
speech endpoint). The Orpheus-FastAPI list of voice names is still served, at
`GET /v1/audio/voices?legacy=true`.
"""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromQuery
from morpheus_tts.api.errors import require_api_key
from morpheus_tts.api.openapi import error_responses
from morpheus_tts.api.speech import model_objects
from morpheus_tts.host.aliases import AliasResolver
from morpheus_tts.host.runtime import Runtime


async def discovery_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Open by default (clients list voices without a key); the API key when locked."""
    runtime: Runtime = connection.app.state.runtime
    if runtime.config.server.discovery_requires_key:
        await require_api_key(connection, handler)


def _engines_in_order(runtime: Runtime) -> list[str]:
    return sorted(runtime.registry.engines, key=lambda name: name != runtime.default_engine)


def voice_entries(runtime: Runtime) -> list[dict[str, Any]]:
    """Every loaded engine's voices (the default engine's first), as objects with `id`/`name`.

    A voice's `id` is what `voice` takes: the bare name on the default engine, else
    `engine:voice` (pair it with that engine's model; the bare name also works there).
    """
    resolver = AliasResolver(runtime.config, runtime.registry.engines)
    entries = []
    for engine in _engines_in_order(runtime):
        caps = runtime.registry.engines[engine].engine.capabilities
        default_voice = resolver.default_voice_of(engine)
        for voice in caps.voices:
            language = caps.languages.get(voice)
            entries.append({
                "id": voice if engine == runtime.default_engine else f"{engine}:{voice}",
                "name": voice,
                "engine": engine,
                "languages": [language] if language else [],
                "default": engine == runtime.default_engine and voice == default_voice,
                "details": {
                    "sample_rate": caps.sample_rate,
                    "streaming": caps.streaming,
                    "native_speed": caps.native_speed,
                    "voice_cloning": caps.voice_cloning,
                },
            })
    return entries


def _engine_detail(runtime: Runtime) -> list[dict[str, Any]]:
    resolver = AliasResolver(runtime.config, runtime.registry.engines)
    details = []
    for name in _engines_in_order(runtime):
        caps = runtime.registry.engines[name].engine.capabilities
        details.append({
            "name": name,
            "default": name == runtime.default_engine,
            "voices": list(caps.voices),
            "default_voice": resolver.default_voice_of(name),
            "sample_rate": caps.sample_rate,
            "streaming": caps.streaming,
            "native_speed": caps.native_speed,
            "voice_cloning": caps.voice_cloning,
            "aliases": resolver.describe(name),
        })
    return details


@get(
    "/v1/audio/voices", guards=[discovery_guard], sync_to_thread=False,
    responses=error_responses(400, 401),
)
def list_voices(state: State, legacy: FromQuery[bool] = False) -> dict[str, Any]:
    """The voices as objects (`id`, `name`, `engine`, `languages`, `default`, `details`), plus
    per-engine detail and the alias names; `?legacy=true`: Orpheus-FastAPI's list of names."""
    runtime: Runtime = state.runtime
    voices = voice_entries(runtime)
    if legacy:
        names: list[str] = []
        names.extend(v["name"] for v in voices if v["name"] not in names)
        return {"status": "ok", "voices": names}
    resolver = AliasResolver(runtime.config, runtime.registry.engines)
    return {
        "status": "ok",
        "voices": voices,
        "default_engine": runtime.default_engine,
        "engines": _engine_detail(runtime),
        "aliases": sorted(resolver.voices),
    }


@get(
    "/v1/audio/models", guards=[discovery_guard], sync_to_thread=False,
    responses=error_responses(401),
)
def list_audio_models(state: State) -> dict[str, Any]:
    """Speech models for pickers: `{"models": [{"id", "name", "engine", "owned_by"}]}`."""
    return {
        "models": [
            {"id": m.id, "name": m.id, "engine": m.engine, "owned_by": m.owned_by}
            for m in model_objects(state.runtime)
        ]
    }


@get(
    ["/v1", "/v1/"], guards=[discovery_guard], sync_to_thread=False,
    responses=error_responses(401),
)
def api_root(state: State) -> dict[str, Any]:
    """The API base answers (clients prewarm their connection with it)."""
    runtime: Runtime = state.runtime
    return {
        "object": "morpheus",
        "status": "ok" if runtime.ready() else "starting",
        "default_engine": runtime.default_engine,
        "endpoints": ["/v1/audio/speech", "/v1/audio/voices", "/v1/audio/models", "/v1/models"],
    }


ROUTES = [list_voices, list_audio_models, api_root]
"""The route handlers of this module, for `Litestar(route_handlers=...)`."""
