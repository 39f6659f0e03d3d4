"""Spec of the "orpheus" engine: Orpheus's token layout, settings, load errors, and speech from a
tiny Orpheus-layout GGUF, in process and through llama.cpp's server, down to SNAC audio."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import msgspec
import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from morpheus_tts.api.app import create_app
from morpheus_tts.host import ConfigError, SynthesisRequest
from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings, convert_settings
from morpheus_tts.host.registry import Registry
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.plugins.engines.orpheus import (
    NOT_CONFIGURED,
    ChunkPlan,
    OrpheusEngine,
    OrpheusSettings,
)
from morpheus_tts.plugins.engines.orpheus_remote import RemoteCompletions
from morpheus_tts.plugins.engines.orpheus_tokens import (
    AUDIO_TOKEN_BASE,
    END_OF_SPEECH,
    LAST_AUDIO_TOKEN,
    START_OF_SPEECH,
    CustomTokenParser,
    FrameAssembler,
    audio_token,
    clean_text,
    frames_to_tokens,
    prompt_ids,
    prompt_text,
    split_audio_token,
)
from orpheus_fixtures import (
    SLIM_SNAC_CONFIG,
    LlamaServer,
    free_port,
    write_snac_dir,
    write_tiny_orpheus_gguf,
)

FRAME_SAMPLES = 2048
SEED_STOPPING_AT_21_FRAMES = 1  # the tiny model says end-of-speech after 21 frames
MAX_TOKENS = 280  # 40 frames


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_orpheus_gguf(tmp_path_factory.mktemp("orpheus") / "tiny-orpheus.gguf")


@pytest.fixture(scope="module")
def snac_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_snac_dir(tmp_path_factory.mktemp("snac_slim"), config=SLIM_SNAC_CONFIG)


@pytest.fixture(scope="module")
def engine(gguf: Path) -> Iterator[OrpheusEngine]:
    engine = OrpheusEngine(local_settings(gguf))
    anyio.run(engine.start)
    yield engine
    anyio.run(engine.stop)


@pytest.fixture(scope="module")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with LlamaServer(gguf, tmp_path_factory.mktemp("server") / "llama.log") as server:
        yield server


def local_settings(gguf: Path, **more: object) -> OrpheusSettings:
    # One thread: llama.cpp's spinning thread pool crawls on a busy 2-core machine.
    table = {"model_path": str(gguf), "n_ctx": 2048, "n_threads": 1, "max_tokens": MAX_TOKENS}
    return msgspec.convert(table | more, OrpheusSettings)


# -- the token layout ------------------------------------------------------------------------

TOKEN_TABLE = [
    # id, (slot, code) or None
    (AUDIO_TOKEN_BASE - 1, None),  # pad, the last special before the codes
    (AUDIO_TOKEN_BASE, (0, 0)),  # code 0 is a code
    (AUDIO_TOKEN_BASE + 4095, (0, 4095)),
    (AUDIO_TOKEN_BASE + 4096, (1, 0)),
    (AUDIO_TOKEN_BASE + 3 * 4096 + 17, (3, 17)),
    (AUDIO_TOKEN_BASE + 6 * 4096, (6, 0)),
    (LAST_AUDIO_TOKEN, (6, 4095)),
    (LAST_AUDIO_TOKEN + 1, None),
    (START_OF_SPEECH, None),
    (END_OF_SPEECH, None),
    (128000, None),
    (0, None),
]


@pytest.mark.parametrize(("token_id", "expected"), TOKEN_TABLE)
def test_audio_tokens_split_into_slot_and_code(token_id: int, expected) -> None:
    assert split_audio_token(token_id) == expected


@pytest.mark.parametrize("slot", range(7))
@pytest.mark.parametrize("code", [0, 1, 4095])
def test_every_slot_maps_codes_0_to_4095_both_ways(slot: int, code: int) -> None:
    token = audio_token(slot, code)
    assert token == 128266 + slot * 4096 + code
    assert split_audio_token(token) == (slot, code)


@pytest.mark.parametrize(("slot", "code"), [(7, 0), (-1, 0), (0, 4096), (0, -1)])
def test_slots_and_codes_out_of_range_are_refused(slot: int, code: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        audio_token(slot, code)


def assembled(ids: list[int]) -> tuple[list[list[int]], FrameAssembler]:
    assembler = FrameAssembler()
    assembler.extend(ids)
    return assembler.take().tolist(), assembler


FRAME_A = [0, 4095, 0, 1, 2, 3, 4095]
FRAME_B = [7, 6, 5, 4, 3, 2, 1]


def test_aligned_frames_keep_code_0_and_code_4095() -> None:
    frames, assembler = assembled(frames_to_tokens(np.array([FRAME_A, FRAME_B])))
    assert frames == [FRAME_A, FRAME_B]
    assert assembler.rejected == 0


ASSEMBLY_TABLE = [
    # name, ids, frames, rejected
    (
        "start of speech and text are skipped",
        [START_OF_SPEECH, 42, *frames_to_tokens([FRAME_A])],
        [FRAME_A],
        0,
    ),
    (
        "a stream that starts mid-frame waits for slot 0",
        [*frames_to_tokens([FRAME_B])[4:], *frames_to_tokens([FRAME_A])],
        [FRAME_A],
        3,
    ),
    (
        "a stray slot drops the partial frame only",
        [*frames_to_tokens([FRAME_B])[:3], audio_token(5, 9), *frames_to_tokens([FRAME_A])],
        [FRAME_A],
        4,
    ),
    (
        "a token of slot 0 mid-frame starts the next frame",
        [*frames_to_tokens([FRAME_B])[:4], *frames_to_tokens([FRAME_A])],
        [FRAME_A],
        4,
    ),
    (
        "an id past the last slot is rejected",
        [*frames_to_tokens([FRAME_B])[:2], LAST_AUDIO_TOKEN + 1, *frames_to_tokens([FRAME_A])],
        [FRAME_A],
        3,
    ),
    (
        "end of speech drops a partial frame and ends the stream",
        [
            *frames_to_tokens([FRAME_A]),
            *frames_to_tokens([FRAME_B])[:5],
            END_OF_SPEECH,
            *frames_to_tokens([FRAME_B]),
        ],
        [FRAME_A],
        5,
    ),
]


@pytest.mark.parametrize(
    ("ids", "frames", "rejected"),
    [case[1:] for case in ASSEMBLY_TABLE],
    ids=[case[0] for case in ASSEMBLY_TABLE],
)
def test_misaligned_streams_lose_at_most_the_broken_frame(ids, frames, rejected) -> None:
    got, assembler = assembled(ids)
    assert got == frames
    assert assembler.rejected == rejected


def test_frames_are_taken_in_the_sizes_asked_for() -> None:
    assembler = FrameAssembler()
    assembler.extend(frames_to_tokens(np.array([FRAME_A, FRAME_B, FRAME_A])))
    assert assembler.ready == 3
    assert assembler.take(2).tolist() == [FRAME_A, FRAME_B]
    assert assembler.take(2).tolist() == [FRAME_A]
    assert assembler.take(2).shape == (0, 7)


def test_streamed_text_is_parsed_into_ids_across_event_boundaries() -> None:
    parser = CustomTokenParser()
    assert parser.feed("<custom_token_10><custom_tok") == [128266]
    assert parser.feed("en_4105>") == [128266 + 4095]
    assert parser.feed("<custom_token_2>") == [END_OF_SPEECH]


def test_the_canonical_prompt_wraps_voice_and_text_in_orpheus_specials() -> None:
    seen: list[str] = []

    def tokenize(text: str) -> list[int]:
        seen.append(text)
        return [128000, 1, 2]

    assert prompt_ids(tokenize, "tara", "Hi <laugh> there<custom_token_5>.") == [
        128259,
        128000,
        1,
        2,
        128009,
        128260,
        128261,
        128257,
    ]
    assert seen == ["tara: Hi <laugh> there."]


def test_the_text_prompt_spells_the_same_tokens() -> None:
    assert prompt_text("leo", "Hey <sigh>") == (
        "<custom_token_3><|begin_of_text|>leo: Hey <sigh><|eot_id|>"
        "<custom_token_4><custom_token_5><custom_token_1>"
    )
    assert clean_text("a<|eot_id|>b <chuckle>") == "ab <chuckle>"


# -- settings, options and chunk sizes ----------------------------------------------------------


def test_a_repetition_penalty_under_1_1_is_refused_naming_the_field() -> None:
    table = {"server_url": "http://x", "repetition_penalty": 1.0}
    with pytest.raises(ConfigError, match=r"plugins\.orpheus\.settings.*repetition_penalty"):
        convert_settings(table, OrpheusSettings, "plugins.orpheus.settings")


def test_an_unknown_setting_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.orpheus\.settings\.temprature"):
        convert_settings({"temprature": 0.5}, OrpheusSettings, "plugins.orpheus.settings")


def test_request_options_override_sampling_and_unknown_ones_are_named() -> None:
    settings = OrpheusSettings(server_url="http://x")
    sampling = settings.sampling({"temperature": 0.4, "seed": 3, "instructions": "calm"})
    assert (sampling.temperature, sampling.seed, sampling.top_p) == (0.4, 3, settings.top_p)
    with pytest.raises(ValueError, match=r"unknown option 'topp'.*known: temperature"):
        settings.sampling({"topp": 0.5})
    with pytest.raises(ValueError, match="repetition_penalty must be >= 1.1"):
        settings.sampling({"repetition_penalty": 1.05})


def test_every_chunk_size_the_rate_controller_picks_is_whole_frames() -> None:
    # The controller's bounds are 8..64 tokens (host.rate.RateSettings).
    frames = {tokens: ChunkPlan(tokens, low_latency=False).size(0) for tokens in range(8, 65)}
    assert set(frames.values()) == set(range(1, 10))
    assert (frames[8], frames[28], frames[32], frames[64]) == (1, 4, 5, 9)


def test_low_latency_starts_with_one_then_two_frames() -> None:
    plan = ChunkPlan(28, low_latency=True)
    assert [plan.size(i) for i in range(4)] == [1, 2, 4, 4]
    assert [ChunkPlan(8, low_latency=True).size(i) for i in range(3)] == [1, 1, 1]


# -- load errors -----------------------------------------------------------------------------


def load_failure(settings: dict) -> str:
    registry = Registry(MorpheusConfig(plugins={}), entry_points=False)
    entry = PluginEntry(module="morpheus_tts.plugins.engines.orpheus", settings=settings)
    record = anyio.run(registry.load, "orpheus", entry)
    assert record.state == "failed"
    assert "orpheus" not in registry.engines
    return record.error or ""


def test_an_unconfigured_engine_fails_to_load_saying_what_to_set() -> None:
    assert NOT_CONFIGURED in load_failure({})


def test_a_missing_model_file_fails_to_load_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "orpheus-3b.gguf"
    assert f"model_path {missing} does not exist" in load_failure({"model_path": str(missing)})


def test_an_unreachable_server_fails_to_load_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert f"no server answers at {url}" in load_failure({"server_url": url})


def test_a_file_that_is_no_model_fails_to_load_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "truncated.gguf"
    path.write_bytes(b"GGUF")
    assert str(path) in load_failure({"model_path": str(path)})


# -- the in-process backend -----------------------------------------------------------------


def generate(engine: OrpheusEngine, **request: object) -> list[np.ndarray]:
    args = {"text": "Hello world.", "voice": "tara"} | request
    return list(engine.synthesize(SynthesisRequest(**args)))


def test_the_tiny_model_speaks_frames_until_end_of_speech(engine: OrpheusEngine) -> None:
    chunks = generate(engine, options={"seed": SEED_STOPPING_AT_21_FRAMES}, chunk_size=28)
    assert [len(chunk) for chunk in chunks] == [4, 4, 4, 4, 4, 1]
    assert all(chunk.shape[1] == 7 and chunk.dtype == np.int32 for chunk in chunks)
    codes = np.concatenate(chunks)
    assert codes.min() >= 0 and codes.max() < 4096


def test_max_tokens_bounds_a_segment_that_never_stops(engine: OrpheusEngine) -> None:
    chunks = generate(engine, options={"seed": 4, "max_tokens": 70})
    assert sum(len(chunk) for chunk in chunks) == 10


def test_a_seed_makes_the_frames_reproducible(engine: OrpheusEngine) -> None:
    first = np.concatenate(generate(engine, options={"seed": 5}))
    again = np.concatenate(generate(engine, options={"seed": 5}, chunk_size=63))
    assert np.array_equal(first, again)


def test_low_latency_sends_one_then_two_frames_first(engine: OrpheusEngine) -> None:
    chunks = generate(engine, options={"seed": 1}, chunk_size=28, low_latency=True)
    assert [len(chunk) for chunk in chunks[:3]] == [1, 2, 4]


def test_interleaved_segments_each_get_their_own_frames(engine: OrpheusEngine) -> None:
    alone = np.concatenate(generate(engine, options={"seed": 1}))
    first = engine.synthesize(SynthesisRequest(text="Hello world.", options={"seed": 1}))
    other = engine.synthesize(SynthesisRequest(text="Other words.", voice="leo"))
    start = next(first)
    next(other)  # another segment takes over the model's context between two steps
    rest = list(first)
    other.close()
    # The first segment resumes from its own tokens: whole frames, in order, to its end.
    assert np.array_equal(start, alone[: len(start)])
    assert len(np.concatenate([start, *rest])) > len(start)


# -- through the runtime, with SNAC ----------------------------------------------------------


def orpheus_config(orpheus: dict, snac_dir: Path) -> MorpheusConfig:
    return MorpheusConfig(
        server=ServerSettings(default_engine="orpheus"),
        plugins={
            "orpheus": PluginEntry(module="morpheus_tts.plugins.engines.orpheus", settings=orpheus),
            "snac": PluginEntry(
                module="morpheus_tts.plugins.codecs.snac",
                settings={"model_path": str(snac_dir), "device": "cpu"},
            ),
            "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
            "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
        },
    )


def orpheus_runtime(orpheus: dict, snac_dir: Path) -> Runtime:
    return Runtime(orpheus_config(orpheus, snac_dir), entry_points=False)


async def speak_all(runtime: Runtime, text: str, **request: object) -> np.ndarray:
    async with runtime.running():
        failed = {n: r.error for n, r in runtime.registry.records.items() if r.state == "failed"}
        assert not failed
        speak = SpeakRequest(engine="orpheus", voice="tara", pace=False, **request)
        async with runtime.speak(speak, text) as utterance:
            chunks = [chunk.samples async for chunk in utterance.audio]
    return np.concatenate(chunks)


@pytest.mark.anyio
async def test_in_process_speech_comes_out_as_2048_samples_per_frame(gguf, snac_dir) -> None:
    settings = {"model_path": str(gguf), "n_ctx": 2048, "n_threads": 1, "max_tokens": MAX_TOKENS}
    runtime = orpheus_runtime(settings, snac_dir)
    audio = await speak_all(runtime, "Hello world.", options={"seed": SEED_STOPPING_AT_21_FRAMES})
    assert len(audio) == 21 * FRAME_SAMPLES  # every frame, the first and the tail included
    assert float(np.abs(audio).max()) > 0.01


# -- the remote backend ----------------------------------------------------------------------


def sse(*texts: str, end: dict | None = None) -> bytes:
    """SSE events carrying `texts`, then `end` as a last event, else `[DONE]`."""
    events = [f"data: {json.dumps({'choices': [{'text': t}]})}\n\n" for t in texts]
    last = json.dumps(end) if end is not None else "[DONE]"
    return "".join([*events, f"data: {last}\n\n"]).encode()


@pytest.mark.anyio
async def test_the_remote_request_streams_with_sampling_and_prompt_cache() -> None:
    bodies: list[dict] = []
    tokens = "".join(f"<custom_token_{t - 128256}>" for t in frames_to_tokens([FRAME_A] * 3))

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        # Token text split mid-token across events, then end of speech.
        return httpx.Response(200, content=sse(tokens[:50], tokens[50:], "<custom_token_2>"))

    backend = RemoteCompletions(OrpheusSettings(server_url="http://orpheus.test/v1"))
    backend._client = httpx.AsyncClient(
        base_url=backend.url, transport=httpx.MockTransport(handler)
    )
    sampling = backend.settings.sampling({"seed": 9, "repetition_penalty": 1.2})
    chunks = [c async for c in backend.synthesize("zoe", "Hi.", sampling, ChunkPlan(14, False))]
    await backend.stop()
    assert [c.tolist() for c in chunks] == [[FRAME_A, FRAME_A], [FRAME_A]]
    body = bodies[0]
    assert body["prompt"] == prompt_text("zoe", "Hi.")
    assert (body["stream"], body["cache_prompt"], body["seed"]) == (True, True, 9)
    assert body["repeat_penalty"] == body["repetition_penalty"] == 1.2
    assert body["stop"] == ["<custom_token_2>"]


@pytest.mark.anyio
async def test_an_error_event_mid_stream_fails_the_segment_naming_the_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        end = {"error": {"message": "context full"}}
        return httpx.Response(200, content=sse("<custom_token_10>", end=end))

    backend = RemoteCompletions(OrpheusSettings(server_url="http://orpheus.test"))
    backend._client = httpx.AsyncClient(
        base_url=backend.url, transport=httpx.MockTransport(handler)
    )
    sampling = backend.settings.sampling({})
    with pytest.raises(RuntimeError, match=r"http://orpheus\.test failed mid-stream.*context full"):
        async for _ in backend.synthesize("tara", "Hi.", sampling, ChunkPlan(28, False)):
            pass
    await backend.stop()


@pytest.mark.anyio
async def test_llama_cpp_server_speech_comes_out_in_whole_frames(llama_server, snac_dir) -> None:
    settings = {"server_url": llama_server.url, "max_tokens": MAX_TOKENS}
    runtime = orpheus_runtime(settings, snac_dir)
    audio = await speak_all(runtime, "Hello world.", options={"seed": 1})
    assert len(audio) > 0 and len(audio) % FRAME_SAMPLES == 0
    assert float(np.abs(audio).max()) > 0.01


# -- through the HTTP API --------------------------------------------------------------------


@asynccontextmanager
async def api_client(config: MorpheusConfig) -> AsyncIterator[AsyncTestClient]:
    """The app with its plugins loaded (or failed): plugins load in the background."""
    async with AsyncTestClient(create_app(config), timeout=60) as http:
        with anyio.fail_after(60):
            while any(p["state"] not in ("loaded", "failed") for p in await plugins(http)):
                await anyio.sleep(0.05)
        yield http


async def plugins(http: AsyncTestClient) -> list[dict]:
    return (await http.get("/plugins")).json()["plugins"]


async def speech_pcm(http: AsyncTestClient) -> np.ndarray:
    body = {"model": "orpheus", "voice": "tara", "input": "Hello world.", "response_format": "pcm"}
    response = await http.post("/v1/audio/speech", json=body | {"options": {"seed": 1}})
    assert response.status_code == 200, response.text
    assert response.headers["x-morpheus-engine"] == "orpheus"
    return np.frombuffer(response.content, "<i2").astype(np.float32) / 32768.0


@pytest.mark.anyio
async def test_the_api_speaks_with_the_in_process_engine(gguf, snac_dir) -> None:
    settings = {"model_path": str(gguf), "n_ctx": 2048, "n_threads": 1, "max_tokens": MAX_TOKENS}
    async with api_client(orpheus_config(settings, snac_dir)) as http:
        audio = await speech_pcm(http)
    assert len(audio) == 21 * FRAME_SAMPLES  # 24 kHz pcm: the codec's rate, every frame
    assert float(np.abs(audio).max()) > 0.01


@pytest.mark.anyio
async def test_the_api_speaks_through_a_llama_cpp_server(llama_server, snac_dir) -> None:
    settings = {"server_url": llama_server.url, "max_tokens": MAX_TOKENS}
    async with api_client(orpheus_config(settings, snac_dir)) as http:
        audio = await speech_pcm(http)
    assert len(audio) > 0 and len(audio) % FRAME_SAMPLES == 0
    assert float(np.abs(audio).max()) > 0.01


@pytest.mark.anyio
async def test_the_api_reports_a_failed_orpheus_and_keeps_serving(snac_dir) -> None:
    async with api_client(orpheus_config({}, snac_dir)) as http:
        listed = {p["name"]: p for p in await plugins(http)}
        health = await http.get("/health")
    assert listed["orpheus"]["state"] == "failed"
    assert NOT_CONFIGURED in listed["orpheus"]["error"]
    assert listed["snac"]["state"] == "loaded"
    assert health.status_code == 503  # the default engine is not there: not ready, no crash
