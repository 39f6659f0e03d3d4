"""Voice and model discovery in the shapes clients read, open unless the operator locks it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import ROOT, LiveServer, start_live_server

KEY = "sk-discovery-test"


def test_voices_are_objects_with_id_name_engine_and_details(server: LiveServer) -> None:
    body = httpx.get(f"{server.url}/v1/audio/voices").json()
    (joe,) = body["voices"]
    assert joe == {
        "id": "joe", "name": "joe", "engine": "piper", "languages": ["en-US"], "default": True,
        "details": {"sample_rate": 22050, "streaming": False, "native_speed": True,
                    "voice_cloning": False},
    }


def test_audio_models_list_engines_and_aliases_as_objects(server: LiveServer) -> None:
    models = httpx.get(f"{server.url}/v1/audio/models").json()["models"]
    by_id = {m["id"]: m for m in models}
    assert {"piper", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(by_id)
    assert by_id["tts-1"] == {"id": "tts-1", "name": "tts-1", "engine": "piper",
                              "owned_by": "morpheus"}


def test_api_base_answers_for_prewarm(server: LiveServer) -> None:
    for path in ("/v1", "/v1/"):
        response = httpx.get(server.url + path)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers with an API key: discovery open (the default), and discovery locked."""
    text = (ROOT / "plugins.toml").read_text()
    env = {"MORPHEUS_API_KEY": KEY}
    open_ = start_live_server(tmp_path_factory.mktemp("open"), text, env)
    locked_text = text.replace("[server]\n", "[server]\ndiscovery_requires_key = true\n", 1)
    assert locked_text != text
    try:
        locked = start_live_server(tmp_path_factory.mktemp("locked"), locked_text, env)
    except Exception:
        open_.stop()
        raise
    try:
        yield open_, locked
    finally:
        open_.stop()
        locked.stop()


DISCOVERY = ["/v1/audio/voices", "/v1/audio/models", "/v1/"]


@pytest.mark.parametrize("path", DISCOVERY)
def test_discovery_needs_no_key_by_default(keyed: tuple[LiveServer, LiveServer], path: str) -> None:
    open_, _ = keyed
    assert httpx.get(open_.url + path).status_code == 200
    speech = httpx.post(f"{open_.url}/v1/audio/speech",
                        json={"model": "tts-1", "voice": "alloy", "input": "Hi."})
    assert speech.status_code == 401  # the key still guards speech


@pytest.mark.parametrize("path", DISCOVERY)
def test_locked_discovery_needs_the_key(keyed: tuple[LiveServer, LiveServer], path: str) -> None:
    _, locked = keyed
    refused = httpx.get(locked.url + path)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    headers = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(locked.url + path, headers=headers).status_code == 200
