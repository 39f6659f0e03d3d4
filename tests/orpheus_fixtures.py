"""Test models for Orpheus and SNAC, written in their real on-disk layouts with random weights.

- `write_snac_dir`: a random-initialised SNAC 24 kHz saved as `config.json` + `pytorch_model.bin`
  with the key names of the published checkpoint (`weight_g`/`weight_v`).
  `SLIM_SNAC_CONFIG` keeps its geometry (so its receptive field) with 16x fewer channels.
- `write_snac_mlx_dir`: the same weights converted to mlx-audio's layout (`model.safetensors`).
- `write_tiny_orpheus_gguf`: a llama-architecture GGUF with Orpheus's 156,940-token vocabulary
  (SentencePiece pieces, Llama 3 control tokens, `<custom_token_N>` at 128256 + N). Its weights
  make it a bigram model that speaks Orpheus's grammar: every block is zeroed, so the hidden state
  is the embedding of the last token, and the output layer maps start-of-speech to slot 0 and
  slot j to slot j + 1 (random code within the slot), with a small chance of end-of-speech after
  slot 6. Sampled with a seed it emits aligned 7-token frames and stops by itself, like Orpheus.
- `LlamaServer`: `python -m llama_cpp.server` on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

SNAC_24KHZ_CONFIG = {
    "sampling_rate": 24000,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}

VOCAB_SIZE = 156940
CUSTOM_TOKEN_BASE = 128256
AUDIO_TOKEN_BASE = 128266
SLOTS, CODEBOOK = 7, 4096
START_OF_SPEECH, END_OF_SPEECH = 128257, 128258
EMBED = 32  # hidden size of the tiny model
STATE_OF_START = SLOTS  # embedding direction of start-of-speech; slots use directions 0..6


# SNAC 24 kHz with every kernel, stride and dilation of the real one, so the same receptive
# field, but 16x fewer channels: for the many streaming tests that only need the geometry.
SLIM_SNAC_CONFIG = SNAC_24KHZ_CONFIG | {"encoder_dim": 4, "decoder_dim": 64}


def write_snac_dir(path: Path, seed: int = 0, config: dict | None = None) -> Path:
    """Save a random SNAC 24 kHz in the published layout; return the directory."""
    import torch
    from snac import SNAC

    config = config or SNAC_24KHZ_CONFIG
    torch.manual_seed(seed)
    model = SNAC(**config)
    # The published checkpoint predates torch's weight-norm parametrisations.
    state = {
        key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): value
        for key, value in model.state_dict().items()
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    torch.save(state, path / "pytorch_model.bin")
    return path


def write_snac_mlx_dir(path: Path, torch_dir: Path) -> Path:
    """Convert a `write_snac_dir` checkpoint to mlx-audio's SNAC layout (channel-last)."""
    import mlx.core as mx
    import torch

    state = torch.load(torch_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    weights = {}
    for key, value in state.items():
        parts = key.split(".")
        # torch's Sequential children are `block.3`; MLX's are `block.layers.3`.
        named = [
            f"layers.{part}" if part.isdigit() and parts[i - 1] in ("block", "model") else part
            for i, part in enumerate(parts)
        ]
        array = value.numpy()
        if named[-1] == "weight_v":  # (out, in, k) -> (out, k, in); transposed: (in, out, k)
            array = array.transpose(0, 2, 1)
        weights[".".join(named)] = mx.array(np.ascontiguousarray(array))
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text((torch_dir / "config.json").read_text())
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    return path


def _vocab() -> tuple[list[str], list[int]]:
    """Orpheus's ids with SentencePiece types: 1 normal, 2 unknown, 3 control, 4 user, 6 byte."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)]
    pieces += ["\u2581" + chr(c) for c in range(97, 123)]
    pieces += ["\u2581tara", "\u2581leah", "\u2581hello", "\u2581world"]
    tokens += pieces
    types += [1] * len(pieces)
    filler = 128000 - len(tokens)
    tokens += [f"\u2581filler{i}" for i in range(filler)]
    types += [1] * filler
    specials = [f"<|reserved_special_token_{i}|>" for i in range(256)]
    specials[0], specials[1], specials[9] = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
    tokens += specials
    types += [3] * 256
    customs = VOCAB_SIZE - CUSTOM_TOKEN_BASE
    tokens += [f"<custom_token_{n}>" for n in range(customs)]
    types += [4] * customs
    return tokens, types


def _bigram_weights(seed: int, stop_logit: float) -> tuple[np.ndarray, np.ndarray]:
    """Embedding and output matrices of the Orpheus-grammar bigram model."""
    rng = np.random.default_rng(seed)
    embed = np.zeros((VOCAB_SIZE, EMBED), dtype=np.float32)
    output = np.zeros((VOCAB_SIZE, EMBED), dtype=np.float32)
    audio = np.arange(AUDIO_TOKEN_BASE, AUDIO_TOKEN_BASE + SLOTS * CODEBOOK)
    slots = (audio - AUDIO_TOKEN_BASE) // CODEBOOK
    # The embedding of an audio token points along its slot; the spare dimensions carry noise
    # that makes the next code depend on the last one.
    embed[audio, slots] = 1.0
    embed[audio, 8:] = rng.normal(0.0, 0.15, (len(audio), EMBED - 8))
    embed[START_OF_SPEECH, STATE_OF_START] = 1.0
    # Slot j + 1 follows slot j; slot 0 follows start-of-speech and slot 6.
    previous = np.where(slots == 0, SLOTS - 1, slots - 1)
    output[audio, previous] = 4.0
    output[audio[slots == 0], STATE_OF_START] = 4.0
    output[audio, 8:] = rng.normal(0.0, 0.5, (len(audio), EMBED - 8))
    output[END_OF_SPEECH, SLOTS - 1] = stop_logit
    return embed, output


def write_tiny_orpheus_gguf(path: Path, seed: int = 0, stop_logit: float = 5.0) -> Path:
    """Write the tiny Orpheus-layout GGUF (about 20 MB); return its path."""
    import gguf

    heads, ffn = 2, 64
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny-orpheus-test")
    writer.add_context_length(4096)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(EMBED // heads)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, types = _vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_bos_token_id(128000)
    writer.add_eos_token_id(128009)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    embed, output = _bigram_weights(seed, stop_logit)
    zeros = np.zeros
    writer.add_tensor("token_embd.weight", embed.astype(np.float16))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(EMBED, np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", zeros((EMBED, EMBED), np.float16))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(EMBED, np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", zeros((ffn, EMBED), np.float16))
    writer.add_tensor("blk.0.ffn_up.weight", zeros((ffn, EMBED), np.float16))
    writer.add_tensor("blk.0.ffn_down.weight", zeros((EMBED, ffn), np.float16))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, np.float32))
    writer.add_tensor("output.weight", output.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1, as a context manager."""

    def __init__(
        self, model: Path, log: Path, *, n_ctx: int = 2048, timeout_s: float = 60.0
    ) -> None:
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(n_ctx),
            "--n_threads",
            "1",  # llama.cpp's spinning thread pool crawls on a busy 2-core machine
            "--n_threads_batch",
            "1",
        ]
        self._timeout_s = timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        with open(self.log, "wb") as log:  # a file, not a pipe: llama.cpp logs a lot
            self._process = subprocess.Popen(self._command, stdout=log, stderr=log)
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise TimeoutError(f"llama_cpp.server did not answer on {self.url}")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
