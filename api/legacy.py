"""The old Orpheus-FastAPI surface: `POST /speak` and the files it writes under `/outputs/`.

`POST /speak` with `{"text": ..., "voice": ...}` answers streamed WAV by default, so the old
README's `curl ... -o output.wav` yields a playable file. With `Accept: application/json` it
answers the old JSON `{status, voice, output_file, generation_time}` instead, having written the
WAV to the outputs directory, served at `/outputs/{name}`.

The outputs directory is `$MORPHEUS_OUTPUTS_DIR` (default: `morpheus-outputs` in the system
temp directory). Files get unique names (a uuid) and only the newest `$MORPHEUS_OUTPUTS_KEEP`
(default 100) are kept; files in the directory that Morpheus did not name are never touched.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
import uuid
from pathlib import Path

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import File, Response, Stream
from morpheus_tts.api.encoders import CONTENT_TYPES, pcm16, wav_header
from morpheus_tts.api.errors import OpenAIError, decode_body, require_api_key
from morpheus_tts.api.openapi import binary, documented, error_responses, json_schema
from morpheus_tts.api.schemas import (
    LegacySpeakRequest,
    LegacySpeakResponse,
    check_speed,
    check_text,
)
from morpheus_tts.api.speech import audio_headers, resolve
from morpheus_tts.api.streaming import OUTPUT_RATE, audio_body, finish_job, start_job
from morpheus_tts.host.config import read_environment
from morpheus_tts.host.runtime import Runtime, SpeakRequest

log = logging.getLogger(__name__)

OUTPUTS_DIR_ENV = "MORPHEUS_OUTPUTS_DIR"
OUTPUTS_KEEP_ENV = "MORPHEUS_OUTPUTS_KEEP"
DEFAULT_KEEP = 100
MAX_TEXT_CHARS = 20_000
MAX_BODY_BYTES = 512 * 1024
_OUTPUT_NAME = re.compile(r"^[0-9a-f]{32}\.wav$")


class OutputStore:
    """The directory `/speak` writes WAV files to, with bounded retention.

    Args:
        directory: where files go (created if missing).
        keep: how many of the newest files to keep.
    """

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = max(1, keep)

    @classmethod
    def from_env(cls) -> OutputStore:
        """The store `$MORPHEUS_OUTPUTS_DIR` and `$MORPHEUS_OUTPUTS_KEEP` describe."""
        default = Path(tempfile.gettempdir()) / "morpheus-outputs"
        env = read_environment()
        return cls(Path(env.outputs_dir or default), env.outputs_keep)

    def path(self, name: str) -> Path | None:
        """The file called `name`, if it is one of ours and still exists."""
        if not _OUTPUT_NAME.match(name):
            return None
        path = self.directory / name
        return path if path.is_file() else None

    def write(self, audio: bytes) -> str:
        """Store a WAV file under a fresh unique name, drop the oldest beyond `keep`.

        Blocking: call it from a worker thread.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.wav"
        partial = self.directory / f".{name}.part"
        partial.write_bytes(audio)
        partial.replace(self.directory / name)  # never serve a half-written file
        self.prune()
        return name

    def prune(self) -> None:
        """Delete our files beyond the newest `keep`."""
        ours = []
        for path in self.directory.iterdir():
            if _OUTPUT_NAME.match(path.name):
                try:
                    ours.append((path.stat().st_mtime_ns, path))
                except FileNotFoundError:
                    continue  # pruned meanwhile by a concurrent request
        ours.sort(reverse=True)
        for _, path in ours[self.keep:]:
            path.unlink(missing_ok=True)


def output_store(state: State) -> OutputStore:
    """The app's output store (created from the environment on first use)."""
    store = state.get("output_store")
    if store is None:
        store = OutputStore.from_env()
        state["output_store"] = store
    return store


def _wants_json(request: Request) -> bool:
    best = request.accept.best_match(["audio/wav", "application/json"], default="audio/wav")
    return best == "application/json"


@post(
    "/speak",
    guards=[require_api_key],
    request_max_body_size=MAX_BODY_BYTES,
    status_code=200,
    after_response=finish_job,
    operation_class=documented(LegacySpeakRequest, responses={200: (
        "Streamed WAV; with `Accept: application/json`, the old JSON answer (the file is "
        "written to the outputs directory)",
        {"audio/wav": binary("wav audio"), "application/json": json_schema(LegacySpeakResponse)},
    )}),
    responses=error_responses(400, 401, 413, 429, 500, 503),
)
async def speak(request: Request, state: State) -> Stream | Response[LegacySpeakResponse]:
    """Speak `text`: streamed WAV, or (`Accept: application/json`) a file and the old JSON."""
    runtime: Runtime = state.runtime
    body = decode_body(await request.body(), LegacySpeakRequest)
    text = check_text(body.text, "text", MAX_TEXT_CHARS)
    check_speed(body.speed)
    resolved = resolve(runtime, None, body.voice)
    # Like the old server, the whole file comes as fast as it is made (no playback pacing).
    speak_request = SpeakRequest(
        engine=resolved.engine, voice=resolved.voice, speed=body.speed, pace=False,
        response_format="wav",
    )
    headers = audio_headers(resolved)
    if not _wants_json(request):
        job = await start_job(request, runtime, speak_request, text, "wav")
        return Stream(audio_body(job), media_type=CONTENT_TYPES["wav"], headers=headers)

    started = time.perf_counter()
    job = await start_job(request, runtime, speak_request, text, "pcm")
    try:
        pcm = [pcm16(samples) async for samples in job.opened.chunks()]
    except Exception as exc:
        log.exception("engine failed on /speak", exc_info=exc)
        raise OpenAIError(500, "The engine failed while speaking; see the server log.",
                          code="engine_error") from None
    finally:
        await job.finish()
    data = b"".join(pcm)
    store = output_store(state)
    name = await anyio.to_thread.run_sync(store.write, wav_header(OUTPUT_RATE, len(data)) + data)
    answer = LegacySpeakResponse(
        status="ok",
        voice=resolved.voice,
        output_file=f"outputs/{name}",
        generation_time=round(time.perf_counter() - started, 2),
        url=f"/outputs/{name}",
        engine=resolved.engine,
    )
    return Response(answer, headers=headers)


@get("/outputs/{name:str}", sync_to_thread=False, responses=error_responses(404))
def output_file(state: State, name: FromPath[str]) -> File:
    """A WAV file written by `/speak` (while retention keeps it)."""
    path = output_store(state).path(name)
    if path is None:
        raise OpenAIError(
            404, f"No output file {name!r}; files are kept for the newest "
            f"{output_store(state).keep} requests only.", code="file_not_found",
        )
    return File(
        path, filename=name, media_type=CONTENT_TYPES["wav"], content_disposition_type="inline"
    )


ROUTES = [speak, output_file]
"""The route handlers of this module, for `Litestar(route_handlers=...)`."""
