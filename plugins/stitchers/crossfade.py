"""The "crossfade" stitcher: streaming soxr resampling plus equal-power crossfades at seams.

Chunks of one segment are pieces of one continuous signal: they go through one streaming soxr
resampler and are joined as they are. Two segments come from separate engine calls, so the
seam between them is smoothed with an equal-power (sin/cos) overlap-add.
"""

from __future__ import annotations

import math
from fractions import Fraction

import msgspec
import numpy as np
import soxr
from morpheus_tts.host.contracts import Component
from morpheus_tts.host.hookspecs import hookimpl

SOXR_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
"""soxr's quality names, quickest to best."""

_EMPTY = np.zeros(0, dtype=np.float32)


class CrossfadeSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Settings of the crossfade stitcher.

    Args:
        crossfade_ms: length of the equal-power crossfade at each seam between segments;
            also the latency the stitcher adds (0 joins segments with a hard cut).
        quality: soxr resampling quality, one of QQ, LQ, MQ, HQ, VHQ.
    """

    crossfade_ms: float = 10.0
    quality: str = "HQ"

    def __post_init__(self) -> None:
        """Reject values the stitcher cannot use, naming the field and what it accepts."""
        if not (math.isfinite(self.crossfade_ms) and self.crossfade_ms >= 0):
            raise ValueError(
                f"crossfade_ms must be a finite number >= 0 (e.g. 10.0), got {self.crossfade_ms!r}"
            )
        if self.quality not in SOXR_QUALITIES:
            raise ValueError(
                f"quality must be one of soxr's {', '.join(SOXR_QUALITIES)}, got {self.quality!r}"
            )


def _equal_power(tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Overlap-add `tail` fading out (cos) with `head` fading in (sin); gains² sum to 1."""
    if not len(tail):
        return _EMPTY
    angle = (np.arange(len(tail)) + 0.5) * (0.5 * np.pi / len(tail))
    return (tail * np.cos(angle) + head * np.sin(angle)).astype(np.float32)


class CrossfadeStitcher:
    """Joins one stream's chunks into seamless mono float32 audio at `sample_rate`.

    Resampling: each run of chunks (one segment at one input rate) goes through a streaming
    `soxr.ResampleStream` (one per input rate, created lazily, cleared between runs), so chunk
    boundaries leave no trace. A run of `n` input samples at rate `r` yields exactly
    `round(n * sample_rate / r)` samples (Python's half-to-even `round`); input already at
    `sample_rate` passes through untouched.

    Seams: with `N = round(crossfade_ms * sample_rate / 1000)`, the last `N` samples of each
    segment are held back. When the next segment has produced as many samples as are held,
    the held tail (cos gain) and that head (sin gain) are overlap-added. Every sample is used
    exactly once, so after `flush()`::

        len(output) = sum(len(segment_i resampled)) - sum(L_seam)

    where `L_seam = N` for segments of at least `2 * N` samples. A segment shorter than the
    tail held before it (`c < N` samples) shrinks its seams instead of losing audio: its first
    `ceil(c / 2)` samples fade in over the previous tail and its last `floor(c / 2)` become
    the tail for the next seam (the last segment of a stream fades in with all `c`). A
    segment of `N <= c < 2 * N` fades in over `N` and leaves `c - N` for the next seam. An
    empty segment leaves the pending seam to the next one.

    Latency: the held tail (at most `N` samples) plus the resampler's own buffering; soxr's
    stream works in blocks, so at MQ/HQ/VHQ it holds up to ~40 ms at 22.05 kHz (LQ ~1 ms).
    """

    def __init__(self, settings: CrossfadeSettings, sample_rate: int = 24000) -> None:
        """Create the stitcher for one stream.

        Args:
            settings: the validated settings.
            sample_rate: the output sample rate in Hz.
        """
        self.sample_rate = sample_rate
        self._quality = settings.quality
        self._fade_len = round(settings.crossfade_ms * sample_rate / 1000)
        self._resamplers: dict[int, soxr.ResampleStream] = {}
        self._reset()

    def _reset(self) -> None:
        self._segment: int | None = None
        self._in_rate: int | None = None  # input rate of the current run
        self._in_count = 0  # input samples of the current run
        self._out_count = 0  # samples its resampler has returned so far
        self._current = _EMPTY  # unemitted, not yet crossfaded samples of the current segment
        self._prev_tail = _EMPTY  # held tail of the previous segment, awaiting its seam

    def push(self, samples: np.ndarray, sample_rate: int, segment: int) -> np.ndarray:
        """Add a chunk of `segment`; return the output samples that are now final.

        Args:
            samples: mono float32 audio (a 1-D array).
            sample_rate: the rate of `samples` in Hz.
            segment: index of the text segment it belongs to; a new index starts a seam.

        Returns:
            float32 samples at `sample_rate`, possibly empty.
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"samples must be mono (a 1-D array), got shape {samples.shape}")
        parts = []
        if self._segment is not None and segment != self._segment:
            parts.append(self._end_segment())
        elif self._in_rate is not None and sample_rate != self._in_rate:
            # same segment at a new rate: drain the old run and go on contiguously, no seam
            parts.append(self._accept(self._end_run()))
        self._segment, self._in_rate = segment, sample_rate
        parts.append(self._accept(self._resample(samples)))
        return np.concatenate(parts)

    def flush(self) -> np.ndarray:
        """End the stream: drain the resampler and return everything held back.

        The stitcher is then reset; a later push starts a fresh stream.
        """
        parts = [self._accept(self._end_run())]
        if len(self._prev_tail):  # the last segment is shorter than the tail: fade in all of it
            parts.append(self._settle_seam(fade=len(self._current)))
        parts.append(self._current)
        self._reset()
        return np.concatenate(parts)

    def fade_out(self, fade_ms: float) -> np.ndarray:
        """Barge-in: return held-back audio faded to exactly 0 over `fade_ms`; drop the rest.

        The fade covers `min(round(fade_ms * sample_rate / 1000), held)` samples, so it is
        shorter when less is held back. The stitcher is reset: the next push starts a fresh
        stream with no seam to the old audio.
        """
        if not fade_ms >= 0:
            raise ValueError(f"fade_ms must be >= 0, got {fade_ms!r}")
        held = self.flush()
        fade = min(round(fade_ms * self.sample_rate / 1000), len(held))
        gain = 0.5 * (1.0 + np.cos(np.pi * np.arange(1, fade + 1) / max(fade, 1)))
        return (held[:fade] * gain).astype(np.float32)

    def _resample(self, samples: np.ndarray) -> np.ndarray:
        rate = self._in_rate
        self._in_count += len(samples)
        if rate == self.sample_rate:
            return samples.copy()  # the caller may reuse its buffer; we hold on to ours
        stream = self._resamplers.get(rate)
        if stream is None:
            stream = soxr.ResampleStream(
                rate, self.sample_rate, 1, dtype="float32", quality=self._quality
            )
            self._resamplers[rate] = stream
        out = stream.resample_chunk(np.ascontiguousarray(samples))
        self._out_count += len(out)
        return out

    def _end_run(self) -> np.ndarray:
        """Drain the current run's resampler; return its last samples, exact in number.

        soxr's stream rounds the total half-up (3 samples at 16 kHz give 5 at 24 kHz, where
        `round(4.5)` is 4), so the drained block is trimmed or zero-padded to the exact
        count. Only exact .5 totals differ, by one sample, and the drained block always
        holds at least the filter's delay, so the trim never reaches emitted audio.
        """
        stream = self._resamplers.get(self._in_rate)
        drained = _EMPTY
        if stream is not None:
            drained = stream.resample_chunk(_EMPTY, last=True)
            stream.clear()
            exact = round(Fraction(self._in_count * self.sample_rate, self._in_rate))
            missing = exact - self._out_count - len(drained)
            if missing > 0:
                drained = np.concatenate((drained, np.zeros(missing, dtype=np.float32)))
            drained = drained[: max(0, len(drained) + min(missing, 0))]
        self._in_rate, self._in_count, self._out_count = None, 0, 0
        return drained

    def _accept(self, samples: np.ndarray) -> np.ndarray:
        """Add resampled samples of the current segment; return those now final."""
        current = np.concatenate((self._current, samples))
        self._current = current
        parts = []
        if len(self._prev_tail):
            if len(current) < len(self._prev_tail):
                return _EMPTY  # the seam waits for as many head samples as tail is held
            parts.append(self._settle_seam(fade=len(self._prev_tail)))
            current = self._current
        keep = min(self._fade_len, len(current))
        parts.append(current[: len(current) - keep])
        self._current = current[len(current) - keep :]
        return np.concatenate(parts)

    def _settle_seam(self, fade: int) -> np.ndarray:
        """Emit the held tail, its last `fade` samples overlap-added with the current head."""
        tail, head = self._prev_tail, self._current
        cut = len(tail) - fade
        out = np.concatenate((tail[:cut], _equal_power(tail[cut:], head[:fade])))
        self._prev_tail, self._current = _EMPTY, head[fade:]
        return out

    def _end_segment(self) -> np.ndarray:
        """Close the complete current segment: settle a pending seam, hold its tail."""
        out = self._accept(self._end_run())
        if not len(self._current):
            return out  # nothing new is held (empty segment): any pending seam moves on
        if len(self._prev_tail):  # shorter than the tail before it: share it between seams
            out = np.concatenate((out, self._settle_seam(fade=-(-len(self._current) // 2))))
        self._prev_tail, self._current = self._current, _EMPTY
        return out


@hookimpl
def morpheus_stitchers() -> list[Component]:
    """Offer the "crossfade" stitcher."""
    return [
        Component(
            name="crossfade",
            kind="stitcher",
            create=CrossfadeStitcher,
            settings=CrossfadeSettings,
            description="Streaming soxr resampling to the output rate, equal-power crossfades "
            "at segment seams, no sample lost or duplicated.",
        )
    ]
