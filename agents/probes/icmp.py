"""icmp prober (being written)."""

from __future__ import annotations

import msgspec

from agents.probes.base import Failure, ProberSpec, ProbeResult


class IcmpSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


async def probe(target, module, resources) -> ProbeResult:
    return ProbeResult.failed(Failure.INTERNAL_ERROR, "not implemented yet")


SPEC = ProberSpec("icmp", IcmpSettings, probe)
