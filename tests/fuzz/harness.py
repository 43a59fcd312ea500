"""What every fuzz target shares: a stream fed with the fuzzer's bytes, a writer that keeps what is written,
one event loop per process, and the contract check.

A target module defines `check(data: bytes) -> None`, which feeds the bytes to one parser the way the network
would and raises AssertionError (or lets an undocumented exception escape) when the parser breaks its contract;
`seeds() -> list[bytes]` (inputs that reach deep into the parser); and `INSTRUMENT` (the packages whose code
coverage guides the fuzzer). tests/fuzz/run.py runs them under atheris; tests/test_fuzz.py replays seeds and
every input that ever found a bug.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_LOOP: asyncio.AbstractEventLoop | None = None


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
    """Run a coroutine on this process's one loop; a parser still waiting after `timeout` s breaks the contract
    (every byte is fed before it starts, so a wait is a hang)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        asyncio.set_event_loop(_LOOP)
    try:
        return _LOOP.run_until_complete(asyncio.wait_for(coroutine, timeout))
    except asyncio.TimeoutError:
        raise AssertionError(f"the parser still waited after {timeout} s with every byte and EOF fed") from None


def fed_reader(data: bytes, limit: int = 1 << 16) -> asyncio.StreamReader:
    """A stream that holds `data` then EOF: what a peer that sent these bytes and closed would give."""
    reader = asyncio.StreamReader(limit=limit, loop=_LOOP)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


class KeptWriter:
    """A StreamWriter stand-in: keeps what is written; its own transport (abort, close)."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.out = bytearray()
        self.transport = self
        self.closed = False
        self._extra = {"peername": peer, "sockname": ("127.0.0.1", 9855)}

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # everything written is taken at once

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16 << 10, 64 << 10)  # asyncio's defaults

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    async def wait_closed(self) -> None:
        return None
