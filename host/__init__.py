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
    VoiceComposer,
    VoicePrompts,
)
from morpheus_tts.host.errors import MorpheusError
from morpheus_tts.host.events import BargeIn, Event, PCMChunk, TextDelta, TokenFrames
from morpheus_tts.host.hookspecs import hookimpl
from morpheus_tts.host.speed import time_stretch

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
    "MorpheusError",
    "NoSettings",
    "PCMChunk",
    "Stitcher",
    "SynthesisRequest",
    "TextDelta",
    "TokenFrames",
    "TurnRequest",
    "VoiceComposer",
    "VoicePrompts",
    "hookimpl",
    "load_config",
    "time_stretch",
]
