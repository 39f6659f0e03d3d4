"""The Wyoming server (Home Assistant), driven by the `wyoming` package's own client."""

from __future__ import annotations

import re
from collections.abc import Iterator

import anyio
import httpx
import numpy as np
import pytest
from conftest import ROOT, LiveServer, free_port, start_live_server, word_error_rate
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def wyoming_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, int]]:
    """`morpheus serve --wyoming-port N`, deterministic Piper."""
    text = (ROOT / "plugins.toml").read_text().replace(
        'voice = "bundled"', 'voice = "bundled"\nnoise_scale = 0.0\nnoise_w_scale = 0.0'
    )
    port = free_port()
    live = start_live_server(tmp_path_factory.mktemp("wyoming"), text,
                             args=("--wyoming-port", str(port)))
    try:
        yield live, port
    finally:
        live.stop()


async def read_until(client: AsyncTcpClient, *types: str) -> list[Event]:
    """Events up to and including the first of one of `types`."""
    events = []
    with anyio.fail_after(TIMEOUT_S):
        while True:
            event = await client.read_event()
            assert event is not None, "server closed the connection"
            events.append(event)
            if event.type in types:
                return events


def pcm_of(events: list[Event]) -> np.ndarray:
    data = b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))
    return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0


@pytest.mark.anyio
async def test_describe_lists_every_voice_with_languages_and_streaming(wyoming_server) -> None:
    _, port = wyoming_server
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        (event,) = await read_until(client, "info")
    (program,) = Info.from_event(event).tts
    assert program.name == "morpheus" and program.supports_synthesize_streaming
    assert [(v.name, v.languages) for v in program.voices] == [("joe", ["en-US"])]


@pytest.mark.anyio
async def test_synthesize_answers_audio_start_chunks_stop(wyoming_server, transcribe) -> None:
    _, port = wyoming_server
    text = "Turn on the kitchen lights, please."
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(name="joe")).event())
        events = await read_until(client, "audio-stop", "error")
    assert AudioStart.is_type(events[0].type) and AudioStop.is_type(events[-1].type)
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    chunks = [e for e in events if AudioChunk.is_type(e.type)]
    assert len(chunks) == len(events) - 2 and len(chunks) > 10
    assert word_error_rate(text, transcribe(pcm_of(events), 24000)) <= 0.15


@pytest.mark.anyio
async def test_streamed_text_split_mid_word_is_spoken_while_it_arrives(
    wyoming_server, transcribe
) -> None:
    _, port = wyoming_server
    first = ["The wea", "ther to", "day is sun", "ny. "]
    rest = ["Tomor", "row it will r", "ain in the after", "noon."]
    text = "".join(first + rest)
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="alloy")).event())
        for piece in first:
            await client.write_event(SynthesizeChunk(text=piece).event())
        # Audio early: the first sentence is heard before the rest of the text exists.
        early = await read_until(client, "audio-chunk")
        assert [e.type for e in early] == ["audio-start", "audio-chunk"]
        for piece in rest:
            await client.write_event(SynthesizeChunk(text=piece).event())
        await client.write_event(Synthesize(text=text).event())  # HA's copy for old servers
        await client.write_event(SynthesizeStop().event())
        events = early + await read_until(client, "synthesize-stopped", "error")
    types = [e.type for e in events]
    assert types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert types.count("audio-start") == 1 and "error" not in types  # the copy was ignored
    assert word_error_rate(text, transcribe(pcm_of(events), 24000)) <= 0.15


@pytest.mark.anyio
async def test_an_unknown_voice_is_an_error_and_the_connection_goes_on(wyoming_server) -> None:
    _, port = wyoming_server
    async with AsyncTcpClient("127.0.0.1", port) as client:
        nobody = SynthesizeVoice(name="nobody")
        await client.write_event(Synthesize(text="Hi.", voice=nobody).event())
        (event,) = await read_until(client, "error")
        error = Error.from_event(event)
        assert error.code == "invalid_voice" and "'nobody'" in error.text and "joe" in error.text
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="nobody")).event())
        assert Error.is_type((await read_until(client, "error"))[-1].type)
        await client.write_event(Synthesize(text="Still here.").event())
        assert (await read_until(client, "audio-stop", "error"))[-1].type == "audio-stop"


@pytest.mark.anyio
async def test_wyoming_speech_shows_in_the_same_metrics(wyoming_server) -> None:
    live, port = wyoming_server

    def completed() -> float:
        body = httpx.get(f"{live.url}/metrics").text
        found = re.search(r'morpheus_utterances_total\{engine="piper",outcome="completed"\} (\S+)',
                          body)
        return float(found.group(1)) if found else 0.0

    before = completed()
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text="Counted.").event())
        await read_until(client, "audio-stop")
    with anyio.fail_after(10):
        while completed() < before + 1:
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_two_clients_at_once_each_hear_exactly_their_own_text(wyoming_server) -> None:
    _, port = wyoming_server

    async def speak(text: str, into: dict[str, np.ndarray]) -> None:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text=text).event())
            into[text] = pcm_of(await read_until(client, "audio-stop"))

    together: dict[str, np.ndarray] = {}
    async with anyio.create_task_group() as tg:
        for text in ("Good morning.", "The door is locked."):
            tg.start_soon(speak, text, together)
    alone: dict[str, np.ndarray] = {}
    await speak("Good morning.", alone)
    assert np.array_equal(together["Good morning."], alone["Good morning."])


@pytest.mark.anyio
async def test_the_server_table_setting_starts_it_too(tmp_path) -> None:
    port = free_port()
    text = (ROOT / "plugins.toml").read_text().replace(
        "[server]\n", f"[server]\nwyoming_port = {port}\n", 1
    )
    live = start_live_server(tmp_path, text)
    try:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            assert (await read_until(client, "info"))[-1].type == "info"
    finally:
        live.stop()


@pytest.mark.anyio
async def test_zeroconf_announces_the_server_for_home_assistant() -> None:
    from morpheus_tts.api.wyoming import WyomingServer
    from morpheus_tts.host.config import MorpheusConfig
    from morpheus_tts.host.runtime import Runtime
    from zeroconf.asyncio import AsyncZeroconf

    server = WyomingServer(Runtime(MorpheusConfig(), entry_points=False), "127.0.0.1", 0,
                           zeroconf=True)
    await server.start()
    browser = AsyncZeroconf()
    try:
        info = await browser.async_get_service_info(
            "_wyoming._tcp.local.", f"{server.service_name}._wyoming._tcp.local.", timeout=5000
        )
        assert info is not None and info.port == server.port
        assert info.parsed_addresses() == ["127.0.0.1"]
    finally:
        await browser.async_close()
        await server.stop()


@pytest.mark.anyio
async def test_an_engine_failing_mid_stream_is_an_error_and_the_connection_goes_on() -> None:
    from conftest import fault_runtime
    from morpheus_tts.api.wyoming import WyomingServer

    runtime = fault_runtime(fail_after=2)  # raises after its third chunk
    async with runtime.running():
        server = WyomingServer(runtime, "127.0.0.1", 0)
        await server.start()
        try:
            async with AsyncTcpClient("127.0.0.1", server.port) as client:
                await client.write_event(SynthesizeStart().event())
                for text in ("A long first sentence here. ", "And more. "):
                    await client.write_event(SynthesizeChunk(text=text).event())
                await client.write_event(SynthesizeStop().event())
                # The failed step is retried, then the text's end settles it: an error.
                events = await read_until(client, "synthesize-stopped")
                errors = [Error.from_event(e) for e in events if Error.is_type(e.type)]
                assert [e.code for e in errors] == ["engine_error"]
                assert "scripted failure" in errors[0].text
                await client.write_event(Describe().event())
                assert (await read_until(client, "info"))[-1].type == "info"
        finally:
            await server.stop()
