"""Speed means speed: at `speed` s every engine's audio lasts (its length at 1.0) / s, within 5%,
over 0.25-4.0, with the pitch kept and the words still there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from conftest import word_error_rate
from morpheus_tts.host.config import MorpheusConfig, PluginEntry, ServerSettings
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.host.speed import time_stretch
from orpheus_fixtures import SLIM_SNAC_CONFIG, write_snac_dir, write_tiny_orpheus_gguf

TEXT = (
    "The quick brown fox jumps over the lazy dog. Then, after a pause, it ran home; it was tired!"
)
SPEEDS = [0.25, 0.5, 2.0, 4.0]
RATE = 24000  # the server's output rate
COMMON = {
    "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
    "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
}


def piper_runtime(**settings: object) -> Runtime:
    # noise 0: the same text gives the same durations, so only speed changes the length.
    table = {"noise_scale": 0.0, "noise_w_scale": 0.0, **settings}
    plugins = {"piper": PluginEntry(module="morpheus_tts.plugins.engines.piper", settings=table)}
    return Runtime(MorpheusConfig(plugins={**plugins, **COMMON}), entry_points=False)


def speak_at(
    runtime: Runtime, speeds: list[float], text: str = TEXT, **request: object
) -> list[np.ndarray]:
    """Speak `text` once per speed in one running runtime; the 24 kHz audio of each."""
    out: list[np.ndarray] = []

    async def main() -> None:
        async with runtime.running():
            failed = {n: r.error for n, r in runtime.registry.records.items() if r.error}
            assert not failed
            for speed in speeds:
                spoken = SpeakRequest(speed=speed, pace=False, **request)
                async with runtime.speak(spoken, text) as utterance:
                    chunks = [chunk.samples async for chunk in utterance.audio]
                out.append(np.concatenate(chunks))

    anyio.run(main)
    return out


def median_f0(samples: np.ndarray, rate: int = RATE) -> float:
    """Median fundamental frequency (Hz) of the voiced 30 ms frames, by autocorrelation.

    30 ms holds three periods of a low voice yet fits inside one vowel of 4x speech.
    """
    frame, hop = int(0.03 * rate), int(0.005 * rate)
    low, high = rate // 400, rate // 60  # lags of 400 Hz and 60 Hz
    loudness = np.sqrt(np.mean(samples**2))
    overlap = frame - np.arange(frame)  # unbiased: each lag's sum over its overlap
    f0s = []
    for start in range(0, len(samples) - frame, hop):
        x = samples[start:start + frame] - samples[start:start + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.5 * loudness:
            continue  # silence and quiet consonants
        ac = np.correlate(x, x, "full")[frame - 1:] / overlap
        lag = low + int(np.argmax(ac[low:high]))
        if ac[lag] > 0.5 * ac[0]:  # clearly periodic: voiced
            f0s.append(rate / lag)
    return float(np.median(f0s))


@pytest.fixture(scope="module")
def piper_audio() -> dict[float, np.ndarray]:
    audio = speak_at(piper_runtime(), [1.0, *SPEEDS])
    return dict(zip([1.0, *SPEEDS], audio, strict=True))


@pytest.mark.parametrize("speed", SPEEDS)
def test_piper_duration_is_the_normal_one_divided_by_speed(piper_audio, speed: float) -> None:
    ratio = len(piper_audio[1.0]) / len(piper_audio[speed])
    assert ratio == pytest.approx(speed, rel=0.05)


@pytest.mark.parametrize("speed", SPEEDS)
def test_piper_keeps_its_pitch_at_every_speed(piper_audio, speed: float) -> None:
    normal = median_f0(piper_audio[1.0])
    assert 70 < normal < 250  # a speaking voice, so the estimator found the voicing
    assert median_f0(piper_audio[speed]) == pytest.approx(normal, rel=0.08)


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_piper_words_survive_a_speed_change(piper_audio, transcribe, speed: float) -> None:
    normal = word_error_rate(TEXT, transcribe(piper_audio[1.0], RATE))
    assert word_error_rate(TEXT, transcribe(piper_audio[speed], RATE)) <= normal + 0.1


@pytest.mark.parametrize("speed", [0.25, 4.0])
def test_piper_words_survive_the_extreme_speeds(piper_audio, transcribe, speed: float) -> None:
    # Whisper tiny cannot follow 4x speech at all (it hears "thanks for watching" even in an
    # ideal stretch of clean speech), so the extremes are judged played back at normal speed:
    # the words must still be in the audio. Measured: 0.25x restored 0/19 words wrong, 4x
    # restored 3/19 (the double stretch blurs a few consonants: "brown fox" -> "round box").
    restored = time_stretch(piper_audio[speed], RATE, 1 / speed)
    normal = word_error_rate(TEXT, transcribe(piper_audio[1.0], RATE))
    assert word_error_rate(TEXT, transcribe(restored, RATE)) <= normal + 0.2


def test_length_scale_speed_is_still_available_and_is_not_proportional() -> None:
    normal, fast = speak_at(piper_runtime(speed_method="length_scale"), [1.0, 4.0])
    assert len(normal) / len(fast) < 3.0  # why stretching is the default


# -- engines without native speed: the host stretches -----------------------------------------


@pytest.fixture(scope="module")
def orpheus_audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[float, np.ndarray]]:
    root = tmp_path_factory.mktemp("speed_orpheus")
    gguf = write_tiny_orpheus_gguf(root / "tiny.gguf")
    snac = write_snac_dir(root / "snac", config=SLIM_SNAC_CONFIG)
    yield _orpheus(gguf, snac)


def _orpheus(gguf: Path, snac: Path) -> dict[float, np.ndarray]:
    settings = {"model_path": str(gguf), "n_ctx": 2048, "n_threads": 1, "max_tokens": 280}
    plugins = {
        "orpheus": PluginEntry(module="morpheus_tts.plugins.engines.orpheus", settings=settings),
        "snac": PluginEntry(module="morpheus_tts.plugins.codecs.snac",
                            settings={"model_path": str(snac), "device": "cpu"}),
    }
    config = MorpheusConfig(server=ServerSettings(default_engine="orpheus"),
                            plugins={**plugins, **COMMON})
    runtime = Runtime(config, entry_points=False)
    # A seed makes the tiny model say the same frames at every speed.
    audio = speak_at(runtime, [1.0, *SPEEDS], "Hello world. Good night.", options={"seed": 1})
    return dict(zip([1.0, *SPEEDS], audio, strict=True))


@pytest.mark.parametrize("speed", SPEEDS)
def test_orpheus_duration_is_the_normal_one_divided_by_speed(orpheus_audio, speed) -> None:
    ratio = len(orpheus_audio[1.0]) / len(orpheus_audio[speed])
    assert ratio == pytest.approx(speed, rel=0.05)


@pytest.mark.parametrize("speed", SPEEDS)
def test_a_scripted_pcm_engine_without_native_speed_is_stretched(speed: float) -> None:
    plugins = {"fault": PluginEntry(module="morpheus_tts.plugins.engines.fault",
                                    settings={"chunk_ms": 100.0, "chunks_per_segment": 8})}
    config = MorpheusConfig(server=ServerSettings(default_engine="fault"),
                            plugins={**plugins, **COMMON})
    normal, changed = speak_at(Runtime(config, entry_points=False), [1.0, speed],
                               "One sentence. And another one.")
    assert len(normal) / len(changed) == pytest.approx(speed, rel=0.05)
