"""A Wyoming server, so Home Assistant (and any Wyoming client) speaks through Morpheus.

Wyoming is Home Assistant's protocol for voice services: JSON-headed events over TCP (the
`wyoming` package frames and parses them). This server answers:

- `describe` -> `info`: one TTS program, `morpheus`, listing every loaded engine's voices with
  their languages (voice names as `GET /v1/audio/voices` gives them: bare on the default engine,
  `engine:voice` otherwise), and `supports_synthesize_streaming`;
- `synthesize` -> `audio-start`, `audio-chunk`*, `audio-stop`: one text, spoken as it is made;
- `synthesize-start`, `synthesize-chunk`*, `synthesize-stop` -> the same audio events while
  the text still arrives, then `synthesize-stopped`. Chunks are pieces of an LLM's answer and may
  split words; they go to the utterance as text deltas and the chunker cuts them at sentence
  ends, so the first sentence is spoken while the rest is still being written. The `synthesize`
  Home Assistant sends inside such a stream (for servers without streaming) is ignored;
- anything that goes wrong -> an `error` event; the connection stays usable.

It runs in the HTTP server's process on the same `Runtime` (the same engines, chunker, rate
control, failover, traces and metrics). Audio is 16-bit mono at `[server] sample_rate`, sent
in 1024-sample chunks the moment the stitcher releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from importlib import metadata
from typing import Any

import anyio
import numpy as np
from morpheus_tts.api.discovery import voice_entries
from morpheus_tts.api.encoders import pcm16
from morpheus_tts.host.aliases import AliasResolver
from morpheus_tts.host.registry import UnknownComponentError
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.host.streams import AudioStream
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
# A streaming utterance that already ended (its engine failed) refuses more text with these.
_ENDED = (anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError)
CHUNK_SAMPLES = 1024  # per audio-chunk event, as wyoming-piper sends them
DEFAULT_PORT = 10200  # Home Assistant's usual Wyoming TTS port
ATTRIBUTION = Attribution(name="Morpheus", url="https://github.com/morpheus-tts/morpheus")


def describe(runtime: Runtime) -> Info:
    """The `info` answer: every loaded engine's voices, streaming supported."""
    try:
        version: str | None = metadata.version("morpheus-tts")
    except metadata.PackageNotFoundError:
        version = None
    voices = [
        TtsVoice(
            name=entry["id"], attribution=ATTRIBUTION, installed=True, version=None,
            description=f"{entry['name']} ({entry['engine']})", languages=entry["languages"],
        )
        for entry in voice_entries(runtime)
    ]
    program = TtsProgram(
        name="morpheus", attribution=ATTRIBUTION, installed=True, version=version,
        description="Morpheus realtime text-to-speech", voices=voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


class WyomingConnection:
    """One client connection: reads its events, speaks, writes audio events back."""

    def __init__(
        self, runtime: Runtime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.runtime = runtime
        self.reader, self.writer = reader, writer
        self._write_lock = anyio.Lock()
        self._stream: AudioStream | None = None  # the open streaming synthesis
        self._forwarded: anyio.Event | None = None  # set when its audio has all gone out

    async def write(self, event: Event) -> None:
        """Send one event (audio and answers never interleave mid-event)."""
        async with self._write_lock:
            await async_write_event(event, self.writer)

    async def run(self) -> None:
        """Serve events until the client disconnects."""
        try:
            async with anyio.create_task_group() as tg:
                while (event := await async_read_event(self.reader)) is not None:
                    await self.handle(event, tg)
                tg.cancel_scope.cancel()  # the client left: stop what it was still hearing
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-event
        finally:
            if self._stream is not None:
                await self._stream.aclose()
            self.writer.close()

    async def handle(self, event: Event, tg: anyio.abc.TaskGroup) -> None:
        """Dispatch one event."""
        if Describe.is_type(event.type):
            await self.write(describe(self.runtime).event())
        elif SynthesizeStart.is_type(event.type):
            await self._start_streaming(SynthesizeStart.from_event(event), tg)
        elif SynthesizeChunk.is_type(event.type):
            if self._stream is None:
                await self._error("synthesize-chunk without synthesize-start", "no_stream")
                return
            with contextlib.suppress(*_ENDED):  # it failed: the client already has the error
                utterance = await self._stream.started()
                await utterance.send_text(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(event.type):
            await self._stop_streaming()
        elif Synthesize.is_type(event.type):
            if self._stream is not None:
                return  # the whole text, sent for servers without streaming: already coming
            synthesize = Synthesize.from_event(event)
            try:
                stream = self._open(synthesize.voice, synthesize.text)
            except (UnknownComponentError, ValueError) as exc:
                await self._error(str(exc), _code(exc))
                return
            await self._forward(stream)

    def _open(self, voice: SynthesizeVoice | None, text: str | None) -> AudioStream:
        """Resolve the voice (as the HTTP API does) and start the utterance.

        Raises:
            UnknownComponentError: the voice is not loaded (the message lists the voices).
            ValueError: the text is blank.
        """
        resolver = AliasResolver(self.runtime.config, self.runtime.registry.engines)
        resolved = resolver.resolve(None, voice.name if voice is not None else None)
        if text is not None and not text.strip():
            raise ValueError("nothing to say: the text is empty")
        request = SpeakRequest(engine=resolved.engine, voice=resolved.voice, pace=False,
                               response_format="pcm")
        return self.runtime.stream(request, text)

    async def _start_streaming(self, start: SynthesizeStart, tg: anyio.abc.TaskGroup) -> None:
        if self._stream is not None:
            await self._error("synthesize-start while a stream is open", "stream_open")
            return
        try:
            stream = self._open(start.voice, None)
        except (UnknownComponentError, ValueError) as exc:
            await self._error(str(exc), _code(exc))
            return
        self._stream, self._forwarded = stream, anyio.Event()
        tg.start_soon(self._forward_then_mark, stream, self._forwarded)

    async def _stop_streaming(self) -> None:
        stream, forwarded = self._stream, self._forwarded
        if stream is None or forwarded is None:
            await self.write(SynthesizeStopped().event())
            return
        with contextlib.suppress(*_ENDED):
            utterance = await stream.started()
            await utterance.end_text()
        await forwarded.wait()
        self._stream = self._forwarded = None
        await self.write(SynthesizeStopped().event())

    async def _forward_then_mark(self, stream: AudioStream, done: anyio.Event) -> None:
        try:
            await self._forward(stream)
        finally:
            done.set()

    async def _forward(self, stream: AudioStream) -> None:
        """Send an utterance's audio as audio-start, audio-chunk*, audio-stop."""
        stream.report_consumption()  # a chunk counts once the socket took it
        rate: int | None = None
        try:
            async for chunk in stream:
                if rate is None:
                    rate = chunk.sample_rate
                    await self.write(AudioStart(rate=rate, width=2, channels=1).event())
                await self._send_samples(stream, chunk.samples, rate)
        except ConnectionError:
            return  # the client left; `run` ends the connection
        except Exception as exc:  # noqa: BLE001 - the client hears why, the server goes on
            log.exception("wyoming synthesis failed", exc_info=exc)
            await self._error(f"synthesis failed: {exc}", "engine_error")
            return
        finally:
            await stream.aclose()
        if rate is None:  # no audio at all (e.g. only punctuation): still a well-formed answer
            rate = self.runtime.config.server.sample_rate
            await self.write(AudioStart(rate=rate, width=2, channels=1).event())
        await self.write(AudioStop().event())

    async def _send_samples(self, stream: AudioStream, samples: np.ndarray, rate: int) -> None:
        for start in range(0, len(samples), CHUNK_SAMPLES):
            piece = samples[start:start + CHUNK_SAMPLES]
            await self.write(AudioChunk(rate=rate, width=2, channels=1, audio=pcm16(piece)).event())
            stream.consumed(len(piece))

    async def _error(self, text: str, code: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self.write(Error(text=text, code=code).event())


def _outbound_address() -> str:
    """The IPv4 address other hosts reach this one at (the route to mDNS's group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("224.0.0.251", 5353))  # UDP connect: no packet is sent
        return probe.getsockname()[0]


def _code(exc: Exception) -> str:
    if isinstance(exc, UnknownComponentError):
        return f"invalid_{exc.kind}"
    return "invalid_text"


class WyomingServer:
    """The TCP listener: one `WyomingConnection` per client, on the given runtime.

    Args:
        runtime: the running Runtime the HTTP app uses.
        host: bind address.
        port: TCP port (0: any free one; `port` holds the real one once started).
        zeroconf: announce `_wyoming._tcp` over mDNS so Home Assistant discovers it.
    """

    def __init__(self, runtime: Runtime, host: str, port: int, *, zeroconf: bool = False) -> None:
        self.runtime, self.host, self.port = runtime, host, port
        self.zeroconf = zeroconf
        self._server: asyncio.AbstractServer | None = None
        self._zeroconf: Any = None
        self._announced: Any = None
        self.service_name: str | None = None  # the mDNS instance name, once announced
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the port (and announce it)."""
        self._server = await asyncio.start_server(self._accept, host=self.host, port=self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("wyoming server listening", extra={"host": self.host, "port": self.port})
        if self.zeroconf:
            await self._announce()

    async def _announce(self) -> None:
        """Register `_wyoming._tcp` over mDNS, as Home Assistant's discovery looks for it."""
        try:
            from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
        except ImportError as exc:
            raise RuntimeError(
                "wyoming_zeroconf needs the `zeroconf` package: pip install 'morpheus-tts[wyoming]'"
            ) from exc
        address = self.host if self.host not in ("0.0.0.0", "::", "") else _outbound_address()
        # The port in the name keeps two servers on one host distinct on the network.
        self.service_name = f"morpheus-{self.port}"
        info = AsyncServiceInfo(
            SERVICE_TYPE, f"{self.service_name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(address)], port=self.port,
        )
        self._zeroconf = AsyncZeroconf()
        await self._zeroconf.async_register_service(info)
        self._announced = info

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(
            WyomingConnection(self.runtime, reader, writer).run(), name="wyoming connection"
        )
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def stop(self) -> None:
        """Close the port, end every connection and withdraw the announcement."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._zeroconf is not None:
            await self._zeroconf.async_unregister_service(self._announced)
            await self._zeroconf.async_close()
