"""`openai-remote`: any OpenAI-compatible TTS server as a streaming engine.

Another Morpheus, Kokoro-FastAPI, Speaches, vLLM-Omni serving Orpheus or MOSS on GPUs, or
OpenAI itself: each segment is one `POST {base_url}/audio/speech` with `response_format: "pcm"`
(16-bit little-endian mono, 24 kHz in OpenAI's contract), read as it arrives. A network read
may end in the middle of a sample, so an odd byte is carried into the next chunk.

One keep-alive `httpx.AsyncClient` per engine, its pool capped at `max_concurrent_streams`
connections; a request that finds no free connection within `queue_timeout_s` fails as busy.
Remote failures are raised as distinct types, so the host's failover can tell them apart:

- `RemoteRejectedError`: the remote answered 4xx (bad voice, bad key, text too long): the
  request itself is wrong, so retrying it, here or on a replica, gives the same answer;
- `RemoteUnavailableError`: connect refused or timed out, a 5xx, or the response cut off
  mid-stream: the server is down or broken, another engine should take over;
- `RemoteBusyError` (a `RemoteUnavailableError`): 429, or no free stream slot in time;
- `RemoteStalledError`: no byte for `read_timeout_s` while the response was open.

Health comes from a cheap probe (`GET /health`, or `GET /v1/models` where there is none) run
by a background thread every `health_interval_s`, and from each request's outcome.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import httpx
import msgspec
import numpy as np
from morpheus_tts.host import (
    Component,
    EngineCapabilities,
    MorpheusError,
    SynthesisRequest,
    hookimpl,
)

log = logging.getLogger(__name__)

PCM_SCALE = 32767.0  # Morpheus writes round(x * 32767): dividing by it round-trips exactly
_ERROR_DETAIL_CHARS = 300


class RemoteEngineError(MorpheusError, RuntimeError):
    """A remote speech server failed a request.

    Args:
        message: what happened, naming the server.
        status: the HTTP status it answered, if it answered.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteRejectedError(RemoteEngineError, ValueError):
    """The remote refused the request (4xx): not worth retrying anywhere."""


class RemoteUnavailableError(RemoteEngineError, ConnectionError):
    """The remote is unreachable, answered 5xx, or cut the response off: fail over."""


class RemoteBusyError(RemoteUnavailableError):
    """The remote is saturated (429, or no free stream slot within `queue_timeout_s`)."""


class RemoteStalledError(RemoteEngineError, TimeoutError):
    """The response stayed open with no audio for `read_timeout_s`: fail over."""


class OpenAIRemoteSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the `openai-remote` engine.

    Args:
        base_url: the server's API root, e.g. `http://gpu-1:8000/v1` (`/v1` is added if
            missing).
        api_key: bearer token for the remote.
        api_key_env: name of an environment variable holding the token (read at start);
            used when `api_key` is not set.
        model: the `model` field sent with every request.
        voices: the remote voices offered, the first the default; empty: discovered from the
            remote's `GET /v1/audio/voices` (or voices listed in `GET /v1/models`) at start.
        sample_rate: the rate of the remote's `pcm` (OpenAI's is 24000; some servers send
            their model's native rate).
        native_speed: send `speed` to the remote; false: the host time-stretches instead
            (for servers that ignore `speed`).
        extra_body: more JSON fields for every request (`{"lang_code": "a"}` for
            Kokoro-FastAPI, `{"low_latency": true}` for a Morpheus remote).
        connect_timeout_s: longest wait to connect (and for each health probe).
        read_timeout_s: longest silence while a response is open before it counts as stalled.
        queue_timeout_s: longest wait for a free stream slot.
        max_concurrent_streams: connections to the remote at most; more requests queue.
        health_interval_s: seconds between health probes; 0 turns the probe off.
    """

    base_url: str
    api_key: str | None = None
    api_key_env: str | None = None
    model: str = "tts-1"
    voices: list[str] = []
    sample_rate: Annotated[int, msgspec.Meta(gt=0)] = 24000
    native_speed: bool = True
    extra_body: dict[str, Any] = {}
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    read_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    queue_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    max_concurrent_streams: Annotated[int, msgspec.Meta(ge=1)] = 8
    health_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must start with http:// or https://, got {self.base_url!r} "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        reserved = {"input", "voice", "response_format", "stream_format"} & set(self.extra_body)
        if reserved:
            raise ValueError(
                f"extra_body may not set {sorted(reserved)}: the engine sends them per request"
            )


def api_root(base_url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` -> `http://host:8000/v1`."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def voices_in(listing: Any) -> list[str]:
    """Voice names in a voices or models listing, whatever its shape.

    Accepts `["a", ...]`, `{"voices": [...]}`, `{"data": [...]}` (OpenAI-style lists), items
    that are names or objects with `id`, `voice_id` or `name`, and models carrying `voices`.
    """
    if isinstance(listing, dict):
        for key in ("voices", "data"):
            if key in listing:
                return voices_in(listing[key])
        for key in ("voice_id", "id", "name"):
            if isinstance(listing.get(key), str):
                return [listing[key]]
        return []
    if not isinstance(listing, list):
        return []
    names: list[str] = []
    for item in listing:
        found = [item] if isinstance(item, str) else voices_in(item)
        names.extend(name for name in found if name not in names)
    return names


def _models_voices(listing: Any) -> list[str]:
    models = listing.get("data", []) if isinstance(listing, dict) else []
    names: list[str] = []
    for model in models:
        if isinstance(model, dict) and "voices" in model:
            names.extend(v for v in voices_in(model["voices"]) if v not in names)
    return names


class PCMReader:
    """Turns a byte stream of s16le mono into float32 chunks, carrying an odd byte over."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> np.ndarray:
        """Add bytes as they arrived; return the whole samples now available."""
        data = self._carry + data
        whole = len(data) - len(data) % 2
        self._carry = data[whole:]
        return np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / PCM_SCALE

    @property
    def leftover(self) -> int:
        """Bytes held back (0 or 1); 1 at the end means the remote sent half a sample."""
        return len(self._carry)


class OpenAIRemoteEngine:
    """Speaks through a remote OpenAI-compatible `/v1/audio/speech`."""

    def __init__(self, settings: OpenAIRemoteSettings) -> None:
        self.settings = settings
        self.url = api_root(settings.base_url)
        self.root = self.url.removesuffix("/v1")
        self._client: httpx.AsyncClient | None = None
        self._probe_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._healthy = False
        self._last_error: str | None = None
        self._probe_path: str | None = None
        self.active_streams = 0
        self.capabilities = EngineCapabilities(
            output="pcm",
            sample_rate=settings.sample_rate,
            voices=tuple(settings.voices) or ("default",),
            streaming=True,
            native_speed=settings.native_speed,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        if key is None and self.settings.api_key_env:
            key = os.environ.get(self.settings.api_key_env)
            if not key:
                raise ValueError(
                    f"openai-remote: api_key_env names ${self.settings.api_key_env}, which is "
                    "unset or empty; export it or set api_key"
                )
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def start(self) -> None:
        """Open the keep-alive client, discover voices if none are set, start the probe.

        With `voices` set, the remote may still be down (health says so until it answers);
        without, it must answer now, since the voices come from it.
        """
        s = self.settings
        headers = self._headers()
        timeout = httpx.Timeout(
            connect=s.connect_timeout_s, read=s.read_timeout_s, write=s.read_timeout_s,
            pool=s.queue_timeout_s,
        )
        limits = httpx.Limits(
            max_connections=s.max_concurrent_streams,
            max_keepalive_connections=s.max_concurrent_streams,
            keepalive_expiry=60.0,
        )
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)
        if not s.voices:
            try:
                voices = await self._discover_voices()
            except BaseException:
                await self.stop()
                raise
            self.capabilities = msgspec.structs.replace(self.capabilities, voices=tuple(voices))
        self._record(*await anyio.to_thread.run_sync(self._probe_once, headers))
        if s.health_interval_s > 0:
            self._stopping.clear()
            self._probe_thread = threading.Thread(
                target=self._probe_loop, args=(headers,), name="openai-remote-probe",
                daemon=True,
            )
            self._probe_thread.start()

    async def _discover_voices(self) -> list[str]:
        assert self._client is not None
        answers: list[str] = []
        for path, parse in (("/audio/voices", voices_in), ("/models", _models_voices)):
            try:
                response = await self._client.get(self.url + path)
            except httpx.HTTPError as exc:
                raise ConnectionError(
                    f"openai-remote: no server answers at {self.url} ({type(exc).__name__}: "
                    f"{exc}); start it, fix base_url, or set voices so the engine can start "
                    "without it"
                ) from exc
            answers.append(f"{path} answered {response.status_code}")
            if response.status_code == 200:
                try:
                    voices = parse(response.json())
                except ValueError:
                    voices = []
                if voices:
                    return voices
        raise ValueError(
            f"openai-remote: {self.url} lists no voices ({'; '.join(answers)}); set "
            "voices = [\"...\"] in the plugin's settings"
        )

    async def stop(self) -> None:
        """Stop the probe and close every connection."""
        self._stopping.set()
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=self.settings.connect_timeout_s + 1.0)
            self._probe_thread = None
        if self._client is not None:
            await self._client.aclose()
        self._client = None
        self._healthy = False

    # -- health ------------------------------------------------------------------------------

    def _probe(self, client: httpx.Client) -> tuple[bool, str | None]:
        """One cheap request: `/health` at the server's root, else `/v1/models`."""
        paths = [self._probe_path] if self._probe_path else [f"{self.root}/health",
                                                             f"{self.url}/models"]
        try:
            for path in paths:
                response = client.get(path)
                if response.status_code == 404 and path != paths[-1]:
                    continue
                if response.status_code == 200:
                    self._probe_path = path
                    return True, None
                return False, f"{path} answered {response.status_code}"
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return False, "no probe path answered"

    def _probe_once(self, headers: dict[str, str]) -> tuple[bool, str | None]:
        with httpx.Client(headers=headers, timeout=self.settings.connect_timeout_s) as client:
            return self._probe(client)

    def _probe_loop(self, headers: dict[str, str]) -> None:
        with httpx.Client(headers=headers, timeout=self.settings.connect_timeout_s) as client:
            while not self._stopping.wait(self.settings.health_interval_s):
                self._record(*self._probe(client))

    def _record(self, healthy: bool, error: str | None) -> None:
        if healthy != self._healthy:
            log.info("remote health changed", extra={"url": self.url, "healthy": healthy,
                                                     "error": error})
        self._healthy = healthy
        if error is not None:
            self._last_error = error  # kept after recovery: the operator may want to know

    def health(self) -> dict[str, Any]:
        """Ready while the remote answered its last probe or request."""
        return {
            "ready": self._client is not None and self._healthy,
            "url": self.url,
            "model": self.settings.model,
            "voices": list(self.capabilities.voices),
            "active_streams": self.active_streams,
            "max_concurrent_streams": self.settings.max_concurrent_streams,
            "last_error": self._last_error,
        }

    # -- synthesis ---------------------------------------------------------------------------

    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """Speak one segment on the remote; yields float32 chunks as the bytes arrive."""
        if self._client is None:
            raise RuntimeError("openai-remote engine is not started")
        body: dict[str, Any] = {
            **self.settings.extra_body,
            "model": self.settings.model,
            "input": request.text,
            "voice": request.voice or self.capabilities.voices[0],
            "response_format": "pcm",
        }
        if self.settings.native_speed and request.speed != 1.0:
            body["speed"] = request.speed
        if instructions := request.options.get("instructions"):
            body["instructions"] = instructions
        return self._stream(self._client, body)

    async def _stream(self, client: httpx.AsyncClient, body: dict[str, Any]) -> AsyncIterator[
        np.ndarray
    ]:
        reader = PCMReader()
        url = f"{self.url}/audio/speech"
        self.active_streams += 1
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    raise await self._status_error(response)
                async for data in response.aiter_bytes():
                    samples = reader.feed(data)
                    if len(samples):
                        yield samples
            if reader.leftover:
                log.warning("remote sent half a sample", extra={"url": url})
            self._record(True, None)
        except httpx.PoolTimeout as exc:
            raise RemoteBusyError(
                f"openai-remote: all {self.settings.max_concurrent_streams} streams to "
                f"{self.url} stayed busy for {self.settings.queue_timeout_s:g} s"
            ) from exc
        except httpx.ReadTimeout as exc:
            raise RemoteStalledError(
                f"openai-remote: {url} sent nothing for {self.settings.read_timeout_s:g} s"
            ) from exc
        except httpx.TransportError as exc:
            error = RemoteUnavailableError(f"openai-remote: {url} failed: "
                                           f"{type(exc).__name__}: {exc}")
            self._record(False, str(error))
            raise error from exc
        finally:
            self.active_streams -= 1

    async def _status_error(self, response: httpx.Response) -> RemoteEngineError:
        detail = (await response.aread()).decode(errors="replace")[:_ERROR_DETAIL_CHARS]
        status = response.status_code
        message = f"openai-remote: {response.request.url} answered {status}: {detail}"
        if status == 429:
            return RemoteBusyError(message, status)
        if 400 <= status < 500 and status != 408:
            return RemoteRejectedError(message, status)
        self._record(False, message)
        return RemoteUnavailableError(message, status)


def component(name: str = "openai-remote") -> Component:
    """The engine as a component called `name` (a second module can offer a second remote)."""
    return Component(
        name=name,
        kind="engine",
        create=OpenAIRemoteEngine,
        settings=OpenAIRemoteSettings,
        description="any OpenAI-compatible /v1/audio/speech server, streamed as pcm",
    )


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the `openai-remote` engine."""
    return [component()]
