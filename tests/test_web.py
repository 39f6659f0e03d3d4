"""The web UI in a real browser: Debian's chromium, headless, driven by Playwright (Python),
against a real `morpheus serve` on 127.0.0.1.

The page's AudioWorklet reports what it rendered (`window.morpheus.player.stats`); chromium's
fake audio output (`--disable-audio-output`) drives the audio clock without a sound card.
Screenshots land in each test's tmp dir and in /tmp/morpheus-web-*.png.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LiveServer, start_live_server

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs Debian's chromium (apt-get install chromium; scripts/test.sh does)",
                allow_module_level=True)

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--disable-audio-output",
]

CONFIG = """
[server]
default_engine = "fault"
tracing_ui_url = "http://127.0.0.1:16686"

[plugins.fault]
module = "morpheus_tts.plugins.engines.fault"
settings = {{ step_delay_ms = {step_delay_ms} }}

{extra}

[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"

[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""
PIPER = """
[plugins.piper]
module = "morpheus_tts.plugins.engines.piper"
settings = { voice = "bundled" }
"""
RATE = 24000  # the server's output rate: what the page's AudioContext runs at


def fault_samples(sentence: str) -> int:
    """What the fault engine says for one segment: 100 ms chunks, about 60 ms a character."""
    return round(len(sentence) * 60 / 100) * RATE // 10


LONG_TEXT = " ".join(f"Sentence number {i} goes on for a while." for i in range(12))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Fault engine (tones, 60 ms per character, 5x real time) and Piper; tracing on."""
    live = start_live_server(
        tmp_path_factory.mktemp("web"), CONFIG.format(step_delay_ms=20, extra=PIPER),
        env={"OTEL_TRACES_EXPORTER": "console"},
    )
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[object]:
    with playwright_api.sync_playwright() as driver:
        yield driver


class Browser:
    """One fresh chromium profile, its page and every URL it requested."""

    def __init__(self, playwright: object, profile: Path, **options: object) -> None:
        self.context = playwright.chromium.launch_persistent_context(  # type: ignore[attr-defined]
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            accept_downloads=True, **options,
        )
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.sent: list[str] = []  # WebSocket text frames the page sent
        self.context.on("request", lambda request: self.urls.append(request.url))
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("websocket", self._watch_socket)
        # The DevTools network log also sees what Playwright's events miss (worklet modules).
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.on("Network.requestWillBeSent", lambda e: self.urls.append(e["request"]["url"]))
        self.cdp.send("Network.enable")

    def _watch_socket(self, socket: object) -> None:
        self.urls.append(socket.url)  # type: ignore[attr-defined]
        socket.on("framesent", lambda payload: self.sent.append(payload))  # type: ignore

    def open(self, server: LiveServer) -> object:
        self.page.goto(server.url + "/")
        self.page.wait_for_function("() => document.querySelector('#engine').options.length > 0")
        return self.page

    def stats(self) -> dict:
        return self.page.evaluate("window.morpheus.player.stats")

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text().strip()

    def screenshot(self, directory: Path, name: str) -> Path:
        path = directory / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, f"/tmp/morpheus-web-{name}.png")
        return path


@pytest.fixture
def browser(playwright: object, tmp_path: Path) -> Iterator[Browser]:
    browser = Browser(playwright, tmp_path / "profile")
    try:
        yield browser
    finally:
        browser.context.close()
    assert browser.errors == []


def wait_drained(browser: Browser, rendered_before: int = 0, timeout_ms: float = 30000) -> dict:
    browser.page.wait_for_function(
        "([before]) => { const s = window.morpheus.player.stats;"
        " return s.state === 'drained' && s.rendered > before; }",
        arg=[rendered_before], timeout=timeout_ms,
    )
    return browser.stats()


def test_the_page_loads_everything_from_morpheus_itself(
    server: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    page = browser.open(server)
    page.click("#speak")
    wait_drained(browser)
    host = server.url.removeprefix("http://")
    outside = [u for u in browser.urls if not re.match(rf"(http|ws)://{re.escape(host)}/", u)]
    assert outside == []
    assert f"ws://{host}/v1/realtime?speed=1&engine=fault&voice=tone" in browser.urls
    assert {f"{server.url}/{name}" for name in ("app.js", "player.js", "style.css")} <= set(
        browser.urls
    )
    # Worklet module fetches escape both request logs; the page's Content-Security-Policy
    # (everything from 'self') is what keeps them home, and it held: the worklet played.
    csp = page.locator("meta[http-equiv='Content-Security-Policy']").get_attribute("content")
    assert csp.startswith("default-src 'self';")
    assert browser.stats()["rendered"] > 0
    # No loaded engine clones voices, so the upload form stays hidden.
    assert page.locator("#voices-card").is_hidden()
    browser.screenshot(tmp_path, "loaded")


def test_speak_plays_every_sample_through_the_worklet(
    server: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    page = browser.open(server)
    page.fill("#text", "Hello from the browser.")
    page.click("#speak")
    stats = wait_drained(browser)
    received = page.evaluate("window.morpheus.ui.shown.samples.reduce((n, c) => n + c.length, 0)")
    assert received == fault_samples("Hello from the browser.")
    assert stats["rendered"] == received  # every sample received was played, none twice
    # Underflows depend on this machine's load; the panel shows the worklet's count.
    assert int(browser.text("#m-underflows")) == stats["underflows"]
    page.wait_for_function("() => /^\\d+$/.test(document.querySelector('#m-ttfa').textContent)")
    assert int(browser.text("#m-ttfa")) >= 0
    assert re.fullmatch(r"\d+\.\d\d", browser.text("#m-rtf"))
    assert browser.text("#m-engine") == "fault"
    assert browser.text("#m-degraded") == "normal"
    assert int(browser.text("#m-chunks")) > 1
    page.wait_for_function("() => document.querySelectorAll('#history-list li').length === 1")
    browser.screenshot(tmp_path, "spoke")


def test_the_trace_id_links_to_the_tracing_ui(server: LiveServer, browser: Browser) -> None:
    page = browser.open(server)
    page.click("#speak")
    link = page.locator("#m-trace a")
    link.wait_for(timeout=30000)
    trace_id = link.inner_text()
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert link.get_attribute("href") == f"http://127.0.0.1:16686/trace/{trace_id}"


def test_stop_fades_out_at_once_and_no_old_audio_plays_after(
    server: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    page = browser.open(server)
    page.fill("#text", LONG_TEXT)
    page.locator("#text").press("Control+Enter")  # the keyboard way to Speak
    page.wait_for_function(f"() => window.morpheus.player.stats.rendered > {RATE // 2}")
    page.keyboard.press("Escape")
    page.wait_for_function("() => window.morpheus.player.stopEvents.at(-1)?.stoppedAt != null")
    stop = page.evaluate("window.morpheus.player.stopEvents.at(-1)")
    print(f"stop took {stop['stoppedAt'] - stop['requestedAt']:.1f} ms of page time")
    # What played after the stop reached the worklet: the fade, at most 100 ms of audio.
    assert stop["renderedSinceStop"] <= 0.1 * RATE
    after_stop = browser.stats()["rendered"]
    page.wait_for_timeout(1500)  # the server had audio in flight: none of it may play
    assert browser.stats()["rendered"] == after_stop
    assert browser.text("#status") == "Stopped."
    browser.screenshot(tmp_path, "stopped")
    # The session carries on: the next Speak is heard in full.
    page.fill("#text", "Again.")
    page.click("#speak")
    stats = wait_drained(browser, after_stop)
    assert stats["rendered"] - after_stop == fault_samples("Again.")


def test_speak_as_i_type_sends_each_word_and_speaks(
    server: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    page = browser.open(server)
    page.check("#type-mode")
    page.locator("#text").press_sequentially("Typed words become speech. And more", delay=30)
    # The first sentence was sent word by word and spoken before the turn ended.
    page.wait_for_function("() => window.morpheus.player.stats.rendered > 0", timeout=30000)
    texts = [m for m in browser.sent if '"type":"text"' in m]
    assert texts[:4] == [
        '{"type":"text","text":"Typed ","final":false}',
        '{"type":"text","text":"words ","final":false}',
        '{"type":"text","text":"become ","final":false}',
        '{"type":"text","text":"speech. ","final":false}',
    ]
    page.keyboard.press("Enter")  # ends the turn: "more" goes with final
    page.wait_for_function("() => document.querySelectorAll('#history-list li').length === 1")
    assert browser.sent[-1] == '{"type":"text","text":"more","final":true}'
    assert browser.text("#history-list li .text") == "Typed words become speech. And more"
    browser.screenshot(tmp_path, "typed")


def test_piper_speaks_and_history_replays_and_downloads(
    server: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    page = browser.open(server)
    page.select_option("#engine", "piper")
    assert page.locator("#voice").input_value() == "joe"
    page.fill("#text", "Piper speaks in the browser.")
    page.click("#speak")
    first = wait_drained(browser)
    page.wait_for_function("() => document.querySelectorAll('#history-list li').length === 1")
    assert browser.text("#m-engine") == "piper"
    with page.expect_download() as download:
        page.click("#history-list li button:text('WAV')")
    wav = Path(download.value.path()).read_bytes()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert len(wav) == 44 + 2 * first["rendered"]
    page.click("#history-list li button:text('Replay')")
    replayed = wait_drained(browser, first["rendered"])
    assert replayed["rendered"] == 2 * first["rendered"]
    page.select_option("#format", "flac")
    with page.expect_download() as download:
        page.click("#download-server")
    assert Path(download.value.path()).read_bytes()[:4] == b"fLaC"
    browser.screenshot(tmp_path, "piper")


def test_unloading_a_plugin_shows_in_the_ui(
    playwright: object, tmp_path: Path
) -> None:
    live = start_live_server(
        tmp_path, CONFIG.format(step_delay_ms=0, extra=""), env={"MORPHEUS_ADMIN_KEY": "s3cret"}
    )
    browser = Browser(playwright, tmp_path / "profile")
    try:
        page = browser.open(live)
        row = page.locator("tr[data-plugin='fault']")
        assert row.locator("[data-role='state']").inner_text() == "loaded"
        assert "fault: ready" in row.inner_text()
        row.get_by_role("button", name="Unload fault").click()
        page.wait_for_function(
            "() => /admin key/.test(document.querySelector('#plugins-status').textContent)"
        )
        assert "Could not unload fault" in browser.text("#plugins-status")
        page.fill("#admin-key", "s3cret")
        row.get_by_role("button", name="Unload fault").click()
        page.wait_for_function(
            "() => document.querySelector(\"tr[data-plugin='fault'] [data-role='state']\")"
            ".textContent === 'unloaded'"
        )
        assert browser.text("#plugins-status") == "Unloaded fault."
        assert page.locator("#engine option").count() == 0
        assert page.locator("#speak").is_disabled()
        browser.screenshot(tmp_path, "unloaded")
    finally:
        browser.context.close()
        live.stop()
    assert browser.errors == []


def test_narrow_screen_with_reduced_motion(
    playwright: object, server: LiveServer, tmp_path: Path
) -> None:
    browser = Browser(
        playwright, tmp_path / "profile", viewport={"width": 390, "height": 844},
        reduced_motion="reduce",
    )
    try:
        page = browser.open(server)
        page.click("#speak")
        wait_drained(browser)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.evaluate("matchMedia('(prefers-reduced-motion: reduce)').matches")
        # Every control has a name a screen reader reads out.
        unnamed = page.evaluate(
            "[...document.querySelectorAll('button, input, select, textarea')]"
            ".filter(e => !e.labels?.length && !e.getAttribute('aria-label')"
            " && !e.textContent.trim() && e.type !== 'hidden').map(e => e.outerHTML)"
        )
        assert unnamed == []
        browser.screenshot(tmp_path, "narrow")
    finally:
        browser.context.close()
    assert browser.errors == []


def test_a_server_with_an_api_key_works_once_the_key_is_typed_in(
    playwright: object, tmp_path: Path
) -> None:
    live = start_live_server(
        tmp_path, CONFIG.format(step_delay_ms=0, extra=""), env={"MORPHEUS_API_KEY": "k3y-123"}
    )
    browser = Browser(playwright, tmp_path / "profile")
    try:
        page = browser.page
        page.goto(live.url + "/")
        page.wait_for_function(
            "() => /Enter the server's key/.test(document.querySelector('#status').textContent)"
        )
        page.fill("#admin-key", "k3y-123")
        page.press("#admin-key", "Enter")
        page.wait_for_function("() => document.querySelector('#engine').options.length > 0")
        page.fill("#text", "Hello with a key.")
        page.click("#speak")  # a realtime WebSocket: the key rides as a subprotocol
        stats = wait_drained(browser)
        assert stats["rendered"] == fault_samples("Hello with a key.")
        assert not any("k3y-123" in url for url in browser.urls)  # never in a URL
    finally:
        browser.context.close()
        live.stop()
    assert browser.errors == []
