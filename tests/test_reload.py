"""Live plugins.toml edits: checked as a whole first; a bad one changes nothing and says why."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import start_live_server
from morpheus_tts.host.config import load_config
from morpheus_tts.host.runtime import Runtime, SpeakRequest

pytestmark = pytest.mark.anyio

GOOD = """
[server]
default_engine = "fault"
config_reload_interval_s = 0
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = { chunks_per_segment = 2, chunk_ms = 50.0 }
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
settings = { crossfade_ms = 10.0 }
"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    path = tmp_path / "plugins.toml"
    path.write_text(GOOD)
    runtime = Runtime(load_config(path), entry_points=False)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()


async def spoken_samples(runtime: Runtime) -> int:
    async with runtime.speak(SpeakRequest(), "One. Two.") as utterance:
        return sum([len(chunk.samples) async for chunk in utterance.audio])


def edit(runtime: Runtime, text: str) -> None:
    Path(runtime.config.path or "").write_text(text)


async def test_a_bad_setting_changes_nothing_and_speech_keeps_working(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    stitcher = runtime.registry.stitchers["crossfade"]
    edit(runtime, GOOD.replace("crossfade_ms = 10.0", 'crossfade_ms = "wide"'))
    with caplog.at_level(logging.ERROR, logger="morpheus_tts.host.runtime"):
        assert await runtime.reload_config() is False
    reason = (
        f"{runtime.config.path}: `plugins.crossfade.settings.crossfade_ms`: "
        "Expected `float`, got `str`"
    )
    assert runtime.config_error == reason
    assert [r.error for r in caplog.records] == [reason]  # type: ignore[attr-defined]
    assert runtime.registry.stitchers["crossfade"] is stitcher  # never unloaded
    assert await spoken_samples(runtime) > 0


async def test_fixing_the_file_applies_it_and_clears_the_error(runtime: Runtime) -> None:
    edit(runtime, GOOD.replace("crossfade_ms = 10.0", "crossfade_ms = 10.0, typo = 1"))
    assert await runtime.reload_config() is False
    assert runtime.config_error is not None
    edit(runtime, GOOD.replace("crossfade_ms = 10.0", "crossfade_ms = 5.0"))
    assert await runtime.reload_config() is True
    assert runtime.config_error is None
    stitcher = runtime.registry.new_stitcher("crossfade", 24000)
    assert stitcher._fade_len == 120  # 5 ms at 24 kHz: the new setting is live
    assert await spoken_samples(runtime) > 0


async def test_editing_back_to_the_running_file_clears_the_error(runtime: Runtime) -> None:
    edit(runtime, "[server\nbroken")
    assert await runtime.reload_config() is False
    assert runtime.config_error is not None
    edit(runtime, GOOD)
    assert await runtime.reload_config() is False  # nothing to apply: it is what runs
    assert runtime.config_error is None


async def test_every_problem_is_reported_and_nothing_is_loaded(runtime: Runtime) -> None:
    bad = GOOD + (
        '[plugins.extra]\nmodule = "morpheus_tts.plugins.engines.no_such_engine"\n'
    )
    bad = bad.replace("chunks_per_segment = 2", "chunks_per_segment = -1, bogus = 2")
    edit(runtime, bad)
    assert await runtime.reload_config() is False
    assert runtime.config_error == (
        f"{runtime.config.path}: unknown key `plugins.fault.settings.bogus`; remove it or fix its "
        "name; plugins.extra: ModuleNotFoundError: No module named "
        "'morpheus_tts.plugins.engines.no_such_engine'"
    )
    assert sorted(runtime.registry.records) == ["crossfade", "fault", "sentence"]
    assert runtime.config.server.stitcher == "crossfade"
    assert await spoken_samples(runtime) > 0


async def test_naming_a_stitcher_that_is_not_there_is_refused(runtime: Runtime) -> None:
    interval = "config_reload_interval_s = 0"
    edit(runtime, GOOD.replace(interval, f'{interval}\nstitcher = "x"'))
    assert await runtime.reload_config() is False
    assert runtime.config_error == (
        f"{runtime.config.path}: `server.stitcher`: no stitcher 'x' would be loaded; "
        "offered: crossfade"
    )
    assert runtime.config.server.stitcher == "crossfade"


async def test_removing_the_stitchers_table_is_refused(runtime: Runtime) -> None:
    without = GOOD.split("[plugins.crossfade]")[0]
    edit(runtime, without)
    assert await runtime.reload_config() is False
    assert runtime.config_error == (
        f"{runtime.config.path}: `server.stitcher`: no stitcher 'crossfade' would be loaded; "
        "offered: none"
    )
    assert "crossfade" in runtime.registry.stitchers


def test_live_server_refuses_a_bad_edit_keeps_speaking_and_clears_the_error_when_fixed(
    tmp_path: Path,
) -> None:
    config = GOOD.replace("config_reload_interval_s = 0", "config_reload_interval_s = 0.1")
    server = start_live_server(tmp_path, config)
    path = tmp_path / "plugins.toml"
    body = {"model": "tts-1", "voice": "alloy", "input": "One. Two.", "response_format": "pcm"}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            path.write_text(config.replace("crossfade_ms = 10.0", "crossfade_ms = -3.0"))
            error = wait_for(lambda: http.get("/config").json()["config_error"])
            assert "`plugins.crossfade.settings" in error
            speech = http.post("/v1/audio/speech", json=body)
            assert speech.status_code == 200 and len(speech.content) > 0
            assert "plugins.toml not applied; nothing changed" in server.log.read_text()

            path.write_text(config.replace("crossfade_ms = 10.0", "crossfade_ms = 4.0"))
            wait_for(lambda: http.get("/config").json()["config_error"] is None)
            assert http.post("/v1/audio/speech", json=body).status_code == 200
    finally:
        server.stop()


def wait_for(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


async def test_an_edit_naming_the_fault_module_twice_gives_each_entry_its_engine(
    runtime: Runtime,
) -> None:
    second = '[plugins.fault2]\nmodule = "morpheus_tts.plugins.engines.fault"\n'
    edit(runtime, GOOD.replace('default_engine = "fault"', 'default_engine = "fault2"') + second)
    assert await runtime.reload_config() is True, runtime.config_error
    assert sorted(runtime.registry.engines) == ["fault", "fault2"]
    assert runtime.default_engine == "fault2"
    assert await spoken_samples(runtime) > 0
