"""Finding a plugin's code and what it offers, without loading anything.

A plugin is a module (or any object) implementing some of the hooks in `host.hookspecs`. This
module imports it (by module path or by `morpheus.plugins` entry point), checks its hooks with
pluggy's `check_pending()` (so a misspelled hook name is an error, not a silent loss), calls
them for its components, and converts its settings table for each component. The registry uses
it to load; the runtime uses it to validate a whole edited plugins.toml before touching anything.

One module may back several `[plugins.NAME]` entries, each with its own settings. Component
names are unique, so each entry whose name differs from its module's component names, in a
configuration where another entry uses the same module, offers them under its own name: `NAME`
for a module with one component, `NAME.component` otherwise. `[plugins.fault]` and
`[plugins.fault2]` both naming the fault module give the engines `fault` and `fault2`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import msgspec
import pluggy
from morpheus_tts.host import hookspecs
from morpheus_tts.host.config import ConfigError, PluginEntry, convert_settings, is_builtin_module
from morpheus_tts.host.contracts import Component

ENTRY_POINT_GROUP = "morpheus.plugins"


class PluginCode(msgspec.Struct, frozen=True, kw_only=True):
    """An imported plugin and where it came from.

    Args:
        obj: what the entry names: a module (or the object an entry point points at).
        version: its distribution's version, if known.
        source: "built-in", "plugins.toml" or "entry point (DIST)".
    """

    obj: Any
    version: str | None
    source: str


def installed_entry_points() -> dict[str, metadata.EntryPoint]:
    """The `morpheus.plugins` entry points of installed distributions, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def import_plugin(entry: PluginEntry) -> PluginCode:
    """Import what `entry` names.

    Raises:
        ConfigError: no installed entry point of that name.
        ImportError: the module can't be imported (its own error, unchanged).
    """
    importlib.invalidate_caches()  # a distribution installed since start must be found
    if entry.module is not None:
        module = importlib.import_module(entry.module)
        if is_builtin_module(entry.module):
            return PluginCode(obj=module, version=_own_version(), source="built-in")
        return PluginCode(obj=module, version=None, source="plugins.toml")
    eps = installed_entry_points()
    ep = eps.get(entry.entry_point or "")
    if ep is None:
        raise ConfigError(
            f"no installed entry point {entry.entry_point!r} in group {ENTRY_POINT_GROUP!r}; "
            f"installed: {', '.join(sorted(eps)) or 'none'}"
        )
    dist = ep.dist
    source = f"entry point ({dist.name})" if dist else "entry point"
    return PluginCode(obj=ep.load(), version=dist.version if dist else None, source=source)


def offered_components(name: str, plugin: Any) -> list[Component]:
    """Check `plugin`'s hooks and return the components they offer, in hook order.

    Raises:
        ConfigError: a hook implementation matches no Morpheus hook (the message lists them),
            or the plugin implements none.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        known = ", ".join(hookspecs.HOOK_BY_KIND.values())
        unknown = [impl for impl in pm.hook.__dict__ if impl not in hookspecs.HOOK_BY_KIND.values()]
        what = f"unknown hook {', '.join(unknown)}" if unknown else str(exc)
        raise ConfigError(f"plugin {name!r} implements {what}; the hooks are: {known}") from None
    components: list[Component] = []
    implemented = False
    for hook_name in hookspecs.HOOK_BY_KIND.values():
        hook = getattr(pm.hook, hook_name)
        implemented = implemented or bool(hook.get_hookimpls())
        for offered in hook():
            components.extend(offered or [])
    if not implemented:
        raise ConfigError(f"plugin {name!r} implements no morpheus hook")
    return components


def module_key(entry: PluginEntry) -> str:
    """What identifies an entry's code: its module path or its entry-point name."""
    return entry.module if entry.module is not None else f"entry point {entry.entry_point}"


def named_for_entry(
    name: str, entry: PluginEntry, components: list[Component], peers: Iterable[PluginEntry]
) -> list[Component]:
    """`components` under the names entry `name` offers them (see the module docstring).

    Args:
        peers: the other entries of the configuration (loaded or about to be).
    """
    shared = any(module_key(peer) == module_key(entry) for peer in peers)
    if not shared or name in {component.name for component in components}:
        return components
    if len(components) == 1:
        return [msgspec.structs.replace(components[0], name=name)]
    return [msgspec.structs.replace(c, name=f"{name}.{c.name}") for c in components]


def check_entry(
    name: str, entry: PluginEntry, peers: Iterable[PluginEntry]
) -> list[tuple[Component, Any]]:
    """Import entry `name`, check its hooks and convert its settings for every component.

    Returns:
        Each component (under the name it will have) with its converted settings.

    Raises:
        ConfigError: unknown hook, no hook, no such entry point, or a bad setting (the message
            names the key as `plugins.NAME.settings.KEY`).
        ImportError: the module can't be imported.
    """
    code = import_plugin(entry)
    components = named_for_entry(name, entry, offered_components(name, code.obj), peers)
    where = f"plugins.{name}.settings"
    return [(c, convert_settings(entry.settings, c.settings, where)) for c in components]


class EntryView:
    """Another pluggy plugin object over the same module's hook functions.

    pluggy registers an object once, so a module backing a second entry is registered as a
    view carrying the module's hook implementations under the entry's own name.
    """

    def __init__(self, plugin: Any) -> None:
        self.__name__ = getattr(plugin, "__name__", type(plugin).__name__)
        marker = f"{hookspecs.PROJECT}_impl"
        for attribute in dir(plugin):
            value = getattr(plugin, attribute, None)
            if callable(value) and hasattr(value, marker):
                setattr(self, attribute, value)


@functools.cache
def _own_version() -> str | None:
    try:
        return metadata.version("morpheus-tts")
    except metadata.PackageNotFoundError:
        return None
