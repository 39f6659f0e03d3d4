"""Point 8 of "safe to expose": no leaks in messages.

Plugin-load errors carry no absolute paths or module internals, the Piper voice setting does
not tell whether some file exists, and `GET /config` does not show where the config lives.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from conftest import FAULT_TOML, LiveServer, start_live_server
from morpheus_tts.api.errors import scrub

CONFIG = FAULT_TOML
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|etc|root|home|usr)\b")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("leaks"), CONFIG)
    yield live
    live.stop()


def load_piper(server: LiveServer, voice: str) -> httpx.Response:
    return httpx.post(server.url + "/plugins", timeout=60, json={
        "name": "piper", "module": "morpheus_tts.plugins.engines.piper",
        "settings": {"voice": voice},
    })


def test_piper_voice_paths_do_not_reveal_which_files_exist(server: LiveServer) -> None:
    answers = [load_piper(server, path) for path in
               ("/etc/shadow", "/etc/passwd", "/no/such/file", "/no/such/voice.onnx")]
    assert {a.status_code for a in answers} == {422}
    # The same words whether the file exists, is not a voice, or is missing; no path at all.
    for answer, name in zip(answers, ("shadow", "passwd", "file", "voice"), strict=True):
        assert answer.json()["error"]["message"] == (
            f"plugin 'piper' failed to load: FileNotFoundError: piper voice {name!r}: the "
            "configured path is not a readable Piper voice (a .onnx file with its .onnx.json "
            "beside it); check the path on the server"
        )
    listed = httpx.get(server.url + "/plugins").text
    assert not ABSOLUTE_PATH.search(listed)


def test_a_failing_load_is_refused_without_internals(server: LiveServer) -> None:
    # A plugin whose settings don't fit its component: the error names the key, nothing else.
    response = httpx.post(server.url + "/plugins", json={
        "name": "again", "module": "morpheus_tts.plugins.engines.fault",
        "settings": {"no_such_setting": 1}})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert not ABSOLUTE_PATH.search(message)
    assert "\n" not in message and "{" not in message


def test_get_config_does_not_show_the_config_path(server: LiveServer) -> None:
    text = httpx.get(server.url + "/config").text
    assert '"path"' not in text
    assert "plugins.toml" not in text and not ABSOLUTE_PATH.search(text)


def test_scrub_keeps_the_reason_and_drops_paths_and_module_reprs() -> None:
    assert scrub("OSError: [Errno 2] No such file: '/home/a/models/x.gguf'\nTraceback...") == (
        "OSError: [Errno 2] No such file: 'x.gguf'")
    assert scrub("y=<module 'pkg.mod' from '/srv/pkg/mod.py'>") == "y=module 'pkg.mod'"
    assert scrub("see https://example.com/a/b for help") == "see https://example.com/a/b for help"
