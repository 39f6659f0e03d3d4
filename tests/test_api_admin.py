"""/plugins, /adapters and /config on a live server, with a plugin distribution the test builds.

`morpheus-test-echo` is written to a temporary directory, pip-installed into this environment
as a real distribution with a `morpheus.plugins` entry point, loaded and unloaded through the
API, and uninstalled at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, start_live_server
from httpx_sse import connect_sse

DIST = "morpheus-test-echo"
VERSION = "0.3.1"

PYPROJECT = f"""
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{DIST}"
version = "{VERSION}"

[project.entry-points."morpheus.plugins"]
echo = "morpheus_test_echo"

[tool.setuptools]
packages = ["morpheus_test_echo"]
"""

ECHO_MODULE = '''
"""A test plugin: the `echo` engine speaks a 440 Hz tone, one 100 ms chunk per step."""

import time

import msgspec
import numpy as np

from morpheus_tts.host import Component, EngineCapabilities, hookimpl


class EchoSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    chunks: int = 3
    step_ms: float = 0.0


class EchoEngine:
    def __init__(self, settings):
        self.settings = settings
        self.capabilities = EngineCapabilities(sample_rate=24000, voices=("echo",))
        self.ready = False

    async def start(self):
        self.ready = True

    async def stop(self):
        self.ready = False

    def health(self):
        return {"ready": self.ready}

    def synthesize(self, request):
        t = np.arange(2400) / 24000
        for _ in range(self.settings.chunks):
            time.sleep(self.settings.step_ms / 1000)
            yield (0.25 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@hookimpl
def morpheus_engines():
    return [Component(name="echo", kind="engine", create=EchoEngine, settings=EchoSettings)]
'''

CONFIG = """
[server]
default_engine = "fault"
plugin_modules = ["plugins.*", "morpheus_test_echo.*"]
drain_timeout_s = 30.0
config_reload_interval_s = 0.1
[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""

KEY = "s3cret-admin-key"


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True, capture_output=True, timeout=300,
    )


@pytest.fixture(scope="module")
def echo_distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Build and install the distribution; yield its name; uninstall it afterwards."""
    root = tmp_path_factory.mktemp("echo-dist")
    (root / "pyproject.toml").write_text(PYPROJECT)
    package = root / "morpheus_test_echo"
    package.mkdir()
    (package / "__init__.py").write_text(ECHO_MODULE)
    (package / "broken.py").write_text('raise RuntimeError("this plugin breaks on import")\n')
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(root))
    try:
        yield DIST
    finally:
        pip("uninstall", "-y", DIST)


def start(tmp_path: Path, config: str = CONFIG, env: dict[str, str] | None = None) -> LiveServer:
    return start_live_server(tmp_path, config, env)


@pytest.fixture(scope="module")
def live(
    echo_distribution: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    server = start(tmp_path_factory.mktemp("admin"))
    yield server
    server.stop()


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as http:
        yield http


@pytest.fixture
def echo(client: httpx.Client) -> Iterator[dict[str, Any]]:
    """The echo plugin loaded by entry point (slow steps); unloaded after the test."""
    response = client.post(
        "/plugins", json={"name": "echo", "entry_point": "echo", "settings": {"chunks": 3}}
    )
    assert response.status_code == 201, response.text
    yield response.json()
    if "echo" in plugins(client):
        client.delete("/plugins/echo")


def plugins(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in client.get("/plugins").json()["plugins"]}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def speak_pcm(client: httpx.Client, model: str) -> httpx.Response:
    return client.post(
        "/v1/audio/speech",
        json={"model": model, "input": "Hello there.", "voice": "echo", "response_format": "pcm"},
    )


# -- /plugins --------------------------------------------------------------------------------


def test_entry_point_plugin_loads_lists_speaks_and_unloads(
    client: httpx.Client, echo: dict[str, Any]
) -> None:
    assert echo["source"] == f"entry point ({DIST})"
    listed = plugins(client)["echo"]
    assert listed["kind"] == "engine"
    assert listed["version"] == VERSION
    assert listed["state"] == "loaded"
    assert listed["error"] is None
    assert listed["health"] == {"ready": True, "engines": {"echo": {"ready": True}}}
    assert "echo" in [a["name"] for a in client.get("/adapters").json()["adapters"]]

    spoken = speak_pcm(client, "echo")
    assert spoken.status_code == 200, spoken.text
    assert len(spoken.content) == 3 * 2400 * 2  # three 100 ms chunks of 24 kHz pcm16

    unloaded = client.delete("/plugins/echo")
    assert unloaded.json() == {"name": "echo", "state": "unloaded", "drained": False}
    assert "echo" not in plugins(client)
    refused = client.post("/v1/sessions", json={"engine": "echo"})
    assert refused.status_code == 404
    assert error_of(refused)["message"] == "unknown engine 'echo'; available: fault"


def test_builtin_plugins_say_where_they_came_from(client: httpx.Client) -> None:
    fault = plugins(client)["fault"]
    assert (fault["source"], fault["kind"], fault["state"]) == ("built-in", "engine", "loaded")
    assert fault["module"] == "morpheus_tts.plugins.engines.fault"


def test_module_outside_the_allow_list_is_403(client: httpx.Client) -> None:
    response = client.post("/plugins", json={"name": "evil", "module": "os"})
    assert response.status_code == 403
    error = error_of(response)
    assert (error["code"], error["param"]) == ("module_not_allowed", "module")
    assert "plugin_modules" in error["message"]
    assert "evil" not in plugins(client)


def test_plugin_failing_on_import_is_reported_and_harms_nothing(client: httpx.Client) -> None:
    response = client.post(
        "/plugins", json={"name": "broken", "module": "morpheus_test_echo.broken"}
    )
    assert response.status_code == 422
    assert error_of(response)["code"] == "plugin_load_failed"
    listed = plugins(client)
    assert listed["broken"]["state"] == "failed"
    assert listed["broken"]["error"] == "RuntimeError: this plugin breaks on import"
    assert all(listed[name]["state"] == "loaded" for name in ("fault", "sentence", "crossfade"))
    assert client.post("/v1/sessions", json={}).status_code == 201
    assert client.delete("/plugins/broken").status_code == 200
    assert "broken" not in plugins(client)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"name": "x"}, 400, "module"),
        ({"name": "x", "module": "plugins.a", "entry_point": "a"}, 400, "module"),
        ({"name": "../x", "entry_point": "echo"}, 400, "name"),
        ({"name": "x", "entry_point": "nope"}, 422, "entry_point"),
        ({"name": "fault", "module": "morpheus_tts.plugins.engines.fault"}, 409, "name"),
        ({"module": "morpheus_tts.plugins.engines.fault"}, 400, "name"),
    ],
)
def test_bad_plugin_loads_are_refused_naming_the_field(
    client: httpx.Client, body: dict[str, Any], status: int, param: str
) -> None:
    response = client.post("/plugins", json=body)
    assert response.status_code == status, response.text
    assert error_of(response)["param"] == param
    if "x" in plugins(client):
        client.delete("/plugins/x")


def test_unloading_an_unknown_plugin_is_404(client: httpx.Client) -> None:
    response = client.delete("/plugins/nope")
    assert response.status_code == 404
    assert error_of(response)["code"] == "plugin_not_found"


def load_slow_echo(client: httpx.Client) -> None:
    response = client.post(
        "/plugins",
        json={"name": "echo", "entry_point": "echo", "settings": {"chunks": 40, "step_ms": 5}},
    )
    assert response.status_code == 201, response.text


def speak_in_session_while_unloading(client: httpx.Client, drain: bool) -> list[dict]:
    """Start a 4 s turn on echo, unload echo after its first chunk, return every event."""
    session_id = client.post("/v1/sessions", json={"engine": "echo"}).json()["id"]
    client.post(f"/v1/sessions/{session_id}/text", json={"text": "Long.", "final": True})
    events: list[dict] = []
    unload = threading.Thread(
        target=lambda: client.delete(f"/plugins/echo?drain={str(drain).lower()}")
    )
    with connect_sse(client, "GET", f"/v1/sessions/{session_id}/events") as source:
        for sse in source.iter_sse():
            events.append(json.loads(sse.data))
            if len(events) == 2:
                # Not reading stalls the turn (backpressure), so it is still open meanwhile.
                unload.start()
                if drain:
                    wait_for(lambda: plugins(client)["echo"]["state"] == "draining", "drain")
                else:
                    wait_for(lambda: "echo" not in plugins(client), "the unload")
                # Hidden at once: new requests naming it fail while the old stream goes on.
                assert "echo" not in [a["name"] for a in client.get("/adapters").json()["adapters"]]
                assert client.post("/v1/sessions", json={"engine": "echo"}).status_code == 404
            if sse.event in ("metrics", "error"):
                break
    unload.join(timeout=60)
    return events


def test_unload_with_drain_lets_the_open_stream_finish(client: httpx.Client) -> None:
    load_slow_echo(client)
    events = speak_in_session_while_unloading(client, drain=True)
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["turn.done", "metrics"]
    assert events[-1]["chunks"] == kinds.count("audio.delta")
    assert events[-1]["audio_ms"] == pytest.approx(40 * 100.0)
    assert "echo" not in plugins(client)


def test_unload_without_drain_ends_the_open_stream_with_an_error(client: httpx.Client) -> None:
    load_slow_echo(client)
    events = speak_in_session_while_unloading(client, drain=False)
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "engine_unloaded"
    assert events[-1]["message"] == "engine 'echo' was unloaded"
    assert "turn.done" not in [e["type"] for e in events]
    assert "echo" not in plugins(client)


# -- /adapters and /config -------------------------------------------------------------------


def test_adapters_list_engines_with_health(client: httpx.Client) -> None:
    body = client.get("/adapters").json()
    assert body["default"] == "fault"
    (fault,) = [a for a in body["adapters"] if a["name"] == "fault"]
    assert fault["health"]["ready"] is True
    assert fault["capabilities"]["sample_rate"] == 24000
    assert fault["default"] is True


def test_post_config_switches_the_default_engine_for_new_requests(
    client: httpx.Client, echo: dict[str, Any]
) -> None:
    try:
        response = client.post("/config", json={"tts_backend": "echo"})
        assert response.status_code == 200, response.text
        assert response.json()["default_engine"] == "echo"
        assert client.get("/config").json()["tts_backend"] == "echo"
        created = client.post("/v1/sessions", json={}).json()
        assert created["engine"] == "echo"
    finally:
        client.post("/config", json={"default_engine": "fault"})


def test_get_config_shows_defaults_thresholds_and_never_the_key(client: httpx.Client) -> None:
    config = client.get("/config").json()
    assert config["default_engine"] == config["tts_backend"] == "fault"
    for key in ("first_chunk_tokens", "target_chunk_tokens", "playback_buffer_ms",
                "buffer_min_ms", "buffer_max_ms", "failover", "default_voice"):
        assert key in config
    assert "admin_key" not in config
    assert config["admin_key_set"] is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tts_backend": "nope"}, "default_engine"),
        ({"default_voice": "alto"}, "default_voice"),
        ({"failover": ["nope"]}, "failover"),
        ({"admin_key": "x"}, "admin_key"),
        ({"plugin_modules": ["*"]}, "plugin_modules"),
        ({"tts_backend": "fault", "default_engine": "echo"}, "tts_backend"),
    ],
)
def test_bad_config_updates_are_400_and_change_nothing(
    client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    before = client.get("/config").json()
    response = client.post("/config", json=body)
    assert response.status_code == 400
    assert error_of(response)["param"] == param
    assert client.get("/config").json() == before


def test_inconsistent_thresholds_are_refused(client: httpx.Client) -> None:
    response = client.post("/config", json={"buffer_min_ms": 900})
    assert response.status_code == 400
    assert "playback_buffer_ms" in error_of(response)["message"]


def test_chunk_targets_and_thresholds_update(client: httpx.Client) -> None:
    response = client.post("/config", json={"target_chunk_tokens": 24, "playback_buffer_ms": 250})
    assert response.status_code == 200
    config = client.get("/config").json()
    assert (config["target_chunk_tokens"], config["playback_buffer_ms"]) == (24, 250)


# -- plugins.toml hot reload -----------------------------------------------------------------


def wait_for(check: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_plugins_toml_edits_apply_without_restart(
    echo_distribution: str, tmp_path: Path
) -> None:
    server = start(tmp_path)
    path = tmp_path / "plugins.toml"
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            edited = CONFIG.replace('default_engine = "fault"', 'default_engine = "echo"')
            path.write_text(edited + '[plugins.echo_file]\nentry_point = "echo"\n')
            wait_for(lambda: "echo_file" in plugins(http), "the added plugin")
            assert plugins(http)["echo_file"]["source"] == f"entry point ({DIST})"
            assert http.get("/config").json()["default_engine"] == "echo"

            path.write_text("[server\nbroken")
            wait_for(lambda: http.get("/config").json()["config_error"], "the parse error")
            assert "echo_file" in plugins(http)

            path.write_text(CONFIG)
            wait_for(lambda: "echo_file" not in plugins(http), "the removed plugin")
            config = http.get("/config").json()
            assert (config["default_engine"], config["config_error"]) == ("fault", None)
    finally:
        server.stop()


# -- the admin key ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start(tmp_path_factory.mktemp("guarded"), env={"MORPHEUS_ADMIN_KEY": KEY})
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/plugins", {"name": "x", "module": "morpheus_tts.plugins.engines.fault"}),
        ("DELETE", "/plugins/fault", None),
        ("POST", "/config", {"tts_backend": "fault"}),
    ],
)
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"X-Admin-Key": "wrong"}]
)
def test_writes_need_the_admin_key(
    guarded: LiveServer, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    response = httpx.request(method, guarded.url + path, json=body, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_admin_key"
    assert response.headers["www-authenticate"] == "Bearer"
    listed = httpx.get(guarded.url + "/plugins").json()["plugins"]
    assert [p["name"] for p in listed] == ["fault", "sentence", "crossfade"]


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEY}"}, {"X-Admin-Key": KEY}]
)
def test_the_admin_key_opens_writes(guarded: LiveServer, headers: dict[str, str]) -> None:
    response = httpx.post(guarded.url + "/config", json={"tts_backend": "fault"}, headers=headers)
    assert response.status_code == 200


def test_reads_stay_open_with_an_admin_key(guarded: LiveServer) -> None:
    for path in ("/plugins", "/adapters", "/config"):
        assert httpx.get(guarded.url + path).status_code == 200
    assert httpx.get(guarded.url + "/config").json()["admin_key_set"] is True


def test_admin_key_can_come_from_plugins_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    from morpheus_tts.api.admin import admin_key
    from morpheus_tts.host.config import MorpheusConfig, ServerSettings
    from morpheus_tts.host.runtime import Runtime

    monkeypatch.delenv("MORPHEUS_ADMIN_KEY", raising=False)
    runtime = Runtime(MorpheusConfig(server=ServerSettings(admin_key="from-file")))
    assert admin_key(runtime) == "from-file"
    monkeypatch.setenv("MORPHEUS_ADMIN_KEY", "from-env")
    assert admin_key(runtime) == "from-env"


# -- the rest of the surface -----------------------------------------------------------------


def test_root_serves_the_web_page_and_schema_is_openapi(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "Morpheus" in page.text and 'href="/schema"' in page.text
    schema = client.get("/schema/openapi.json").json()
    assert schema["info"]["title"] == "Morpheus"
    for path in ("/v1/sessions", "/plugins", "/adapters", "/config", "/health"):
        assert path in schema["paths"]
