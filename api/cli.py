"""The `morpheus` command: say, serve, plugins."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import BinaryIO

import anyio
import msgspec
from morpheus_tts.api.encoders import pcm16, wav_header
from morpheus_tts.host.config import ConfigError, MorpheusConfig, PluginEntry, load_config
from morpheus_tts.host.pipeline import Utterance
from morpheus_tts.host.registry import UnknownComponentError
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.observability.logs import configure_logging, uvicorn_log_config

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5005


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    config_help = "plugins.toml to use (default: $MORPHEUS_CONFIG, else ./plugins.toml)"
    parser = argparse.ArgumentParser(prog="morpheus", description="Realtime text-to-speech.")
    parser.add_argument("--config", help=config_help)
    # `--config` is accepted after the subcommand too (`morpheus serve --config x.toml`);
    # SUPPRESS keeps a subcommand without it from overwriting the one given before.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True)

    say = sub.add_parser(
        "say", parents=[common], help="speak text into a WAV or PCM file, streaming"
    )
    say.add_argument("text", nargs="?", help="what to say (or use --file)")
    say.add_argument("-f", "--file", type=Path, help="read the text from this file")
    say.add_argument("-o", "--output", default="-", help="output path, or - for stdout")
    say.add_argument("--format", choices=["wav", "pcm"], default=None,
                     help="wav (default) or raw 16-bit little-endian mono pcm")
    say.add_argument("--engine", help="engine name (default: the configured default)")
    say.add_argument("--voice", help="voice name, or a path to a Piper .onnx voice")
    say.add_argument("--speed", type=float, default=1.0, help="0.25-4.0 (default 1.0)")

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP API")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"bind address ({DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    serve.add_argument("--wyoming-port", type=int, default=None,
                       help="also serve Wyoming (Home Assistant) on this TCP port, e.g. 10200 "
                            "(default: [server] wyoming_port, else off)")
    serve.add_argument("--log-level", default=None,
                       help="debug, info, warning, error (default: $MORPHEUS_LOG_LEVEL or info)")

    plugins = sub.add_parser("plugins", parents=[common], help="list every plugin the host found")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `morpheus` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # A flag beats $MORPHEUS_LOG_LEVEL, which beats the command's default.
        default = "info" if args.command == "serve" else "warning"
        configure_logging(default, level=getattr(args, "log_level", None))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        config = load_config(args.config)
        if args.command == "say":
            return _say(parser, args, config)
        if args.command == "serve":
            return _serve(args, config)
        return anyio.run(_plugins, args, config)
    except (ConfigError, UnknownComponentError, ValueError, FileNotFoundError) as exc:
        print(f"morpheus: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if not _is_broken_pipe(exc):
            raise
        # The reader went away (`morpheus say ... | head -c 100`): stop quietly, as `cat` does.
        # stdout points at /dev/null from here so the interpreter's final flush can't complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer the pipe stopped


def _is_broken_pipe(exc: BaseException) -> bool:
    """A BrokenPipeError, alone or inside the exception group a task group raised."""
    if isinstance(exc, BrokenPipeError):
        return True
    nested = getattr(exc, "exceptions", None)  # an (exceptiongroup) ExceptionGroup
    return bool(nested) and all(_is_broken_pipe(inner) for inner in nested)


def _say(parser: argparse.ArgumentParser, args: argparse.Namespace, config: MorpheusConfig) -> int:
    if args.file is not None:
        if args.text:
            parser.error("give the text or --file, not both")
        text = args.file.read_text(encoding="utf-8")
    else:
        text = args.text or ""
    if not text.strip():
        # One line (no usage block): the text is the problem, not the command line.
        raise ValueError("nothing to say: the text is empty")
    voice = args.voice
    if voice and voice.endswith(".onnx"):
        config = _with_piper_voice(config, voice)
        voice = None
    fmt = args.format or ("pcm" if args.output.endswith(".pcm") else "wav")
    request = SpeakRequest(engine=args.engine, voice=voice, speed=args.speed)
    show_progress = args.file is not None
    if args.output == "-" and sys.stdout.isatty():
        parser.error("refusing to write audio to a terminal; use -o FILE or pipe it")
    try:
        anyio.run(_speak_to, config, request, text, args.output, fmt, show_progress)
    except (ConfigError, UnknownComponentError, ValueError, FileNotFoundError):
        raise  # the request was refused: main() prints it and exits 2
    except Exception as exc:
        if _is_broken_pipe(exc):
            raise
        cause = _first_leaf(exc)
        logging.getLogger(__name__).debug("say failed", exc_info=exc)
        print(f"morpheus: error: speaking failed: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    return 0


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception that is not a group (task groups wrap what their tasks raised)."""
    while getattr(exc, "exceptions", None):
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def _with_piper_voice(config: MorpheusConfig, path: str) -> MorpheusConfig:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--voice {path}: no such Piper voice file")
    entry = config.plugins.get("piper", PluginEntry(module="morpheus_tts.plugins.engines.piper"))
    settings = {**entry.settings, "voice": path}
    plugins = {**config.plugins, "piper": msgspec.structs.replace(entry, settings=settings)}
    return msgspec.structs.replace(config, plugins=plugins)


async def _speak_to(
    config: MorpheusConfig,
    request: SpeakRequest,
    text: str,
    output: str,
    fmt: str,
    show_progress: bool,
) -> None:
    """Synthesize `text` into `output` (a path, or - for stdout) chunk by chunk as it is made.

    The file is created only once the request is valid, and removed again if speaking fails,
    so a failed `say` leaves no empty or truncated file behind.
    """
    runtime = Runtime(config)
    await runtime.start()
    try:
        _raise_if_default_failed(runtime, request)
        # Resolve (and so validate) before the first byte is written.
        opened = runtime.speak(request, text)
        if output == "-":
            await _write_audio(opened, sys.stdout.buffer, config, text, fmt, show_progress)
            return
        path = Path(output)
        try:
            with open(path, "wb") as sink:  # noqa: ASYNC230 - the CLI runs nothing else
                await _write_audio(opened, sink, config, text, fmt, show_progress)
        except BaseException:
            path.unlink(missing_ok=True)  # noqa: ASYNC240
            raise
    finally:
        await runtime.close()


async def _write_audio(
    opened: AbstractAsyncContextManager[Utterance],
    sink: BinaryIO,
    config: MorpheusConfig,
    text: str,
    fmt: str,
    show_progress: bool,
) -> None:
    rate = config.server.sample_rate
    if fmt == "wav":
        sink.write(wav_header(rate))
    data_bytes = 0
    progress = _progress_bar(len(text)) if show_progress else None
    async with opened as utterance:
        async for chunk in utterance.audio:
            data = pcm16(chunk.samples)
            sink.write(data)
            sink.flush()
            data_bytes += len(data)
            if progress is not None:
                progress.update(utterance.stats.characters_spoken - progress.n)
    if progress is not None:
        progress.update(len(text) - progress.n)
        progress.close()
    if fmt == "wav" and sink.seekable():
        sink.seek(0)
        sink.write(wav_header(rate, data_bytes))


def _raise_if_default_failed(runtime: Runtime, request: SpeakRequest) -> None:
    """Say why the engine isn't there rather than just that it isn't."""
    name = request.engine or runtime.default_engine
    for record in runtime.registry.records.values():
        if record.state == "failed" and record.name == name:
            raise ValueError(f"engine {name!r} failed to load: {record.error}")


def _progress_bar(total_chars: int):  # noqa: ANN202 - tqdm is typed loosely
    from tqdm import tqdm

    return tqdm(total=total_chars, unit="char", file=sys.stderr, desc="speaking")


def _serve(args: argparse.Namespace, config: MorpheusConfig) -> int:
    import uvicorn
    from morpheus_tts.api.app import create_app

    server = config.server
    wyoming_port = args.wyoming_port if args.wyoming_port is not None else server.wyoming_port
    server = msgspec.structs.replace(
        server, wyoming_port=wyoming_port, wyoming_host=server.wyoming_host or args.host
    )
    config = msgspec.structs.replace(config, server=server)
    uvicorn.run(
        create_app(config), host=args.host, port=args.port,
        log_config=uvicorn_log_config(), log_level=logging.getLogger().level,
    )
    return 0


async def _plugins(args: argparse.Namespace, config: MorpheusConfig) -> int:
    runtime = Runtime(config)
    await runtime.start()
    try:
        records = list(runtime.registry.records.values())
        if args.json:
            sys.stdout.write(msgspec.json.encode(records).decode() + "\n")
            return 0
        rows = [("NAME", "KIND", "SOURCE", "VERSION", "STATE")]
        for record in records:
            kinds = ",".join(sorted({c.split(":")[0] for c in record.components})) or "-"
            state = record.state if record.error is None else f"{record.state}: {record.error}"
            rows.append((record.name, kinds, record.source, record.version or "-", state))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
            sys.stdout.write("  ".join([*cells, row[4]]).rstrip() + "\n")
        return 0
    finally:
        await runtime.close()


if __name__ == "__main__":
    sys.exit(main())
