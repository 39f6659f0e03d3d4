"""plugins.toml: which plugins load at start, their settings, aliases and server defaults.

The file is decoded straight into msgspec Structs that forbid unknown keys, so a typo fails at
start with the file, the key and the fix named instead of being silently ignored.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
from morpheus_tts.host.errors import MorpheusError

ENV_PREFIX = "MORPHEUS_"
CONFIG_ENV = "MORPHEUS_CONFIG"
BUILTIN_PACKAGE = "morpheus_tts.plugins"
_LEGACY_PREFIX = "plugins."

log = logging.getLogger(__name__)


class ConfigError(MorpheusError, ValueError):
    """plugins.toml (or a settings table) is invalid; the message names the key and the fix."""


class PluginEntry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One `[plugins.NAME]` table: where the plugin comes from and its settings.

    Exactly one of `module` (an importable module path) or `entry_point` (a name in the
    `morpheus.plugins` entry-point group) is given. `enabled = false` keeps it unloaded.
    """

    module: str | None = None
    entry_point: str | None = None
    enabled: bool = True
    settings: dict[str, Any] = {}


# The ranges a `[server]` value may take, shared by plugins.toml and `POST /config` (both decode
# through `convert_settings`): a chunk of 1e12 tokens or a negative drain is refused by either.
ChunkTokens = Annotated[int, msgspec.Meta(ge=1, le=4096)]
BufferMs = Annotated[float, msgspec.Meta(ge=0, le=60_000)]


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The `[server]` table: defaults for requests that don't say otherwise.

    Chunk sizes are in the engine's tokens (token engines); buffer thresholds are milliseconds
    of audio queued at the client. `pace_playback` pauses the engine while the client holds
    more than `buffer_max_ms`; `stall_timeout_s` is the longest wait for one engine step before
    failover; `barge_in_fade_ms` is the fade a barge-in ends with (0 cuts). See docs/realtime.md.
    `admin_key` (or `$MORPHEUS_ADMIN_KEY`) guards the write
    endpoints; `plugin_modules` lists the module patterns (fnmatch) `POST /plugins` may import.
    `tracing_ui_url` is where the web UI links trace ids: a URL with `{trace_id}` in it, or a
    Jaeger base URL (`/trace/<id>` is appended); GET /config shows it.
    `discovery_requires_key` makes `GET /v1/audio/voices`, `/v1/audio/models` and `/v1/` need
    `$MORPHEUS_API_KEY` too (off: clients such as Open WebUI list voices without a key).
    `wyoming_port` starts the Wyoming server (Home Assistant) on that TCP port, bound to
    `wyoming_host` (None: the HTTP server's `--host`), announced over mDNS with
    `wyoming_zeroconf`; see docs/wyoming.md.
    `allowed_origins` lists the browser origins besides the server's own that may call it;
    `max_push_chars` / `max_turn_chars` cap the text of one session push and of one turn;
    `max_sessions_per_client` caps the sessions one API key (or client address) holds. Every
    number has a range (the Annotated types below); see docs/security.md.
    """

    default_engine: str = "piper"
    default_voice: str | None = None
    chunker: str = "sentence"
    stitcher: str = "crossfade"
    sample_rate: Annotated[int, msgspec.Meta(ge=8000, le=192_000)] = 24000
    failover: list[str] = []
    first_chunk_tokens: ChunkTokens = 12
    target_chunk_tokens: ChunkTokens = 32
    min_chunk_tokens: ChunkTokens = 8
    max_chunk_tokens: ChunkTokens = 64
    lock_chunk_tokens: ChunkTokens | None = None
    playback_buffer_ms: BufferMs = 300.0
    buffer_min_ms: BufferMs = 200.0
    buffer_max_ms: BufferMs = 500.0
    pace_playback: bool = True
    stall_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = 15.0
    barge_in_fade_ms: Annotated[float, msgspec.Meta(ge=0, le=30)] = 20.0
    session_idle_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 300.0
    max_sessions: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 64
    max_sessions_per_client: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 32
    max_push_chars: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 16_384
    max_turn_chars: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 100_000
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    config_reload_interval_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0  # 0: off
    admin_key: str | None = None
    tracing_ui_url: str | None = None
    discovery_requires_key: bool = False
    wyoming_port: int | None = None
    wyoming_host: str | None = None
    wyoming_zeroconf: bool = False
    allowed_origins: list[str] = []
    plugin_modules: list[str] = msgspec.field(
        default_factory=lambda: ["morpheus_tts.plugins.*"]
    )

    def __post_init__(self) -> None:
        self.plugin_modules = [
            upgrade_module_path(pattern, "server.plugin_modules") for pattern in self.plugin_modules
        ]
        if not self.min_chunk_tokens <= self.first_chunk_tokens <= self.max_chunk_tokens:
            raise ConfigError(
                "server.first_chunk_tokens must lie between min_chunk_tokens and max_chunk_tokens"
            )
        if not self.min_chunk_tokens <= self.target_chunk_tokens <= self.max_chunk_tokens:
            raise ConfigError(
                "server.target_chunk_tokens must lie between min_chunk_tokens and "
                "max_chunk_tokens"
            )
        if not self.buffer_min_ms <= self.playback_buffer_ms <= self.buffer_max_ms:
            raise ConfigError(
                "server.playback_buffer_ms must lie between buffer_min_ms and buffer_max_ms"
            )
        if self.session_idle_timeout_s <= 0:
            raise ConfigError("server.session_idle_timeout_s must be > 0 seconds")
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            raise ConfigError("server.stall_timeout_s must be > 0 seconds (or absent: no limit)")
        if self.wyoming_port is not None and not 0 <= self.wyoming_port <= 65535:
            raise ConfigError("server.wyoming_port must be a TCP port, 0-65535 (absent: off)")
        if not 0 <= self.barge_in_fade_ms <= 30:
            raise ConfigError("server.barge_in_fade_ms must lie between 0 (cut) and 30 ms")


def _default_model_aliases() -> dict[str, str | list[str]]:
    # "default" is `[server].default_engine`; a target that is not loaded falls back to it.
    names = ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-03-20",
             "gpt-4o-mini-tts-2025-12-15"]
    return {**dict.fromkeys(names, "default"), "orpheus": "orpheus"}


def _default_voice_aliases() -> dict[str, str | list[str]]:
    # OpenAI's voices onto Orpheus voices of a similar character, and Orpheus's own voices, so
    # both name sets work on any engine (an engine without the target speaks its default voice).
    openai = {
        "alloy": "tara", "ash": "dan", "ballad": "leo", "coral": "leah", "echo": "zac",
        "fable": "leo", "onyx": "dan", "nova": "jess", "sage": "mia", "shimmer": "zoe",
        "verse": "zac", "marin": "tara", "cedar": "leo",
    }
    orpheus = {name: f"orpheus:{name}" for name in
               ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")}
    return {**openai, **orpheus}


class Aliases(msgspec.Struct, forbid_unknown_fields=True):
    """The `[aliases]` table: OpenAI and legacy names mapped to what is really loaded.

    `models` maps a model name to an engine name, `"default"` (the `[server]` default engine)
    or a list of them in order of preference. `voices` maps a voice name to `engine:voice`, a
    bare voice, or a list of them. `host.aliases` documents how a name resolves, including the
    fallback when a target is not loaded.
    """

    models: dict[str, str | list[str]] = msgspec.field(default_factory=_default_model_aliases)
    voices: dict[str, str | list[str]] = msgspec.field(default_factory=_default_voice_aliases)


def _builtin_plugins() -> dict[str, PluginEntry]:
    return {
        "piper": PluginEntry(module="morpheus_tts.plugins.engines.piper"),
        "sentence": PluginEntry(module="morpheus_tts.plugins.chunkers.sentence"),
        "crossfade": PluginEntry(module="morpheus_tts.plugins.stitchers.crossfade"),
    }


class MorpheusConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The whole of plugins.toml. With no file, the built-in defaults apply."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    plugins: dict[str, PluginEntry] = msgspec.field(default_factory=_builtin_plugins)
    aliases: Aliases = msgspec.field(default_factory=Aliases)
    path: str | None = None

    def __post_init__(self) -> None:
        for name, entry in self.plugins.items():
            if entry.module is not None and entry.module.startswith(_LEGACY_PREFIX):
                entry.module = upgrade_module_path(entry.module, f"plugins.{name}.module")
            if (entry.module is None) == (entry.entry_point is None):
                raise ConfigError(
                    f"plugins.{name}: give exactly one of `module = \"package.module\"` or "
                    f"`entry_point = \"name\"`"
                )


def upgrade_module_path(module: str, where: str) -> str:
    """Rewrite a pre-namespace built-in path (`plugins.engines.piper`) to its `morpheus_tts.`
    form, with a warning. Kept for one release; other paths pass through unchanged."""
    if not module.startswith(_LEGACY_PREFIX):
        return module
    upgraded = f"morpheus_tts.{module}"
    log.warning(
        "deprecated built-in module path",
        extra={"key": where, "old_path": module, "new_path": upgraded},
    )
    return upgraded


def is_builtin_module(module: str) -> bool:
    """Whether `module` is one of the plugins shipped in this distribution."""
    return module == BUILTIN_PACKAGE or module.startswith(BUILTIN_PACKAGE + ".")


_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`(?: - at `\$(?P<at>.*)`)?")
_AT = re.compile(r" - at `\$(?P<at>[^`]*)`")


def describe_validation_error(exc: msgspec.ValidationError, where: str = "") -> str:
    """Turn msgspec's message into one naming the dotted key (under `where`) and the fix."""
    message = str(exc)

    def dotted(*parts: str) -> str:
        return ".".join(p.strip(".") for p in parts if p and p.strip("."))

    unknown = _UNKNOWN.match(message)
    if unknown:
        key = dotted(where, unknown.group("at") or "", unknown.group("field"))
        return f"unknown key `{key}`; remove it or fix its name"
    at = _AT.search(message)
    key = dotted(where, at.group("at") if at else "")
    reason = _AT.sub("", message)
    return f"`{key}`: {reason}" if key else reason


class Environment(msgspec.Struct, frozen=True, kw_only=True):
    """Every `MORPHEUS_*` environment variable, decoded in one place (`read_environment`).

    Each field is the variable's name without the prefix, lower-cased (`api_key` is
    `$MORPHEUS_API_KEY`). An unset or empty variable means the default.

    Args:
        config: the plugins.toml to read when none is named on the command line.
        api_key: the key `/v1/*` and `/speak` require as `Authorization: Bearer <key>`
            (unset: open).
        admin_key: the key the write endpoints (`POST /plugins`, `POST /config`, ...) require;
            beats `[server] admin_key`.
        max_streams: speech responses streaming at once before 429 (0: unlimited).
        outputs_dir: where `POST /speak` with `Accept: application/json` writes its WAV files
            (default: `morpheus-outputs` in the system temp directory).
        outputs_keep: how many of the newest of those files are kept.
        log_level: debug, info, warning or error (a `--log-level` flag beats it).
        log_format: `text` or `json`.
        no_entry_points: any value but 0/false/no/off: don't load installed `morpheus.plugins`
            distributions.
    """

    config: str | None = None
    api_key: str | None = None
    admin_key: str | None = None
    max_streams: int = 0
    outputs_dir: str | None = None
    outputs_keep: int = 100
    log_level: str | None = None
    log_format: str | None = None
    no_entry_points: bool = False

    @staticmethod
    def variable(field: str) -> str:
        """The environment variable behind `field` (`api_key` -> `MORPHEUS_API_KEY`)."""
        return ENV_PREFIX + field.upper()


def read_environment(environ: Mapping[str, str] | None = None) -> Environment:
    """Decode the `MORPHEUS_*` variables (of `environ`, default the process environment).

    Read when needed rather than once at import, so a server started with a changed
    environment (or a test that sets one) sees it.

    Raises:
        ConfigError: a value of the wrong type; the message names the variable.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in Environment.__struct_fields__:
        raw = environ.get(Environment.variable(field), "").strip()
        if not raw:
            continue
        if field == "no_entry_points":
            values[field] = raw.lower() not in ("0", "false", "no", "off")
        else:
            values[field] = raw
    try:
        return msgspec.convert(values, type=Environment, strict=False)
    except msgspec.ValidationError as exc:
        field = describe_validation_error(exc).split("`")[1]
        reason = _AT.sub("", str(exc))
        raise ConfigError(f"${Environment.variable(field)}: {reason}") from None


def load_config(path: str | os.PathLike[str] | None = None) -> MorpheusConfig:
    """Read plugins.toml.

    Args:
        path: the file; None means `$MORPHEUS_CONFIG`, else `./plugins.toml` if present, else
            the built-in defaults.

    Raises:
        ConfigError: the file is missing (when named explicitly), not TOML, or has a bad key.
    """
    from_env = read_environment().config
    explicit = path is not None or from_env is not None
    candidate = Path(path or from_env or "plugins.toml")
    if not candidate.is_file():
        if explicit:
            raise ConfigError(f"{candidate}: no such config file; pass an existing plugins.toml")
        return MorpheusConfig()
    try:
        raw = msgspec.toml.decode(candidate.read_bytes())
        # Plugin tables are converted one by one so an error names the plugin, which msgspec's
        # own path (`$.plugins[...]`) does not.
        plugins = {
            name: convert_settings(table, PluginEntry, f"plugins.{name}")
            for name, table in (raw.pop("plugins", None) or {}).items()
        }
        config = convert_settings(raw, MorpheusConfig, "")
        if plugins:
            config = msgspec.structs.replace(config, plugins=plugins)
    except (msgspec.DecodeError, ConfigError) as exc:
        raise ConfigError(f"{candidate}: {exc}") from exc
    return msgspec.structs.replace(config, path=str(candidate))


def convert_settings(table: dict[str, Any], struct: type, where: str) -> Any:
    """Validate a table into `struct`; errors name the key as `where.key`."""
    try:
        return msgspec.convert(table, type=struct, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, where)) from exc
