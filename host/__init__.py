"""The Morpheus plugin host: what plugins and front-ends may import.

Plugins import only from here (`from morpheus_tts.host import hookimpl, Component, ...`), so a
third-party plugin has exactly the power of a built-in one.
"""

from morpheus_tts.host.config import ConfigError, MorpheusConfig, load_config
from morpheus_tts.host.contracts import (
    CancellableSteps,
    Chunker,
    Codec,
    CodecDecoder,
    Component,
    Engine,
    EngineCapabilities,
    EngineRequestError,
    EngineTurn,
    IncrementalEngine,
    NoSettings,
    Stitcher,
    SynthesisRequest,
    TurnRequest,
    VoicePrompts,
)
from morpheus_tts.host.events import BargeIn, Event, PCMChunk, TextDelta, TokenFrames
from morpheus_tts.host.hookspecs import hookimpl

__all__ = [
    "BargeIn",
    "CancellableSteps",
    "Chunker",
    "Codec",
    "CodecDecoder",
    "Component",
    "ConfigError",
    "Engine",
    "EngineCapabilities",
    "EngineRequestError",
    "EngineTurn",
    "Event",
    "IncrementalEngine",
    "MorpheusConfig",
    "NoSettings",
    "PCMChunk",
    "Stitcher",
    "SynthesisRequest",
    "TextDelta",
    "TokenFrames",
    "TurnRequest",
    "VoicePrompts",
    "hookimpl",
    "load_config",
]
