"""A background thread that processes the newest submitted item ("latest wins").

ROS subscription callbacks must return quickly, and a fusion step can take longer than the
frame period. :class:`LatestPairWorker` decouples the two with a single-item slot: a callback
submits a pair and returns at once; the worker thread fuses one pair at a time; a pair still
waiting when a newer one arrives is replaced, so under overload frames are skipped and the
latency stays one fusion step instead of growing without bound.

Offline evaluation must process every pair instead: with ``drop_stale=False``, ``submit``
waits until the slot is free (back-pressure on the bag reader) and nothing is dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LatestPairWorker"]

T = TypeVar("T")

_LOG = logging.getLogger(__name__)

# Marks an empty slot; items themselves may be None.
_EMPTY = object()


class LatestPairWorker(Generic[T]):
    """Run ``process`` on the newest submitted item in one background thread.

    Args:
        process: called in the worker thread with each item that is not replaced first.
        name: the thread's name (shows up in debuggers and ``threading.enumerate()``).
        on_error: called in the worker thread with the item and the exception when
            ``process`` raises an ``Exception``; without it the exception is logged. The thread
            keeps running either way.
        drop_stale: True (live use): a newer item replaces one still waiting, which is
            dropped. False (offline use): ``submit`` blocks until the slot is free, so every
            item is processed.

    Counters (``submitted``, ``processed``, ``dropped``, ``errors``) only grow.
    ``processed`` counts every item ``process`` returned or raised for (``errors`` of them
    raised), so ``submitted == processed + dropped`` whenever the worker is idle.

    All methods are thread-safe. The thread is a daemon, so a ``process`` that hangs cannot
    keep the interpreter alive; call :meth:`stop` on shutdown all the same.

    Example:
        >>> worker = LatestPairWorker(print)
        >>> worker.start()
        >>> worker.submit("pair")  # doctest: +SKIP
        >>> worker.stop()
    """

    def __init__(
        self,
        process: Callable[[T], None],
        name: str = "cldyn-fusion",
        on_error: Callable[[T, BaseException], None] | None = None,
        drop_stale: bool = True,
    ) -> None:
        if not callable(process):
            raise TypeError(f"process must be callable, got {process!r}")
        self._process = process
        self._name = name
        self._on_error = on_error
        self._drop_stale = drop_stale
        # One condition guards the slot, the flags and the counters; every state change
        # notifies all waiters (worker thread, blocked submitters, wait_idle callers).
        self._cond = threading.Condition()
        self._slot: object = _EMPTY
        self._running = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._submitted = 0
        self._processed = 0
        self._dropped = 0
        self._errors = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, drop_stale={self._drop_stale}, "
            f"processed={self.processed}, dropped={self.dropped}, errors={self.errors})"
        )

    @property
    def submitted(self) -> int:
        """Items passed to :meth:`submit`."""
        with self._cond:
            return self._submitted

    @property
    def processed(self) -> int:
        """Items ``process`` finished with (returned or raised)."""
        with self._cond:
            return self._processed

    @property
    def dropped(self) -> int:
        """Items never processed: replaced while waiting, or submitted or waiting at stop."""
        with self._cond:
            return self._dropped

    @property
    def errors(self) -> int:
        """Items for which ``process`` raised."""
        with self._cond:
            return self._errors

    @property
    def busy(self) -> bool:
        """True while an item is being processed or waiting."""
        with self._cond:
            return self._running or self._slot is not _EMPTY

    @property
    def drop_stale(self) -> bool:
        """Whether a newer item replaces a waiting one (False: ``submit`` blocks)."""
        return self._drop_stale

    def start(self) -> None:
        """Start the worker thread.

        Raises:
            RuntimeError: if it was started before (a stopped worker cannot be restarted).
        """
        with self._cond:
            if self._thread is not None or self._stopping:
                raise RuntimeError(f"worker {self._name!r} can only be started once")
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def submit(self, item: T) -> bool:
        """Hand ``item`` to the worker.

        With ``drop_stale=True`` this never blocks: an item still waiting is replaced and
        counted as dropped. With ``drop_stale=False`` it waits until the waiting item was
        taken (start the worker first, or this can wait forever).

        Returns:
            True if ``item`` took a free slot; False if it replaced a waiting item, or if the
            worker is stopped (then ``item`` itself is dropped).

        Raises:
            RuntimeError: on a blocking submit from inside ``process`` (it would deadlock).
        """
        with self._cond:
            self._submitted += 1
            if not self._drop_stale:
                if threading.current_thread() is self._thread:
                    raise RuntimeError("blocking submit() from the worker thread would deadlock")
                self._cond.wait_for(lambda: self._slot is _EMPTY or self._stopping)
            if self._stopping:
                self._dropped += 1
                return False
            replaced = self._slot is not _EMPTY
            if replaced:
                self._dropped += 1
            self._slot = item
            self._cond.notify_all()
            return not replaced

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the item in progress, drop the waiting one and join the thread.

        Idempotent. If ``process`` does not return within ``timeout`` seconds a warning is
        logged and the (daemon) thread is left behind.
        """
        with self._cond:
            self._stopping = True
            if self._slot is not _EMPTY:
                self._slot = _EMPTY
                self._dropped += 1
            self._cond.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return  # never started, or stop() called from inside process: nothing to join
        thread.join(timeout)
        if thread.is_alive():
            _LOG.warning("worker %r did not stop within %.1f s", self._name, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is waiting or running; True if so within ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._running and self._slot is _EMPTY, timeout=timeout
            )

    def _run(self) -> None:
        """The worker thread: take the slot's item, process it, repeat until stopped."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._slot is not _EMPTY or self._stopping)
                if self._stopping:
                    return
                item = self._slot
                self._slot = _EMPTY
                self._running = True
                self._cond.notify_all()  # a blocked submit may fill the slot now
            failed = False
            try:
                self._process(item)  # type: ignore[arg-type]  # never _EMPTY here
            except Exception as exc:  # the thread must survive any error of one item
                failed = True
                self._report_error(item, exc)  # type: ignore[arg-type]
            finally:
                # Both counters change together, so a reader never sees errors > processed.
                with self._cond:
                    self._running = False
                    self._processed += 1
                    self._errors += int(failed)
                    self._cond.notify_all()

    def _report_error(self, item: T, exc: Exception) -> None:
        if self._on_error is None:
            _LOG.error("worker %r: processing failed", self._name, exc_info=exc)
            return
        try:
            self._on_error(item, exc)
        except Exception:  # a failing error handler must not kill the thread either
            _LOG.exception("worker %r: on_error handler failed", self._name)
