"""`/metrics`: Prometheus series that move as requests run, parsed with prometheus_client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from morpheus_tts.api.app import create_app
from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
from morpheus_tts.host.runtime import SpeakRequest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.anyio

BODY = {"model": "tts-1", "voice": "alloy", "input": "One. Two. Three.", "response_format": "pcm"}


def config(**fault: object) -> MorpheusConfig:
    return MorpheusConfig(
        server=ServerSettings(default_engine="fault"),
        plugins={
            "fault": PluginEntry(module="morpheus_tts.plugins.engines.fault", settings=dict(fault)),
            "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
            "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
            "broken": PluginEntry(module="morpheus_tts.plugins.engines.fault",
                settings={"no_such": 1}),
        },
    )


class Scrape:
    """One parsed scrape of /metrics."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        return 0.0


@pytest.fixture
async def client() -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(config(chunks_per_segment=2, chunk_ms=40))
    async with AsyncTestClient(app) as test_client:
        with anyio.fail_after(10):
            while (await test_client.get("/health")).status_code != 200:
                await anyio.sleep(0.05)
        yield test_client


async def scrape(client: AsyncTestClient[Litestar]) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


async def test_a_request_moves_latency_audio_and_http_series(
    client: AsyncTestClient[Litestar],
) -> None:
    fault = {"engine": "fault"}
    completed = {"engine": "fault", "outcome": "completed"}
    before = await scrape(client)
    response = await client.post("/v1/audio/speech", json=BODY)
    assert response.status_code == 200
    with anyio.fail_after(5):  # the utterance's last report follows the body by a moment
        while True:
            after = await scrape(client)
            if after.value("morpheus_utterances_total", **completed) > before.value(
                "morpheus_utterances_total", **completed
            ):
                break
            await anyio.sleep(0.01)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("morpheus_utterances_total", **completed) == 1
    assert delta("morpheus_time_to_first_audio_seconds_count", **fault) == 1
    assert delta("morpheus_time_to_first_byte_seconds_count", **fault) == 1
    assert delta("morpheus_stream_real_time_factor_count", **fault) == 1
    assert delta("morpheus_time_to_first_audio_seconds_sum", **fault) > 0
    # 3 segments x 2 engine chunks: at least 2 chunks after the first reach the client.
    assert delta("morpheus_chunk_time_seconds_count", **fault) >= 2
    audio_s = len(response.content) / 2 / 24000  # 16-bit mono at 24 kHz
    assert delta("morpheus_audio_seconds_total", **fault) == pytest.approx(audio_s, abs=1e-3)
    assert after.value("morpheus_active_streams", **fault) == 0
    http = {"method": "POST", "path": "/v1/audio/speech", "status_code": "200"}
    assert delta("morpheus_http_requests_total", **http) == 1


async def test_active_streams_and_sessions_are_counted_while_open(
    client: AsyncTestClient[Litestar],
) -> None:
    state = client.app.state
    slow = state.runtime.stream(SpeakRequest(), "A long sentence that keeps going. " * 4)
    async for _chunk in slow:
        break
    assert (await scrape(client)).value("morpheus_active_streams", engine="fault") == 1
    await slow.aclose()
    with anyio.fail_after(5):
        while (await scrape(client)).value("morpheus_active_streams", engine="fault") != 0:
            await anyio.sleep(0.01)

    opened = await client.post("/v1/sessions", json={})
    assert opened.status_code == 201
    assert (await scrape(client)).value("morpheus_sessions") == 1
    await client.delete(f"/v1/sessions/{opened.json()['id']}")
    assert (await scrape(client)).value("morpheus_sessions") == 0


async def test_plugin_states_are_one_series_per_state(client: AsyncTestClient[Litestar]) -> None:
    metrics = await scrape(client)
    state = {
        s: metrics.value("morpheus_plugin_state", plugin="fault", state=s)
        for s in ("loaded", "failed", "disabled", "draining")
    }
    assert state == {"loaded": 1, "failed": 0, "disabled": 0, "draining": 0}
    assert metrics.value("morpheus_plugin_state", plugin="broken", state="failed") == 1


async def test_names_follow_prometheus_conventions(client: AsyncTestClient[Litestar]) -> None:
    await client.post("/v1/audio/speech", json=BODY)
    families = (await scrape(client)).families
    kinds = {name: f.type for name, f in families.items() if name.startswith("morpheus_")}
    expected = {
        "morpheus_time_to_first_audio_seconds": "histogram",
        "morpheus_time_to_first_byte_seconds": "histogram",
        "morpheus_chunk_time_seconds": "histogram",
        "morpheus_stream_real_time_factor": "histogram",
        "morpheus_playback_underflows": "counter",
        "morpheus_engine_failovers": "counter",
        "morpheus_barge_ins": "counter",
        "morpheus_utterances": "counter",
        "morpheus_audio_seconds": "counter",
        "morpheus_active_streams": "gauge",
        "morpheus_sessions": "gauge",
        "morpheus_plugin_state": "gauge",
        "morpheus_http_requests": "counter",
        "morpheus_http_request_duration_seconds": "histogram",
    }
    assert {name: kinds.get(name) for name in expected} == expected
    for name, family in families.items():
        if family.type == "counter" and name.startswith("morpheus_"):
            assert {s.name for s in family.samples} <= {f"{name}_total", f"{name}_created"}


async def test_openmetrics_when_the_scraper_asks(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
