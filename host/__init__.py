"""The Morpheus plugin host: what plugins and front-ends may import.

Plugins import only from here (`from host import hookimpl, Component, ...`), so a third-party
plugin has exactly the power of a built-in one.
"""

from host.config import ConfigError, MorpheusConfig, load_config
from host.contracts import (
    Chunker,
    Codec,
    CodecDecoder,
    Component,
    Engine,
    EngineCapabilities,
    NoSettings,
    Stitcher,
    SynthesisRequest,
)
from host.events import BargeIn, Event, PCMChunk, TextDelta, TokenFrames
from host.hookspecs import hookimpl

__all__ = [
    "BargeIn",
    "Chunker",
    "Codec",
    "CodecDecoder",
    "Component",
    "ConfigError",
    "Engine",
    "EngineCapabilities",
    "Event",
    "MorpheusConfig",
    "NoSettings",
    "PCMChunk",
    "Stitcher",
    "SynthesisRequest",
    "TextDelta",
    "TokenFrames",
    "hookimpl",
    "load_config",
]
