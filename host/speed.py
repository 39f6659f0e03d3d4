"""Speed for engines that cannot change it natively: a pitch-preserving time stretch.

Rubber Band (through pedalboard) stretches whole buffers. Stretching chunk by chunk would put
its start-up transient at every chunk edge, so audio is stretched one text segment at a time:
a segment is held until the next one begins (or the stream ends), then stretched whole. Speech
segments are short, and engines without native speed are token engines whose segments are
already the unit of synthesis, so this adds at most one segment of latency and no seams.
"""

from __future__ import annotations

import numpy as np

MIN_SPEED, MAX_SPEED = 0.25, 4.0


def time_stretch(samples: np.ndarray, sample_rate: float, speed: float) -> np.ndarray:
    """Play `samples` at `speed` with pitch kept: the result is `round(len / speed)` samples.

    Rubber Band's high-quality (R3) engine, on a whole buffer (a sentence or a segment). Plugins
    whose own speed control is not proportional use this too (Piper).
    """
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
    audio = np.asarray(samples, np.float32)
    if len(audio) == 0:
        return audio
    import pedalboard  # deferred: only streams that need a stretch pay for the import

    stretched = pedalboard.time_stretch(audio[np.newaxis, :], float(sample_rate), float(speed))
    return np.ascontiguousarray(stretched[0], dtype=np.float32)


class SegmentStretcher:
    """Time-stretch a stream segment by segment, keeping pitch.

    Args:
        speed: playback speed, 0.25-4.0 (2.0 halves the duration).
    """

    def __init__(self, speed: float) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
        self.speed = speed
        self.segment: int | None = None  # the segment being held
        self._held: list[np.ndarray] = []
        self._rate = 0

    def push(self, samples: np.ndarray, sample_rate: int, segment: int) -> np.ndarray:
        """Add audio of `segment`; return the stretched previous segment once it has ended."""
        done = np.zeros(0, np.float32)
        if self.segment is not None and segment != self.segment:
            done = self.flush()
        self.segment, self._rate = segment, sample_rate
        self._held.append(np.asarray(samples, np.float32))
        return done

    def flush(self) -> np.ndarray:
        """Stretch and return the held segment."""
        if not self._held:
            return np.zeros(0, np.float32)
        audio = np.concatenate(self._held)
        self._held = []
        return time_stretch(audio, self._rate, self.speed)
