"""Model and voice names resolve to loaded engines and voices, with the documented fallbacks."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest
from morpheus_tts.host.aliases import AliasResolver
from morpheus_tts.host.config import Aliases, MorpheusConfig, ServerSettings
from morpheus_tts.host.registry import UnknownComponentError


def engine(*voices: str) -> SimpleNamespace:
    """A stand-in for a LoadedEngine: only its capabilities' voices matter here."""
    return SimpleNamespace(engine=SimpleNamespace(capabilities=SimpleNamespace(voices=voices)))


def resolver(
    engines: dict[str, SimpleNamespace], *, models: dict | None = None,
    voices: dict | None = None, default_voice: str | None = None,
) -> AliasResolver:
    config = MorpheusConfig(
        server=ServerSettings(default_engine="piper", default_voice=default_voice),
        aliases=Aliases(models=models or {}, voices=voices or {}),
    )
    return AliasResolver(config, engines)


PIPER_ONLY = {"piper": engine("joe", "amy")}
WITH_ORPHEUS = {**PIPER_ONLY, "orpheus": engine("tara", "leo")}


def test_openai_names_speak_with_the_default_engine_on_a_default_install() -> None:
    resolved = resolver(PIPER_ONLY).resolve("tts-1", "alloy")
    assert (resolved.engine, resolved.voice, resolved.fallback) == ("piper", "joe", True)


def test_orpheus_names_fall_back_when_orpheus_is_not_loaded() -> None:
    resolved = resolver(PIPER_ONLY).resolve("orpheus", "tara")
    assert (resolved.engine, resolved.voice, resolved.fallback) == ("piper", "joe", True)


def test_orpheus_names_reach_orpheus_when_it_is_loaded() -> None:
    resolved = resolver(WITH_ORPHEUS).resolve("orpheus", "alloy")
    assert (resolved.engine, resolved.voice, resolved.fallback) == ("orpheus", "tara", False)


def test_engine_names_and_engine_voice_pairs_resolve_directly() -> None:
    names = resolver(WITH_ORPHEUS)
    assert names.resolve("piper", "amy").voice == "amy"
    assert names.resolve("piper", "piper:amy").voice == "amy"
    assert names.resolve(None, None).voice == "joe"


def test_model_lists_are_tried_in_order() -> None:
    models = {"tts-1-hd": ["orpheus", "default"]}
    assert resolver(WITH_ORPHEUS, models=models).engine_for("tts-1-hd") == ("orpheus", False)
    assert resolver(PIPER_ONLY, models=models).engine_for("tts-1-hd") == ("piper", False)


def test_voice_lists_pick_the_first_target_the_engine_has() -> None:
    voices = {"alloy": ["orpheus:tara", "piper:amy"]}
    assert resolver(WITH_ORPHEUS, voices=voices).resolve("piper", "alloy").voice == "amy"
    assert resolver(WITH_ORPHEUS, voices=voices).resolve("orpheus", "alloy").voice == "tara"


def test_file_entries_extend_the_builtin_table() -> None:
    names = resolver(PIPER_ONLY, voices={"narrator": "amy"})
    assert names.resolve("tts-1", "narrator").voice == "amy"
    assert names.resolve("tts-1", "nova").voice == "joe"  # built-in alias still there


def test_configured_default_voice_stands_in_for_missing_targets() -> None:
    assert resolver(PIPER_ONLY, default_voice="amy").resolve("tts-1", "alloy").voice == "amy"


def test_unknown_model_lists_engines_and_aliases() -> None:
    with pytest.raises(UnknownComponentError) as error:
        resolver(PIPER_ONLY).resolve("tts-9", "alloy")
    assert error.value.kind == "model"
    assert {"piper", "tts-1", "orpheus"} <= set(error.value.available)


def test_unknown_voice_and_another_engines_voice_are_refused() -> None:
    names = resolver(WITH_ORPHEUS)
    with pytest.raises(UnknownComponentError) as unknown:
        names.resolve("piper", "nobody")
    assert unknown.value.kind == "voice" and "amy" in unknown.value.available
    with pytest.raises(UnknownComponentError, match="belongs to engine 'orpheus'"):
        names.resolve("piper", "orpheus:leo")


def test_engine_voice_ids_choose_their_engine_under_an_alias_model() -> None:
    names = resolver(WITH_ORPHEUS)
    resolved = names.resolve("tts-1", "orpheus:leo")
    assert (resolved.engine, resolved.voice, resolved.fallback) == ("orpheus", "leo", False)
    assert names.resolve(None, "orpheus:tara").engine == "orpheus"
    with pytest.raises(UnknownComponentError, match="belongs to engine 'orpheus'"):
        names.resolve("piper", "orpheus:tara")  # an explicit engine is not overridden


def test_alias_tables_take_strings_or_lists_in_plugins_toml() -> None:
    table = b'[aliases.models]\ntts-1 = "piper"\n[aliases.voices]\nalloy = ["a", "b"]\n'
    config = msgspec.toml.decode(table, type=MorpheusConfig)
    assert config.aliases.voices["alloy"] == ["a", "b"]
    assert "nova" not in config.aliases.voices  # the file's table; the resolver adds built-ins
