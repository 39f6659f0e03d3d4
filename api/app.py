"""The Litestar application factory and its lifespan (plugins loaded at start, released at stop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.response import Response
from litestar.static_files import create_static_files_router
from morpheus_tts.api import admin, discovery, legacy, realtime, sessions, speech, voices
from morpheus_tts.api.errors import EXCEPTION_HANDLERS
from morpheus_tts.api.openapi import openapi_config, viewer_assets
from morpheus_tts.api.security import security_middleware
from morpheus_tts.host.config import MorpheusConfig, load_config, read_environment
from morpheus_tts.host.runtime import Runtime
from morpheus_tts.host.session_manager import SessionManager
from morpheus_tts.observability import Telemetry
from morpheus_tts.observability.logs import RequestContextMiddleware, litestar_logging_config
from morpheus_tts.observability.metrics import (
    http_metrics_middleware,
    metrics_handler,
    metrics_registry,
)
from morpheus_tts.observability.tracing import TracerProvider, configure_tracing, litestar_plugin

if TYPE_CHECKING:
    from morpheus_tts.api.wyoming import WyomingServer

# The web UI ships inside the package (morpheus_tts.web), so a wheel install serves it too.
WEB_DIR = Path(str(resources.files("morpheus_tts.web")))


@get("/health", sync_to_thread=False)
def health(state: State) -> Response[dict]:
    """200 once the default engine is loaded and warmed up, 503 before."""
    runtime: Runtime = state.runtime
    ready = runtime.ready()
    engine = runtime.default_engine
    body = {"status": "ok" if ready else "starting", "default_engine": engine}
    body["active_streams"] = sum(e.open_utterances for e in runtime.registry.engines.values())
    return Response(body, status_code=200 if ready else 503)


def _own_version() -> str:
    try:
        return metadata.version("morpheus-tts")
    except metadata.PackageNotFoundError:
        return "0+unknown"


async def _start_wyoming(runtime: Runtime) -> WyomingServer | None:
    """The Wyoming server on the app's runtime, when `[server] wyoming_port` is set."""
    server = runtime.config.server
    if server.wyoming_port is None:
        return None
    from morpheus_tts.api.wyoming import WyomingServer  # needs the `wyoming` package

    wyoming = WyomingServer(
        runtime, server.wyoming_host or "127.0.0.1", server.wyoming_port,
        zeroconf=server.wyoming_zeroconf,
    )
    await wyoming.start()
    return wyoming


def create_app(
    config: MorpheusConfig | None = None,
    *,
    runtime: Runtime | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Litestar:
    """Build the app. Plugins load in the lifespan, so the port opens at once and `/health`
    answers 503 until the default engine is warm. Traces go to `tracer_provider`, else to the
    one the `OTEL_*` variables describe (none: tracing off); `/metrics` serves Prometheus."""
    read_environment()  # a malformed MORPHEUS_* variable fails the start, not a request
    runtime = runtime or Runtime(config if config is not None else load_config())
    session_manager = SessionManager(runtime)
    provider = tracer_provider or configure_tracing()
    runtime.observer = Telemetry(tracer_provider=provider)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with runtime.running(load_in_background=True):
            session_manager.start()
            wyoming = await _start_wyoming(runtime)
            try:
                yield
            finally:
                if wyoming is not None:
                    await wyoming.stop()
                await session_manager.close_all("shutdown")
        if provider is not None:  # flush the spans still batched
            flush = provider.force_flush if tracer_provider else provider.shutdown
            await anyio.to_thread.run_sync(flush)

    return Litestar(
        route_handlers=[
            health, *speech.ROUTES, *legacy.ROUTES, *sessions.ROUTES, *realtime.ROUTES,
            *admin.ROUTES, *discovery.ROUTES, *voices.ROUTES,
            metrics_handler(metrics_registry(runtime, session_manager)),
            viewer_assets(),
            create_static_files_router(
                path="/", directories=[WEB_DIR], html_mode=True, include_in_schema=False
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        # Origin, API key and Content-Type are checked before any handler reads a body.
        middleware=[
            RequestContextMiddleware, http_metrics_middleware(), security_middleware(runtime)
        ],
        logging_config=litestar_logging_config(),
        plugins=[litestar_plugin(provider)] if provider else [],
        lifespan=[lifespan],
        state=State({"runtime": runtime, "sessions": session_manager}),
        openapi_config=openapi_config("Morpheus", _own_version()),
    )
