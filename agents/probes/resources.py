"""Process-wide resources that probers share: created lazily, closed once at shutdown."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from agents.probes.tlsinfo import TlsContexts

if TYPE_CHECKING:
    from agents.net.icmp_engine import IcmpEngine


class ProbeResources:
    def __init__(self, max_threads: int = 8) -> None:
        self._icmp: IcmpEngine | None = None
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None
        self.tls = TlsContexts()

    @property
    def icmp(self) -> "IcmpEngine":
        if self._icmp is None:
            from agents.net.icmp_engine import IcmpEngine

            self._icmp = IcmpEngine(asyncio.get_running_loop())
        return self._icmp

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Bounded pool for blocking libraries (paramiko, slow psutil calls)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_threads, thread_name_prefix="netmon-blocking")
        return self._executor

    def close(self) -> None:
        if self._icmp is not None:
            self._icmp.close()
            self._icmp = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
