"""Spec of the "snac" and "snac-mlx" codecs: loading by path, the frame layout, and streaming
that equals the offline decode with every sample emitted exactly once."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest
from morpheus_tts.host.config import MorpheusConfig, PluginEntry
from morpheus_tts.host.registry import Registry
from morpheus_tts.plugins.codecs.snac import (
    CONTEXT_FRAMES,
    FRAME_SAMPLES,
    HOP,
    LOOKAHEAD_SAMPLES,
    SnacCodec,
    SnacSettings,
    frames_to_levels,
    levels_to_frames,
)
from morpheus_tts.plugins.codecs.snac_mlx import SnacMlxCodec, SnacMlxSettings
from morpheus_tts.plugins.engines.orpheus import ChunkPlan
from orpheus_fixtures import SLIM_SNAC_CONFIG, write_snac_dir, write_snac_mlx_dir

TOLERANCE = 1e-4
FRAMES = 9
MLX_FRAMES = 5  # MLX's CPU backend is slow on Linux
# Every chunk the rate controller can ask of Orpheus (8..64 tokens), in whole 7-token frames.
CHUNK_FRAMES = sorted({ChunkPlan(tokens, low_latency=False).frames for tokens in range(8, 65)})


@pytest.fixture(scope="session")
def snac_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_snac_dir(tmp_path_factory.mktemp("snac_24khz"))


def started(codec):
    anyio.run(codec.start)
    return codec


@pytest.fixture(scope="session")
def codec(snac_dir: Path) -> SnacCodec:
    return started(SnacCodec(SnacSettings(model_path=str(snac_dir), device="cpu")))


@pytest.fixture(scope="session")
def slim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_snac_dir(tmp_path_factory.mktemp("snac_slim"), config=SLIM_SNAC_CONFIG)


@pytest.fixture(scope="session")
def slim(slim_dir: Path) -> SnacCodec:
    """The 24 kHz geometry (same receptive field) with 16x fewer channels: fast to stream."""
    return started(SnacCodec(SnacSettings(model_path=str(slim_dir), device="cpu")))


@pytest.fixture(scope="session")
def codes() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 4096, size=(FRAMES, 7), dtype=np.int32)


@pytest.fixture(scope="session")
def offline(codec: SnacCodec, codes: np.ndarray) -> np.ndarray:
    return codec.decode_window(codes)


def stream(codec, codes: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, list[int]]:
    """Decode `codes` in chunks of `sizes` frames; return the audio and each chunk's length."""
    decoder = codec.decoder()
    parts, start = [], 0
    for size in sizes:
        parts.append(decoder.decode(codes[start : start + size]))
        start += size
    assert start == len(codes)
    parts.append(decoder.flush())
    return np.concatenate(parts), [len(p) for p in parts]


def chunks_of(size: int, total: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


# -- loading ---------------------------------------------------------------------------------


def test_loads_a_published_layout_directory_by_path(offline: np.ndarray) -> None:
    assert offline.dtype == np.float32
    assert offline.shape == (FRAMES * FRAME_SAMPLES,)
    assert 0.01 < float(np.abs(offline).max()) <= 1.0


def test_without_model_path_the_error_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"plugins\.snac\.settings\.model_path"):
        SnacCodec(SnacSettings())


def test_a_missing_weights_file_is_named_with_its_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no pytorch_model\.bin"):
        SnacCodec(SnacSettings(model_path=str(tmp_path)))


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        SnacCodec(SnacSettings(model_path=str(tmp_path / "nowhere")))


def test_a_snac_other_than_24khz_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"sampling_rate": 44100, "vq_strides": [8, 4, 2, 1]}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="needs the 24 kHz model"):
        SnacCodec(SnacSettings(model_path=str(tmp_path)))


def test_the_registry_loads_the_codec_and_records_a_bad_path(snac_dir: Path, tmp_path: Path):
    registry = Registry(MorpheusConfig(plugins={}), entry_points=False)
    good = PluginEntry(module="morpheus_tts.plugins.codecs.snac",
        settings={"model_path": str(snac_dir)})
    bad = PluginEntry(module="morpheus_tts.plugins.codecs.snac",
        settings={"model_path": str(tmp_path)})

    async def main() -> None:
        assert (await registry.load("snac", good)).state == "loaded"
        assert registry.codec("snac").sample_rate == 24000
        await registry.unload("snac")
        record = await registry.load("snac", bad)
        assert record.state == "failed"
        assert f"{tmp_path} has no config.json or pytorch_model.bin" in record.error

    anyio.run(main)


# -- frame layout ----------------------------------------------------------------------------


def test_frames_split_into_levels_in_orpheus_slot_order() -> None:
    frames = np.array([[0, 1, 2, 3, 4, 5, 6], [10, 11, 12, 13, 14, 15, 16]])
    c0, c1, c2 = frames_to_levels(frames)
    assert c0.tolist() == [0, 10]
    assert c1.tolist() == [1, 4, 11, 14]
    assert c2.tolist() == [2, 3, 5, 6, 12, 13, 15, 16]
    assert levels_to_frames(c0, c1, c2).tolist() == frames.tolist()


def test_decoding_codes_out_of_range_is_refused(codec: SnacCodec) -> None:
    with pytest.raises(ValueError, match="0..4095"):
        codec.decoder().decode(np.full((1, 7), 4096))


# -- streaming -------------------------------------------------------------------------------


def test_the_context_covers_the_measured_reach_of_one_code(codec, codes, offline) -> None:
    """Changing one finest-level code moves samples only within the decoder's context."""
    changed = codes.copy()
    changed[6, 3] = (changed[6, 3] + 1000) % 4096  # c2[25]: latent hop 25
    moved = np.nonzero(codec.decode_window(changed) != offline)[0]
    hop_start, hop_end = 25 * HOP, 26 * HOP
    assert len(moved)
    assert hop_start - moved.min() <= LOOKAHEAD_SAMPLES
    assert moved.max() + 1 - hop_end <= CONTEXT_FRAMES * FRAME_SAMPLES


def test_noise_off_decodes_deterministically(codec, codes, offline) -> None:
    assert np.array_equal(codec.decode_window(codes), offline)


def test_the_full_model_streams_exactly_at_the_default_chunk(codec, codes, offline) -> None:
    audio, _ = stream(codec, codes, chunks_of(4, FRAMES))  # 28 tokens
    assert len(audio) == FRAMES * FRAME_SAMPLES
    np.testing.assert_allclose(audio, offline, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("chunk_frames", CHUNK_FRAMES)
def test_stream_equals_offline_for_every_chunk_size(slim, codes, chunk_frames) -> None:
    audio, _ = stream(slim, codes, chunks_of(chunk_frames, FRAMES))
    assert len(audio) == FRAMES * FRAME_SAMPLES
    np.testing.assert_allclose(audio, slim.decode_window(codes), atol=TOLERANCE, rtol=0)


def test_uneven_chunks_and_empty_pushes_emit_every_sample_once(slim, codes) -> None:
    audio, lengths = stream(slim, codes, [1, 0, 4, 2, 0, 2])
    assert sum(lengths) == FRAMES * FRAME_SAMPLES
    np.testing.assert_allclose(audio, slim.decode_window(codes), atol=TOLERANCE, rtol=0)


def test_audio_starts_once_three_frames_are_known(slim, codes) -> None:
    decoder = slim.decoder()
    assert len(decoder.decode(codes[:2])) == 0
    assert len(decoder.decode(codes[2:3])) == 3 * FRAME_SAMPLES - LOOKAHEAD_SAMPLES


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_short_streams_come_out_whole_at_flush(slim, codes, frames) -> None:
    audio, _ = stream(slim, codes[:frames], [frames])
    assert len(audio) == frames * FRAME_SAMPLES
    np.testing.assert_allclose(audio, slim.decode_window(codes[:frames]), atol=TOLERANCE)


def test_positional_noise_keeps_stream_equal_to_offline(slim_dir, codes) -> None:
    noisy = started(SnacCodec(SnacSettings(model_path=str(slim_dir), device="cpu", noise=True)))
    offline = noisy.decode_window(codes)
    assert np.array_equal(offline, noisy.decode_window(codes))
    audio, _ = stream(noisy, codes, chunks_of(4, FRAMES))
    np.testing.assert_allclose(audio, offline, atol=TOLERANCE, rtol=0)


def test_encode_returns_whole_frames_of_codes(slim) -> None:
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(22050) / 22050).astype(np.float32)
    frames = slim.encode(tone, 22050)
    assert frames.shape == (12, 7)  # 1 s at 24 kHz, padded to whole 2048-sample frames
    assert frames.min() >= 0 and frames.max() < 4096


# -- MLX -------------------------------------------------------------------------------------


MLX_MISSING = "the snac-mlx codec needs the orpheus-mlx extra (mlx, mlx-audio)"


@pytest.fixture(scope="session")
def mlx_codec(snac_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SnacMlxCodec:
    pytest.importorskip("mlx_audio", reason=MLX_MISSING)
    path = write_snac_mlx_dir(tmp_path_factory.mktemp("snac_24khz_mlx"), snac_dir)
    return started(SnacMlxCodec(SnacMlxSettings(model_path=str(path))))


@pytest.fixture(scope="session")
def slim_mlx(slim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SnacMlxCodec:
    pytest.importorskip("mlx_audio", reason=MLX_MISSING)
    path = write_snac_mlx_dir(tmp_path_factory.mktemp("snac_slim_mlx"), slim_dir)
    return started(SnacMlxCodec(SnacMlxSettings(model_path=str(path))))


def test_mlx_decode_matches_pytorch_sample_for_sample(mlx_codec, codec, codes) -> None:
    audio = mlx_codec.decode_window(codes[:MLX_FRAMES])
    assert audio.shape == (MLX_FRAMES * FRAME_SAMPLES,)
    np.testing.assert_allclose(audio, codec.decode_window(codes[:MLX_FRAMES]), atol=TOLERANCE)


@pytest.mark.parametrize("chunk_frames", [1, 4])
def test_mlx_stream_equals_its_offline_decode(slim_mlx, codes, chunk_frames) -> None:
    audio, _ = stream(slim_mlx, codes, chunks_of(chunk_frames, FRAMES))
    assert len(audio) == FRAMES * FRAME_SAMPLES
    np.testing.assert_allclose(audio, slim_mlx.decode_window(codes), atol=TOLERANCE, rtol=0)


def test_mlx_positional_noise_is_the_pytorch_codec_noise(slim_dir, slim_mlx, codes) -> None:
    noisy = started(SnacCodec(SnacSettings(model_path=str(slim_dir), device="cpu", noise=True)))
    noisy_mlx = started(
        SnacMlxCodec(SnacMlxSettings(model_path=slim_mlx.settings.model_path, noise=True))
    )
    np.testing.assert_allclose(
        noisy_mlx.decode_window(codes, 2), noisy.decode_window(codes, 2), atol=TOLERANCE
    )


def test_mlx_without_model_path_the_error_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"plugins\.snac-mlx\.settings\.model_path"):
        SnacMlxCodec(SnacMlxSettings())


def test_mlx_missing_weights_are_named(snac_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{snac_dir} has no model\.safetensors"):
        SnacMlxCodec(SnacMlxSettings(model_path=str(snac_dir)))
