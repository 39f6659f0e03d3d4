"""The `openai-remote` engine against a scripted OpenAI-style server on 127.0.0.1."""

from __future__ import annotations

import time

import anyio
import msgspec
import numpy as np
import pytest
from conftest import free_port
from morpheus_tts.host import SynthesisRequest
from morpheus_tts.host.config import convert_settings
from morpheus_tts.plugins.engines.openai_remote import (
    OpenAIRemoteEngine,
    OpenAIRemoteSettings,
    PCMReader,
    RemoteBusyError,
    RemoteRejectedError,
    RemoteStalledError,
    RemoteUnavailableError,
    api_root,
    voices_in,
)
from remote_fixtures import ScriptedRemote

pytestmark = pytest.mark.anyio

SAMPLES = np.array([0, 1, -1, 32767, -32767, 12345, -300, 7], dtype="<i2")


@pytest.fixture
def remote():
    with ScriptedRemote() as server:
        yield server


def engine_for(url: str, **settings: object) -> OpenAIRemoteEngine:
    settings.setdefault("health_interval_s", 0)
    return OpenAIRemoteEngine(OpenAIRemoteSettings(base_url=url, **settings))


async def speak(engine: OpenAIRemoteEngine, text: str = "Hello.", **request: object) -> list:
    return [chunk async for chunk in engine.synthesize(SynthesisRequest(text=text, **request))]


def test_the_api_root_gets_v1_once() -> None:
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"):
        assert api_root(url) == "http://h:8000/v1"


def test_a_base_url_without_scheme_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="base_url must start with http"):
        convert_settings({"base_url": "gpu-1:8000"}, OpenAIRemoteSettings, "plugins.r.settings")


def test_voices_are_read_from_every_listing_shape() -> None:
    assert voices_in({"voices": ["a", "b"]}) == ["a", "b"]
    assert voices_in({"status": "ok", "voices": ["joe"], "engines": []}) == ["joe"]
    assert voices_in({"data": [{"id": "x"}, {"voice_id": "y"}, {"name": "z"}]}) == ["x", "y", "z"]
    assert voices_in([{"name": "a"}, "b", "a"]) == ["a", "b"]
    assert voices_in({"detail": "nope"}) == []


def test_an_odd_byte_is_carried_into_the_next_chunk() -> None:
    data = SAMPLES.tobytes()
    reader = PCMReader()
    pieces = [reader.feed(data[i : i + 3]) for i in range(0, len(data), 3)]
    assert [len(p) for p in pieces] == [1, 2, 1, 2, 1, 1]
    assert reader.leftover == 0
    assert np.array_equal(np.round(np.concatenate(pieces) * 32767).astype("<i2"), SAMPLES)


async def test_pcm_arriving_in_odd_pieces_comes_out_sample_exact(remote: ScriptedRemote) -> None:
    data = SAMPLES.tobytes()
    remote.pieces = [(data[:3], 0.0), (data[3:8], 0.05), (data[8:9], 0.05), (data[9:], 0.05)]
    engine = engine_for(remote.url, voices=["amber"])
    await engine.start()
    try:
        chunks = await speak(engine)
    finally:
        await engine.stop()
    assert len(chunks) >= 2  # streamed as it came, not gathered
    assert np.array_equal(np.round(np.concatenate(chunks) * 32767).astype("<i2"), SAMPLES)


async def test_the_first_chunk_comes_before_the_remote_finished(remote: ScriptedRemote) -> None:
    remote.pieces = [(SAMPLES.tobytes(), 0.0), (SAMPLES.tobytes(), 1.0)]
    engine = engine_for(remote.url, voices=["amber"])
    await engine.start()
    try:
        stream = engine.synthesize(SynthesisRequest(text="Hello."))
        first = await anext(stream)
        sent_then = remote.pieces_sent
        rest = [chunk async for chunk in stream]
    finally:
        await engine.stop()
    assert len(first) == len(SAMPLES) and sent_then == 1
    assert sum(len(c) for c in rest) == len(SAMPLES)


async def test_the_request_carries_model_voice_speed_key_and_extra_fields(
    remote: ScriptedRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTE_TTS_KEY", "sk-remote")
    engine = engine_for(remote.url, voices=["amber", "basil"], model="kokoro",
                        api_key_env="REMOTE_TTS_KEY", extra_body={"lang_code": "a"})
    await engine.start()
    try:
        await speak(engine, "One.", voice="basil", speed=1.5, options={"instructions": "calm"})
        await speak(engine, "Two.")
    finally:
        await engine.stop()
    first, second = (r["json"] for r in remote.speech_requests())
    assert first == {"lang_code": "a", "model": "kokoro", "input": "One.", "voice": "basil",
                     "response_format": "pcm", "speed": 1.5, "instructions": "calm"}
    assert second == {"lang_code": "a", "model": "kokoro", "input": "Two.", "voice": "amber",
                      "response_format": "pcm"}
    assert {r["headers"]["authorization"] for r in remote.requests} == {"Bearer sk-remote"}


async def test_an_unset_key_variable_fails_the_start_naming_it(remote: ScriptedRemote) -> None:
    engine = engine_for(remote.url, voices=["amber"], api_key_env="NO_SUCH_TTS_KEY_VAR")
    with pytest.raises(ValueError, match=r"\$NO_SUCH_TTS_KEY_VAR"):
        await engine.start()


async def test_voices_are_discovered_from_the_remote(remote: ScriptedRemote) -> None:
    engine = engine_for(remote.url)
    await engine.start()
    await engine.stop()
    assert engine.capabilities.voices == ("amber", "basil")


async def test_voices_fall_back_to_the_models_listing(remote: ScriptedRemote) -> None:
    remote.voices = (404, {"detail": "Not Found"})
    remote.models = (200, {"data": [{"id": "tts", "voices": [{"name": "cedar"}, "dune"]}]})
    engine = engine_for(remote.url)
    await engine.start()
    await engine.stop()
    assert engine.capabilities.voices == ("cedar", "dune")


async def test_a_remote_listing_no_voices_fails_the_start_saying_what_to_set(
    remote: ScriptedRemote,
) -> None:
    remote.voices = (404, {"detail": "Not Found"})
    with pytest.raises(ValueError, match=r"lists no voices .*404.*set voices"):
        await engine_for(remote.url).start()


async def test_discovery_without_a_server_fails_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=f"no server answers at {url}/v1"):
        await engine_for(url).start()


async def test_with_voices_set_it_starts_while_the_remote_is_down() -> None:
    engine = engine_for(f"http://127.0.0.1:{free_port()}", voices=["amber"])
    await engine.start()
    try:
        assert engine.health()["ready"] is False
        with pytest.raises(RemoteUnavailableError, match="ConnectError"):
            await speak(engine)
    finally:
        await engine.stop()


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, RemoteRejectedError), (401, RemoteRejectedError), (404, RemoteRejectedError),
     (429, RemoteBusyError), (500, RemoteUnavailableError), (503, RemoteUnavailableError)],
)
async def test_remote_statuses_are_classified(remote: ScriptedRemote, status: int, error) -> None:
    remote.status = status
    engine = engine_for(remote.url, voices=["amber"])
    await engine.start()
    try:
        with pytest.raises(error, match=f"answered {status}: .*bad voice") as caught:
            await speak(engine)
    finally:
        await engine.stop()
    assert caught.value.status == status
    assert isinstance(caught.value, RemoteRejectedError) == (status not in (429, 500, 503))


async def test_a_response_cut_off_midway_is_unavailable(remote: ScriptedRemote) -> None:
    remote.pieces, remote.cut_off = [(SAMPLES.tobytes(), 0.0)], True
    engine = engine_for(remote.url, voices=["amber"])
    await engine.start()
    got: list[np.ndarray] = []
    try:
        with pytest.raises(RemoteUnavailableError, match="failed: RemoteProtocolError"):
            async for chunk in engine.synthesize(SynthesisRequest(text="Hello.")):
                got.append(chunk)
    finally:
        await engine.stop()
    assert sum(len(c) for c in got) == len(SAMPLES)  # what came before the cut was spoken
    assert engine.health()["last_error"].startswith("openai-remote:")


async def test_silence_past_the_read_timeout_is_a_stall(remote: ScriptedRemote) -> None:
    remote.pieces = [(SAMPLES.tobytes(), 0.0), (SAMPLES.tobytes(), 2.0)]
    engine = engine_for(remote.url, voices=["amber"], read_timeout_s=0.2)
    await engine.start()
    try:
        with pytest.raises(RemoteStalledError, match="sent nothing for 0.2 s"):
            await speak(engine)
    finally:
        await engine.stop()


async def test_streams_past_the_cap_queue_then_fail_busy(remote: ScriptedRemote) -> None:
    remote.pieces = [(SAMPLES.tobytes(), 0.0), (SAMPLES.tobytes(), 1.0)]
    engine = engine_for(remote.url, voices=["amber"], max_concurrent_streams=1,
                        queue_timeout_s=0.2)
    await engine.start()
    try:
        holder = engine.synthesize(SynthesisRequest(text="First."))
        await anext(holder)  # the only connection is now streaming
        with pytest.raises(RemoteBusyError, match="all 1 streams .* busy for 0.2 s"):
            await speak(engine, "Second.")
        assert engine.health()["active_streams"] == 1
        await holder.aclose()
        assert len(await speak(engine, "Third.")) >= 1  # the slot came back
    finally:
        await engine.stop()


async def test_health_follows_the_probe(remote: ScriptedRemote) -> None:
    engine = engine_for(remote.url, voices=["amber"], health_interval_s=0.05)
    await engine.start()
    try:
        assert engine.health()["ready"] is True
        remote.health_status = 503
        await wait_for(lambda: engine.health()["ready"] is False)
        assert "answered 503" in engine.health()["last_error"]
        remote.health_status = 200
        await wait_for(lambda: engine.health()["ready"] is True)
    finally:
        await engine.stop()
    assert engine.health()["ready"] is False


async def test_the_probe_uses_v1_models_where_there_is_no_health(remote: ScriptedRemote) -> None:
    remote.health_status = 404
    engine = engine_for(remote.url, voices=["amber"])
    await engine.start()
    await engine.stop()
    probed = [r["path"] for r in remote.requests]
    assert probed == ["/health", "/v1/models"]


def test_unknown_settings_are_refused_naming_the_key() -> None:
    with pytest.raises(Exception, match="voice_list"):
        convert_settings({"base_url": "http://h", "voice_list": []}, OpenAIRemoteSettings,
                         "plugins.r.settings")
    with pytest.raises(Exception, match=r"extra_body may not set \['voice'\]"):
        msgspec.convert({"base_url": "http://h", "extra_body": {"voice": "x"}},
                        OpenAIRemoteSettings)


async def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await anyio.sleep(0.02)


async def test_a_barge_in_hands_the_remote_connection_back_at_once(remote: ScriptedRemote) -> None:
    from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
    from morpheus_tts.host.runtime import Runtime, SpeakRequest

    second = np.zeros(24000, dtype="<i2").tobytes()
    remote.pieces = [(second, 0.0)] + [(second, 0.5)] * 20  # 21 s of audio, slowly
    config = MorpheusConfig(
        server=ServerSettings(default_engine="openai-remote"),
        plugins={
            "remote": PluginEntry(module="morpheus_tts.plugins.engines.openai_remote",
                                  settings={"base_url": remote.url, "voices": ["amber"],
                                            "health_interval_s": 0}),
            "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
            "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
        },
    )
    runtime = Runtime(config, entry_points=False)
    async with runtime.running():
        engine = runtime.registry.engine("openai-remote").engine
        stream = runtime.stream(SpeakRequest(pace=False), "A long answer.")
        async for _ in stream:
            stream.barge_in(0)
            break
        async for _ in stream:
            pass
        await wait_for(lambda: engine.health()["active_streams"] == 0)
        assert remote.pieces_sent < 10  # the remote was still sending when it was hung up on


@pytest.mark.parametrize(
    ("plugin", "module"), [("remote", "openai_remote"), ("kokoro", "kokoro")]
)
def test_the_commented_plugins_toml_examples_are_valid_settings(plugin: str, module: str) -> None:
    from conftest import ROOT
    from morpheus_tts.plugins.engines import kokoro, openai_remote

    struct = {"openai_remote": openai_remote.OpenAIRemoteSettings,
              "kokoro": kokoro.KokoroSettings}[module]
    lines = (ROOT / "plugins.toml").read_text().splitlines()
    start = lines.index(f"# [plugins.{plugin}.settings]") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("# ") or line.startswith("# ["):
            break
        block.append(line.removeprefix("# "))
    table = msgspec.toml.decode("\n".join(block).encode())
    assert len(table) >= 5
    convert_settings(table, struct, f"plugins.{plugin}.settings")
    assert f'# module = "morpheus_tts.plugins.engines.{module}"' in lines
