"""Spec of the "moss-realtime-mlx" engine: the same upstream checkpoint as the PyTorch engine,
the same logits (1e-4 relative to the peak, float32 on both), the same greedy turns, and the same
session behaviour through the turn contract."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest
import torch
from morpheus_tts.host import IncrementalEngine, TurnRequest, VoicePrompts
from morpheus_tts.host.config import load_config
from morpheus_tts.host.registry import Registry
from morpheus_tts.plugins.engines.moss_prompt import MossTokenizer, prefill_rows, turn_rows
from morpheus_tts.plugins.engines.moss_realtime import TorchBackend
from morpheus_tts.plugins.engines.moss_realtime_mlx import MlxBackend
from morpheus_tts.plugins.engines.moss_tiny import MODEL_DIR, write_all
from morpheus_tts.plugins.engines.moss_torch_model import load_model

TOLERANCE = 1e-4  # relative to the largest magnitude; measured ~2e-6 in float32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("moss"), seed=11).parent


@pytest.fixture(scope="module")
def engines(tiny: Path) -> dict:
    config = load_config(tiny / "plugins.toml")
    registry = Registry(config, entry_points=False)

    async def main() -> None:
        for name in ("moss-realtime", "moss-realtime-mlx"):
            record = await registry.load(name, config.plugins[name])
            assert record.state == "loaded", record.error

    anyio.run(main)
    return {name: registry.engine(name).engine for name in ("moss-realtime", "moss-realtime-mlx")}


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).max()) <= TOLERANCE * np.abs(a).max()


def test_torch_and_mlx_give_the_same_logits_for_the_same_prompt(tiny: Path) -> None:
    path = tiny / MODEL_DIR
    torch_side, mlx_side = TorchBackend(load_model(path, torch.float32, "cpu")), MlxBackend(
        path, "float32")
    tok = MossTokenizer(path)
    voice = np.random.default_rng(0).integers(0, 1024, (4, 16))
    prompt = np.concatenate([
        turn_rows(tok, include_system=True, voice_codes=voice, user_text="Hello there",
                  user_audio_codes=np.random.default_rng(1).integers(0, 1024, (3, 16))),
        prefill_rows(tok.encode("Nice to meet you")),
    ])
    caches = torch_side.new_cache(), mlx_side.new_cache()
    forced = np.random.default_rng(2).integers(0, 1024, 16)
    for rows in (prompt, np.concatenate([[tok.text_pad_id], forced])[None]):
        hidden = torch_side.forward_rows(rows, caches[0]), mlx_side.forward_rows(rows, caches[1])
        assert close(hidden[0].numpy()[0, 0], np.array(hidden[1])[0, 0])
        logits: tuple[list, list] = ([], [])
        for side, h, out in zip((torch_side, mlx_side), hidden, logits, strict=True):
            side.frame(h, lambda lg, i, out=out: out.append(lg) or int(forced[i]))
        assert close(np.stack(logits[0]), np.stack(logits[1]))  # all 16 heads, teacher-forced
    assert torch_side.cache_length(caches[0]) == mlx_side.cache_length(caches[1]) == len(
        prompt) + 1


def test_the_mlx_engine_is_a_turn_engine_with_its_own_codec(engines) -> None:
    mlx = engines["moss-realtime-mlx"]
    assert isinstance(mlx, IncrementalEngine) and isinstance(mlx, VoicePrompts)
    assert mlx.capabilities.codec == "moss-audio-tokenizer-mlx"


def greedy(engine, session: str | None, turn: int = 1, frames: int = 6) -> list[list[int]]:
    opened = engine.open_turn(TurnRequest(session_id=session, turn=turn, voice=None,
                                          user_text="Hi.",
                                          options={"temperature": 0, "max_frames": frames}))
    out = list(opened.push_text("Greedy frames, the same on both."))
    out += list(opened.end_text())
    opened.close()
    return [f[0].tolist() for f in out]


def test_a_greedy_turn_makes_the_same_frames_on_both_runtimes(engines) -> None:
    assert greedy(engines["moss-realtime-mlx"], None) == greedy(engines["moss-realtime"], None)


def test_mlx_sessions_keep_and_crop_their_cache_like_torch(engines) -> None:
    for engine in engines.values():
        turn = engine.open_turn(TurnRequest(session_id="s", turn=1, voice=None,
                                            options={"seed": 3, "max_frames": 8}))
        steps = turn.push_text("Something long enough to start speaking.")
        [next(steps) for _ in range(5)]
        turn.interrupt(3)
        turn.close()
        assert engine.backend.cache_length(turn.state.cache) == turn.after_prefill + 3
    second = [greedy(engine, "s", turn=2, frames=4) for engine in engines.values()]
    assert second[0] == second[1]
    for engine in engines.values():
        engine.end_session("s")
        assert engine.sessions == {}


def test_voices_encode_to_the_same_codes_on_both_runtimes(engines) -> None:
    audio = (np.random.default_rng(4).standard_normal(30000) * 0.1).astype(np.float32)
    for engine in engines.values():
        engine.add_voice("bo", audio, 24000)
    codes = [engine.voices["bo"] for engine in engines.values()]
    assert codes[0].shape == (16, 16) and (codes[0] == codes[1]).all()
