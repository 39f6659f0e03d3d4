"""Every hook is documented, and every documented hook exists."""

from __future__ import annotations

import inspect
import re

from conftest import ROOT
from morpheus_tts.host import hookspecs


def hook_names() -> set[str]:
    return {
        name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("morpheus_")
    }


def test_every_hook_has_a_docs_heading() -> None:
    documented = set(re.findall(r"^### (\w+)$", (ROOT / "docs/plugins.md").read_text(), re.M))
    assert hook_names() == documented


def test_every_hook_has_a_docstring() -> None:
    for name in hook_names():
        assert inspect.getdoc(getattr(hookspecs, name)), name


def test_every_kind_has_exactly_one_hook() -> None:
    assert set(hookspecs.HOOK_BY_KIND.values()) == hook_names()
