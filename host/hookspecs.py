"""The pluggy hook specifications of Morpheus (project name `morpheus`).

One hook per plugin kind. Each returns the components a plugin offers; a plugin module
implements only the hooks it needs::

    from morpheus_tts.host import Component, hookimpl

    @hookimpl
    def morpheus_engines() -> list[Component]:
        return [Component(name="mine", kind="engine", create=MyEngine, settings=MySettings)]

Every hook is documented in docs/plugins.md; tests/test_hookspecs.py fails when one is not.
"""

from __future__ import annotations

import pluggy
from morpheus_tts.host.contracts import Component

PROJECT = "morpheus"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def morpheus_engines() -> list[Component]:
    """Return the speech engines this plugin offers (kind "engine")."""


@hookspec
def morpheus_codecs() -> list[Component]:
    """Return the audio codecs this plugin offers (kind "codec")."""


@hookspec
def morpheus_chunkers() -> list[Component]:
    """Return the text chunkers this plugin offers (kind "chunker")."""


@hookspec
def morpheus_stitchers() -> list[Component]:
    """Return the audio stitchers this plugin offers (kind "stitcher")."""


HOOK_BY_KIND = {
    "engine": "morpheus_engines",
    "codec": "morpheus_codecs",
    "chunker": "morpheus_chunkers",
    "stitcher": "morpheus_stitchers",
}
