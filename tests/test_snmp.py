"""SNMP polling against a real net-snmp snmpd on loopback: v2c, v3 authPriv, v1, error classes, reboots,
the last good data, custom profiles, the loader's checks, and the agent as a user runs it."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.config.model import Target
from agents.resources import ProbeResources
from agents.results import ProbeResult
from agents.runner import run_target
from agents.snmp import ber
from agents.snmp.device import Uptime
from agents.snmp.failures import SnmpFailure as Failure
from agents.store import ResultStore
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.snmpd import (
    AGENT_ENV,
    V3_AUTH_ONLY_USER,
    V3_NO_AUTH_USER,
    V3_PROTOCOL_USERS,
    Snmpd,
    agent_config,
    running_snmpd,
)
from tests.test_agent_run import http_get, metric_value

ROOT = Path(__file__).resolve().parent.parent
IF_HC_IN_OCTETS = "1.3.6.1.2.1.31.1.1.1.6"
IF_HIGH_SPEED = "1.3.6.1.2.1.31.1.1.1.15"
IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"
IF_DESCR = "1.3.6.1.2.1.2.2.1.2"
IF_IN_OCTETS = "1.3.6.1.2.1.2.2.1.10"
IF_SPEED = "1.3.6.1.2.1.2.2.1.5"
HC_COLUMNS = {"ifHCInOctets", "ifHCOutOctets", "ifHCInUcastPkts", "ifHCOutUcastPkts"}
FALLBACKS = {"ifInOctets", "ifOutOctets", "ifInUcastPkts", "ifOutUcastPkts"}  # and ifSpeed for ifHighSpeed
FAST = "timeout: 3s, request_timeout: 300ms, retries: 1"


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory) -> Snmpd:
    with running_snmpd(tmp_path_factory.mktemp("snmpd")) as server:
        yield server


@pytest.fixture(autouse=True)
def secrets(monkeypatch):
    for name, value in AGENT_ENV.items():
        monkeypatch.setenv(name, value)


def device(server: Snmpd, name: str = "sw", auth: str = "v2c", options: str = "", profiles: str = "[if_mib, system]") -> str:
    extra = f", {options}" if options else ""
    return f"  - {{name: {name}, address: {server.host}, port: {server.port}, auth: {auth}, profiles: {profiles}{extra}}}\n"


def targets(devices: str, extra: str = "") -> dict[str, Target]:
    return {target.name: target for target in parse_config(agent_config(devices, extra)).targets}


async def poll(target: Target, times: int = 1, resources: ProbeResources | None = None) -> list[ProbeResult]:
    own = resources is None
    resources = resources or ProbeResources()
    try:
        return [await run_target(target, resources) for _ in range(times)]
    finally:
        if own:
            resources.close()


def series(result: ProbeResult, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {sample.labels: sample.value for sample in result.samples if sample.metric.name == name}


def metric_names(result: ProbeResult) -> set[str]:
    return {sample.metric.name for sample in result.samples}


def by_label(result: ProbeResult, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in series(result, name).items()}


def gauge(result: ProbeResult, name: str) -> float:
    (value,) = series(result, name).values()
    return value


def walk(server: Snmpd, oid: str) -> dict[str, str]:
    """snmpbulkwalk -On: index -> value text, for one column."""
    out = {}
    for line in server.run_tool("snmpbulkwalk", oid).splitlines():
        name, _, value = line.partition(" = ")
        out[name.removeprefix(f".{oid}.")] = value.split(": ", 1)[1].strip('"') if ": " in value else ""
    return out


def assert_read_between(result: ProbeResult, name: str, before: dict[str, str], after: dict[str, str]) -> None:
    """Each interface's counter as polled lies between walks taken before and after the poll (loopback counters
    move with our own SNMP traffic)."""
    ours = by_label(result, name, "ifIndex")
    assert ours.keys() == before.keys() == after.keys()
    for index, value in ours.items():
        assert int(before[index]) <= value <= int(after[index])


def walked_numbers(server: Snmpd, oid: str) -> dict[str, float]:
    return {index: float(value) for index, value in walk(server, oid).items()}


def server_value(server: Snmpd, oid: str) -> float:
    return float(server.run_tool("snmpget", "-Oqv", oid).split()[0])


# --- polling ---------------------------------------------------------------------------------------------------


async def test_v2c_poll_emits_snmp_exporter_names_and_labels(snmpd):
    (result,) = await poll(targets(device(snmpd))["sw"])
    assert result.success, result.detail
    names = walk(snmpd, IF_NAME)
    in_octets = series(result, "ifHCInOctets")
    assert {dict(labels)["ifIndex"] for labels in in_octets} == set(names)
    for labels in in_octets:
        assert [name for name, _ in labels] == ["ifAlias", "ifDescr", "ifIndex", "ifName"]
    assert by_label(result, "ifType_info", "ifName") == {name: 1.0 for name in names.values()}
    lo = next(dict(labels) for labels in series(result, "ifType_info") if dict(labels)["ifName"] == "lo")
    assert lo["ifType"] == "softwareLoopback"
    assert by_label(result, "sysName", "sysName") == {socket.gethostname(): 1.0}
    assert gauge(result, "ifNumber") == len(names)
    assert f"interfaces: {len(names)} rows" in result.detail


async def test_values_equal_snmpbulkwalk(snmpd):
    before = walk(snmpd, IF_HC_IN_OCTETS)
    (result,) = await poll(targets(device(snmpd))["sw"])
    assert_read_between(result, "ifHCInOctets", before, walk(snmpd, IF_HC_IN_OCTETS))
    assert by_label(result, "ifHighSpeed", "ifIndex") == walked_numbers(snmpd, IF_HIGH_SPEED)
    descriptions = walk(snmpd, IF_DESCR)
    assert {dict(labels)["ifIndex"]: dict(labels)["ifDescr"] for labels in series(result, "ifHCInOctets")} == descriptions


async def test_v3_authpriv_sha_aes_reads_what_v2c_reads(snmpd):
    found = targets(device(snmpd, "v2", "v2c") + device(snmpd, "v3", "v3"))
    (v2,), (v3,) = await poll(found["v2"]), await poll(found["v3"])
    assert v3.success, v3.detail
    assert by_label(v3, "ifHighSpeed", "ifName") == by_label(v2, "ifHighSpeed", "ifName")
    assert series(v3, "sysDescr") == series(v2, "sysDescr")


@pytest.mark.parametrize("user", sorted(V3_PROTOCOL_USERS))
async def test_v3_protocols_match_net_snmp(snmpd, user):
    auth, priv = V3_PROTOCOL_USERS[user]
    config = agent_config(device(snmpd, auth="v3", profiles="[system]")).replace(
        "username: testuser, auth_protocol: SHA", f"username: {user}, auth_protocol: {auth}"
    ).replace("priv_protocol: AES,", f"priv_protocol: {priv},")
    (result,) = await poll(parse_config(config).target("sw"))
    assert result.success, result.detail
    assert by_label(result, "sysName", "sysName") == {socket.gethostname(): 1.0}


@pytest.mark.parametrize("user, level", [(V3_AUTH_ONLY_USER, "authNoPriv"), (V3_NO_AUTH_USER, "noAuthNoPriv")])
async def test_v3_lower_security_levels(snmpd, user, level):
    config = agent_config(device(snmpd, auth="v3", profiles="[system]")).replace(
        "username: testuser,", f"username: {user}, security_level: {level},"
    )
    (result,) = await poll(parse_config(config).target("sw"))
    assert result.success, result.detail
    assert by_label(result, "sysName", "sysName") == {socket.gethostname(): 1.0}


async def test_v1_walks_the_table_with_getnext(snmpd):
    (old,) = await poll(targets(device(snmpd, "old", "v1", profiles="[if_mib]"))["old"])
    assert old.success, old.detail
    names = walk(snmpd, IF_NAME)
    assert set(by_label(old, "ifOperStatus", "ifName")) == set(names.values())
    assert "ifHCInOctets" not in {sample.metric.name for sample in old.samples}  # v1 has no Counter64
    assert gauge(old, "probe_snmp_pdus_sent") >= len(names)  # one row per GETNEXT


@pytest.mark.parametrize(
    "spelling, auth, version",
    [("1", "v1", 1), ('"1"', "v1", 1), ("2", "v2c", "2c"), ('"2"', "v2c", "2c"), ("2c", "v2c", "2c"),
     ('"2c"', "v2c", "2c"), ("3", "v3", 3), ('"3"', "v3", 3)],
)
async def test_every_spelling_of_the_version_is_accepted_and_polls(snmpd, spelling, auth, version):
    """YAML users quote numbers; snmp_exporter's configs write v2c as `2`."""
    written = {"v1": "version: 1,", "v2c": "version: 2c,", "v3": "version: 3,"}[auth]
    config = agent_config(device(snmpd, auth=auth, profiles="[system]")).replace(written, f"version: {spelling},")
    target = parse_config(config).target("sw")
    assert target.module.settings.auth.version == version
    (result,) = await poll(target)
    assert result.success, result.detail
    assert by_label(result, "sysName", "sysName") == {socket.gethostname(): 1.0}


def test_an_unknown_version_is_refused_with_its_key():
    with pytest.raises(ConfigError, match=r"snmp_auths\.v2c\.version: .*'2d'"):
        parse_config(agent_config("").replace("version: 2c,", 'version: "2d",'))


async def test_a_device_with_64_bit_counters_is_not_asked_for_the_32_bit_ones(snmpd):
    (result,) = await poll(targets(device(snmpd))["sw"])
    assert result.success, result.detail
    assert HC_COLUMNS | {"ifHighSpeed"} <= metric_names(result)
    assert not metric_names(result) & (FALLBACKS | {"ifSpeed"})


async def test_a_device_without_ifxtable_reports_32_bit_counters_and_ifspeed_with_the_same_labels(snmpd):
    target = targets(device(snmpd, "old", "no_ifx"))["old"]
    before = walk(snmpd, IF_IN_OCTETS)
    resources = ProbeResources()
    try:
        first, second = await poll(target, 2, resources)
    finally:
        resources.close()
    after = walk(snmpd, IF_IN_OCTETS)
    for result in (first, second):
        assert result.success, result.detail
        assert FALLBACKS | {"ifSpeed"} <= metric_names(result)
        assert not metric_names(result) & (HC_COLUMNS | {"ifHighSpeed"})
    assert_read_between(second, "ifInOctets", before, after)
    assert by_label(second, "ifSpeed", "ifIndex") == walked_numbers(snmpd, IF_SPEED)
    descriptions = walk(snmpd, IF_DESCR)
    for labels in series(second, "ifOutOctets"):
        label = dict(labels)
        assert list(label) == ["ifAlias", "ifDescr", "ifIndex", "ifName"]
        assert (label["ifDescr"], label["ifName"], label["ifAlias"]) == (descriptions[label["ifIndex"]], "", "")
    # the first poll found the lack and walked the fallbacks once more; the second walks them with the others
    assert gauge(second, "probe_snmp_pdus_sent") < gauge(first, "probe_snmp_pdus_sent")


async def test_v1_falls_back_to_the_32_bit_counters_and_keeps_ifhighspeed(snmpd):
    (old,) = await poll(targets(device(snmpd, "old", "v1", profiles="[if_mib]"))["old"])
    assert old.success, old.detail
    indexes = set(walk(snmpd, IF_DESCR))
    for name in FALLBACKS:
        assert set(by_label(old, name, "ifIndex")) == indexes, name
    assert set(by_label(old, "ifHighSpeed", "ifIndex")) == indexes  # Gauge32: readable over v1
    assert "ifSpeed" not in metric_names(old)


async def test_wrong_community_is_a_timeout(snmpd, monkeypatch):
    monkeypatch.setenv("SNMPD_COMMUNITY", "not-the-community")
    (result,) = await poll(targets(device(snmpd, options=FAST))["sw"])
    assert result.failure == Failure.TIMEOUT
    assert "not-the-community" not in result.detail
    assert gauge(result, "probe_snmp_pdus_sent") == 2 and gauge(result, "probe_snmp_pdu_retries") == 1


async def test_wrong_v3_auth_password_is_auth_failed(snmpd, monkeypatch):
    monkeypatch.setenv("SNMPD_AUTH", "wrong-password-1")
    (result,) = await poll(targets(device(snmpd, auth="v3", options=FAST))["sw"])
    assert result.failure == Failure.AUTH_FAILED
    assert "usmStatsWrongDigests" in result.detail and "wrong-password-1" not in result.detail


async def test_wrong_v3_priv_password_is_a_timeout_that_says_why(snmpd, monkeypatch):
    monkeypatch.setenv("SNMPD_PRIV", "wrong-priv-s3cret")
    (result,) = await poll(targets(device(snmpd, auth="v3", options=FAST))["sw"])
    assert result.failure == Failure.TIMEOUT
    assert "wrong privacy passphrase" in result.detail and "wrong-priv-s3cret" not in result.detail


async def test_unknown_v3_user_is_unknown_user(snmpd):
    config = agent_config(device(snmpd, auth="v3", options=FAST)).replace("username: testuser", "username: nosuchuser")
    (result,) = await poll(parse_config(config).target("sw"))
    assert result.failure == Failure.SNMP_UNKNOWN_USER
    assert "nosuchuser" in result.detail


class _DropLargeResponses(asyncio.DatagramProtocol):
    """A UDP relay to snmpd that drops responses above `limit` bytes, as a path MTU black hole does."""

    def __init__(self, server: Snmpd, limit: int) -> None:
        self._server, self._limit = server, limit
        self._transport: asyncio.DatagramTransport | None = None
        self._upstream: asyncio.DatagramTransport | None = None
        self._client = None

    def connection_made(self, transport) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self._client = addr
        assert self._upstream is not None
        self._upstream.sendto(data)

    def answer(self, data: bytes) -> None:
        if len(data) <= self._limit and self._transport is not None:
            self._transport.sendto(data, self._client)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self._upstream, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(self.answer), remote_addr=(self._server.host, self._server.port)
        )
        return self._transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        for transport in (self._transport, self._upstream):
            if transport is not None:
                transport.close()


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, answer) -> None:
        self.answer = answer

    def datagram_received(self, data: bytes, addr) -> None:
        self.answer(data)


async def test_lost_large_responses_halve_max_repetitions_and_it_is_remembered(snmpd):
    relay = _DropLargeResponses(snmpd, limit=1400)
    port = await relay.start()
    options = "timeout: 5s, request_timeout: 300ms, retries: 5, max_repetitions: 40"
    target = parse_config(agent_config(f"  - {{name: far, address: 127.0.0.1, port: {port}, auth: v2c, {options}}}\n")).target("far")
    resources = ProbeResources()
    try:
        first, second = await poll(target, 2, resources)
    finally:
        resources.close()
        relay.close()
    assert first.success and second.success, first.detail + second.detail
    assert gauge(first, "probe_snmp_pdu_retries") >= 1
    size = gauge(first, "probe_snmp_max_repetitions")
    assert size <= 5  # 40 -> 20 -> 10 -> 5 ...: answers of 16 columns x 5 rows or more do not fit 1400 bytes
    assert gauge(second, "probe_snmp_pdu_retries") == 0 and gauge(second, "probe_snmp_max_repetitions") == size


async def test_never_answering_device_does_not_delay_others(snmpd):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        mute = f"  - {{name: mute, address: 127.0.0.1, port: {silent.getsockname()[1]}, auth: v2c, timeout: 3s}}\n"
        found = targets(device(snmpd) + mute)
        resources = ProbeResources()
        try:
            (alone,) = await poll(found["sw"], resources=resources)
            live, dead = await asyncio.gather(run_target(found["sw"], resources), run_target(found["mute"], resources))
        finally:
            resources.close()
    assert live.success and dead.failure == Failure.TIMEOUT
    assert dead.duration_seconds >= 2.0
    assert live.duration_seconds < alone.duration_seconds + 1.0


async def test_restart_counts_one_reboot(tmp_path):
    with running_snmpd(tmp_path) as server:
        target = targets(device(server, profiles="[system]"))["sw"]
        store = ResultStore()
        resources = ProbeResources()
        try:
            await asyncio.sleep(2.0)  # sysUpTime counts hundredths: let the first run's uptime grow past the next one's
            for result in await poll(target, 2, resources):
                store.record(target, result)
            uptime_before = gauge(result, "probe_snmp_device_uptime_seconds")
            await asyncio.to_thread(server.restart)
            for result in await poll(target, 3, resources):
                store.record(target, result)
        finally:
            resources.close()
    counters = {metric.name: value for (metric, _), value in store.get("sw").counters.items()}
    assert counters["probe_snmp_device_reboots_total"] == 1
    assert uptime_before >= 2.0 > gauge(result, "probe_snmp_device_uptime_seconds")


async def test_v3_resynchronizes_with_a_restarted_agent(tmp_path):
    with running_snmpd(tmp_path) as server:
        target = targets(device(server, auth="v3", profiles="[system]"))["sw"]
        resources = ProbeResources()
        try:
            (before,) = await poll(target, resources=resources)
            await asyncio.to_thread(server.restart)  # new engine boots (and engine ID: a fresh persistent dir)
            (after,) = await poll(target, resources=resources)
        finally:
            resources.close()
    assert before.success and after.success, after.detail
    assert gauge(after, "probe_snmp_pdu_retries") == 0  # the report that resynchronizes is part of one request


async def test_failed_poll_serves_the_last_good_data(tmp_path):
    with running_snmpd(tmp_path) as server:
        target = targets(device(server, options=FAST))["sw"]
        resources = ProbeResources()
        try:
            (good,) = await poll(target, resources=resources)
            server.stop()
            (failed,) = await poll(target, resources=resources)
        finally:
            resources.close()
    assert good.success and failed.failure == Failure.CONNECT_REFUSED  # loopback answers with ICMP port unreachable
    assert series(failed, "ifHCInOctets") == series(good, "ifHCInOctets")
    assert 0 < gauge(failed, "probe_snmp_data_age_seconds") < 5
    assert "serving the data of the last good poll" in failed.detail


async def test_custom_profile_reads_scalars_and_tables(snmpd):
    profile = """
snmp_profiles:
  ucd:
    scalars:
      - {name: memTotalReal, oid: 1.3.6.1.4.1.2021.4.5.0, type: gauge}
    tables:
      - name: load
        index: [{name: laIndex}]
        lookups: [{name: laNames, oid: 1.3.6.1.4.1.2021.10.1.2}]
        metrics:
          - {name: laLoadInt, oid: 1.3.6.1.4.1.2021.10.1.5, type: gauge}
          - {name: laConfig, oid: 1.3.6.1.4.1.2021.10.1.4, type: string, refresh: slow}
"""
    (result,) = await poll(targets(device(snmpd, profiles="[ucd]"), profile)["sw"])
    assert result.success, result.detail
    memory = server_value(snmpd, "1.3.6.1.4.1.2021.4.5.0")
    assert gauge(result, "memTotalReal") == pytest.approx(memory, rel=0.01)
    names = walk(snmpd, "1.3.6.1.4.1.2021.10.1.2")
    assert set(by_label(result, "laLoadInt", "laNames")) == set(names.values()) == {"Load-1", "Load-5", "Load-15"}
    config_labels = [dict(labels) for labels in series(result, "laConfig")]
    assert {label["laIndex"] for label in config_labels} == set(names) and all("laConfig" in l for l in config_labels)


def test_sysuptime_wrapping_after_497_days_is_not_a_reboot():
    uptime = Uptime()
    assert not uptime.update(2**32 - 500, now=0.0)
    assert not uptime.update(300, now=8.0)  # 800 ticks later: the 32-bit TimeTicks wrapped
    assert uptime.seconds == (2**32 + 300) / 100 and uptime.reboots == 0
    assert uptime.update(100, now=20.0)  # lower than the 1,500 ticks expected by now: a reboot
    assert uptime.seconds == 1.0 and uptime.reboots == 1


def test_counter64_keeps_every_bit_and_stays_exact_below_2_53():
    column = ber.encode_oid(IF_HC_IN_OCTETS)
    varbinds = b"".join(
        b"\x30" + bytes((len(body),)) + body
        for body in (
            b"\x06" + bytes((len(column) + 1,)) + column + bytes((index,)) + b"\x46" + bytes((len(raw),)) + raw
            for index, raw in ((1, (2**53 - 1).to_bytes(7, "big")), (2, b"\x00" + (2**64 - 1).to_bytes(8, "big")))
        )
    )
    pdu = b"\x02\x01\x07\x02\x01\x00\x02\x01\x00\x30" + bytes((len(varbinds),)) + varbinds
    body = b"\x02\x01\x01\x04\x06public\xa2" + bytes((len(pdu),)) + pdu
    _, community, response = ber.decode_response(b"\x30" + bytes((len(body),)) + body)
    assert community == b"public" and response.request_id == 7
    assert [vb.value for vb in response.varbinds] == [2**53 - 1, 2**64 - 1]
    assert float(response.varbinds[0].value) == 2**53 - 1


# --- config ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "devices, extra, where, message",
    [
        ("  - {name: a, address: 10.0.0.1, auth: nope}\n", "", "snmp_devices[0].auth", "unknown auth 'nope'"),
        ("  - {name: a, address: 10.0.0.1, auth: v2c, profiles: [if_mib, nope]}\n", "", "snmp_devices[0].profiles[1]",
         "unknown profile 'nope'"),
        ("  - {name: a, address: 10.0.0.1, auth: v2c, timeout: 20s, interval: 10s}\n", "", "snmp_devices[0].timeout",
         "longer than the interval"),
        ("  - {name: a, address: 10.0.0.1, auth: v2c}\n  - {name: a, address: 10.0.0.2, auth: v2c}\n", "",
         "snmp_devices[1].name", "duplicate target name 'a'"),
        ("  - {name: a, address: 10.0.0.1, auth: v2c, profiles: [bad]}\n",
         "snmp_profiles:\n  bad:\n    scalars:\n      - {name: x, oid: 1.3.6.a}\n",
         "snmp_profiles.bad.scalars[0].oid", "not a numeric OID"),
        ("  - {name: a, address: 10.0.0.1, auth: v2c, profiles: [if_mib]}\n",
         "snmp_profiles:\n  if_mib: {scalars: []}\n", "snmp_profiles.if_mib", "built-in profile"),
        ("  - {name: a, address: 10.0.0.1, auth: v2c, profiles: [ups]}\n",
         "snmp_profiles:\n  ups:\n    tables:\n      - name: t\n        index: [{name: i}]\n        metrics:\n"
         "          - {name: a, oid: 1.3.6.1.4.1.9.1, type: counter}\n"
         "          - {name: b, oid: 1.3.6.1.4.1.9.2, type: counter, refresh: slow, fallback_for: a}\n",
         "snmp_profiles.ups.tables[0].metrics[1].fallback_for", "walked on the cadence of 'a'"),
        ("  - {name: a, address: 10.0.0.1, auth: v2c, profiles: [ups]}\n",
         "snmp_profiles:\n  ups:\n    tables:\n      - name: t\n        index: [{name: i}]\n        metrics:\n"
         "          - {name: b, oid: 1.3.6.1.4.1.9.2, type: counter, fallback_for: nope}\n",
         "snmp_profiles.ups.tables[0].metrics[0].fallback_for", "'nope' is not another metric of this table"),
    ],
)
def test_config_errors_name_file_line_and_key(devices, extra, where, message):
    with pytest.raises(ConfigError) as error:
        parse_config(agent_config(devices, extra), "agent.yml")
    assert f": {where}: " in str(error.value) and message in str(error.value)
    assert re.match(r"agent\.yml:\d+: ", str(error.value))


def test_v3_auth_without_priv_password_is_refused():
    config = agent_config("").replace(', priv_protocol: AES, priv_password: "${SNMPD_PRIV}"', "")
    with pytest.raises(ConfigError, match=r"snmp_auths\.v3\.priv_password: this security level needs"):
        parse_config(config)


def test_community_written_in_clear_is_refused():
    with pytest.raises(ConfigError, match=r"<config>:3: snmp_auths\.v1\.community: secrets are accepted only by reference"):
        parse_config(agent_config("").replace('"${SNMPD_COMMUNITY}"', "public"))


def test_snmp_is_not_a_module_prober():
    config = "agent: {id: a, agency: b}\nmodules:\n  s: {prober: snmp}\n"
    with pytest.raises(ConfigError, match=r"modules\.s\.snmp: SNMP devices are configured under `snmp_devices`"):
        parse_config(config)


# --- the agent as a user runs it -------------------------------------------------------------------------------


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "agents.cli", "probe", "--once", "--config", str(config), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(ROOT))


def test_probe_once_shows_each_device_with_sysname_and_interface_count(snmpd, tmp_path):
    config = tmp_path / "agent.yml"
    config.write_text(agent_config(device(snmpd, "core-sw") + device(snmpd, "core-sw-v3", "v3")), encoding="utf-8")
    done = cli(config)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = len(walk(snmpd, IF_NAME))
    for name in ("core-sw", "core-sw-v3"):
        line = next(line for line in done.stdout.splitlines() if line.startswith(name + " "))
        assert " ok " in line and f"sysName '{socket.gethostname()}'" in line and f"interfaces: {rows} rows" in line


def test_secrets_never_appear_in_output_logs_or_metrics(snmpd, tmp_path, monkeypatch):
    monkeypatch.setenv("SNMPD_AUTH", "wrong-auth-s3cret")
    config = tmp_path / "agent.yml"
    port = free_port()
    text = agent_config(device(snmpd, "good") + device(snmpd, "bad-v3", "v3"))
    config.write_text(f"listen: 127.0.0.1:{port}\ndefaults: {{interval: 1s, timeout: 1s}}\n" + text, encoding="utf-8")
    outputs = [cli(config), cli(config, "--json")]
    argv = [sys.executable, "-m", "agents.cli", "--log-level", "debug", "run", "--config", str(config)]
    with running(argv, log_path=str(tmp_path / "agent.log"), cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        wait_for_series(port, "ifHCInOctets", target="good")
        metrics = wait_for_series(port, "probe_failure_info", target="bad-v3", reason="auth_failed")
    texts = [out.stdout + out.stderr for out in outputs] + [metrics, (tmp_path / "agent.log").read_text()]
    assert "FAIL auth_failed" in texts[0] and '"failure": "auth_failed"' in texts[1]
    for text in texts:
        for secret in (snmpd.community, "wrong-auth-s3cret", snmpd.priv_password):
            assert secret not in text


def test_agent_serves_polled_series_and_keeps_the_last_good_ones(tmp_path):
    port = free_port()
    config = tmp_path / "agent.yml"
    with running_snmpd(tmp_path / "snmpd") as server:
        text = agent_config(device(server, "edge", options="interval: 1s, timeout: 900ms, request_timeout: 300ms, retries: 1, keep_last_good: 1m"))
        config.write_text(f"listen: 127.0.0.1:{port}\n" + text, encoding="utf-8")
        argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
        with running(argv, log_path=str(tmp_path / "agent.log"), cwd=str(ROOT)) as proc:
            wait_for_port("127.0.0.1", port, proc=proc)
            fresh = wait_for_series(port, "ifHCInOctets", target="edge", ifName="lo")
            assert metric_value(fresh, "probe_success", target="edge") == 1
            server.stop()
            stale = wait_for_series(port, "probe_snmp_data_age_seconds", target="edge", value_above=0.0)
    assert metric_value(stale, "probe_success", target="edge") == 0
    assert metric_value(stale, "ifHCInOctets", target="edge", ifName="lo") == metric_value(fresh, "ifHCInOctets", target="edge", ifName="lo")
    assert "# TYPE ifHCInOctets" in stale


def wait_for_series(port: int, name: str, timeout: float = 15.0, value_above: float | None = None, **labels: str) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        _, text = http_get(f"http://127.0.0.1:{port}/metrics")
        value = metric_value(text, name, **labels)
        if value is not None and (value_above is None or value > value_above):
            return text
        time.sleep(0.2)
    raise AssertionError(f"no {name}{labels} on /metrics after {timeout}s:\n{text[-3000:]}")
