"""Process-wide resources that probers share: created lazily, closed once at shutdown."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from agents.probes.tlsinfo import TlsContexts

if TYPE_CHECKING:
    from agents.net.icmp_engine import IcmpEngine
    from agents.probes.mail_roundtrip import RoundtripStates
    from agents.ssh.pool import SshPool
    from agents.snmp.engine import SnmpResources


class ProbeResources:
    def __init__(self, max_threads: int = 8) -> None:
        self._icmp: IcmpEngine | None = None
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None
        self.tls = TlsContexts()
        self._mail_roundtrips: RoundtripStates | None = None
        self._ssh: SshPool | None = None
        self._snmp: SnmpResources | None = None

    @property
    def icmp(self) -> "IcmpEngine":
        if self._icmp is None:
            from agents.net.icmp_engine import IcmpEngine

            self._icmp = IcmpEngine(asyncio.get_running_loop())
        return self._icmp

    @property
    def mail_roundtrips(self) -> "RoundtripStates":
        """Messages mail_roundtrip sent and still waits for, per target: they outlive one probe run."""
        if self._mail_roundtrips is None:
            from agents.probes.mail_roundtrip import RoundtripStates

            self._mail_roundtrips = RoundtripStates()
        return self._mail_roundtrips

    @property
    def ssh(self) -> "SshPool":
        """One SSH connection per host, reused across checks; its blocking steps run in `executor`."""
        if self._ssh is None:
            from agents.ssh.pool import SshPool

            self._ssh = SshPool(self.executor)
        return self._ssh

    @property
    def snmp(self) -> "SnmpResources":
        """Per-device SNMP state (caches, bulk size, v3 engine and keys) and the SNMP poll cap."""
        if self._snmp is None:
            from agents.snmp.engine import SnmpResources

            self._snmp = SnmpResources()
        return self._snmp

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
        if self._ssh is not None:  # before the executor: closing wakes threads blocked on a connection
            self._ssh.close()
            self._ssh = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
