"""Engine steps: one blocking call per worker-thread call, behind the engine's limiter.

Every sync engine iterator (`Engine.synthesize`, `EngineTurn.push_text`/`end_text`) is advanced
one `next()` at a time in a worker thread that holds one token of the engine's
`CapacityLimiter`, so the event loop never stalls and two requests never share the model's
mutable state at once.

Timing rules:
- Waiting for the limiter (another stream's step runs) is queueing, not a stall: the stall
  timeout starts once the step holds the limiter.
- A step cancelled from outside (client gone, barge-in) is asked to stop at once when its
  iterator offers `cancel()` (`CancellableSteps`); the caller then waits for the thread to
  return (bounded by the stall timeout), so the engine is left between steps, never mid-call,
  and the limiter is free for the next request.
- A step past the stall timeout is abandoned: the caller goes on, and the thread releases the
  limiter itself when it returns (its result is dropped), so a model is never freed under a
  running step (unload waits for it).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import numpy as np
from morpheus_tts.host.contracts import EngineRequestError, SynthesisRequest
from morpheus_tts.host.errors import MorpheusError
from morpheus_tts.host.registry import LoadedEngine

_DONE = object()
FINISH_POLL_S = 0.002  # how often a cancelled step is checked for having returned


class EngineStalledError(MorpheusError, TimeoutError):
    """An engine step gave no output within the stall timeout."""


def request_error(exc: Exception) -> Exception:
    """A ValueError raised by the engine's entry call itself is the request's fault."""
    if isinstance(exc, ValueError) and not isinstance(exc, EngineRequestError):
        error = EngineRequestError(str(exc))
        error.__cause__ = exc
        return error
    return exc


async def engine_steps(
    loaded: LoadedEngine,
    request: SynthesisRequest,
    stall_timeout_s: float | None,
    queue_timeout_s: float | None = None,
) -> AsyncIterator[np.ndarray]:
    """Iterate an engine's output for one segment (sync iterators one step per thread call).

    `queue_timeout_s` bounds the wait for the limiter (a retry behind its own stalled step);
    None waits as long as other streams hold it.

    Raises:
        EngineRequestError: `synthesize()` rejected the request (never worth a retry).
        EngineStalledError: a step gave nothing in time.
    """
    try:
        output = loaded.engine.synthesize(request)
    except ValueError as exc:
        raise request_error(exc) from exc
    if isinstance(output, AsyncIterator):
        while True:
            with stall_guard(loaded, stall_timeout_s):
                item = await anext(output, _DONE)
            if item is _DONE:
                return
            yield item
    async for item in thread_steps(loaded, iter(output), stall_timeout_s, queue_timeout_s):
        yield item


async def thread_steps(
    loaded: LoadedEngine,
    iterator: Iterator[np.ndarray],
    stall_timeout_s: float | None,
    queue_timeout_s: float | None = None,
) -> AsyncIterator[np.ndarray]:
    """Advance a sync iterator one `next()` per worker-thread call, each under the limiter."""
    abandoned = False
    cancel = getattr(iterator, "cancel", None)
    try:
        while True:
            step = ThreadStep(loaded, functools.partial(next, iterator, _DONE))
            item = await step.run(stall_timeout_s, cancel=cancel, queue_timeout_s=queue_timeout_s)
            if step.abandoned:
                abandoned = True
                raise EngineStalledError(
                    f"engine {loaded.name!r} gave no output in {stall_timeout_s:g} s"
                )
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None and not abandoned:  # a generator still running can't be closed
            close()


async def run_locked(
    loaded: LoadedEngine, fn: Callable[[], Any], *, wait_s: float | None = None
) -> bool:
    """Run `fn` in a worker thread holding a limiter token, so no step of this stream runs
    meanwhile; returns False if the limiter stayed busy for `wait_s` (fn did not run).

    Shielded: cleanup calls (`interrupt`, `close`, `end_session`) finish even when the caller
    is being cancelled.
    """
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(float("inf") if wait_s is None else wait_s):
            await loaded.limiter.acquire()
            try:
                await anyio.to_thread.run_sync(fn)
            finally:
                loaded.limiter.release()
            return True
        return False


@contextmanager
def stall_guard(loaded: LoadedEngine, timeout_s: float | None) -> Iterator[None]:
    """`anyio.fail_after` that raises EngineStalledError naming the engine."""
    try:
        with anyio.fail_after(timeout_s):
            yield
    except TimeoutError:
        raise EngineStalledError(
            f"engine {loaded.name!r} gave no output in {timeout_s:g} s"
        ) from None


class ThreadStep:
    """One blocking step in a worker thread that holds a token of the engine's limiter.

    If the stall timeout passes first the step is abandoned: the caller goes on, and the
    thread releases the limiter itself when it returns (its result is dropped).
    """

    def __init__(self, loaded: LoadedEngine, fn: Callable[[], Any]) -> None:
        self._loaded, self._fn = loaded, fn
        self._lock = threading.Lock()
        self._started = False
        self._finished = False
        self.abandoned = False

    def _in_thread(self) -> Any:
        with self._lock:
            if self._finished:  # given up before it began: never run it
                return None
            self._started = True
        try:
            return self._fn()
        finally:
            with self._lock:
                self._finished = True
                release_here = self.abandoned
            if release_here:
                try:
                    anyio.from_thread.run_sync(self._loaded.limiter.release_on_behalf_of, self)
                except RuntimeError:
                    pass  # the event loop is gone, and the limiter with it

    async def run(
        self,
        timeout_s: float | None,
        *,
        cancel: Callable[[], None] | None = None,
        queue_timeout_s: float | None = None,
    ) -> Any:
        """The step's result; re-raises a cancel from outside once the step has returned.

        Raises:
            EngineStalledError: the limiter stayed busy for `queue_timeout_s`.
        """
        limiter = self._loaded.limiter
        with stall_guard(self._loaded, queue_timeout_s):
            await limiter.acquire_on_behalf_of(self)  # queueing, not part of the stall timeout
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        result: Any = None
        cancelled: BaseException | None = None
        error: Exception | None = None
        try:
            with anyio.move_on_after(_remaining(deadline)):
                result = await anyio.to_thread.run_sync(self._in_thread, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class() as exc:
            cancelled = exc  # the thread still runs: stop it if it can, then wait for it
        except Exception as exc:  # noqa: BLE001 - the step's own failure, re-raised below
            error = exc
        with self._lock:
            if not self._started:
                # anyio drops a cancelled call that no worker picked up yet: it never runs.
                self._finished = True
        if not self._finished and cancel is not None:
            cancel()
        if cancelled is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_remaining(deadline)):
                while not self._finished:  # noqa: ASYNC110 - a thread, not an event, finishes
                    await anyio.sleep(FINISH_POLL_S)
        with self._lock:
            if self._finished:
                limiter.release_on_behalf_of(self)
            else:
                self.abandoned = True
        if cancelled is not None:
            raise cancelled
        if error is not None:
            raise error
        await anyio.lowlevel.checkpoint()
        return result


def _remaining(deadline: float | None) -> float:
    return float("inf") if deadline is None else max(0.0, deadline - time.monotonic())
