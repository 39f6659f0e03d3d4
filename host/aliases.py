"""Model and voice names from clients (OpenAI's, the old Orpheus server's) mapped to what runs.

Clients written for OpenAI send `model: "tts-1"` and `voice: "alloy"`; the old Orpheus-FastAPI
examples send `model: "orpheus"` and `voice: "tara"`. The `[aliases]` table of plugins.toml maps
those names onto the engines and voices actually loaded, so such clients work unmodified on any
install. The user's tables extend the built-in ones (`host.config.Aliases`); an entry of the same
name replaces the built-in one.

How a request's `model` resolves to an engine:

1. the name of a loaded engine: that engine;
2. an alias: its targets in order (`"default"` meaning `[server].default_engine`), the first one
   loaded wins; if none is loaded, the default engine (so `orpheus` still speaks, with the
   default engine, on an install without Orpheus);
3. anything else: `UnknownComponentError("model", ...)` listing the engines and aliases.

How `voice` resolves, within that engine:

1. none given: `[server].default_voice` if the engine has it, else the engine's first voice;
2. one of the engine's voices, or `engine:voice` naming this engine and one of its voices, or
   a voice the engine composes per request (`VoiceComposer`, e.g. a Kokoro blend);
3. an alias: its targets in order (`engine:voice`, or a bare voice matched on this engine), the
   first the engine has wins; if it has none of them, its default voice (as in 1);
4. `other-engine:voice` (as `GET /v1/audio/voices` lists the voices of engines other than the
   default): when `model` is an alias or absent, that engine speaks it, so a client configured
   with one model (`tts-1`) reaches every listed voice; when `model` names an engine, refused;
5. anything else: `UnknownComponentError("voice", ...)` listing the engine's voices and the
   voice aliases.

The response headers name the engine and voice that actually spoke, so a fallback is visible.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from morpheus_tts.host.config import Aliases, MorpheusConfig
from morpheus_tts.host.contracts import VoiceComposer
from morpheus_tts.host.registry import LoadedEngine, UnknownComponentError

DEFAULT = "default"


class Resolved(msgspec.Struct, frozen=True, kw_only=True):
    """What a (model, voice) pair resolved to.

    Args:
        engine: the loaded engine that will speak.
        voice: one of that engine's voices.
        fallback: an alias target was not loaded, so a default stood in for it.
    """

    engine: str
    voice: str
    fallback: bool = False


def _targets(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class AliasResolver:
    """Resolves model and voice names against the engines loaded right now.

    Args:
        config: the current configuration (`[aliases]` and `[server]` defaults).
        engines: the loaded engines by name (`Registry.engines`).
    """

    def __init__(self, config: MorpheusConfig, engines: Mapping[str, LoadedEngine]) -> None:
        builtin = Aliases()
        self.models = {**builtin.models, **config.aliases.models}
        self.voices = {**builtin.voices, **config.aliases.voices}
        self.default_engine = config.server.default_engine
        self.default_voice = config.server.default_voice
        self.engines = engines

    def model_names(self) -> list[str]:
        """Every accepted model name: loaded engines, then aliases."""
        return [*self.engines, *(name for name in self.models if name not in self.engines)]

    def engine_for(self, model: str) -> tuple[str, bool]:
        """The engine a model name selects, and whether a fallback stood in.

        Raises:
            UnknownComponentError: kind "model": neither a loaded engine nor an alias, or no
                engine at all is loaded.
        """
        if model in self.engines:
            return model, False
        if model in self.models:
            for target in _targets(self.models[model]):
                name = self.default_engine if target == DEFAULT else target
                if name in self.engines:
                    return name, False
            if self.default_engine in self.engines:
                return self.default_engine, True
        raise UnknownComponentError("model", model, self.model_names())

    def default_voice_of(self, engine: str) -> str:
        """The voice an engine speaks when a request names none."""
        voices = self.engines[engine].engine.capabilities.voices
        return self.default_voice if self.default_voice in voices else voices[0]

    def voice_for(self, engine: str, voice: str | None) -> tuple[str, bool]:
        """The voice of `engine` a voice name selects, and whether a fallback stood in.

        Raises:
            UnknownComponentError: kind "voice": not a voice of this engine nor an alias.
        """
        if voice is None:
            return self.default_voice_of(engine), False
        voices = self.engines[engine].engine.capabilities.voices
        owner, _, bare = voice.rpartition(":")
        if voice in voices or (owner == engine and bare in voices):
            return (voice if voice in voices else bare), False
        composer = self.engines[engine].engine
        if isinstance(composer, VoiceComposer) and composer.accepts_voice(voice):
            return voice, False  # composed per request (a Kokoro blend)
        if voice in self.voices:
            for target in _targets(self.voices[voice]):
                owner, _, bare = target.rpartition(":")
                if owner in ("", engine) and bare in voices:
                    return bare, False
            return self.default_voice_of(engine), True
        where = f" for engine {engine!r}" + (
            f" (it belongs to engine {owner!r}, which this model does not select)"
            if owner in self.engines
            else ""
        )
        raise UnknownComponentError("voice", voice, [*voices, *self.voices], where=where)

    def resolve(self, model: str | None, voice: str | None) -> Resolved:
        """Resolve a request's model (None: the default engine) and voice.

        Raises:
            UnknownComponentError: kind "model" or "voice", listing what is accepted.
        """
        pinned = self._engine_of_voice(voice) if model not in self.engines else None
        if pinned is not None:
            engine, engine_fallback = pinned, False
        elif model is None:
            if self.default_engine not in self.engines:
                raise UnknownComponentError("model", self.default_engine, self.model_names())
            engine, engine_fallback = self.default_engine, False
        else:
            engine, engine_fallback = self.engine_for(model)
        name, voice_fallback = self.voice_for(engine, voice)
        return Resolved(engine=engine, voice=name, fallback=engine_fallback or voice_fallback)

    def _engine_of_voice(self, voice: str | None) -> str | None:
        """The engine an `engine:voice` name belongs to, if it is loaded and has that voice."""
        owner, _, bare = (voice or "").rpartition(":")
        loaded = self.engines.get(owner)
        if loaded is None or bare not in loaded.engine.capabilities.voices:
            return None
        return owner

    def describe(self, engine: str) -> dict[str, str]:
        """Every voice alias with the voice it gives on `engine` (for the voices listing)."""
        return {alias: self.voice_for(engine, alias)[0] for alias in self.voices}
