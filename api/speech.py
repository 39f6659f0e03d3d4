"""OpenAI's speech API: `POST /v1/audio/speech` and `GET /v1/models` (voices: `api.discovery`).

A request is decoded, checked and resolved (model and voice through `host.aliases`) before
anything is synthesized, so every error is an OpenAI envelope with its status code; then
`api.streaming` starts the utterance and streams it, as audio or as SSE events.
"""

from __future__ import annotations

import math
import time
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import Stream
from morpheus_tts.api.encoders import CONTENT_TYPES
from morpheus_tts.api.errors import (
    OpenAIError,
    decode_body,
    invalid_voice,
    model_not_found,
    require_api_key,
)
from morpheus_tts.api.openapi import binary, documented, error_responses
from morpheus_tts.api.schemas import (
    MAX_INPUT_CHARS,
    MAX_SPEECH_BODY_BYTES,
    ModelList,
    ModelObject,
    SpeechRequest,
    check_speech,
    check_text,
)
from morpheus_tts.api.streaming import audio_body, barge_in_job, finish_job, sse_body, start_job
from morpheus_tts.host.aliases import AliasResolver, Resolved
from morpheus_tts.host.registry import UnknownComponentError
from morpheus_tts.host.runtime import Runtime, SpeakRequest

CHARS_PER_TOKEN = 4  # usage: the usual estimate for English text
ENGINE_HEADER, VOICE_HEADER = "X-Morpheus-Engine", "X-Morpheus-Voice"
DEGRADED_HEADER = "X-Morpheus-Degraded"  # the requested engine failed; a failover spoke
STREAM_HEADER = "X-Morpheus-Stream-Id"  # names the response for POST .../{id}/barge-in
_STARTED = int(time.time())

# `response_format` picks the audio type; `stream_format: "sse"` answers events instead.
SPEECH_RESPONSE = (
    "The speech, streamed as it is made (chunked), in `response_format`; or, with "
    "`stream_format: \"sse\"`, `speech.audio.delta` events carrying base64 audio and a final "
    "`speech.audio.done` with usage",
    {
        **{media: binary(f"{fmt} audio") for fmt, media in CONTENT_TYPES.items()},
        "text/event-stream": {"type": "string", "description": "Server-sent events"},
    },
)


# -- resolution and headers ------------------------------------------------------------------


def resolve(runtime: Runtime, model: str | None, voice: str | None) -> Resolved:
    """Resolve model and voice names against the loaded engines.

    Raises:
        OpenAIError: 404 `model_not_found`, 400 `invalid_value` (param voice), or 503 while the
            default engine is still loading.
    """
    resolver = AliasResolver(runtime.config, runtime.registry.engines)
    try:
        return resolver.resolve(model, voice)
    except UnknownComponentError as exc:
        if exc.kind == "voice":
            raise invalid_voice(exc) from None
        if not runtime.ready():
            raise OpenAIError(
                503,
                f"Engine {runtime.default_engine!r} is not ready yet; retry shortly.",
                code="engine_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        raise model_not_found(exc) from None


def audio_headers(resolved: Resolved) -> dict[str, str]:
    """The headers every audio response carries: who actually spoke."""
    headers = {ENGINE_HEADER: resolved.engine, VOICE_HEADER: resolved.voice}
    if resolved.fallback:
        headers["X-Morpheus-Fallback"] = "true"
    return headers


def estimate_tokens(*texts: str | None) -> int:
    """Input tokens of a request: one per four characters, at least one."""
    return max(1, sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts if text))


# -- handlers --------------------------------------------------------------------------------


@post(
    "/v1/audio/speech",
    guards=[require_api_key],
    request_max_body_size=MAX_SPEECH_BODY_BYTES,
    status_code=200,
    after_response=finish_job,
    operation_class=documented(SpeechRequest, responses={200: SPEECH_RESPONSE}),
    responses=error_responses(400, 401, 404, 413, 429, 500, 503),
)
async def create_speech(request: Request, state: State) -> Stream:
    """Speak `input`: audio streamed with chunked transfer, or SSE events with base64 audio."""
    runtime: Runtime = state.runtime
    speech = decode_body(await request.body(), SpeechRequest)
    check_speech(speech)
    text = check_text(speech.input, "input", MAX_INPUT_CHARS)  # what the engine may speak
    resolved = resolve(runtime, speech.model, speech.voice_name)
    speak = SpeakRequest(
        engine=resolved.engine,
        voice=resolved.voice,
        speed=speech.rate,
        options=speech.engine_options(),
        low_latency=speech.low_latency,
        pace=speech.pace,
        response_format=speech.format,
    )
    job = await start_job(request, runtime, speak, text, speech.format)
    headers = {**audio_headers(resolved), **job.timing_headers(), STREAM_HEADER: job.stream_id}
    stats = job.opened.stream.stats
    if stats is not None and stats.degraded:  # failover before the first byte: say who spoke
        headers.update({DEGRADED_HEADER: "true", ENGINE_HEADER: stats.engine})
    if speech.sse:
        tokens = estimate_tokens(speech.input, speech.instructions)
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return Stream(sse_body(job, tokens), media_type="text/event-stream", headers=headers)
    headers["Cache-Control"] = "no-store"
    return Stream(audio_body(job), media_type=job.encoder.content_type, headers=headers)


@post(
    "/v1/audio/speech/{stream_id:str}/barge-in", guards=[require_api_key], status_code=200,
    responses=error_responses(400, 401, 404),
)
async def barge_in_speech(
    state: State, stream_id: FromPath[str], fade_ms: FromQuery[float | None] = None
) -> dict[str, Any]:
    """Stop a streaming response (extension): at most `fade_ms` (0-30, default `[server]
    barge_in_fade_ms`) of faded audio follows, then its body ends as a complete file."""
    job = barge_in_job(state, stream_id, fade_ms)
    return {"stream_id": job.stream_id, "interrupted": True}


def model_objects(runtime: Runtime) -> list[ModelObject]:
    """The loaded engines, then the model aliases that resolve to one of them."""
    resolver = AliasResolver(runtime.config, runtime.registry.engines)
    objects = [
        ModelObject(id=name, created=_STARTED, owned_by=loaded.plugin, engine=name)
        for name, loaded in runtime.registry.engines.items()
    ]
    for alias in resolver.models:
        if alias in runtime.registry.engines:
            continue
        try:
            engine, _ = resolver.engine_for(alias)
        except UnknownComponentError:
            continue  # nothing loaded to fall back to
        objects.append(ModelObject(id=alias, created=_STARTED, owned_by="morpheus", engine=engine))
    return objects


@get("/v1/models", guards=[require_api_key], sync_to_thread=False)
def list_models(state: State) -> ModelList:
    """OpenAI's model list: the loaded engines and the aliases that resolve to one."""
    return ModelList(data=model_objects(state.runtime))


@get(
    "/v1/models/{model_id:str}", guards=[require_api_key], sync_to_thread=False,
    responses=error_responses(401, 404),
)
def retrieve_model(state: State, model_id: FromPath[str]) -> ModelObject:
    """One model, or 404 `model_not_found`."""
    objects = model_objects(state.runtime)
    for model in objects:
        if model.id == model_id:
            return model
    raise model_not_found(UnknownComponentError("model", model_id, [m.id for m in objects]))


ROUTES = [create_speech, barge_in_speech, list_models, retrieve_model]
"""The route handlers of this module, for `Litestar(route_handlers=...)`."""
