"""SNMP polling of a switch-sized agent: net-snmp's snmpd in a network namespace holding 100 veth pairs
(201 interfaces with lo). The poller runs in a thread inside that namespace (tests.support.snmpd.call_in_netns)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Awaitable, Callable, TypeVar

import pytest

from agents.catalog import parse_config
from agents.config.model import Target
from agents.resources import ProbeResources
from agents.results import ProbeResult
from agents.runner import run_target
from tests.support.require import require_root
from tests.support.snmpd import AGENT_ENV, Snmpd, add_veth_pairs, agent_config, call_in_netns, snmpd_with_interfaces

pytestmark = pytest.mark.netns

IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"
IF_NUMBER = "1.3.6.1.2.1.2.1.0"
POLL_COLUMNS = 9  # if_mib's columns walked on every poll: 8 counters and ifOperStatus
ALL_COLUMNS = 16  # ... plus 3 slow columns, ifType and 3 lookups
T = TypeVar("T")


@pytest.fixture(scope="module")
def switch(tmp_path_factory) -> Snmpd:
    require_root("network namespaces and veth pairs")
    with snmpd_with_interfaces(tmp_path_factory.mktemp("snmpd"), veth_pairs=100) as server:
        yield server


@pytest.fixture(autouse=True)
def secrets(monkeypatch):
    for name, value in AGENT_ENV.items():
        monkeypatch.setenv(name, value)


def target(server: Snmpd) -> Target:
    devices = f"  - {{name: switch, address: {server.host}, port: {server.port}, auth: v2c, profiles: [if_mib]}}\n"
    return parse_config(agent_config(devices)).targets[0]


def in_namespace(server: Snmpd, polls: Callable[[ProbeResources], Awaitable[T]]) -> T:
    async def main() -> T:
        resources = ProbeResources()
        try:
            return await polls(resources)
        finally:
            resources.close()

    return call_in_netns(server.ns, lambda: asyncio.run(main()))  # type: ignore[arg-type]


def if_names(server: Snmpd) -> dict[str, str]:
    lines = server.run_tool("snmpbulkwalk", IF_NAME).splitlines()
    return {line.split(" = ")[0].rsplit(".", 1)[1]: line.split('"')[1] for line in lines}


def names_by_index(result: ProbeResult, metric: str) -> dict[str, str]:
    return {dict(s.labels)["ifIndex"]: dict(s.labels)["ifName"] for s in result.samples if s.metric.name == metric}


def value(result: ProbeResult, metric: str, **labels: str) -> float:
    (found,) = [s.value for s in result.samples if s.metric.name == metric and labels.items() <= dict(s.labels).items()]
    return found


def test_every_interface_is_reported_with_its_ifname(switch):
    (result,) = in_namespace(switch, lambda resources: _polls(target(switch), resources, 1))
    assert result.success, result.detail
    names = if_names(switch)
    assert len(names) >= 201
    for metric in ("ifHCInOctets", "ifHCOutOctets", "ifInErrors", "ifOperStatus", "ifHighSpeed"):
        assert names_by_index(result, metric) == names
    assert value(result, "ifNumber") == len(names)


def test_label_cache_hit_skips_the_label_walk(switch):
    first, second = in_namespace(switch, lambda resources: _polls(target(switch), resources, 2))
    rows = len(if_names(switch))
    assert value(first, "probe_snmp_varbinds_returned") >= ALL_COLUMNS * rows
    assert value(second, "probe_snmp_varbinds_returned") < (POLL_COLUMNS + 1) * rows
    assert value(second, "probe_snmp_pdus_sent") < value(first, "probe_snmp_pdus_sent")
    assert names_by_index(second, "ifHCInOctets") == names_by_index(first, "ifHCInOctets") == if_names(switch)
    assert names_by_index(second, "ifHighSpeed") == if_names(switch)  # slow columns served from the cache


def test_added_interface_is_picked_up_when_ifnumber_changes(switch):
    async def polls(resources: ProbeResources) -> tuple[ProbeResult, ProbeResult, ProbeResult]:
        device = target(switch)
        before, cached = await _polls(device, resources, 2)
        count = int(value(cached, "ifNumber"))
        await asyncio.to_thread(add_veth_pairs, switch.ns, 1000, 1)
        return before, cached, await _poll_until(device, resources, lambda r: value(r, "ifNumber") == count + 2)

    before, cached, after = in_namespace(switch, polls)
    names = if_names(switch)
    assert {"va1000", "vb1000"} <= set(names.values())
    assert names_by_index(after, "ifHCInOctets") == names
    assert value(after, "probe_snmp_varbinds_returned") >= ALL_COLUMNS * len(names)  # labels walked with the data
    assert value(cached, "probe_snmp_varbinds_returned") < (POLL_COLUMNS + 1) * len(names)


def test_operstatus_change_refreshes_the_slow_columns_at_once(switch):
    async def polls(resources: ProbeResources) -> ProbeResult:
        device = target(switch)
        await _polls(device, resources, 1)
        await asyncio.to_thread(subprocess.run, ["ip", "-n", switch.ns, "link", "set", "va7", "down"], check=True)
        return await _poll_until(device, resources, lambda r: value(r, "ifOperStatus", ifName="va7") == 2)

    changed = in_namespace(switch, polls)
    assert value(changed, "ifAdminStatus", ifName="va7") == 2  # a slow column, fresh in the same poll
    assert value(changed, "ifAdminStatus", ifName="vb7") == 1


async def _polls(device: Target, resources: ProbeResources, count: int) -> list[ProbeResult]:
    results = [await run_target(device, resources) for _ in range(count)]
    for result in results:
        assert result.success, result.detail
    return results


async def _poll_until(device: Target, resources: ProbeResources, done: Callable[[ProbeResult], bool]) -> ProbeResult:
    """Poll until done(result): snmpd re-reads the kernel's interfaces only every few seconds."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (result,) = await _polls(device, resources, 1)
        if done(result):
            return result
        await asyncio.sleep(0.5)
    raise AssertionError("the change never showed in a poll")
