"""Loading, unloading and failure isolation, with plugin modules written by the tests."""

from __future__ import annotations

import sys
import textwrap
import weakref
from pathlib import Path

import pytest
from morpheus_tts.host.config import MorpheusConfig, PluginEntry
from morpheus_tts.host.registry import Registry, UnknownComponentError

pytestmark = pytest.mark.anyio

ENGINE_PLUGIN = '''
import msgspec, numpy as np
from morpheus_tts.host import Component, EngineCapabilities, hookimpl

class Settings(msgspec.Struct, forbid_unknown_fields=True):
    pitch: float = 440.0

class Beep:
    stopped = 0
    def __init__(self, settings):
        self.settings = settings
        self.weights = np.ones(1_000_000, np.float32)  # "model memory"
        self.capabilities = EngineCapabilities(sample_rate=24000, voices=("beep",))
    async def start(self):
        if self.settings.pitch <= 0:
            raise ValueError("pitch must be positive")
    async def stop(self):
        Beep.stopped += 1
        self.weights = None
    def health(self):
        return {"ready": self.weights is not None}
    def synthesize(self, request):
        yield np.zeros(240, np.float32)

@hookimpl
def morpheus_engines():
    return [Component(name=NAME, kind="engine", create=Beep, settings=Settings)]
'''


@pytest.fixture
def plugin_dir(tmp_path: Path):
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("testplug_")]:
        del sys.modules[name]


def write_plugin(directory: Path, module: str, source: str) -> None:
    (directory / f"{module}.py").write_text(textwrap.dedent(source))


def empty_registry() -> Registry:
    return Registry(MorpheusConfig(plugins={}), entry_points=False)


async def test_load_registers_and_starts_the_engine(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    registry = empty_registry()
    record = await registry.load("beep", PluginEntry(module="testplug_beep"))
    assert (record.state, record.error, record.components) == ("loaded", None, ["engine:beep"])
    assert record.source == "plugins.toml"
    assert registry.engine("beep").engine.health() == {"ready": True}


async def test_unload_stops_the_engine_and_frees_it(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    registry = empty_registry()
    await registry.load("beep", PluginEntry(module="testplug_beep"))
    engine = weakref.ref(registry.engine("beep").engine)
    beep_class = type(engine())
    await registry.unload("beep")
    assert beep_class.stopped == 1
    assert engine() is None  # no reference left anywhere: its memory is back
    assert not registry.pm.has_plugin("beep")
    with pytest.raises(UnknownComponentError, match="unknown engine 'beep'; available: none"):
        registry.engine("beep")


async def test_import_failure_is_reported_and_others_keep_running(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    write_plugin(plugin_dir, "testplug_broken", "import does_not_exist_anywhere\n")
    registry = empty_registry()
    await registry.load("beep", PluginEntry(module="testplug_beep"))
    record = await registry.load("broken", PluginEntry(module="testplug_broken"))
    assert record.state == "failed"
    assert record.error == "ModuleNotFoundError: No module named 'does_not_exist_anywhere'"
    assert registry.engine("beep").engine.health() == {"ready": True}


async def test_start_failure_unregisters_the_plugin(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    registry = empty_registry()
    record = await registry.load(
        "beep", PluginEntry(module="testplug_beep", settings={"pitch": -1})
    )
    assert (record.state, record.error) == ("failed", "ValueError: pitch must be positive")
    assert not registry.pm.has_plugin("beep")
    assert "beep" not in registry.engines


async def test_unknown_setting_fails_naming_the_key(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    registry = empty_registry()
    record = await registry.load(
        "beep", PluginEntry(module="testplug_beep", settings={"pich": 3})
    )
    assert record.state == "failed"
    assert record.error == (
        "ConfigError: unknown key `plugins.beep.settings.pich`; remove it or fix its name"
    )


async def test_duplicate_component_name_is_refused(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    write_plugin(plugin_dir, "testplug_beep2", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    registry = empty_registry()
    await registry.load("one", PluginEntry(module="testplug_beep"))
    record = await registry.load("two", PluginEntry(module="testplug_beep2"))
    assert record.error == "ValueError: engine 'beep' is already offered by plugin 'one'"
    assert registry.engine("beep").plugin == "one"


async def test_reload_after_unload(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    registry = empty_registry()
    await registry.load("beep", PluginEntry(module="testplug_beep"))
    await registry.unload("beep")
    record = await registry.load("beep", PluginEntry(module="testplug_beep"))
    assert record.state == "loaded"


async def test_module_without_hooks_fails_clearly(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "testplug_empty", "X = 1\n")
    registry = empty_registry()
    record = await registry.load("empty", PluginEntry(module="testplug_empty"))
    assert record.error == "ConfigError: plugin 'empty' implements no morpheus hook"


async def test_disabled_plugins_are_listed_not_loaded() -> None:
    config = MorpheusConfig(
        plugins={"fault": PluginEntry(module="morpheus_tts.plugins.engines.fault", enabled=False)}
    )
    registry = Registry(config, entry_points=False)
    await registry.load_all()
    assert registry.records["fault"].state == "disabled"
    assert registry.engines == {}


async def test_misspelled_hook_is_a_load_error(plugin_dir: Path) -> None:
    source = ENGINE_PLUGIN.replace("NAME", '"beep"').replace(
        "def morpheus_engines():", "def morpheus_engine():"
    )
    write_plugin(plugin_dir, "testplug_typo", source)
    registry = empty_registry()
    record = await registry.load("typo", PluginEntry(module="testplug_typo"))
    assert record.state == "failed"
    assert record.error == (
        "ConfigError: plugin 'typo' implements unknown hook morpheus_engine; the hooks are: "
        "morpheus_engines, morpheus_codecs, morpheus_chunkers, morpheus_stitchers"
    )
    assert not registry.pm.has_plugin("typo") and registry.engines == {}


async def test_one_module_backs_two_entries_with_their_own_names_and_settings(
    plugin_dir: Path,
) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    one = PluginEntry(module="testplug_beep", settings={"pitch": 220.0})
    two = PluginEntry(module="testplug_beep", settings={"pitch": 880.0})
    registry = Registry(MorpheusConfig(plugins={"beep": one, "high": two}), entry_points=False)
    await registry.load_all()
    assert registry.records["beep"].components == ["engine:beep"]
    assert registry.records["high"].components == ["engine:high"]
    assert registry.engine("beep").engine.settings.pitch == 220.0
    assert registry.engine("high").engine.settings.pitch == 880.0
    await registry.unload("high")
    assert list(registry.engines) == ["beep"] and registry.pm.has_plugin("beep")
    await registry.close()


async def test_two_entries_of_one_module_named_apart_from_it_take_their_names(
    plugin_dir: Path,
) -> None:
    write_plugin(plugin_dir, "testplug_beep", ENGINE_PLUGIN.replace("NAME", '"beep"'))
    registry = empty_registry()
    await registry.load("primary", PluginEntry(module="testplug_beep"))
    record = await registry.load("backup", PluginEntry(module="testplug_beep"))
    # Loaded one after the other at runtime, the first had no peer yet: it kept "beep".
    assert record.components == ["engine:backup"]
    assert sorted(registry.engines) == ["backup", "beep"]
    await registry.close()
