"""A second scripted fault engine, "fault2", with its own settings table.

Component names are unique, so a failover chain of two scripted engines (one failing before
the first audio, one after N chunks) needs a second name; everything else is `fault`'s.
"""

from __future__ import annotations

from morpheus_tts.host import Component, hookimpl
from morpheus_tts.plugins.engines.fault import component


@hookimpl
def morpheus_engines() -> list[Component]:
    """Offer the scripted engine again, as "fault2"."""
    return [component("fault2")]
