"""Run one probe of one target: the single entry point shared by the scheduler, /probe and `probe --once`.

It bounds the prober by its module timeout, turns any escape into a failed result, expands
`all_addresses` targets into one probe per resolved IP, and adds the samples every probe has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from agents.catalog import PROBERS
from agents.config.model import ModuleConfig, Target
from agents.probes.resolve import ResolveError, resolve_all
from agents.resources import ProbeResources
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Sample

log = logging.getLogger(__name__)

PROBE_SUCCESS = Metric("probe_success", "Displays whether or not the probe was a success")
PROBE_DURATION = Metric("probe_duration_seconds", "Returns how long the probe took to complete in seconds")
PROBE_FAILURE = Metric(
    "probe_failure_info", "The reason of the last probe's failure as label `reason` (\"none\" after a success)"
)
ADDRESS_SUCCESS = Metric(
    "probe_address_success", "Whether the probe of one resolved address (label ip) succeeded, for all_addresses targets"
)

# A prober bounds each of its own steps by the module timeout; this cap only catches one that does not.
HARD_CAP_GRACE_SECONDS = 1.0


async def run_probe(target: ProbeTarget, module: ModuleConfig, resources: ProbeResources) -> ProbeResult:
    """One probe of one address, never raising, with probe_success/duration/failure samples added."""
    started_wall = time.time()
    started = time.perf_counter()
    try:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that arrives as the
        # probe finishes, which left scheduler tasks running after SIGTERM.
        async with asyncio.timeout(module.timeout + HARD_CAP_GRACE_SECONDS):
            result = await PROBERS[module.prober].probe(target, module, resources)
    except TimeoutError:
        result = ProbeResult.failed(Failure.TIMEOUT, f"probe did not finish within its {module.timeout:g}s timeout")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a prober bug must not kill the scheduler
        log.exception("prober %s crashed on target %s", module.prober, target.name)
        result = ProbeResult.failed(Failure.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    result.duration_seconds = time.perf_counter() - started
    result.started_at = started_wall
    if result.success:
        result.failure = None
    elif result.failure is None:
        result.failure = Failure.INTERNAL_ERROR
    result.samples += _standard_samples(result)
    return result


def _standard_samples(result: ProbeResult) -> list[Sample]:
    return [
        PROBE_SUCCESS(1 if result.success else 0),
        PROBE_DURATION(result.duration_seconds),
        PROBE_FAILURE(1, reason=result.failure.value if result.failure else "none"),
    ]


def prepare_modules(targets: Iterable[Target], resources: ProbeResources) -> None:
    """Every module's one-time start-up (imports, TLS contexts, engines) before its first probe starts, not inside
    a probe's timed phase: all probes share one event loop, so a loopback TCP connect read 182 ms beside the full
    example set (0.6 ms alone) while the others' first imports and CA loads ran. Called at start and after every
    reload (a reload drops the TLS contexts: CA files may have changed). A module that cannot prepare (a missing
    CA file) is left to fail in its probe, with the probe's own reason."""
    modules = {target.module.name: target.module for target in targets}
    for module in modules.values():
        try:
            PROBERS[module.prober].prepare(module, resources)
        except Exception as exc:  # noqa: BLE001 - its probes report the failure with their own reason
            log.debug("module %s: preparing failed, its probes will report it: %s", module.name, exc)


async def run_target(target: Target, resources: ProbeResources) -> ProbeResult:
    probe_target = ProbeTarget(target.name, target.address)
    if not target.all_addresses:
        return await run_probe(probe_target, target.module, resources)
    return await _run_all_addresses(probe_target, target.module, resources)


async def _run_all_addresses(target: ProbeTarget, module: ModuleConfig, resources: ProbeResources) -> ProbeResult:
    started_wall, started = time.time(), time.perf_counter()
    try:
        host = PROBERS[module.prober].host_of(target.address)
        addresses = await resolve_all(host, module.preferred_ip_protocol, module.ip_protocol_fallback, module.timeout)
    except (ResolveError, ValueError) as exc:
        result = ProbeResult.failed(getattr(exc, "failure", Failure.RESOLVE), str(exc))
        result.duration_seconds = time.perf_counter() - started
        result.samples += _standard_samples(result)
        return result
    per_ip = await asyncio.gather(
        *(run_probe(ProbeTarget(target.name, target.address, a.ip), module, resources) for a in addresses)
    )
    samples: list[Sample] = []
    for address, result in zip(addresses, per_ip):
        for sample in result.samples:
            if sample.metric not in (PROBE_SUCCESS, PROBE_DURATION, PROBE_FAILURE):
                samples.append(Sample(sample.metric, sample.value, sample.labels + (("ip", address.ip),), sample.observations))
        samples.append(ADDRESS_SUCCESS(1 if result.success else 0, ip=address.ip))
    failed = [(a.ip, r) for a, r in zip(addresses, per_ip) if not r.success]
    combined = ProbeResult(
        success=not failed,
        failure=failed[0][1].failure if failed else None,
        detail="; ".join(f"{ip}: {r.detail}" for ip, r in failed),
        samples=samples,
        started_at=started_wall,
    )
    combined.duration_seconds = time.perf_counter() - started
    combined.samples += _standard_samples(combined)
    return combined
