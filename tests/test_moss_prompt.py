"""Spec of MOSS-TTS-Realtime's prompt packing (against hand-computed rows), upstream's text
segmentation and the realtime preset's per-codebook sampling."""

from __future__ import annotations

import re

import numpy as np
import pytest
from morpheus_tts.plugins.engines.moss_prompt import (
    SYSTEM_PROMPT,
    VOICE_CONTEXT,
    Sampler,
    TextSegmenter,
    normalize_codes,
    prefill_rows,
    system_rows,
    turn_rows,
    user_rows,
)

P, BOS, EOS = 1024, 1025, 1026
SPECIAL = {"<|im_start|>": 1, "<|im_end|>": 2, "<|audio_pad|>": 3, "<|text_pad|>": 4}


class CharTokenizer:
    """One id per character (ord + 100) and small ids for the specials: rows by hand."""

    audio_pad_id, text_pad_id = 3, 4

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in re.split(r"(<\|[a-z_]+\|>)", text):
            ids.extend([SPECIAL[piece]] if piece in SPECIAL else [ord(c) + 100 for c in piece])
        return ids


TOK = CharTokenizer()
# "<|im_end|>\n<|im_start|>user\n" and "<|im_end|>\n<|im_start|>assistant\n", by hand.
USER = [2, 110, 1, 217, 215, 201, 214, 110]
ASSISTANT = [2, 110, 1, 197, 215, 215, 205, 215, 216, 197, 210, 216, 110]


def expected(channel0: list[int]) -> np.ndarray:
    rows = np.full((len(channel0), 17), P, dtype=np.int64)
    rows[:, 0] = channel0
    return rows


def audio(frames: int) -> np.ndarray:
    return np.arange(frames * 16).reshape(frames, 16)


def test_a_short_user_text_puts_the_audio_right_aligned() -> None:
    codes = audio(2)
    want = expected(USER + [197, 198] + [4, 4, 4] + ASSISTANT)
    want[9, 1] = BOS          # -(L + 2) of the user block (13 rows)
    want[10:12, 1:] = codes   # rows -(L + 1) .. -2
    want[12, 1] = EOS         # the user block's last row
    assert (user_rows(TOK, "ab", codes) == want).all()


def test_a_long_user_text_starts_the_audio_twelve_tokens_in() -> None:
    text, codes = "abcdefghijklmn", audio(3)  # 14 tokens: P = 3 + 12 - 14 + 1 = 2 pads
    want = expected(USER + [ord(c) + 100 for c in text] + [4, 4] + ASSISTANT)
    want[19, 1] = BOS          # s + 11, s = 8
    want[20:23, 1:] = codes    # rows [s + 12, s + 12 + L)
    want[23, 1] = EOS          # s + 12 + L, the user block's last row
    assert (user_rows(TOK, text, codes) == want).all()


def test_a_text_only_user_turn_has_pad_audio_and_the_assistant_start() -> None:
    assert (user_rows(TOK, "hi", None) == expected(USER + [204, 205] + ASSISTANT)).all()


def test_no_user_turn_is_only_the_assistant_boundary() -> None:
    rows = turn_rows(TOK, include_system=False, voice_codes=None, user_text=None,
                     user_audio_codes=None)
    assert (rows == expected(ASSISTANT)).all()


def test_the_voice_prompt_rows_carry_its_codes_in_the_system_block() -> None:
    codes = audio(3)
    head = TOK.encode(SYSTEM_PROMPT + VOICE_CONTEXT)
    want = expected(head + [3, 3, 3] + [2, 110])
    want[len(head) : len(head) + 3, 1:] = codes
    assert (system_rows(TOK, codes) == want).all()
    assert (system_rows(TOK, None) == expected(TOK.encode(SYSTEM_PROMPT))).all()
    assert SYSTEM_PROMPT.startswith("<|im_start|>system\nYou are a highly expressive")
    assert "Mosi Intelligence. \nYou possess" in SYSTEM_PROMPT


def test_the_first_turn_is_system_then_user_with_a_doubled_im_end() -> None:
    rows = turn_rows(TOK, include_system=True, voice_codes=None, user_text="hi",
                     user_audio_codes=None)
    system = TOK.encode(SYSTEM_PROMPT)
    assert (rows[:, 0] == system + USER + [204, 205] + ASSISTANT).all()
    assert rows[len(system) - 2, 0] == 2 and rows[len(system), 0] == 2  # upstream's doubling


def test_prefill_rows_put_bos_on_the_last_row() -> None:
    want = expected([7, 8, 9])
    want[2, 1] = BOS
    assert (prefill_rows([7, 8, 9]) == want).all()


def test_codes_of_32_quantizers_keep_the_first_16() -> None:
    codes = np.arange(32 * 5).reshape(32, 5)
    assert (normalize_codes(codes) == codes[:16].T).all()
    assert (normalize_codes(codes[:16]) == codes[:16].T).all()
    with pytest.raises(ValueError, match="16 quantizers"):
        normalize_codes(np.zeros((8, 5)))


# -- segmentation ----------------------------------------------------------------------------


def test_a_mark_cuts_only_once_eight_characters_are_in() -> None:
    seg = TextSegmenter()
    assert seg.push("Hello, ") == []          # ", " ends at 7 < 8
    assert seg.push("world. More") == ["Hello, world. "]
    assert seg.flush() == ["More"]
    assert seg.flush() == []


def test_without_marks_a_full_buffer_cuts_at_its_last_space() -> None:
    seg = TextSegmenter()
    assert seg.push("aaaa bbbb cccc dddd eeee ffff ggg") == ["aaaa bbbb cccc dddd eeee ffff "]
    assert seg.push("g") == []
    assert seg.flush() == ["gggg"]


def test_newlines_brackets_and_dashes_cut() -> None:
    assert TextSegmenter().push("one two three\nfour") == ["one two three\n"]
    assert TextSegmenter().push("(an aside) then") == ["(an aside) "]


# -- sampling --------------------------------------------------------------------------------


def sampler(**overrides) -> Sampler:
    options = {"temperature": 0.0, "top_p": 0.6, "top_k": 30, "repetition_penalty": 1.1,
               "repetition_window": 50} | overrides
    return Sampler(options, seed=0)


def test_greedy_skips_codes_the_codec_cannot_decode() -> None:
    logits = np.zeros(1027)
    logits[[5, 1024, 1025, 1026]] = [1.0, 9.0, 8.0, 7.0]
    assert sampler().pick(logits, None, codebook=3) == 5       # 1024..1026 never in 1..15
    assert sampler().pick(logits, None, codebook=0) == EOS     # EOS ends the turn in 0


def test_the_repetition_penalty_looks_at_the_codebook_s_recent_frames() -> None:
    logits = np.zeros(1027)
    logits[[5, 6, 7, 8]] = [2.0, 1.9, -0.1, -0.05]
    history = np.zeros((60, 16), dtype=np.int64)
    history[-1, 2] = 5
    assert sampler().pick(logits, history, codebook=2) == 6    # 2.0 / 1.1 < 1.9
    assert sampler().pick(logits, history, codebook=1) == 5    # another codebook's history
    old = np.zeros((60, 16), dtype=np.int64)
    old[0, 2] = 5                                              # 60 frames back: outside 50
    assert sampler().pick(logits, old, codebook=2) == 5
    negative = np.full(1027, -1.0)
    negative[[7, 8]] = [-0.1, -0.105]
    history[-1, 2] = 7
    assert sampler().pick(negative, history, codebook=2) == 8  # -0.1 * 1.1 < -0.105


def test_top_k_one_and_a_tiny_top_p_sample_the_best_code() -> None:
    logits = np.random.default_rng(0).standard_normal(1027)
    logits[1024:] = -10
    best = int(np.argmax(logits))
    assert {sampler(temperature=0.8, top_k=1).pick(logits, None, 4) for _ in range(20)} == {best}
    assert {sampler(temperature=0.8, top_p=1e-6).pick(logits, None, 4) for _ in range(20)} == {
        best}


def test_sampling_is_spread_over_the_top_k_and_seeded() -> None:
    logits = np.zeros(1027)
    draws = [sampler(temperature=1.0, top_p=1.0, top_k=4).pick(logits, None, 1)
             for _ in range(1)]
    s = sampler(temperature=1.0, top_p=1.0, top_k=1027)
    picks = {s.pick(logits, None, 1) for _ in range(200)}
    assert len(picks) > 50 and max(picks) < 1024
    assert draws == [sampler(temperature=1.0, top_p=1.0, top_k=4).pick(logits, None, 1)]
