"""Process-wide SNMP state (the SNMP_STATE resource): device states and the cap on concurrent polls."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from agents.resources import Resource
from agents.results import Failure
from agents.snmp.device import DeviceState
from agents.snmp.schema import SnmpAuth
from agents.snmp.session import CommunitySession, Session, SnmpError, UsmSession
from agents.snmp.usm import UsmPeer, UsmUser

# a device not polled for this long was removed from the config (or renamed): forget its caches
IDLE_STATE_SECONDS = 6 * 3600


class SnmpResources:
    def __init__(self) -> None:
        self._devices: dict[str, tuple[object, DeviceState]] = {}
        self._slots: tuple[int, asyncio.Semaphore] | None = None

    def device(self, name: str, settings: object, create: Callable[[], DeviceState]) -> DeviceState:
        """The state of device `name`, new when its settings changed (a reload with other profiles)."""
        now = time.monotonic()
        known = self._devices.get(name)
        if known is None or (known[0] is not settings and known[0] != settings):
            self._forget_idle(now)
            known = self._devices[name] = (settings, create())
        known[1].used_at = now
        return known[1]

    def _forget_idle(self, now: float) -> None:
        for name in [name for name, (_, state) in self._devices.items() if now - state.used_at > IDLE_STATE_SECONDS]:
            del self._devices[name]

    @asynccontextmanager
    async def poll_slot(self, limit: int, deadline: float) -> AsyncIterator[None]:
        """One of `limit` concurrent polls, waiting at most until deadline (a reload may change the limit)."""
        if self._slots is None or self._slots[0] != limit:
            self._slots = (limit, asyncio.Semaphore(limit))
        slots = self._slots[1]  # polls started under an older limit release the semaphore they took
        try:
            await asyncio.wait_for(slots.acquire(), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise SnmpError(Failure.TIMEOUT, f"no free poll slot in time (snmp_max_concurrent_polls {limit})") from None
        try:
            yield
        finally:
            slots.release()

    @staticmethod
    async def session(device: DeviceState, auth: SnmpAuth, ip: str, port: int) -> Session:
        """A session for one poll, on its own UDP socket; v3 engine state and keys live in the device's state."""
        if auth.version != 3:
            return await CommunitySession.open(auth, ip, port)
        if device.usm is None:  # hashing the passphrases takes ~20 ms: once per device, off the event loop
            device.usm = UsmPeer(await asyncio.to_thread(UsmUser, auth))
        return await UsmSession.open(device.usm, ip, port)


# Per-device SNMP state (caches, bulk size, v3 engine and keys) and the SNMP poll cap
SNMP_STATE: Resource[SnmpResources] = Resource("snmp", lambda resources: SnmpResources())
