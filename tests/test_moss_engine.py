"""Spec of the "moss-realtime" engine (PyTorch) through the turn contract: loaded by the registry
from the tiny checkpoints' plugins.toml; prefill and step rules; EOS and max_frames; the KV cache
kept across a session's turns, bounded and evicted; barge-in crops equal to never having spoken
the rest; end_session and one-shot turns free memory; voice cloning and user audio."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import numpy as np
import pytest
import torch
from morpheus_tts.host import IncrementalEngine, TurnRequest, VoicePrompts
from morpheus_tts.host.config import load_config
from morpheus_tts.host.registry import Registry
from morpheus_tts.plugins.engines.moss_prompt import AUDIO_EOS
from morpheus_tts.plugins.engines.moss_realtime import MossRealtimeTorchEngine
from morpheus_tts.plugins.engines.moss_settings import MossRealtimeSettings
from morpheus_tts.plugins.engines.moss_tiny import CODEC_DIR, MODEL_DIR, write_all

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("moss"), seed=5).parent


@pytest.fixture(scope="module")
def engine(tiny: Path) -> MossRealtimeTorchEngine:
    config = load_config(tiny / "plugins.toml")
    registry = Registry(config, entry_points=False)
    record = anyio.run(registry.load, "moss-realtime", config.plugins["moss-realtime"])
    assert record.state == "loaded", record.error
    return registry.engine("moss-realtime").engine


def request(session: str | None = None, **kw) -> TurnRequest:
    options = {"seed": 1, "max_frames": 12} | kw.pop("options", {})
    return TurnRequest(session_id=session, turn=kw.pop("turn", 1), voice=kw.pop("voice", None),
                       options=options, **kw)


def rows(engine, turn) -> int:
    return engine.backend.cache_length(turn.state.cache)


def speak(turn, deltas: list[str]) -> list[np.ndarray]:
    frames = [f for d in deltas for f in turn.push_text(d)]
    return frames + list(turn.end_text())


def test_loads_from_the_tiny_plugins_toml_as_a_turn_engine(engine) -> None:
    assert isinstance(engine, IncrementalEngine) and isinstance(engine, VoicePrompts)
    caps = engine.capabilities
    assert (caps.output, caps.codec, caps.sample_rate, caps.incremental_text) == (
        "tokens", "moss-audio-tokenizer", 24000, True)
    assert engine.health()["ready"] is True


def test_nothing_runs_before_twelve_tokens_then_one_frame_per_token(engine) -> None:
    turn = engine.open_turn(request(options={"max_frames": 16}))
    assert list(turn.push_text("Hello, you.")) == []    # 11 tokens pending
    assert list(turn.push_text(" Go on.")) == []        # buffered: 7 characters, no cut yet
    frames = list(turn.push_text(" Now!"))              # " Go on. " cut: 19 pending
    assert len(frames) == 1 + 7                         # the prefill frame, then 7 steps
    assert turn.after_prefill - turn.prompt_end == 12   # exactly 12 text rows prefilled
    assert rows(engine, turn) == turn.after_prefill + 7
    rest = list(turn.end_text())                        # " Now!" (5 steps), then drain
    assert len(frames) + len(rest) == 16                # max_frames
    for frame in frames + rest:
        assert frame.shape == (1, 16) and frame.dtype == np.int32
        assert 0 <= frame.min() and frame.max() < 1024
    turn.close()


@pytest.mark.parametrize("text", ["Short one", "abcdefghijklmnopqrst"])
def test_text_ending_first_prefills_every_pending_token(engine, text) -> None:
    turn = engine.open_turn(request(options={"max_frames": 3}))
    assert list(turn.push_text(text)) == []             # no cut: still buffered
    assert len(list(turn.end_text())) == 3
    assert turn.after_prefill - turn.prompt_end == len(text)
    turn.close()


def test_an_empty_turn_yields_nothing(engine) -> None:
    turn = engine.open_turn(request())
    assert list(turn.push_text("")) == [] and list(turn.end_text()) == []
    turn.close()


class EosAt:
    """The real backend, except that codebook 0 draws EOS at frame `at`."""

    def __init__(self, backend, at: int) -> None:
        self.inner, self.at, self.calls = backend, at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def frame(self, hidden, pick):
        codes = self.inner.frame(hidden, pick)
        self.calls += 1
        if self.calls == self.at + 1:
            codes[0] = AUDIO_EOS
        return codes


def test_eos_ends_the_turn_and_is_neither_yielded_nor_fed_back(engine, monkeypatch) -> None:
    monkeypatch.setattr(engine, "backend", EosAt(engine.backend, at=5))
    turn = engine.open_turn(request(options={"max_frames": 40}))
    frames = speak(turn, ["A sentence that is long enough. ", "And more text after it."])
    assert len(frames) == 5
    assert rows(engine, turn) == turn.after_prefill + 5  # frames 0..4 fed, never the EOS
    turn.close()


def test_a_session_keeps_its_cache_across_turns(engine) -> None:
    first = engine.open_turn(request("keep", user_text="Hi there."))
    speak(first, ["Hello to you, my friend."])
    first.close()
    kept = rows(engine, first)
    keys = first.state.cache.layers[0].keys[..., :kept, :].clone()
    second = engine.open_turn(request("keep", turn=2, user_text="Thanks!"))
    assert second.state is first.state and not second.fresh
    speak(second, ["You are welcome, truly."])
    assert second.base == kept                              # the prefix is reused as is
    assert second.prompt_end - second.base == len(engine.tokenizer.encode(
        "<|im_end|>\n<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n"))
    assert torch.equal(second.state.cache.layers[0].keys[..., :kept, :], keys)
    assert engine.health()["cache_rows"]["keep"] == rows(engine, second) > kept
    second.close()
    engine.end_session("keep")
    assert "keep" not in engine.sessions and "keep" not in engine.health()["cache_rows"]


def greedy_second_turn(engine, session: str) -> list[np.ndarray]:
    turn = engine.open_turn(request(session, turn=2, user_text="Go on.",
                                    options={"temperature": 0, "max_frames": 6}))
    frames = speak(turn, ["Then we carry on."])
    turn.close()
    return frames


def test_barge_in_crops_the_cache_to_the_frames_heard(engine) -> None:
    text = ["This is the first answer, spoken in full. ", "It goes on for a while."]
    cut = engine.open_turn(request("cut", options={"seed": 9, "max_frames": 10}))
    steps = cut.push_text(text[0])
    heard = [next(steps) for _ in range(6)]             # the listener heard 4 of 6 frames
    cut.interrupt(4)
    cut.close()
    assert rows(engine, cut) == cut.after_prefill + 4
    # Control: a turn that only ever made 5 frames fed back exactly the same 4.
    whole = engine.open_turn(request("whole", options={"seed": 9, "max_frames": 5}))
    made = speak(whole, text)
    whole.close()
    assert [f.tolist() for f in made] == [f.tolist() for f in heard[:5]]
    assert rows(engine, whole) == rows(engine, cut)
    assert [f.tolist() for f in greedy_second_turn(engine, "cut")] == [
        f.tolist() for f in greedy_second_turn(engine, "whole")]
    for session in ("cut", "whole"):
        engine.end_session(session)


def test_barge_in_with_nothing_heard_keeps_only_the_turn_prompt(engine) -> None:
    turn = engine.open_turn(request("zero", user_text="Hello?"))
    assert len(list(turn.push_text("Something to say here."))) > 0
    turn.interrupt(0)
    turn.close()
    assert rows(engine, turn) == turn.prompt_end
    after = engine.open_turn(request("zero", turn=2))  # the session stays usable
    assert len(speak(after, ["Another try at it now."])) > 0
    after.close()
    engine.end_session("zero")


def test_a_one_shot_turn_frees_its_cache_on_close(engine) -> None:
    turn = engine.open_turn(request())
    speak(turn, ["Only once, then gone."])
    turn.close()
    turn.close()  # idempotent
    assert turn.state.cache is None and engine.sessions == {}


def test_a_cloned_voice_is_encoded_once_and_prompts_the_system_block(engine) -> None:
    audio = (np.random.default_rng(2).standard_normal(24000) * 0.1).astype(np.float32)
    engine.add_voice("amy", audio, 24000)
    assert engine.capabilities.voices == ("default", "amy")
    assert engine.voices["amy"].shape == (13, 16)
    plain = engine.open_turn(request())
    speak(plain, ["A plain voice here."])
    plain.close()
    cloned = engine.open_turn(request(voice="amy"))
    speak(cloned, ["A cloned voice here."])
    cloned.close()
    context = engine.tokenizer.encode(
        "<|im_start|>context\nThe assistant section should be synthesized using the "
        "following voice timbre:<|im_end|>\n")
    assert cloned.prompt_end - plain.prompt_end == len(context) + 13
    engine.remove_voice("amy")
    assert engine.capabilities.voices == ("default",)
    with pytest.raises(ValueError, match="voice 'amy' is not one of"):
        engine.open_turn(request(voice="amy"))


def test_user_audio_and_text_condition_the_turn(engine) -> None:
    audio = np.zeros(8000, dtype=np.float32)  # 0.5 s at 16 kHz: 7 frames once at 24 kHz
    turn = engine.open_turn(request(user_text="Hi", user_audio=audio, user_audio_rate=16000))
    speak(turn, ["Yes, I heard you say it."])
    turn.close()
    system = len(engine.tokenizer.encode(engine_system_prompt()))
    user = len(engine.tokenizer.encode("<|im_end|>\n<|im_start|>user\nHi")) + 7 + 1
    assistant = len(engine.tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n"))
    assert turn.prompt_end == system + user + assistant


def engine_system_prompt() -> str:
    from morpheus_tts.plugins.engines.moss_prompt import SYSTEM_PROMPT

    return SYSTEM_PROMPT


def test_the_row_cap_ends_a_turn_and_the_next_turn_starts_afresh(tiny: Path) -> None:
    settings = MossRealtimeSettings(model_path=str(tiny / MODEL_DIR),
                                    codec_path=str(tiny / CODEC_DIR), device="cpu",
                                    max_context_rows=400, turn_reserve_rows=50)
    small = MossRealtimeTorchEngine(settings)
    anyio.run(small.start)
    first = small.open_turn(request("cap", options={"max_frames": 500}))
    frames = speak(first, ["Talk until the context is full."])
    first.close()
    assert rows(small, first) == 400 and len(frames) == 400 - first.after_prefill + 1
    second = small.open_turn(request("cap", turn=2))
    assert second.fresh and rows(small, second) == 0  # earlier turns dropped
    speak(second, ["A fresh start, system prompt first."])
    assert second.base == 0 and second.prompt_end > 300  # the system prompt again
    second.close()


def test_bad_settings_and_requests_are_named(engine, tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="option 'temprature' is not one of"):
        engine.open_turn(request(options={"temprature": 0.5}))
    with pytest.raises(ValueError, match="top_p must be in"):
        engine.open_turn(request(options={"top_p": 0}))
    with pytest.raises(ValueError, match="settings.model_path"):
        MossRealtimeTorchEngine(MossRealtimeSettings())
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json or model.safetensors"):
        MossRealtimeTorchEngine(MossRealtimeSettings(model_path=str(tmp_path), codec_path="x"))
    with pytest.raises(ValueError, match="settings.codec_path"):
        MossRealtimeTorchEngine(MossRealtimeSettings(model_path=str(tiny / MODEL_DIR)))
    with pytest.raises(ValueError, match="limited to 60 s"):
        engine.add_voice("long", np.zeros(61 * 24000, dtype=np.float32), 24000)
    with pytest.raises(ValueError, match="at least one 80 ms frame"):
        engine.add_voice("short", np.zeros(100, dtype=np.float32), 24000)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"model_path": "x", "bogus": 1}, MossRealtimeSettings)


def test_a_checkpoint_that_does_not_match_its_config_is_refused(tiny: Path, tmp_path) -> None:
    import json
    import shutil

    bad = tmp_path / "model"
    shutil.copytree(tiny / MODEL_DIR, bad)
    config = json.loads((bad / "config.json").read_text())
    config["local_config"]["num_hidden_layers"] = 3
    (bad / "config.json").write_text(json.dumps(config))
    engine = MossRealtimeTorchEngine(MossRealtimeSettings(
        model_path=str(bad), codec_path=str(tiny / CODEC_DIR), device="cpu"))
    with pytest.raises(ValueError, match=r"missing \['local_transformer.model.layers.2"):
        anyio.run(engine.start)
