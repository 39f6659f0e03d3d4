"""The wheel, installed as a user installs it: a fresh venv, a temp working directory.

The wheel is built from a copy of the source tree (`pip wheel --no-deps`), installed with
`--no-deps` into a new venv whose third-party packages come from this test venv's site-packages
by a `.pth` line (a `.pth` line adds a path; the `.pth` files inside it, such as the editable
install's finder, are not run, so `morpheus_tts` is importable only from the wheel). Everything
runs from a temp directory, so nothing is found beside the repository's folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, free_port
from websockets.sync.client import connect

pytestmark = pytest.mark.slow

# A plugin project with a top-level `plugins` package of its own: before the `morpheus_tts`
# namespace it shadowed the built-ins (`No module named 'plugins.engines'`).
OWN_PLUGINS_PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "owntone"
version = "0.2.0"
dependencies = ["morpheus-tts"]

[project.entry-points."morpheus.plugins"]
owntone = "plugins.tone"

[tool.setuptools]
packages = ["plugins"]
"""
OWN_PLUGINS_MODULE = '''
import numpy as np
from morpheus_tts.host import Component, EngineCapabilities, hookimpl


class Tone:
    def __init__(self, settings):
        self.capabilities = EngineCapabilities(sample_rate=16000, voices=("a",))

    async def start(self):
        pass

    async def stop(self):
        pass

    def health(self):
        return {"ready": True}

    def synthesize(self, request):
        yield np.zeros(1600, np.float32)


@hookimpl
def morpheus_engines():
    return [Component(name="owntone", kind="engine", create=Tone)]
'''


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def pip(venv: Path, *args: str | Path, cwd: Path) -> None:
    run(sys.executable, "-m", "pip", "--disable-pip-version-check", "-q",
        "--python", venv / "bin/python", *args, cwd=cwd)


def doc_block(heading: str, language: str) -> str:
    """The first ```language block after `heading` in the plugin section of docs/plugins.md."""
    text = (ROOT / "docs/plugins.md").read_text().split("## A complete third-party plugin")[1]
    after = text.split(heading, 1)[1]
    return re.search(rf"```{language}\n(.*?)```", after, re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps .` of a copy of the source tree (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source") / "morpheus"
    skip = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist",
                                  ".pytest_cache", ".ruff_cache", "bench")
    shutil.copytree(ROOT, source, ignore=skip)
    out = tmp_path_factory.mktemp("wheelhouse")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", out, source, cwd=out)
    (built,) = out.glob("morpheus_tts-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh venv with the wheel and two plugin distributions, deps from this venv."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(run(venv / "bin/python", "-c", where, cwd=root).strip())
    ours = {sysconfig.get_paths()["purelib"], *[p for p in sys.path if p.endswith("site-packages")]}
    (purelib / "zz_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    pip(venv, "install", "--no-deps", wheel, cwd=root)
    own = root / "owntone"
    (own / "plugins").mkdir(parents=True)
    (own / "pyproject.toml").write_text(OWN_PLUGINS_PYPROJECT)
    (own / "plugins/__init__.py").write_text("")
    (own / "plugins/tone.py").write_text(OWN_PLUGINS_MODULE)
    beep = root / "morpheus-beep"  # the package docs/plugins.md shows, verbatim
    (beep / "morpheus_beep").mkdir(parents=True)
    (beep / "pyproject.toml").write_text(doc_block("`pyproject.toml`:", "toml"))
    (beep / "morpheus_beep/__init__.py").write_text(
        doc_block("`morpheus_beep/__init__.py`:", "python")
    )
    for project in (own, beep):
        pip(venv, "install", "--no-deps", "--no-build-isolation", project, cwd=root)
    return venv


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    return tmp_path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MORPHEUS_", "PYTHON", "OTEL_"))}
    return {**env, **extra}


def test_the_wheel_holds_only_the_morpheus_tts_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"morpheus_tts", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "morpheus_tts/web/index.html" in names
    assert not any(name.startswith("morpheus_tts/plugins/engines/fault2") for name in names)


def test_no_generic_top_level_package_is_importable(venv: Path, cwd: Path) -> None:
    script = (
        "import importlib.util as u, os, plugins, morpheus_tts.host as h; "
        "print([n for n in ('host', 'api', 'observability', 'web') if u.find_spec(n)]); "
        "print(sorted(os.listdir(plugins.__path__[0]))); print(h.__file__)"
    )
    out = run(venv / "bin/python", "-c", script, cwd=cwd, env=clean_env()).splitlines()
    found, owntone_plugins, location = out[:3]
    assert found == "[]"
    # `plugins` is the owntone project's own package, not Morpheus's built-ins
    assert owntone_plugins.replace("'__pycache__', ", "") == "['__init__.py', 'tone.py']"
    assert location.startswith(str(venv))


def test_builtins_and_both_plugin_distributions_load(venv: Path, cwd: Path) -> None:
    listed = run(venv / "bin/morpheus", "plugins", "--json", cwd=cwd, env=clean_env())
    records = {r["name"]: r for r in json.loads(listed)}
    assert {n: (r["source"], r["state"]) for n, r in records.items()} == {
        "piper": ("built-in", "loaded"),
        "sentence": ("built-in", "loaded"),
        "crossfade": ("built-in", "loaded"),
        "owntone": ("entry point (owntone)", "loaded"),
        "beep": ("entry point (morpheus-beep)", "loaded"),
    }
    assert records["owntone"]["components"] == ["engine:owntone"]


@pytest.fixture(scope="module")
def served(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`morpheus serve` from the wheel, entry points off (they are loaded through the API)."""
    cwd = tmp_path_factory.mktemp("serve-cwd")
    port = free_port()
    log = open(cwd / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [venv / "bin/morpheus", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
        env=clean_env(MORPHEUS_NO_ENTRY_POINTS="1"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (cwd / "server.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (cwd / "server.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_the_web_page_is_served(served: str) -> None:
    page = httpx.get(f"{served}/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()


def test_a_websocket_session_speaks(served: str) -> None:
    with connect(f"ws://{served.removeprefix('http://')}/v1/realtime?voice=joe") as ws:
        created = json.loads(ws.recv(timeout=30))
        assert created["type"] == "session.created"
        ws.send(json.dumps({"type": "text", "text": "Hello from the wheel.", "final": True}))
        samples = 0
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                magic, rate, count, channels = struct.unpack("<4sIII", message[:16])
                assert (magic, rate, channels) == (b"PCM0", 24000, 1)
                samples += count
            elif json.loads(message)["type"] == "turn.done":
                break
        ws.send(json.dumps({"type": "close"}))
    assert samples > 24000 // 2  # over half a second of speech


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_schema_renders_from_local_assets(served: str) -> None:
    page = httpx.get(f"{served}/schema", timeout=10)
    assert page.status_code == 200
    parser = _Assets()
    parser.feed(page.text)
    assert len(parser.urls) == 4
    for url in parser.urls:
        assert url.startswith("/schema/assets/"), url
        assert httpx.get(served + url, timeout=10).status_code == 200


def test_an_installed_entry_point_loads_at_runtime_through_post_plugins(served: str) -> None:
    loaded = httpx.post(f"{served}/plugins", timeout=30, json={
        "name": "beep", "entry_point": "beep", "settings": {"pitch_hz": 880},
    })
    assert loaded.status_code == 201, loaded.text
    assert loaded.json()["source"] == "entry point (morpheus-beep)"
    body = {"model": "beep", "voice": "beep", "input": "Hello.", "response_format": "wav"}
    speech = httpx.post(f"{served}/v1/audio/speech", json=body, timeout=30)
    assert speech.status_code == 200 and speech.content[:4] == b"RIFF"
    assert speech.headers["x-morpheus-engine"] == "beep"
    assert httpx.delete(f"{served}/plugins/beep", timeout=30).status_code == 200
