"""MOSS-TTS-Realtime's prompt rows, text segmentation and sampling (runtime-independent numpy).

A row is 17 ids: channel 0 a text token, channels 1..16 one frame's 16 audio codes (1024, the
audio pad, where a row carries no audio). The packing follows upstream's processor:

- system block: `SYSTEM_PROMPT`, then optionally the voice-prompt context block whose
  `<|audio_pad|>` rows carry the prompt's codes (first 16 quantizers, no BOS/EOS);
- user turn with audio codes (L, 16): `USER_PREFIX` + text + `<|text_pad|>` x P.
  With s the prefix's token count and text_len >= 12: P = L + 12 - text_len + 1, audio on rows
  [s+12, s+12+L), BOS (1025) at channel 1 of row s+11, EOS (1026) at channel 1 of the last row.
  With text_len < 12: P = L + 1, audio right-aligned ending one row before the last, BOS just
  before it, EOS on the last row;
- user turn without audio: `USER_PREFIX` + text + `ASSISTANT_START` with pad audio (upstream's
  app.py form);
- the assistant boundary `ASSISTANT_START` after a user turn with audio, or
  on its own when there is no user turn (upstream's single-turn streaming form).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

CHANNELS = 16
AUDIO_PAD = 1024
AUDIO_BOS = 1025
AUDIO_EOS = 1026
AUDIO_VOCAB = 1027
DELAY_TOKENS = 12

SYSTEM_PROMPT = (
    "<|im_start|>system\n"
    "You are a highly expressive text-to-speech (TTS) engine developed by Mosi Intelligence. \n"
    "You possess natural language understanding, emotional modeling, and multi-style speech "
    "generation capabilities, allowing you to generate the corresponding speech based on the "
    "text given in the assistant.<|im_end|>\n"
)
VOICE_CONTEXT = (
    "<|im_start|>context\nThe assistant section should be synthesized using the following voice "
    "timbre:"
)
USER_PREFIX = "<|im_end|>\n<|im_start|>user\n"
ASSISTANT_START = "<|im_end|>\n<|im_start|>assistant\n"
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|audio_pad|>", "<|text_pad|>")

# Upstream's segment marks: sentence ends, short pauses, closing brackets, newlines.
SPLIT = re.compile(r"[。！？!?\.\u2026]\s*|[,，;；:：\u2014\u2013\-]\s*|\)\s*|\]\s*|\n")


class MossTokenizer:
    """The model directory's `tokenizer.json` (Qwen3's with MOSS's pads), via `tokenizers`."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        ids = {name: self._tok.token_to_id(name) for name in SPECIAL_TOKENS}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"moss: {path / 'tokenizer.json'} has no {', '.join(missing)}")
        self.audio_pad_id = int(ids["<|audio_pad|>"])
        self.text_pad_id = int(ids["<|text_pad|>"])

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it are recognised, none are added."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)


def text_rows(ids: list[int]) -> np.ndarray:
    """Rows carrying `ids` in channel 0 and pad audio."""
    rows = np.full((len(ids), CHANNELS + 1), AUDIO_PAD, dtype=np.int64)
    rows[:, 0] = ids
    return rows


def normalize_codes(codes: np.ndarray) -> np.ndarray:
    """Codes (T, 16), (16, T) or (32, T) -> (T, 16) as upstream's processor accepts them."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"audio codes must be 2D, got shape {codes.shape}")
    if codes.shape[0] == CHANNELS:
        codes = codes.T
    elif codes.shape[1] == CHANNELS:
        pass
    elif codes.shape[0] > CHANNELS and codes.shape[1] != CHANNELS:
        codes = codes[:CHANNELS].T
    elif codes.shape[1] > CHANNELS:
        codes = codes[:, :CHANNELS]
    if codes.shape[1] != CHANNELS:
        raise ValueError(f"audio codes need {CHANNELS} quantizers, got shape {codes.shape}")
    return codes.astype(np.int64)


def system_rows(tok: MossTokenizer, voice_codes: np.ndarray | None) -> np.ndarray:
    """The system block, with the voice-prompt context block when `voice_codes` is given."""
    if voice_codes is None:
        return text_rows(tok.encode(SYSTEM_PROMPT))
    voice = normalize_codes(voice_codes)
    text = SYSTEM_PROMPT + VOICE_CONTEXT + "<|audio_pad|>" * len(voice) + "<|im_end|>\n"
    rows = text_rows(tok.encode(text))
    where = np.flatnonzero(rows[:, 0] == tok.audio_pad_id)
    if len(where) != len(voice):
        raise ValueError("moss: the tokenizer split <|audio_pad|> unexpectedly")
    rows[where[0] : where[-1] + 1, 1:] = voice
    return rows


def user_rows(tok: MossTokenizer, text: str, audio_codes: np.ndarray | None) -> np.ndarray:
    """The user turn and the assistant boundary (see the module docstring)."""
    if audio_codes is None:
        return text_rows(tok.encode(USER_PREFIX + text + ASSISTANT_START))
    audio = normalize_codes(audio_codes)
    audio_len, text_len = len(audio), len(tok.encode(text))
    start = len(tok.encode(USER_PREFIX))
    if text_len >= DELAY_TOKENS:
        pads = audio_len + DELAY_TOKENS - text_len + 1
    else:
        pads = audio_len + 1
    rows = text_rows(tok.encode(USER_PREFIX + text + "<|text_pad|>" * pads))
    if text_len >= DELAY_TOKENS:
        first = start + DELAY_TOKENS
        rows[first : first + audio_len, 1:] = audio
        rows[first - 1, 1] = AUDIO_BOS
        rows[first + audio_len, 1] = AUDIO_EOS
    else:
        rows[-(audio_len + 1) : -1, 1:] = audio
        rows[-(audio_len + 2), 1] = AUDIO_BOS
        rows[-1, 1] = AUDIO_EOS
    return np.concatenate([rows, text_rows(tok.encode(ASSISTANT_START))])


def turn_rows(
    tok: MossTokenizer,
    *,
    include_system: bool,
    voice_codes: np.ndarray | None,
    user_text: str | None,
    user_audio_codes: np.ndarray | None,
) -> np.ndarray:
    """Every prompt row of a turn before its assistant text."""
    parts = [system_rows(tok, voice_codes)] if include_system else []
    if user_text is None and user_audio_codes is None:
        parts.append(text_rows(tok.encode(ASSISTANT_START)))
    else:
        parts.append(user_rows(tok, user_text or "", user_audio_codes))
    return np.concatenate(parts)


def prefill_rows(text_ids: list[int]) -> np.ndarray:
    """The assistant text's first rows, BOS at channel 1 of the last one."""
    rows = text_rows(text_ids)
    rows[-1, 1] = AUDIO_BOS
    return rows


class TextSegmenter:
    """Upstream's segmentation of streamed text: cut at the first mark ending at or after
    `min_chars`, else at the last space once `buffer_chars` are waiting."""

    def __init__(self, min_chars: int = 8, buffer_chars: int = 32) -> None:
        self.min_chars, self.buffer_chars = min_chars, buffer_chars
        self.buffer = ""

    def push(self, delta: str) -> list[str]:
        """Add a delta; return the segments now complete."""
        self.buffer += delta
        segments = []
        while self.buffer:
            cut = None
            if len(self.buffer) >= self.min_chars:
                cut = next(
                    (m.end() for m in SPLIT.finditer(self.buffer) if m.end() >= self.min_chars),
                    None,
                )
            if cut is None and len(self.buffer) >= self.buffer_chars:
                space = self.buffer.rfind(" ")
                cut = space + 1 if space != -1 else None
            if cut is None:
                break
            segments.append(self.buffer[:cut])
            self.buffer = self.buffer[cut:]
        return segments

    def flush(self) -> list[str]:
        """The text ended: whatever is buffered is the last segment."""
        rest, self.buffer = self.buffer, ""
        return [rest] if rest else []


class Sampler:
    """Per-codebook sampling: HF repetition penalty over the last `window` frames, temperature,
    top-k, HF top-p, multinomial; greedy when `temperature` is 0."""

    def __init__(self, options: dict[str, Any], seed: int | None) -> None:
        self.temperature = float(options["temperature"])
        self.top_p = float(options["top_p"])
        self.top_k = int(options["top_k"])
        self.penalty = float(options["repetition_penalty"])
        self.window = int(options["repetition_window"])
        self.rng = np.random.default_rng(seed)

    def pick(self, logits: np.ndarray, history: np.ndarray | None, codebook: int) -> int:
        """One code from 1027 logits. `history` is (frames, 16) of this turn, or None."""
        logits = np.asarray(logits, dtype=np.float64).copy()
        if history is not None and len(history) and self.penalty != 1.0:
            seen = np.unique(history[-self.window :, codebook] if self.window > 0
                             else history[:, codebook])
            values = logits[seen]
            logits[seen] = np.where(values < 0, values * self.penalty, values / self.penalty)
        # Codes the codec cannot decode are never drawn: 1024..1026 in codebooks 1..15, pad and
        # BOS in codebook 0 (EOS there ends the turn). Upstream drops such frames afterwards.
        logits[AUDIO_PAD : AUDIO_EOS if codebook == 0 else AUDIO_VOCAB] = -np.inf
        if self.temperature == 0:
            return int(np.argmax(logits))
        logits = logits / self.temperature
        if 0 < self.top_k < len(logits):
            kth = np.partition(logits, -self.top_k)[-self.top_k]
            logits[logits < kth] = -np.inf
        if self.top_p < 1.0:
            order = np.argsort(logits, kind="stable")
            probs = np.exp(logits[order] - logits[order][-1])
            cumulative = np.cumsum(probs / probs.sum())
            drop = cumulative <= 1 - self.top_p
            drop[-1] = False
            logits[order[drop]] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return int(self.rng.choice(len(probs), p=probs))
