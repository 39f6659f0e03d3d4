"""The docs list what the code has, and only that (Datasette's documentation tests, in spirit).

Each test reads a reference table or heading list from docs/ and compares it with the code, both
ways: a hook, `[server]` setting, plugin-table key or `MORPHEUS_*` variable added without its
docs fails here, and so does a documented one that no longer exists or a default that drifted.
"""

from __future__ import annotations

import re

import msgspec
import pytest
from conftest import ROOT
from morpheus_tts.host import hookspecs
from morpheus_tts.host.config import Environment, PluginEntry, ServerSettings

CONFIGURATION = (ROOT / "docs/configuration.md").read_text()
PLUGINS = (ROOT / "docs/plugins.md").read_text()


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under `## heading`, by the backquoted name in column one."""
    section = markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([^`]+)`", cells[0]) if line.startswith("|") else None
        if name:
            rows[name.group(1)] = cells[1:]
    return rows


def test_every_hook_has_a_heading_in_plugins_md() -> None:
    hooks = {name for name in dir(hookspecs) if name.startswith("morpheus_")}
    assert set(re.findall(r"^### (\w+)$", PLUGINS, re.M)) == hooks


def test_every_server_setting_is_documented() -> None:
    documented = table_rows(CONFIGURATION, "`[server]`")
    assert list(documented) == list(ServerSettings.__struct_fields__)


@pytest.mark.parametrize("field", msgspec.structs.fields(ServerSettings), ids=lambda f: f.name)
def test_each_documented_server_default_is_the_real_one(field: msgspec.structs.FieldInfo) -> None:
    cell = table_rows(CONFIGURATION, "`[server]`")[field.name][0]
    default = getattr(ServerSettings(), field.name)
    if default is None:
        assert cell == "unset"
    else:
        literal = re.fullmatch(r"`(.+)`", cell)
        assert literal, f"{field.name}: write the default as a TOML literal in backquotes"
        assert msgspec.toml.decode(f"v = {literal.group(1)}")["v"] == default


def test_every_plugin_table_key_is_documented() -> None:
    documented = table_rows(CONFIGURATION, "`[plugins.NAME]`")
    assert set(documented) == set(PluginEntry.__struct_fields__)


def test_every_environment_variable_is_documented() -> None:
    documented = table_rows(CONFIGURATION, "Environment variables")
    variables = [Environment.variable(field) for field in Environment.__struct_fields__]
    assert sorted(documented) == sorted(variables)


def test_no_morpheus_variable_is_read_outside_read_environment() -> None:
    readers = []
    folders = ("host", "api", "plugins", "observability", "web")
    for path in sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")):
        text = path.read_text()
        if re.search(r"os\.(environ|getenv)", text) and path != ROOT / "host/config.py":
            readers.append(path.relative_to(ROOT).as_posix())
    # tracing reads the standard OTEL_* variables, and openai-remote the variable its
    # `api_key_env` setting names: neither is a MORPHEUS_* one
    assert readers == ["observability/tracing.py", "plugins/engines/openai_remote.py"]
    assert "MORPHEUS_" not in (ROOT / "plugins/engines/openai_remote.py").read_text()
