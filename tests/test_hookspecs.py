"""Every hook has a docstring and each kind exactly one hook (docs: tests/test_docs.py)."""

from __future__ import annotations

import inspect

from morpheus_tts.host import hookspecs


def hook_names() -> set[str]:
    return {
        name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("morpheus_")
    }


def test_every_hook_has_a_docstring() -> None:
    for name in hook_names():
        assert inspect.getdoc(getattr(hookspecs, name)), name


def test_every_kind_has_exactly_one_hook() -> None:
    assert set(hookspecs.HOOK_BY_KIND.values()) == hook_names()
