"""Prometheus metrics: what each utterance did, plus the runtime's state at scrape time.

Names follow Prometheus conventions: base units in the name (`_seconds`), `_total` on
counters, one `engine` label (bounded by what is loaded). How they map to the original spec's
names (`tts_ttft_ms`, `tts_chunk_ms`, ...) is in docs/observability.md.

`Metrics` holds the per-utterance series (recorded by `observability.Telemetry`); the process
shares one set (`default_metrics()`, on prometheus_client's global registry, next to Litestar's
HTTP metrics). `RuntimeCollector` reads plugin states and counts from a `Runtime` when scraped,
so it lives in a per-app registry (`metrics_registry`) that also re-exports the global one.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Sized
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from morpheus_tts.host.runtime import Runtime

NAMESPACE = "morpheus"

# Seconds. Realtime targets sit between 50 ms and 1 s; the tail shows a cold or stalled engine.
LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)
# Wall seconds per audio second: below 1 is faster than real time.
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class Metrics:
    """The per-utterance series, registered in one registry.

    Args:
        registry: where to register them; tests pass a fresh `CollectorRegistry()`.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(
                name, doc, ["engine"], namespace=NAMESPACE, buckets=buckets, registry=registry
            )

        self.time_to_first_audio = histogram(
            "time_to_first_audio_seconds",
            "From request start to the first stitched audio sample ready to send.",
            LATENCY_BUCKETS,
        )
        self.time_to_first_byte = histogram(
            "time_to_first_byte_seconds",
            "From request start to the engine's first output (before codec and stitcher).",
            LATENCY_BUCKETS,
        )
        self.chunk_time = histogram(
            "chunk_time_seconds",
            "Wall time between consecutive audio chunks of one stream (the first is "
            "time_to_first_audio).",
            CHUNK_BUCKETS,
        )
        self.real_time_factor = histogram(
            "stream_real_time_factor",
            "Wall seconds per audio second of a completed stream (below 1: faster than real "
            "time).",
            RTF_BUCKETS,
        )
        self.underflows = Counter(
            "playback_underflows", "Times a listener's playback buffer ran dry mid-stream.",
            ["engine"], namespace=NAMESPACE, registry=registry,
        )
        self.failovers = Counter(
            "engine_failovers", "Streams moved from a failing engine to the next in the chain.",
            ["from_engine", "to_engine"], namespace=NAMESPACE, registry=registry,
        )
        self.barge_ins = Counter(
            "barge_ins", "Utterances interrupted by a barge-in.",
            ["engine"], namespace=NAMESPACE, registry=registry,
        )
        self.utterances = Counter(
            "utterances", "Finished utterances by outcome (completed, cancelled, interrupted, "
            "error).", ["engine", "outcome"], namespace=NAMESPACE, registry=registry,
        )
        self.audio = Counter(
            "audio_seconds", "Audio sent to listeners, in seconds.",
            ["engine"], namespace=NAMESPACE, registry=registry,
        )
        self.active_streams = Gauge(
            "active_streams", "Utterances running now.",
            ["engine"], namespace=NAMESPACE, registry=registry,
        )


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide series on prometheus_client's global registry (created once)."""
    global _default
    if _default is None:
        _default = Metrics(REGISTRY)
    return _default


class RuntimeCollector(Collector):
    """Plugin states and realtime sessions, read from a Runtime at each scrape.

    Args:
        runtime: the server's runtime.
        sessions: the session manager (anything with `len()`); None counts none.
    """

    def __init__(self, runtime: Runtime, sessions: Sized | None = None) -> None:
        self.runtime = runtime
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        """Yield `morpheus_plugin_state` (one 0/1 series per state) and `morpheus_sessions`."""
        from morpheus_tts.host.registry import State

        states = GaugeMetricFamily(
            f"{NAMESPACE}_plugin_state",
            "1 for the state each plugin is in (loaded, failed, disabled, draining), else 0.",
            labels=["plugin", "state"],
        )
        for record in list(self.runtime.registry.records.values()):
            for state in typing.get_args(State):
                states.add_metric([record.name, state], 1.0 if record.state == state else 0.0)
        yield states
        sessions = GaugeMetricFamily(
            f"{NAMESPACE}_sessions", "Realtime sessions open now."
        )
        sessions.add_metric([], float(len(self.sessions) if self.sessions is not None else 0))
        yield sessions


class _GlobalRegistry(Collector):
    """Re-exports prometheus_client's global registry (Litestar's HTTP metrics live there)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        """Everything the global registry holds now."""
        return self.source.collect()

    def describe(self) -> list[Metric]:
        """Nothing up front: the global registry's names change as metrics are created."""
        return []


def metrics_registry(
    runtime: Runtime, sessions: Sized | None = None, source: CollectorRegistry = REGISTRY
) -> CollectorRegistry:
    """One app's registry: its runtime's and sessions' state plus everything in `source`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime, sessions))
    registry.register(_GlobalRegistry(source))
    return registry


def http_metrics_middleware() -> Any:
    """Litestar's Prometheus middleware: `morpheus_http_*` request counts and durations.

    Paths are grouped by route template, so session ids do not explode the label space.
    """
    from litestar.plugins.prometheus import PrometheusConfig

    config = PrometheusConfig(app_name="morpheus", prefix=f"{NAMESPACE}_http", group_path=True)
    return config.middleware


def metrics_handler(registry: CollectorRegistry, path: str = "/metrics") -> Any:
    """A Litestar GET handler serving `registry` in the Prometheus text format.

    A scraper that asks for OpenMetrics (`Accept: application/openmetrics-text`) gets it.
    """
    from litestar import Request, get
    from litestar.response import Response
    from prometheus_client.exposition import choose_encoder

    namespace = {"Request": Request, "Response": Response}

    @get(path, sync_to_thread=False, include_in_schema=False, signature_namespace=namespace)
    def metrics(request: Request) -> Response[bytes]:
        """The Prometheus scrape endpoint."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    return metrics
