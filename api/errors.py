"""OpenAI's error envelope for every error the API answers, and JSON bodies decoded into it.

Every error leaves the server as `{"error": {"message", "type", "param", "code"}}` (all four
keys present) with OpenAI's status codes, so the official SDKs raise their typed errors
(`BadRequestError`, `NotFoundError`, ...) with a message that names the bad field.

The public API is small:

- `OpenAIError`: raise it from a handler, guard or dependency; its fields are the envelope's.
- `decode_body(body, Struct)`: strict msgspec decoding whose failures (malformed JSON, unknown
  or missing fields, wrong types, bad enum values) become 400 `OpenAIError`s naming the field.
- `EXCEPTION_HANDLERS`: pass to `Litestar(exception_handlers=...)`; it renders `OpenAIError`,
  Litestar's HTTP errors (404 unknown route, 405, 413 body too large, validation errors),
  `UnknownComponentError` and unexpected exceptions (500) in the envelope.
- `require_api_key`: a guard that answers 401 unless `Authorization: Bearer $MORPHEUS_API_KEY`
  (open when that variable is unset).
"""

from __future__ import annotations

import logging
import re
import typing
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import BaseRouteHandler
from morpheus_tts.api.security import API_KEY_ENV, configured_admin_key, key_matches, presented_key
from morpheus_tts.host.config import read_environment
from morpheus_tts.host.errors import MorpheusError
from morpheus_tts.host.registry import UnknownComponentError

log = logging.getLogger(__name__)

T = TypeVar("T")

# The `type` OpenAI uses for each status (the SDKs pick their exception class by status).
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}


class OpenAIError(MorpheusError):
    """An error answered as OpenAI's envelope.

    Args:
        status_code: the HTTP status (400, 401, 404, 413, 422, 429, 5xx).
        message: what went wrong and how to fix it.
        type: OpenAI's error type; by default the one OpenAI uses for `status_code`.
        param: the request field at fault, if any (`"input"`, `"voice.id"`).
        code: OpenAI's machine-readable code (`"invalid_value"`, `"model_not_found"`).
        headers: extra response headers (`Retry-After` for 429).
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,  # noqa: A002 - the envelope's own key name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type or _default_type(status_code)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, dict[str, Any]]:
        """The JSON body: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_response(self) -> Response[dict[str, Any]]:
        """The Litestar response carrying the envelope, status and headers."""
        return Response(
            self.envelope(),
            status_code=self.status_code,
            headers=self.headers,
            media_type="application/json",
        )


def invalid_value(message: str, param: str | None, code: str = "invalid_value") -> OpenAIError:
    """A 400 `invalid_request_error` about one field."""
    return OpenAIError(400, message, param=param, code=code)


def _default_type(status_code: int) -> str:
    if status_code >= 500:
        return "server_error"
    return _TYPE_BY_STATUS.get(status_code, "invalid_request_error")


# -- strict JSON bodies ----------------------------------------------------------------------

_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")
_EXPECTED = re.compile(r"Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`")
_ENUM = re.compile(r"Invalid enum value (?P<value>.+?)(?: - at |$)")
_AT = re.compile(r" - at `\$(?P<at>[^`]*)`")

_JSON_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a decimal",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}

MALFORMED_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The API expects a JSON payload, but what was sent was "
    "not valid JSON.)"
)


TOO_DEEP = (
    "The JSON body is nested too deeply. Send objects and arrays at most a few levels deep."
)


def decode_body(body: bytes, struct: type[T]) -> T:
    """Decode a JSON request body into `struct`, strictly.

    Args:
        body: the raw request body.
        struct: a msgspec Struct type (`forbid_unknown_fields=True` makes extra keys errors).

    Raises:
        OpenAIError: 400 with OpenAI's message, `param` and `code` for malformed JSON
            (`code` null), a non-object body (`invalid_type`), an unknown field
            (`unknown_parameter`), a missing one (`missing_required_parameter`), a wrong type
            (`invalid_type`) or a value outside an enum (`invalid_value`); a body nested
            deeper than the decoder's recursion limit (`json_too_deep`).
    """
    try:
        return msgspec.json.decode(body, type=struct)
    except msgspec.ValidationError as exc:
        raise _describe(str(exc), struct) from None
    except msgspec.DecodeError:
        raise OpenAIError(400, MALFORMED_JSON) from None
    except RecursionError:
        raise OpenAIError(400, TOO_DEEP, code="json_too_deep") from None


def _describe(message: str, struct: type) -> OpenAIError:
    at = _AT.search(message)
    path = _param(at.group("at")) if at else ""
    if match := _UNKNOWN.match(message):
        param = _join(path, match.group("field"))
        return invalid_value(f"Unknown parameter: '{param}'.", param, "unknown_parameter")
    if match := _MISSING.match(message):
        param = _join(path, match.group("field"))
        return invalid_value(
            f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
        )
    if match := _EXPECTED.match(message):
        expected = " or ".join(
            _JSON_NAMES.get(name.strip(), name.strip())
            for name in match.group("expected").split("|")
        )
        got = _JSON_NAMES.get(match.group("got"), match.group("got"))
        target = f"'{path}'" if path else "request body"
        return invalid_value(
            f"Invalid type for {target}: expected {expected}, but got {got} instead.",
            path or None,
            "invalid_type",
        )
    if match := _ENUM.match(message):
        choices = _literal_values(struct, path)
        supported = ", ".join(f"'{choice}'" for choice in choices)
        value = match.group("value").strip()
        hint = f" Supported values are: {supported}." if supported else ""
        return invalid_value(f"Invalid value: {value}.{hint}", path or None)
    reason = _AT.sub("", message)
    target = f"'{path}'" if path else "request body"
    return invalid_value(f"Invalid {target}: {reason}.", path or None)


def _param(at: str) -> str:
    # `$.options[...]` -> "options"; `$.voice.id` -> "voice.id"; `$[0]` -> "".
    return re.sub(r"\[[^\]]*\]", "", at).strip(".")


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _literal_values(struct: type, path: str) -> tuple[Any, ...]:
    """The allowed values of a top-level Literal field, in declared order, for the message."""
    try:
        annotation = typing.get_type_hints(struct).get(path)
    except (NameError, TypeError):
        return ()
    values: list[Any] = []
    pending = [annotation]
    while pending:
        current = pending.pop(0)
        if typing.get_origin(current) is typing.Literal:
            values.extend(typing.get_args(current))
        else:
            pending.extend(typing.get_args(current))
    return tuple(values)


def model_not_found(exc: UnknownComponentError) -> OpenAIError:
    """The 404 `model_not_found` error for an unknown model (or engine) name."""
    available = ", ".join(sorted(exc.available)) or "none loaded"
    return OpenAIError(
        404,
        f"The model '{exc.name}' does not exist or is not loaded. Available: {available}.",
        param="model",
        code="model_not_found",
    )


def invalid_voice(exc: UnknownComponentError) -> OpenAIError:
    """The 400 `invalid_value` error for a voice the chosen engine does not have."""
    return invalid_value(str(exc), "voice")


# -- authentication --------------------------------------------------------------------------


async def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Litestar guard: 401 unless the request carries `Bearer $MORPHEUS_API_KEY`.

    With the variable unset the API is open (any key the SDK sends is accepted). The admin key
    opens it too. `api.security.SecurityMiddleware` applies the same rule to every route.
    Async on purpose: Litestar runs a sync guard in the event loop's default thread pool, a
    thread hop on every request and a pool that never shrinks.
    """
    expected = read_environment().api_key
    if not expected:
        return
    admin = configured_admin_key(connection.app.state.runtime)
    if not key_matches(presented_key(dict(connection.headers)), expected, admin):
        raise OpenAIError(
            401,
            "Incorrect API key provided. Pass it as `Authorization: Bearer <key>` (the key "
            f"the server was started with in ${API_KEY_ENV}).",
            code="invalid_api_key",
        )


# -- exception handlers ----------------------------------------------------------------------


def _openai_error(_: Request, exc: OpenAIError) -> Response[dict[str, Any]]:
    return exc.to_response()


def _http_error(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    code: str | None = None
    if status == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
        detail = str(exc.detail or "")
        if detail and detail.lower() not in ("not found", ""):
            message = detail
    elif status == 405:
        message = f"Invalid method for URL ({request.method} {request.url.path})"
    elif status == 413:
        message = "Request body too large; the limit for this endpoint is lower than its size."
        code = "request_too_large"
    elif isinstance(exc, ValidationException):
        message = _validation_message(exc)
    else:
        message = str(exc.detail or exc)
    headers = dict(exc.headers or {})
    if status == 429:
        headers.setdefault("Retry-After", "1")
        code = "rate_limit_exceeded"
    return OpenAIError(status, message, code=code, headers=headers).to_response()


def _validation_message(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    details = "; ".join(
        f"{item.get('key', '')}: {item.get('message', '')}".strip(": ")
        for item in extra
        if isinstance(item, dict)
    )
    detail = str(exc.detail or "Invalid request")
    if "JSON" in detail or "decode" in detail.lower():
        return MALFORMED_JSON
    return f"{detail}: {details}" if details else detail


def _unknown_component(_: Request, exc: UnknownComponentError) -> Response[dict[str, Any]]:
    if exc.kind in ("engine", "model"):
        return model_not_found(exc).to_response()
    if exc.kind == "voice":
        return invalid_voice(exc).to_response()
    return OpenAIError(404, str(exc), code=f"{exc.kind}_not_found").to_response()


def _server_error(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    # The log has the traceback; the client gets no internals (the request id finds the log).
    log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return OpenAIError(
        500, "The server had an error while processing your request. Retry, or report the "
        "X-Request-Id of this response."
    ).to_response()


_MODULE_REPR = re.compile(r"<module '([^']+)'(?: from '[^']*')?>")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s'\"/:,;()<>]+)+/([^\s'\"/:,;()<>]*)")


def scrub(message: str, limit: int = 300) -> str:
    """A message fit for a client: its first line, no absolute paths (only a file's name), no
    module reprs, at most `limit` characters. Logs keep the full text."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = _MODULE_REPR.sub(r"module '\1'", first)
    first = _ABSOLUTE_PATH.sub(r"\1", first)
    return first if len(first) <= limit else first[: limit - 1] + "…"


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    OpenAIError: _openai_error,
    HTTPException: _http_error,
    UnknownComponentError: _unknown_component,
    Exception: _server_error,
}
"""Litestar `exception_handlers`: every error in OpenAI's envelope."""


