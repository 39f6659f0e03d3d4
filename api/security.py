"""Who may call the server: browser origins, body types and API keys, checked before routing.

`SecurityMiddleware` runs for every HTTP request and WebSocket handshake, before any handler
reads a body, so a refusal changes nothing and costs nothing:

1. **Origin** (cross-site requests). A request carrying an `Origin` header (every browser
   request that could change something does) must come from the server's own origin (the
   `Origin` host and port equal the `Host` header) or from `[server] allowed_origins` (exact
   `scheme://host[:port]` strings, or `"*"`). Otherwise: 403 `origin_not_allowed`, and a
   WebSocket is closed before it is accepted. Requests without `Origin` (curl, SDKs, servers)
   are not browser requests and pass.
2. **API key**. With `$MORPHEUS_API_KEY` set, everything needs `Authorization: Bearer <key>`
   (a browser's WebSocket offers it as the subprotocol `openai-insecure-api-key.<key>`)
   except `PUBLIC`: `GET /health`, the OpenAPI schema under `/schema` and the web UI's own
   files. The admin key (`$MORPHEUS_ADMIN_KEY` or `[server] admin_key`, also accepted as
   `X-Admin-Key`) opens everything the API key opens; the admin endpoints need it on top when
   one is set (`api.admin.require_admin_key`). Otherwise: 401 `invalid_api_key`.
3. **Content-Type**. A request with a body must send `application/json`, or
   `multipart/form-data` where an endpoint takes uploads (`MULTIPART_PATHS`). Otherwise: 415
   `unsupported_media_type`. HTML forms can only send the other types, so this closes them off
   even where no `Origin` came.

Errors are OpenAI's envelope, as everywhere else (`api.errors`).
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any
from urllib.parse import urlsplit

from litestar.middleware import DefineMiddleware
from morpheus_tts.host.config import read_environment
from morpheus_tts.host.errors import MorpheusError

API_KEY_ENV = "MORPHEUS_API_KEY"
# A browser's WebSocket cannot send headers: it offers the key as this subprotocol plus a plain
# one (OpenAI's browser convention, `new WebSocket(url, ["realtime", KEY_SUBPROTOCOL + key])`).
KEY_SUBPROTOCOL = "openai-insecure-api-key."
ADMIN_KEY_ENV = "MORPHEUS_ADMIN_KEY"

# Endpoints that take `multipart/form-data` uploads (voice prompts) besides JSON.
MULTIPART_PATHS = frozenset({"/v1/audio/voices"})
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The web UI's files sit at the root (`/`, `/index.html`, `/app.js`); its API calls need the key.
_UI_FILE = re.compile(r"^/[A-Za-z0-9_.-]+\.(?:html|js|mjs|css|svg|png|ico|json|map|txt|woff2?)$")
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}

# Voice and model lists that clients read before they have a key (Open WebUI's settings page,
# LiveKit's prewarm); `[server] discovery_requires_key` locks them.
DISCOVERY_PATHS = frozenset({"/v1", "/v1/", "/v1/audio/voices", "/v1/audio/models"})

PUBLIC = (
    "GET /health", "GET /schema (and below)", "GET the web UI's files (/, /index.html, ...)",
    "GET /v1, /v1/audio/voices and /v1/audio/models (unless [server] discovery_requires_key)",
)
"""What needs no API key, for the docs and the startup log."""


def is_public(method: str, path: str, *, discovery_requires_key: bool = False) -> bool:
    """Whether `method path` is open without the API key (see `PUBLIC`)."""
    if method not in ("GET", "HEAD"):
        return False
    if path in ("/health", "/", "/schema") or path.startswith("/schema/"):
        return True
    if path in DISCOVERY_PATHS:
        return not discovery_requires_key
    return bool(_UI_FILE.match(path))


def configured_admin_key(runtime: Any) -> str | None:
    """The admin key: the environment wins over plugins.toml."""
    return read_environment().admin_key or runtime.config.server.admin_key


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-Admin-Key`, else (a
    WebSocket handshake from a browser, which cannot set headers) the subprotocol
    `openai-insecure-api-key.<key>`."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if admin := headers.get("x-admin-key"):
        return admin
    for protocol in _subprotocols(headers):
        if protocol.startswith(KEY_SUBPROTOCOL) and len(protocol) > len(KEY_SUBPROTOCOL):
            return protocol[len(KEY_SUBPROTOCOL):]
    return None


def chosen_subprotocol(headers: dict[str, str]) -> str | None:
    """The WebSocket subprotocol to answer with: the client's first that carries no key.

    A browser that offers subprotocols closes a connection whose answer names none, so a page
    sending its key as a subprotocol offers a plain one too (`realtime`, as OpenAI's own
    browser clients do); the key itself is never echoed back.
    """
    for protocol in _subprotocols(headers):
        if not protocol.startswith(KEY_SUBPROTOCOL):
            return protocol
    return None


def _subprotocols(headers: dict[str, str]) -> list[str]:
    offered = headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in offered.split(",") if p.strip()]


def key_matches(given: str | None, *expected: str | None) -> bool:
    """Constant-time comparison of `given` against each configured key."""
    if not given:
        return False
    return any(
        hmac.compare_digest(given.encode(), key.encode()) for key in expected if key
    )


def origin_allowed(origin: str, host: str, allowed: list[str]) -> bool:
    """Whether a browser request from `origin` may reach a server reached as `host`."""
    if "*" in allowed:
        return True
    normalised = _normalise_origin(origin)
    if normalised is None:
        return False  # `null` (sandboxed frames, file://) or garbage
    if normalised in {_normalise_origin(entry) for entry in allowed}:
        return True
    scheme, netloc = normalised.split("://", 1)
    return bool(host) and _with_port(netloc, scheme) == _with_port(host.lower(), scheme)


def _normalise_origin(origin: str) -> str | None:
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{parts.scheme}://{_with_port(parts.netloc, parts.scheme)}"


def _with_port(netloc: str, scheme: str) -> str:
    if re.search(r":\d+$", netloc):
        return netloc
    return f"{netloc}:{_DEFAULT_PORTS.get(scheme, '80')}"


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _has_body(headers: dict[str, str]) -> bool:
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "0").strip()
    return not length.isdigit() or int(length) > 0


class Refusal(MorpheusError):
    """A request the middleware turns away, with the envelope's fields."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers


def check(scope: dict[str, Any], runtime: Any) -> None:
    """Apply the three rules to one request or handshake.

    Raises:
        Refusal: 403 foreign origin, 401 missing or wrong key, 415 body not JSON.
    """
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    method = "GET" if scope["type"] == "websocket" else scope["method"].upper()
    path = scope["path"]
    origin = headers.get("origin")
    if origin is not None:
        allowed = list(runtime.config.server.allowed_origins)
        if not origin_allowed(origin, headers.get("host", ""), allowed):
            raise Refusal(
                403,
                f"Requests from origin {origin[:100]!r} are not allowed. Serve the page from "
                "this server, or add the origin to [server] allowed_origins in plugins.toml.",
                "origin_not_allowed", {},
            )
    api_key = read_environment().api_key
    locked = runtime.config.server.discovery_requires_key
    if api_key and not is_public(method, path, discovery_requires_key=locked):
        if not key_matches(presented_key(headers), api_key, configured_admin_key(runtime)):
            raise Refusal(
                401,
                "Incorrect API key provided. Pass it as `Authorization: Bearer <key>` (the key "
                f"the server was started with in ${API_KEY_ENV}).",
                "invalid_api_key", {"WWW-Authenticate": "Bearer"},
            )
    if scope["type"] == "http" and method in _WRITE_METHODS and _has_body(headers):
        media = _media_type(headers)
        accepted = ["application/json"]
        if path in MULTIPART_PATHS:
            accepted.append("multipart/form-data")
        if media not in accepted:
            shown = f"'{media}'" if media else "no Content-Type"
            raise Refusal(
                415,
                f"Unsupported Content-Type {shown} for {method} {path[:100]}: send the body "
                f"as {' or '.join(accepted)} (e.g. `-H 'Content-Type: application/json'`).",
                "unsupported_media_type", {},
            )


class SecurityMiddleware:
    """ASGI middleware applying `check` to every HTTP request and WebSocket handshake.

    Args:
        app: the next ASGI application.
        runtime: the server's runtime (its `[server]` settings are read per request, so a
            hot reload of `allowed_origins` applies at once).
    """

    def __init__(self, app: Any, runtime: Any) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Refuse or pass on one connection."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            check(scope, self.runtime)
        except Refusal as refusal:
            if scope["type"] == "websocket":
                # Closing before accept: the server answers the handshake with HTTP 403.
                await send({"type": "websocket.close", "code": 4000 + refusal.status,
                            "reason": refusal.message[:120]})
                return
            await _send_error(send, refusal)
            return
        await self.app(scope, receive, send)


async def _send_error(send: Any, refusal: Refusal) -> None:
    body = json.dumps({"error": {
        "message": refusal.message,
        "type": "permission_error" if refusal.status == 403 else "invalid_request_error",
        "param": None,
        "code": refusal.code,
    }}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in refusal.headers.items()]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def security_middleware(runtime: Any) -> DefineMiddleware:
    """`SecurityMiddleware` bound to `runtime`, for `Litestar(middleware=[...])`."""
    return DefineMiddleware(SecurityMiddleware, runtime=runtime)
