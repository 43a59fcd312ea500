"""Bounded waits for system calls that can hang in the kernel (statfs on a dead NFS or FUSE mount).

Such a call blocks uninterruptibly; nothing can cancel it. So the calls run in a daemon thread
(which never holds up the agent's exit) and the caller waits a bounded time. The key whose call
did not return is "stuck" and skipped until that call comes back, as node_exporter does with its
stuck mounts. The agent's event loop therefore waits at most `timeout` once per newly hung mount.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class _Batch(Generic[K, V]):
    """One pass over the keys in one thread; abandoned by the waiter when it runs out of time."""

    def __init__(
        self, call: Callable[[K], V], keys: Sequence[K], on_stuck: Callable[[K], None], on_late_return: Callable[[K], None]
    ) -> None:
        self._call = call
        self._keys = keys
        self._on_stuck = on_stuck
        self._on_late_return = on_late_return
        self._lock = threading.Lock()  # orders "marked stuck" before "returned late" for the same call
        self._results: dict[K, V | OSError] = {}
        self._in_flight: K | None = None
        self._abandoned = False
        self.finished = threading.Event()

    def run(self) -> None:
        for key in self._keys:
            with self._lock:
                if self._abandoned:
                    return
                self._in_flight = key
            try:
                value: V | OSError = self._call(key)
            except (OSError, ValueError) as exc:  # ValueError: a path the OS cannot take (NUL byte)
                value = OSError(str(exc))
            with self._lock:
                self._in_flight = None
                if self._abandoned:  # abandoned during this very call, which was marked stuck
                    self._on_late_return(key)
                    return
                self._results[key] = value
        self.finished.set()

    def abandon(self) -> K | None:
        """Stop after the current call; mark the call still in flight stuck and return its key."""
        with self._lock:
            if self.finished.is_set():
                return None
            self._abandoned = True
            if self._in_flight is not None:
                self._on_stuck(self._in_flight)
            return self._in_flight

    def results(self) -> dict[K, V | OSError]:
        with self._lock:
            return dict(self._results)


class StallGuard(Generic[K, V]):
    """Runs `call(key)` for each key off-thread, waiting at most `timeout` seconds for all of them."""

    def __init__(self, call: Callable[[K], V], timeout: float, what: str = "call") -> None:
        self._call = call
        self._timeout = timeout
        self._what = what
        self._lock = threading.Lock()
        self._stuck: set[K] = set()
        self._worker: queue.SimpleQueue[_Batch[K, V] | None] | None = None  # inbox of the current worker thread

    def run(self, keys: Sequence[K]) -> tuple[dict[K, V | OSError], set[K]]:
        """Each answered key's value (or OSError), and the keys that are stuck now.

        Keys after a newly stuck one get no answer in this pass; the next pass skips the stuck key.
        """
        with self._lock:
            stuck = {key for key in keys if key in self._stuck}
            inbox = self._inbox()
        batch = _Batch(self._call, [key for key in keys if key not in stuck], self._mark_stuck, self._release)
        inbox.put(batch)
        if not batch.finished.wait(self._timeout):
            self._retire(inbox)
            key = batch.abandon()
            if key is not None:
                stuck.add(key)
        return batch.results(), stuck

    def _inbox(self) -> "queue.SimpleQueue[_Batch[K, V] | None]":
        """The worker's inbox; one worker serves pass after pass (starting a thread costs more than a pass)."""
        if self._worker is None:
            inbox: queue.SimpleQueue[_Batch[K, V] | None] = queue.SimpleQueue()
            threading.Thread(target=_work, args=(inbox,), name="netmon-host-stall-guard", daemon=True).start()
            weakref.finalize(self, inbox.put, None)  # a guard replaced by a config reload ends its idle worker
            self._worker = inbox
        return self._worker

    def _retire(self, inbox: "queue.SimpleQueue[_Batch[K, V] | None]") -> None:
        """Leave a blocked worker behind: it exits once its call returns; the next pass starts a new one."""
        inbox.put(None)
        with self._lock:
            if self._worker is inbox:
                self._worker = None

    def _mark_stuck(self, key: K) -> None:
        log.warning("%s %r did not return within %gs; skipping it until it does", self._what, key, self._timeout)
        with self._lock:
            self._stuck.add(key)

    def _release(self, key: K) -> None:
        log.warning("%s %r returned after being stuck; collecting it again", self._what, key)
        with self._lock:
            self._stuck.discard(key)


def _work(inbox: "queue.SimpleQueue[_Batch | None]") -> None:
    while True:
        batch = inbox.get()
        if batch is None:
            return
        batch.run()
        del batch  # it refers to the guard; holding it while idle would keep the guard (and this thread) alive
