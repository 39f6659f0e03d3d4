"""What `/schema` says about the API, and the viewer it is shown in, served with no network.

Handlers decode their JSON bodies by hand (`api.errors.decode_body`) so that every mistake is
answered with OpenAI's exact error message; Litestar therefore can't see their body types.
`documented(...)` gives a route handler an OpenAPI operation class that adds what it can't see
without changing how the request is decoded:

- the request body: the msgspec Struct's JSON schema (from `msgspec.json.schema`, so field
  docs and constraints are the ones the decoder enforces), inlined;
- other response media types (the speech endpoint's audio formats and SSE).

`error_responses(...)` documents the OpenAI error envelope on a handler's 4xx/5xx answers
(Litestar `ResponseSpec`s). `openapi_config()` serves Swagger UI from the files the
`openapi-ui-bundles` package ships, under `/schema/assets/`, so the page renders offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Router
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, RequestBody
from litestar.static_files import create_static_files_router
from openapi_ui_bundles import swagger_ui

SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/assets"


class ErrorDetail(msgspec.Struct):
    """The inside of OpenAI's error envelope; all four keys are always present.

    Args:
        message: what went wrong and how to fix it.
        type: OpenAI's error type (`invalid_request_error`, `server_error`, ...).
        param: the request field at fault (`input`, `voice`), or null.
        code: a machine-readable code (`invalid_value`, `model_not_found`), or null.
    """

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct):
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "Invalid request: the message names the field and the fix",
    401: "Missing or wrong key (`Authorization: Bearer <key>`)",
    403: "Not allowed (a module outside `[server] plugin_modules`)",
    404: "No such model, voice, session, plugin or route",
    409: "The request conflicts with the current state",
    413: "Request body too large",
    415: "Unsupported Content-Type",
    422: "Understood but not possible (a plugin that fails to load)",
    429: "Too many concurrent streams or sessions; retry later",
    500: "The engine or the server failed",
    503: "The engine is still loading; retry after `Retry-After` seconds",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAI's error envelope documented on each of `statuses`, and on 400 (Litestar answers
    a malformed path or query parameter with 400, rendered as the envelope too)."""
    return {
        status: ResponseSpec(
            data_container=ErrorEnvelope,
            description=_ERROR_DESCRIPTIONS[status],
            generate_examples=False,
        )
        for status in sorted({400, *statuses})
    }


def json_schema(struct: type) -> dict[str, Any]:
    """`struct`'s JSON schema with every `$ref` inlined (OpenAPI resolves `$ref` against the
    whole document, where msgspec's `$defs` don't exist). `"default": null` is left out, as
    Litestar drops null values when it renders the document."""
    schema = msgspec.json.schema(struct)
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items() if value is not None}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


def documented(
    body: type | None = None,
    *,
    body_required: bool = True,
    multipart: dict[str, Any] | None = None,
    responses: dict[int, tuple[str, dict[str, dict[str, Any]]]] | None = None,
) -> type[Operation]:
    """An `operation_class` for a route handler that documents what Litestar can't infer.

    Args:
        body: the msgspec Struct the handler decodes its JSON body into.
        body_required: False when an empty body is accepted (all defaults).
        multipart: the JSON schema of a `multipart/form-data` form the handler also reads.
        responses: status -> (description, {media type: JSON schema}) replacing Litestar's
            guess for that status.
    """
    request_body = None
    if body is not None:
        content = {"application/json": OpenAPIMediaType(schema=json_schema(body))}  # type: ignore[arg-type]
        if multipart is not None:
            content["multipart/form-data"] = OpenAPIMediaType(schema=multipart)  # type: ignore[arg-type]
        request_body = RequestBody(content=content, required=body_required)
    overrides = {
        str(status): OpenAPIResponse(
            description=description,
            content={
                media: OpenAPIMediaType(schema=schema)  # type: ignore[arg-type]
                for media, schema in content.items()
            },
        )
        for status, (description, content) in (responses or {}).items()
    }

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if request_body is not None:
                self.request_body = request_body
            if overrides:
                self.responses = {**(self.responses or {}), **overrides}

    return DocumentedOperation


def binary(description: str) -> dict[str, Any]:
    """The JSON schema of a binary body (audio)."""
    return {"type": "string", "format": "binary", "description": description}


# -- the viewer ------------------------------------------------------------------------------

_FAVICON = f'<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">'


def openapi_config(title: str, version: str) -> OpenAPIConfig:
    """`/schema` (Swagger UI) and `/schema/openapi.json`, every asset served locally."""
    viewer = SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        path="/",
        favicon=_FAVICON,
    )
    return OpenAPIConfig(title=title, version=version, path=SCHEMA_PATH, render_plugins=[viewer])


def viewer_assets() -> Router:
    """The static router serving Swagger UI's files (from `openapi-ui-bundles`)."""
    return create_static_files_router(
        path=ASSETS_PATH, directories=[swagger_ui.static_path], include_in_schema=False
    )
