"""`/schema`: every body and error documented, the audio types named, the viewer served locally."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FAULT_TOML, LiveServer, start_live_server
from morpheus_tts.api.admin import ConfigUpdate, PluginLoad
from morpheus_tts.api.encoders import CONTENT_TYPES
from morpheus_tts.api.openapi import json_schema
from morpheus_tts.api.schemas import LegacySpeakRequest, SpeechRequest
from morpheus_tts.api.sessions import SessionCreate, TextInput
from morpheus_tts.api.voices import VoiceBody

CONFIG = FAULT_TOML

# The POSTs that take a body, and the Struct each handler decodes it into.
BODIES = {
    "/v1/audio/speech": SpeechRequest,
    "/speak": LegacySpeakRequest,
    "/v1/sessions": SessionCreate,
    "/v1/sessions/{session_id}/text": TextInput,
    "/plugins": PluginLoad,
    "/config": ConfigUpdate,
    "/v1/audio/voices": VoiceBody,
}
# The POSTs that are commands on a path and read no body.
BODYLESS = {"/v1/audio/speech/{stream_id}/barge-in", "/v1/sessions/{session_id}/barge-in"}
ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("openapi"), CONFIG)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def spec(server: LiveServer) -> dict[str, Any]:
    return httpx.get(f"{server.url}/schema/openapi.json", timeout=10).json()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_post_documents_the_body_its_handler_decodes(spec: dict[str, Any]) -> None:
    posts = {path: op for method, path, op in operations(spec) if method == "POST"}
    assert set(posts) == set(BODIES) | BODYLESS  # a new POST must be added to one of them
    for path, struct in BODIES.items():
        body = posts[path]["requestBody"]
        assert body["content"]["application/json"]["schema"] == json_schema(struct), path
        assert body["required"] is (path != "/v1/sessions")  # an empty body opens a session
    for path in BODYLESS:
        assert "requestBody" not in posts[path]


def test_the_speech_body_lists_openai_fields_and_formats(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/v1/audio/speech"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["model", "input", "voice"]
    formats = schema["properties"]["response_format"]["anyOf"][0]["enum"]
    assert sorted(formats) == ["aac", "flac", "mp3", "opus", "pcm", "wav"]


def test_every_error_response_is_the_openai_envelope(spec: dict[str, Any]) -> None:
    documented = 0
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == ENVELOPE, (
                    method, path, status,
                )
                documented += 1
        if method == "POST":
            assert "400" in operation["responses"] and "401" in operation["responses"], path
    error = spec["components"]["schemas"]["ErrorDetail"]
    assert sorted(error["properties"]) == ["code", "message", "param", "type"]
    assert documented >= 40


def test_speech_response_documents_each_audio_type_and_sse(spec: dict[str, Any]) -> None:
    content = spec["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert list(content) == [*CONTENT_TYPES.values(), "text/event-stream"]
    assert content["audio/mpeg"]["schema"]["format"] == "binary"
    assert "application/json" not in content


def test_error_answers_match_the_documented_envelope(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/v1/audio/speech", json={"model": "tts-1"}, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert sorted(error) == ["code", "message", "param", "type"]


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_schema_page_references_only_assets_the_server_serves(server: LiveServer) -> None:
    page = httpx.get(f"{server.url}/schema", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(page.text)
    assert sorted(parser.urls) == [
        "/schema/assets/favicon-32x32.png",
        "/schema/assets/swagger-ui-bundle.js",
        "/schema/assets/swagger-ui-standalone-preset.js",
        "/schema/assets/swagger-ui.css",
    ]
    kinds = {"js": "text/javascript", "css": "text/css", "png": "image/png"}
    for url in parser.urls:
        asset = httpx.get(server.url + url, timeout=10)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(kinds[url.rsplit(".", 1)[1]])
        assert len(asset.content) > 500, url


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_schema_page_renders_in_a_browser_that_can_reach_nothing_else(
    server: LiveServer, tmp_path: Path
) -> None:
    """Every host but 127.0.0.1 resolves to nothing: a CDN asset would leave the page blank."""
    dom = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=10000", "--dump-dom", f"{server.url}/schema",
        ],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert '<h2 class="title">Morpheus' in dom  # Swagger UI ran and rendered the spec
    assert 'data-path="/v1/audio/speech"' in dom
