"""Spec of the "crossfade" stitcher: seamless resampling, exact lengths, equal-power seams."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import soxr
from morpheus_tts.plugins.stitchers.crossfade import (
    CrossfadeSettings,
    CrossfadeStitcher,
    morpheus_stitchers,
)

OUT_RATE = 24000
FADE = 240  # samples in the default 10 ms crossfade at 24 kHz
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.5


def make_stitcher(**settings: object) -> CrossfadeStitcher:
    return CrossfadeStitcher(msgspec.convert(settings, CrossfadeSettings), sample_rate=OUT_RATE)


def tone(n: int, rate: int) -> np.ndarray:
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * np.arange(n) / rate)).astype(np.float32)


def uneven_chunks(signal: np.ndarray, seed: int = 7) -> list[np.ndarray]:
    """Cut `signal` at random sizes of 1..4000 samples, one of them a single sample."""
    sizes = np.random.default_rng(seed).integers(1, 4001, size=len(signal))
    sizes[3] = 1
    bounds = np.cumsum(sizes)
    bounds = bounds[bounds < len(signal)]
    return np.split(signal, bounds)


def run(stitcher: CrossfadeStitcher, pushes: list[tuple[np.ndarray, int, int]]) -> np.ndarray:
    """Push (samples, rate, segment) in order, flush, and return the whole output."""
    parts = [stitcher.push(samples, rate, segment) for samples, rate, segment in pushes]
    return np.concatenate([*parts, stitcher.flush()])


def seam_error_db(output: np.ndarray, seams_out: np.ndarray, edge: int, half: int = 64) -> float:
    """Error against the analytic 24 kHz tone in windows around seams, in dB re the tone RMS."""
    ideal = tone(len(output), OUT_RATE)
    seams = seams_out[(seams_out > edge + half) & (seams_out < len(output) - edge - half)]
    window = (seams[:, None] + np.arange(-half, half)).ravel()
    error_rms = np.sqrt(np.mean((output[window] - ideal[window]).astype(np.float64) ** 2))
    return 20 * np.log10(error_rms / (TONE_AMPLITUDE / np.sqrt(2)))


def test_offers_the_crossfade_stitcher_component() -> None:
    [component] = morpheus_stitchers()
    assert (component.name, component.kind) == ("crossfade", "stitcher")
    assert component.create is CrossfadeStitcher
    assert component.settings is CrossfadeSettings


def test_settings_reject_an_unknown_quality_naming_the_allowed_ones() -> None:
    with pytest.raises(msgspec.ValidationError, match="quality must be one of soxr's QQ, LQ"):
        msgspec.convert({"quality": "best"}, CrossfadeSettings)


def test_settings_reject_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError, match="crossfade_sec"):
        msgspec.convert({"crossfade_sec": 0.01}, CrossfadeSettings)


def test_chunks_of_one_segment_resample_seamlessly_to_the_exact_length() -> None:
    n = 3 * 22050
    chunks = uneven_chunks(tone(n, 22050))
    assert min(len(c) for c in chunks) == 1
    output = run(make_stitcher(), [(chunk, 22050, 0) for chunk in chunks])

    assert output.dtype == np.float32
    assert len(output) == round(n * OUT_RATE / 22050)
    seams_out = np.round(np.cumsum([len(c) for c in chunks[:-1]]) * OUT_RATE / 22050)
    assert seam_error_db(output, seams_out.astype(int), edge=OUT_RATE // 100) < -45


def test_naive_per_chunk_resampling_fails_the_seam_bound() -> None:
    chunks = uneven_chunks(tone(3 * 22050, 22050))
    naive_parts = [soxr.resample(chunk, 22050, OUT_RATE, quality="HQ") for chunk in chunks]
    naive = np.concatenate(naive_parts).astype(np.float32)

    seams_out = np.cumsum([len(part) for part in naive_parts[:-1]])
    assert seam_error_db(naive, seams_out, edge=OUT_RATE // 100) > -45


def test_input_at_the_output_rate_passes_through_unchanged() -> None:
    signal = np.random.default_rng(1).uniform(-1, 1, 50_000).astype(np.float32)
    output = run(make_stitcher(), [(chunk, OUT_RATE, 0) for chunk in uneven_chunks(signal)])
    np.testing.assert_array_equal(output, signal)


@pytest.mark.parametrize("n", [1, 3, 999, 16001])
def test_resampled_length_rounds_exact_halves_like_python_round(n: int) -> None:
    # n * 1.5 ends in .5 for odd n: soxr's stream rounds those up, Python's round to even
    output = run(make_stitcher(), [(np.ones(n, dtype=np.float32), 16000, 0)])
    assert len(output) == round(n * OUT_RATE / 16000)


def test_two_segments_lose_exactly_one_crossfade_of_samples() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, 5000).astype(np.float32)
    b = rng.uniform(-1, 1, 7001).astype(np.float32)
    output = run(make_stitcher(), [(a, 22050, 0), (b, 22050, 1)])
    assert len(output) == round(5000 * OUT_RATE / 22050) + round(7001 * OUT_RATE / 22050) - FADE


def test_seam_gains_are_equal_power() -> None:
    ones, zeros = np.ones(2000, dtype=np.float32), np.zeros(3000, dtype=np.float32)
    fading_out = run(make_stitcher(), [(ones, OUT_RATE, 0), (zeros, OUT_RATE, 1)])
    fading_in = run(make_stitcher(), [(zeros, OUT_RATE, 0), (ones, OUT_RATE, 1)])
    overlap = slice(3000 - FADE, 3000)
    gain_out, gain_in = fading_out[2000 - FADE : 2000], fading_in[overlap]

    np.testing.assert_allclose(gain_out**2 + gain_in**2, 1.0, atol=1e-6)
    assert np.all(np.diff(gain_out) < 0) and np.all(np.diff(gain_in) > 0)
    np.testing.assert_array_equal(fading_out[: 2000 - FADE], 1.0)
    np.testing.assert_array_equal(fading_in[3000:], 1.0)


def test_segment_shorter_than_the_fade_keeps_all_its_samples() -> None:
    silence = np.zeros(2000, dtype=np.float32)
    short = np.ones(100, dtype=np.float32)
    output = run(
        make_stitcher(), [(silence, OUT_RATE, 0), (short, OUT_RATE, 1), (silence, OUT_RATE, 2)]
    )

    # its two seams share it: 50 samples fade in over the tail before, 50 fade out under the next
    assert len(output) == 2000 + 100 + 2000 - 50 - 50
    assert np.flatnonzero(output).tolist() == list(range(2000 - 50, 2000 + 50))


def test_last_segment_shorter_than_the_fade_fades_in_whole() -> None:
    a = np.zeros(2000, dtype=np.float32)
    short = np.ones(100, dtype=np.float32)
    output = run(make_stitcher(), [(a, OUT_RATE, 0), (short, OUT_RATE, 1)])
    assert len(output) == 2000 + 100 - 100
    assert np.flatnonzero(output).tolist() == list(range(1900, 2000))


def test_fade_out_ends_at_zero_within_fade_ms() -> None:
    stitcher = make_stitcher()
    stitcher.push(np.ones(5000, dtype=np.float32), OUT_RATE, 0)
    faded = stitcher.fade_out(5.0)

    assert len(faded) == 120  # 5 ms at 24 kHz, of the 240 samples held back
    assert faded[-1] == 0.0
    assert 0.99 < faded[0] < 1.0 and np.all(np.diff(faded) < 0)


def test_fade_out_longer_than_held_fades_what_is_held() -> None:
    stitcher = make_stitcher()
    stitcher.push(np.ones(5000, dtype=np.float32), OUT_RATE, 0)
    faded = stitcher.fade_out(50.0)
    assert len(faded) == FADE
    assert faded[-1] == 0.0


def test_push_after_fade_out_starts_a_fresh_stream() -> None:
    chunks = uneven_chunks(tone(22050, 22050))
    fresh = run(make_stitcher(), [(chunk, 22050, 0) for chunk in chunks])

    stitcher = make_stitcher()
    stitcher.push(np.ones(3000, dtype=np.float32), 22050, 0)
    stitcher.fade_out(10.0)
    after = run(stitcher, [(chunk, 22050, 0) for chunk in chunks])

    np.testing.assert_array_equal(after, fresh)
