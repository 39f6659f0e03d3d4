"""Spec of the "moss-audio-tokenizer" codecs (PyTorch and MLX): loading the upstream layout by
path, the PyTorch codec equal to mlx-audio's MossAudioTokenizer on the same checkpoint, streams
equal to offline decodes, prefix decode, encode for voice prompts, and the shape rules."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest
import torch
from morpheus_tts.host import Codec
from morpheus_tts.host.config import load_config
from morpheus_tts.host.registry import Registry
from morpheus_tts.plugins.codecs.moss_audio_tokenizer import (
    MossAudioTokenizerCodec,
    MossCodecSettings,
    canonical_codes,
)
from morpheus_tts.plugins.codecs.moss_audio_tokenizer_mlx import (
    MossAudioTokenizerMlxCodec,
)
from morpheus_tts.plugins.codecs.moss_codec_model import merge_weight_norm
from morpheus_tts.plugins.engines.moss_tiny import CODEC_DIR, write_all

# Relative to the peak: both runtimes compute in float32 (measured ~4e-7).
TOLERANCE = 1e-5
FRAMES = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("moss"), seed=3).parent


@pytest.fixture(scope="module")
def codec(tiny: Path) -> MossAudioTokenizerCodec:
    codec = MossAudioTokenizerCodec(MossCodecSettings(model_path=str(tiny / CODEC_DIR),
                                                      device="cpu"))
    anyio.run(codec.start)
    return codec


@pytest.fixture(scope="module")
def mlx_codec(tiny: Path) -> MossAudioTokenizerMlxCodec:
    codec = MossAudioTokenizerMlxCodec(MossCodecSettings(model_path=str(tiny / CODEC_DIR)))
    anyio.run(codec.start)
    return codec


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 1024, (FRAMES, 16))


@pytest.fixture(scope="module")
def offline(codec: MossAudioTokenizerCodec, codes: np.ndarray) -> np.ndarray:
    return codec.decode(codes.T)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).max()) <= TOLERANCE * np.abs(b).max()


def test_the_tiny_plugins_toml_loads_both_codecs_through_the_registry(tiny: Path) -> None:
    config = load_config(tiny / "plugins.toml")
    names = ("moss-audio-tokenizer", "moss-audio-tokenizer-mlx")
    registry = Registry(config, entry_points=False)

    async def main() -> None:
        for name in names:
            assert (await registry.load(name, config.plugins[name])).state == "loaded"
            codec = registry.codec(name)
            assert isinstance(codec, Codec)
            assert (codec.sample_rate, codec.frame_rate, codec.codebooks) == (24000, 12.5, 16)
        await registry.close()

    anyio.run(main)


def test_offline_decode_gives_1920_samples_per_frame(offline: np.ndarray) -> None:
    assert offline.shape == (FRAMES * 1920,)
    assert np.isfinite(offline).all() and np.abs(offline).max() > 0


def test_torch_decode_equals_mlx_audio_on_the_same_checkpoint(mlx_codec, codes, offline):
    import mlx.core as mx

    reference = np.array(mlx_codec.model.decode_audio_codes(mx.array(codes)))[:, 0]
    assert close(offline, reference)


@pytest.mark.parametrize("chunks", [[1] * FRAMES, [3, 3, 3, 3], [5, 0, 2, 5]])
def test_torch_stream_equals_offline_decode(codec, codes, offline, chunks) -> None:
    decoder = codec.decoder()
    bounds = np.cumsum([0, *chunks])
    parts = [decoder.decode(codes[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert [len(p) for p in parts] == [1920 * n for n in chunks]
    assert close(np.concatenate([*parts, decoder.flush()]), offline)


def test_mlx_stream_equals_the_torch_offline_decode(mlx_codec, codes, offline) -> None:
    decoder = mlx_codec.decoder()
    parts = [decoder.decode(codes[i : i + 4]) for i in range(0, FRAMES, 4)]
    assert close(np.concatenate(parts), offline)


def test_interleaved_streams_do_not_share_state(codec, codes, offline) -> None:
    first, second = codec.decoder(), codec.decoder()
    other = np.random.default_rng(8).integers(0, 1024, (FRAMES, 16))
    parts = []
    for i in range(0, FRAMES, 3):
        parts.append(first.decode(codes[i : i + 3]))
        second.decode(other[i : i + 3])
    assert close(np.concatenate(parts), offline)


def test_prefix_decode_uses_the_first_quantizers(codec, codes) -> None:
    prefix = codec.decode(codes.T, num_quantizers=8)
    assert close(prefix, codec.decode(codes[:, :8].T))
    assert not close(prefix, codec.decode(codes.T))


def test_a_stream_decoder_of_eight_codebooks(tiny: Path, codec, codes) -> None:
    eight = MossAudioTokenizerCodec(MossCodecSettings(model_path=str(tiny / CODEC_DIR),
                                                      device="cpu", codebooks=8))
    anyio.run(eight.start)
    assert close(eight.decoder().decode(codes[:, :8]), codec.decode(codes.T, num_quantizers=8))


def test_chunked_decode_equals_offline_and_checks_chunk_duration(codec, codes, offline):
    assert close(codec.decode(codes.T, chunk_duration=0.24), offline)
    for bad, message in [(0, "> 0"), (11, "<= the causal context"), (0.1, "multiple of 1920")]:
        with pytest.raises(ValueError, match=message):
            codec.decode(codes.T, chunk_duration=bad)


def test_every_code_layout_decodes_the_same(codec, codes, offline) -> None:
    for layout in (codes, codes.T[:, None, :], codes[None]):
        assert close(codec.decode(layout), offline)
    assert canonical_codes(np.zeros((16, 20)), 32, expected=16).shape == (16, 20)
    assert canonical_codes(np.zeros((20, 16)), 32, expected=16).shape == (16, 20)
    assert canonical_codes(np.zeros((20, 24)), 32, expected=16).shape == (20, 24)  # a tie
    with pytest.raises(ValueError, match="neither axis"):
        canonical_codes(np.zeros((40, 40)), 32)


def test_codes_out_of_range_or_misshapen_are_refused(codec) -> None:
    decoder = codec.decoder()
    with pytest.raises(ValueError, match="0..1023"):
        decoder.decode(np.full((1, 16), 1024))
    with pytest.raises(ValueError, match=r"\(frames, 16\)"):
        decoder.decode(np.zeros((2, 8), dtype=np.int64))


def test_encode_keeps_the_padded_last_frame_and_equals_mlx_audio(codec, mlx_codec) -> None:
    import mlx.core as mx

    audio = (np.random.default_rng(1).standard_normal(24000) * 0.1).astype(np.float32)
    codes = codec.encode_codes(audio, 24000)
    assert codes.shape == (32, 13)  # 12.5 frames: the partial 13th is padded and kept
    reference = np.array(mlx_codec.model.encode_audio(mx.array(audio[:, None]),
                                                      sample_rate=24000))
    assert reference.shape == (12, 32)  # mlx-audio floors
    assert (codes[:, :12] == reference.T).all()
    assert codec.encode(audio, 24000).shape == (13, 16)
    assert (mlx_codec.encode(audio, 24000) == codec.encode(audio, 24000)).all()


def test_encode_resamples_other_rates(codec) -> None:
    audio = np.zeros(16000, dtype=np.float32)
    assert codec.encode(audio, 16000).shape == (13, 16)


def test_weight_norm_pairs_merge_into_plain_weights() -> None:
    g = torch.tensor([[[2.0]], [[3.0]]])
    v = torch.tensor([[[3.0], [4.0]], [[0.0], [1.0]]])
    merged = merge_weight_norm({"p.parametrizations.weight.original0": g,
                                "p.parametrizations.weight.original1": v, "p.bias": g[:, 0, 0]})
    assert torch.allclose(merged["p.weight"], torch.tensor([[[1.2], [1.6]], [[0.0], [3.0]]]))
    assert set(merged) == {"p.weight", "p.bias"}
    with pytest.raises(ValueError, match="q is incomplete"):
        merge_weight_norm({"q.parametrizations.weight.original0": g})


def test_missing_pieces_are_named(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(ValueError, match="settings.model_path"):
        MossAudioTokenizerCodec(MossCodecSettings())
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        MossAudioTokenizerCodec(MossCodecSettings(model_path=str(tmp_path / "nowhere")))
    (tmp_path / "config.json").write_text((tiny / CODEC_DIR / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no model.safetensors"):
        MossAudioTokenizerCodec(MossCodecSettings(model_path=str(tmp_path)))
