"""One child process for CPU-heavy pure functions over large inputs (the trees of MiB response bodies).

A thread is not enough for those: the event loop's thread waits for Python's lock while a long C call holds it,
and the full garbage collection that the tens of thousands of objects of such work trigger runs in the thread that
allocates, holding the lock for as long as the whole heap takes to scan (~100 ms in a large process). A child
has its own lock and its own heap. It is `python -m agents.worker`, fed length-prefixed pickles of
(function, arguments) on its stdin and answering (ok, value) on its stdout: no fork of a threaded process and no
re-import of the parent's main module (multiprocessing's `spawn` does that, and fails when main is not a file).

Started on first use (an agent without large bodies never has one); a call that finds it dead starts another.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import struct
import sys
from typing import Any, BinaryIO, Callable, TypeVar

from agents.resources import Resource

T = TypeVar("T")
_FRAME = struct.Struct("!I")  # the length of the pickle that follows


class WorkerDied(Exception):
    """The worker process ended before it answered (killed, out of memory, or the function ended it)."""


class WorkerProcess:
    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._served = False  # the running process has answered a call before
        self._lock = asyncio.Lock()  # one call at a time: a reply answers the request before it

    @property
    def pid(self) -> int | None:
        """The running worker's process id; None before the first call and after it ended."""
        running = self._process is not None and self._process.returncode is None
        return self._process.pid if running else None  # type: ignore[union-attr]

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """function(*args) in the worker; its exception is raised here. WorkerDied if the worker ended first."""
        request = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        async with self._lock:
            try:
                reply = await self._exchange(request)
            except WorkerDied:
                if not self._served:
                    raise
                reply = await self._exchange(request)  # it died while idle (or of this call: then it dies again)
        ok, value = pickle.loads(reply)
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    async def _exchange(self, request: bytes) -> bytes:
        process = await self._running()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(_FRAME.pack(len(request)))
            process.stdin.write(request)
            await process.stdin.drain()
            (size,) = _FRAME.unpack(await process.stdout.readexactly(_FRAME.size))
            reply = await process.stdout.readexactly(size)
        except (ConnectionError, asyncio.IncompleteReadError):
            self._end()
            raise WorkerDied("the worker process ended before it answered") from None
        except BaseException:  # cancelled while it works: its late reply would answer the next call
            self._end()
            raise
        self._served = True
        return reply

    async def _running(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agents.worker", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
            self._served = False
        return self._process

    def _end(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            try:
                os.kill(process.pid, signal.SIGKILL)  # what it works on belongs to a run that is over
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """End the worker: it reads the end of its input, finishes what it is doing, and exits."""
        process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            process.stdin.close()


WORKER_PROCESS: Resource[WorkerProcess] = Resource("worker_process", lambda resources: WorkerProcess(), close=WorkerProcess.close)


# --- the child ------------------------------------------------------------------------------------------------------


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until the parent closes the pipe."""
    while True:
        head = requests.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        (size,) = _FRAME.unpack(head)
        function, args = pickle.loads(requests.read(size))
        try:
            reply = pickle.dumps((True, function(*args)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # the caller gets it, as if it had called the function itself
            reply = _pickled_error(exc)
        replies.write(_FRAME.pack(len(reply)))
        replies.write(reply)
        replies.flush()


def _pickled_error(exc: Exception) -> bytes:
    try:
        return pickle.dumps((False, exc), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")), protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print cannot break a reply
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the agent, which then closes the pipe
    serve(requests, replies)
