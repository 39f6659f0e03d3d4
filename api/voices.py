"""Voice prompts: `POST /v1/audio/voices` registers a cloned voice, `DELETE` removes it.

A voice is registered on an engine with `voice_cloning=True` (`VoicePrompts.add_voice`),
which encodes the reference recording once; the engine then lists the name among its
`capabilities.voices`, so `GET /v1/audio/voices` shows it (whatever that listing's shape) and
requests use it as `"voice": name`.

Bodies:
- multipart/form-data: `name`, a `file` (any format FFmpeg reads: wav, mp3, flac, ogg...),
  optional `model` (the engine, or a model alias);
- JSON: `{"name": ..., "audio": <base64 of the file>, "model": ...}`.

Limits: the file at most `MAX_VOICE_BYTES`, the audio between `MIN_VOICE_S` and `MAX_VOICE_S`.
Every refusal is an OpenAI error envelope naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

import msgspec
import numpy as np
from litestar import Request, delete, post
from litestar.datastructures import State, UploadFile
from litestar.params import FromPath
from morpheus_tts.api.errors import OpenAIError, invalid_value, require_api_key
from morpheus_tts.api.openapi import documented, error_responses
from morpheus_tts.host.aliases import AliasResolver
from morpheus_tts.host.registry import LoadedEngine, UnknownComponentError
from morpheus_tts.host.runtime import Runtime
from morpheus_tts.host.steps import run_locked

MAX_VOICE_BYTES = 10 * 1024 * 1024
MIN_VOICE_S, MAX_VOICE_S = 1.0, 30.0
VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UPLOADS_KEY = "uploaded_voices"  # app state: voice name -> engine name


class VoiceBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The JSON body of `POST /v1/audio/voices`."""

    name: str
    audio: str
    model: str | None = None


def _uploads(state: State) -> dict[str, str]:
    uploads = state.get(UPLOADS_KEY)
    if uploads is None:
        uploads = state[UPLOADS_KEY] = {}
    return uploads


async def _read_body(request: Request) -> tuple[str, bytes, str | None]:
    """(name, audio file bytes, model) from a multipart or JSON body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        name, upload, model = form.get("name"), form.get("file"), form.get("model")
        if not isinstance(upload, UploadFile):
            raise invalid_value(
                "Missing the reference recording: send it as the multipart field 'file'.",
                "file", "missing_required_parameter",
            )
        if not isinstance(name, str):
            raise invalid_value("Missing the voice name: send the field 'name'.", "name",
                                "missing_required_parameter")
        data = await upload.read()
        return name, data, model if isinstance(model, str) and model else None
    try:
        body = msgspec.json.decode(await request.body(), type=VoiceBody)
    except msgspec.ValidationError as exc:
        raise invalid_value(f"Invalid voice body: {exc}.", None) from None
    except msgspec.DecodeError:
        raise invalid_value(
            "Send multipart/form-data (name + file) or JSON {name, audio: base64}.", None
        ) from None
    try:
        data = base64.b64decode(body.audio, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_value("'audio' must be base64 of an audio file.", "audio") from None
    return body.name, data, body.model


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """A file's audio as mono float32 and its sample rate (FFmpeg through PyAV).

    Raises:
        OpenAIError: 400 (param file) when it is no audio FFmpeg can read.
    """
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            rate = stream.rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts = [
                out.to_ndarray().reshape(-1)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise invalid_value(
            f"The reference recording is not audio that can be decoded ({exc}); send a wav, "
            "mp3, flac or ogg file.", "file",
        ) from None
    audio = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    return audio, rate


def _cloning_engine(runtime: Runtime, model: str | None) -> LoadedEngine:
    engines = runtime.registry.engines
    if model is not None:
        resolver = AliasResolver(runtime.config, engines)
        try:
            name, _ = resolver.engine_for(model)
        except UnknownComponentError as exc:
            raise OpenAIError(404, str(exc), param="model", code="model_not_found") from None
        loaded = engines[name]
        if not loaded.engine.capabilities.voice_cloning:
            raise invalid_value(
                f"Engine {name!r} does not clone voices; pick one with voice_cloning: "
                f"{_cloners(runtime) or 'none loaded'}.", "model",
            )
        return loaded
    default = engines.get(runtime.default_engine)
    if default is not None and default.engine.capabilities.voice_cloning:
        return default
    cloners = [e for e in engines.values() if e.engine.capabilities.voice_cloning]
    if not cloners:
        raise invalid_value("No loaded engine clones voices (voice_cloning).", "model")
    return cloners[0]


def _cloners(runtime: Runtime) -> str:
    return ", ".join(
        n for n, e in runtime.registry.engines.items() if e.engine.capabilities.voice_cloning
    )


VOICE_FORM = {
    "type": "object",
    "required": ["name", "file"],
    "properties": {
        "name": {"type": "string", "description": "the voice's name in requests"},
        "file": {"type": "string", "format": "binary", "description": "the reference recording"},
        "model": {"type": "string", "description": "the cloning engine (default: the first)"},
    },
}


@post(
    "/v1/audio/voices", guards=[require_api_key], status_code=201,
    request_max_body_size=MAX_VOICE_BYTES * 2,
    operation_class=documented(VoiceBody, multipart=VOICE_FORM),
    responses=error_responses(400, 401, 404, 413),
)
async def create_voice(request: Request, state: State) -> dict[str, Any]:
    """Register a cloned voice from a reference recording (multipart or base64 JSON)."""
    runtime: Runtime = state.runtime
    name, data, model = await _read_body(request)
    if not VOICE_NAME.match(name):
        raise invalid_value(
            f"Voice name {name!r} must be 1-64 letters, digits, '_', '-' or '.', starting with "
            "a letter or digit.", "name",
        )
    if len(data) > MAX_VOICE_BYTES:
        raise OpenAIError(413, f"The recording is {len(data)} bytes; at most "
                          f"{MAX_VOICE_BYTES} are accepted.", param="file",
                          code="file_too_large")
    loaded = _cloning_engine(runtime, model)
    if name in loaded.engine.capabilities.voices:
        raise invalid_value(
            f"Engine {loaded.name!r} already has a voice {name!r}; delete it first or pick "
            "another name.", "name", "voice_exists",
        )
    audio, rate = decode_audio(data)
    seconds = len(audio) / rate if rate else 0.0
    if not MIN_VOICE_S <= seconds <= MAX_VOICE_S:
        raise invalid_value(
            f"The recording lasts {seconds:.2f} s; a voice prompt lasts {MIN_VOICE_S:g} to "
            f"{MAX_VOICE_S:g} s.", "file", "invalid_duration",
        )
    failure: list[Exception] = []

    def add() -> None:
        try:
            loaded.engine.add_voice(name, audio, rate)  # type: ignore[attr-defined]
        except ValueError as exc:
            failure.append(exc)

    await run_locked(loaded, add)
    if failure:
        raise invalid_value(f"The engine refused the recording: {failure[0]}", "file")
    _uploads(state)[name] = loaded.name
    return {"object": "voice", "name": name, "engine": loaded.name,
            "duration_s": round(seconds, 3), "sample_rate": rate}


@delete(
    "/v1/audio/voices/{name:str}", guards=[require_api_key], status_code=200,
    responses=error_responses(401, 404),
)
async def delete_voice(state: State, name: FromPath[str]) -> dict[str, Any]:
    """Remove a voice registered with `POST /v1/audio/voices`."""
    runtime: Runtime = state.runtime
    uploads = _uploads(state)
    engine = uploads.get(name)
    loaded = runtime.registry.engines.get(engine) if engine else None
    if loaded is None:
        uploads.pop(name, None)
        raise OpenAIError(
            404, f"No uploaded voice {name!r}; uploaded: {', '.join(sorted(uploads)) or 'none'}.",
            param="name", code="voice_not_found",
        )
    await run_locked(loaded, lambda: loaded.engine.remove_voice(name))  # type: ignore[attr-defined]
    del uploads[name]
    return {"object": "voice", "name": name, "engine": loaded.name, "deleted": True}


ROUTES = [create_voice, delete_voice]
"""The route handlers of this module."""
