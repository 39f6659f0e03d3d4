"""Schemathesis over the OpenAPI schema: generated requests never get a 5xx.

A bounded number of cases per operation, against a real server on the fault engine. The admin
writes (which would unload the engine under the other cases) and the endless session event
stream are left out; each has its own tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from conftest import LiveServer, start_live_server
from hypothesis import HealthCheck, given, settings

CONFIG = """
[server]
default_engine = "fault"
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = { chunks_per_segment = 2, chunk_ms = 40.0 }
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""
CASES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path_factory.mktemp("schema"), CONFIG)
    yield server
    server.stop()


def operations() -> list:
    """The schema's operations, from the app itself (collection needs no server)."""
    from morpheus_tts.api.app import create_app
    from morpheus_tts.host.config import MorpheusConfig

    document = create_app(MorpheusConfig()).openapi_schema.to_schema()
    loaded = schemathesis.openapi.from_dict(document)
    selected = loaded.exclude(method=["POST", "DELETE"], path_regex=r"^/(plugins|config)").exclude(
        path="/v1/sessions/{session_id}/events"
    )
    return [result.ok() for result in selected.get_all_operations()]


@pytest.mark.parametrize("operation", operations(), ids=lambda op: op.label)
def test_no_generated_request_gets_a_5xx(operation, live: LiveServer) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=CASES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call(base_url=live.url, timeout=30)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: "
            f"{response.text[:300]}"
        )
        media = "".join(response.headers.get("content-type", []))  # schemathesis: lists
        if response.status_code >= 400 and media.startswith("application/json"):
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()


def test_the_server_still_speaks_after_the_fuzzing(live: LiveServer) -> None:
    response = httpx.post(live.url + "/v1/audio/speech", timeout=30, json={
        "model": "fault", "input": "Still fine.", "voice": "tone", "response_format": "pcm"})
    assert response.status_code == 200 and len(response.content) > 0
