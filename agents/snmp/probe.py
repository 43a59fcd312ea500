"""SNMP prober: poll one device's profiles (interfaces, system, custom OIDs) into snmp_exporter-shaped series.

Devices come from the config's `snmp_devices` (this domain's section: agents/snmp/targets.py turns each into
a target of this prober with its own settings). A failed poll serves the device's last good data for `keep_last_good`, marked by
probe_snmp_data_age_seconds, next to probe_success 0 and the bounded failure reason.
"""

from __future__ import annotations

import time

from agents.config.model import ModuleConfig
from agents.probes.base import ProberSpec
from agents.probes.resolve import ResolveError, resolve, split_host_port
from agents.resources import ProbeResources
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Sample
from agents.snmp.device import DeviceState, LastGood
from agents.snmp.engine import SNMP_STATE
from agents.snmp.failures import SnmpFailure
from agents.snmp.labels import label_text
from agents.snmp.plan import compile_profiles
from agents.snmp.poller import SYS_NAME, Cadence, PollData, poll
from agents.snmp.privacy import load_ciphers
from agents.snmp.samples import data_samples
from agents.snmp.schema import SnmpSettings
from agents.snmp.session import SnmpError
from agents.snmp.targets import SECTION
from agents.snmp.walker import PollStats, Walker

DEFAULT_PORT = 161

PDUS_SENT = Metric("probe_snmp_pdus_sent", "SNMP request PDUs sent in the last poll, retries included")
RETRIES = Metric("probe_snmp_pdu_retries", "SNMP request PDUs of the last poll sent again after a timeout or tooBig")
VARBINDS = Metric("probe_snmp_varbinds_returned", "Varbinds the device returned in the last poll")
MAX_REPETITIONS = Metric("probe_snmp_max_repetitions", "The device's adaptive GETBULK max-repetitions after the last poll")
DATA_AGE = Metric(
    "probe_snmp_data_age_seconds", "Age of the device data served: 0 after a good poll, else since the last good one"
)
UPTIME = Metric("probe_snmp_device_uptime_seconds", "Device uptime from sysUpTime, counting the 497-day wraps seen")
REBOOTS = Metric("probe_snmp_device_reboots_total", "Reboots seen as sysUpTime going backwards", "counter")


async def probe(target: ProbeTarget, module: ModuleConfig[SnmpSettings], resources: ProbeResources) -> ProbeResult:
    settings = module.settings
    deadline = time.monotonic() + module.timeout
    device = resources.get(SNMP_STATE).device(
        target.name, settings, lambda: DeviceState.create(compile_profiles(settings.profiles), settings.max_repetitions)
    )
    try:
        host, port = split_host_port(target.address, DEFAULT_PORT)
        resolved = await resolve(target.ip or host, module.preferred_ip_protocol, module.ip_protocol_fallback, module.timeout)
    except ValueError as exc:
        return ProbeResult.failed(Failure.RESOLVE, str(exc))
    except ResolveError as exc:
        return ProbeResult.failed(exc.failure, exc.detail)
    stats = PollStats()
    try:
        data = await _poll(resources, device, settings, resolved.ip, port, stats, deadline)
    except SnmpError as exc:
        return _failed(device, settings, exc, stats)
    finally:
        device.bulk.end_poll()
    samples = data_samples(device.plan, data)
    device.last_good = LastGood(samples, time.monotonic())
    status = _status_samples(device, stats, age=0.0) + [REBOOTS(1 if data.rebooted else 0)]
    if device.uptime.seconds is not None:
        status.append(UPTIME(device.uptime.seconds))
    return ProbeResult(success=True, detail=_summary(data, stats), samples=samples + status)


async def _poll(resources: ProbeResources, device: DeviceState, settings: SnmpSettings, ip: str, port: int,
                stats: PollStats, deadline: float) -> PollData:
    assert settings.auth is not None  # the loader always sets it
    state = resources.get(SNMP_STATE)
    async with state.poll_slot(settings.max_concurrent_polls, deadline):
        session = await state.session(device, settings.auth, ip, port)
        try:
            walker = Walker(session, stats, device.bulk, settings.request_timeout, settings.retries, deadline)
            return await poll(walker, device, Cadence(settings.label_refresh, settings.slow_refresh), time.monotonic())
        finally:
            session.close()


def _status_samples(device: DeviceState, stats: PollStats, age: float | None) -> list[Sample]:
    samples = [PDUS_SENT(stats.pdus_sent), RETRIES(stats.retries), VARBINDS(stats.varbinds),
               MAX_REPETITIONS(device.bulk.current)]
    if age is not None:
        samples.append(DATA_AGE(age))
    return samples


def _failed(device: DeviceState, settings: SnmpSettings, error: SnmpError, stats: PollStats) -> ProbeResult:
    last = device.last_good
    age = time.monotonic() - last.at if last is not None else 0.0
    if last is None or age > settings.keep_last_good:
        return ProbeResult.failed(error.failure, error.detail, _status_samples(device, stats, None))
    detail = f"{error.detail}; serving the data of the last good poll, {age:.0f}s old"
    return ProbeResult.failed(error.failure, detail, last.samples + _status_samples(device, stats, age))


def _summary(data: PollData, stats: PollStats) -> str:
    """For `probe --once` and logs: who answered, how big its tables are, what the poll cost."""
    name = data.scalars.get(SYS_NAME)
    parts = [f"sysName {label_text(name)!r}" if name is not None else "no sysName"]
    parts += [f"{table.plan.name}: {len(table.rows)} rows" for table in data.tables]
    parts.append(f"{stats.varbinds} varbinds in {stats.pdus_sent} PDUs")
    return ", ".join(parts)


def prepare(module: ModuleConfig[SnmpSettings], resources: ProbeResources) -> None:
    auth = module.settings.auth
    if auth is not None and auth.version == 3 and auth.security_level == "authPriv":
        load_ciphers()


SPEC = ProberSpec(
    "snmp", SnmpSettings, probe, host_of=lambda address: split_host_port(address, DEFAULT_PORT)[0], failures=SnmpFailure,
    section=SECTION, prepare=prepare,
)
