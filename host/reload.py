"""Checking an edited plugins.toml as a whole before any of it is applied.

A live edit is applied only if every plugin table it adds or changes imports, implements real
hooks and has settings its components accept, and if the `[server]` table still names a
chunker, a stitcher and a default engine that will be there. Otherwise nothing changes and the
runtime reports every reason at once (`/config`'s `config_error`, and the log).
"""

from __future__ import annotations

from morpheus_tts.host.config import ConfigError, MorpheusConfig, PluginEntry
from morpheus_tts.host.discovery import check_entry
from morpheus_tts.host.registry import Registry


def check_reload(
    registry: Registry, applied: dict[str, PluginEntry], new: MorpheusConfig
) -> None:
    """Raise unless applying `new` over the file's `applied` plugins leaves a working server.

    Args:
        registry: the live registry (read only here).
        applied: the plugin tables of the file as last applied.
        new: the edited file, decoded.

    Raises:
        ConfigError: every problem found, one per line, each naming its table and key.
    """
    problems: list[str] = []
    offered: dict[str, set[str]] = {"engine": set(), "chunker": set(), "stitcher": set()}
    for name, record in registry.records.items():
        if name in applied and applied[name] != new.plugins.get(name):
            continue  # to be unloaded (or replaced): its components go
        for component in record.components:
            kind, _, component_name = component.partition(":")
            offered.setdefault(kind, set()).add(component_name)
    for name, entry in new.plugins.items():
        unchanged = applied.get(name) == entry and name in registry.records
        if unchanged or not entry.enabled:
            continue
        peers = [other for key, other in new.plugins.items() if key != name]
        try:
            for component, _ in check_entry(name, entry, peers):
                offered.setdefault(component.kind, set()).add(component.name)
        except ConfigError as exc:
            problems.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - an import failure is the edit's fault
            problems.append(f"plugins.{name}: {type(exc).__name__}: {exc}")
    if problems:  # the tables are wrong: what they would not offer follows from that
        raise ConfigError("; ".join(problems))
    # A name the edit would make unavailable, or newly names without offering it, is refused;
    # one that is already missing (a plugin that failed at start) does not block other edits.
    server, current = new.server, registry.config.server
    available = {
        "engine": set(registry.engines),
        "chunker": set(registry.chunkers),
        "stitcher": set(registry.stitchers),
    }
    for key, kind in (("default_engine", "engine"), ("chunker", "chunker"),
                      ("stitcher", "stitcher")):
        value = getattr(server, key)
        there, changed = value in available[kind], value != getattr(current, key)
        if (there or changed) and value not in offered[kind]:
            problems.append(_missing(key, kind, value, offered[kind]))
    if problems:
        raise ConfigError("; ".join(problems))


def _missing(key: str, kind: str, value: str, offered: set[str]) -> str:
    listing = ", ".join(sorted(offered)) or "none"
    return f"`server.{key}`: no {kind} {value!r} would be loaded; offered: {listing}"
