"""The path prober on this machine's own kernel (loopback: the destination answers at hop 1), its config keys, the
reading of a round (fault hop, silent and rate-limited hops), the triggers and /trace. The routed chain of routers
is tests/test_path_netns.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.net.icmp_engine import ICMP_ENGINE
from agents.path.analysis import Hop, fault_hop, path_hash, rtt_stats
from agents.path.probe import PATH_CHANGES, PATH_HASH, PathSettings, probe
from agents.path.triggers import PathTriggerConfig, PathTriggers
from agents.probes.icmp import LOSS_RATIO, RTT_AVG
from agents.probes.icmp import probe as icmp_probe
from agents.probes.tcp import CONNECT_TIME
from agents.resources import ProbeResources
from agents.results import Failure, ProbeResult, ProbeTarget
from tests.support.ports import free_port
from tests.support.require import require_binary
from tests.test_icmp import icmp_module, value

ROOT = Path(__file__).resolve().parent.parent
AGENT = "agent: {id: a, agency: b}\n"


def path_config(settings: str = "", timeout: str = "5s", triggers: str = "", extra_targets: str = "") -> str:
    return (
        AGENT
        + "modules:\n"
        + "  ping: {prober: icmp, timeout: 2s, icmp: {count: 3, packet_interval: 100ms}}\n"
        + "  dns: {prober: dns, dns: {query_name: example.org}}\n"
        + f"  path: {{prober: path, timeout: {timeout}, path: {{{settings}}}}}\n"
        + "targets:\n"
        + "  - {name: dc-ping, address: 127.0.0.1, module: ping}\n"
        + "  - {name: dc-path, address: 127.0.0.1, module: path, interval: 15m}\n"
        + extra_targets
        + (f"path_triggers:\n{triggers}" if triggers else "")
    )


def path_module(timeout: str = "5s", **settings: object):
    body = ", ".join(f"{key}: {value}" for key, value in settings.items())
    return parse_config(path_config(body, timeout), "agent.yml").modules["path"]


@pytest.fixture
async def resources():
    shared = ProbeResources()
    yield shared
    shared.close()


# --- config -----------------------------------------------------------------------------------------------------


def test_defaults_send_ten_icmp_probes_per_hop_a_second_apart_up_to_thirty_hops() -> None:
    settings = path_module(timeout="15s").settings
    assert settings == PathSettings()
    assert (settings.protocol, settings.count, settings.packet_interval, settings.max_hops) == ("icmp", 10, 1.0, 30)
    assert (settings.reply_timeout, settings.loss_threshold) == (1.0, 0.1)


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ("count: 0", "count", "must be between 1 and 1000"),
        ("max_hops: 65", "max_hops", "must be between 1 and 64"),
        ("protocol: tcp", "port", "tcp traces need the port"),
        ("port: 53", "port", "only udp and tcp traces have a port"),
        ("protocol: udp, port: 70000", "port", "must be between 1 and 65535"),
        ("loss_threshold: 1", "loss_threshold", "below 1"),
        ("count: 10, packet_interval: 1s", "packet_interval", "does not fit the 5s module timeout"),
    ],
)
def test_invalid_settings_are_rejected_with_their_key(settings: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        path_module(**dict(item.split(": ") for item in settings.split(", ")))
    assert f"agent.yml:5: modules.path.path.{key}: " in str(error.value) and message in str(error.value)


def test_a_trigger_names_a_path_target_and_its_icmp_or_tcp_parent() -> None:
    config = parse_config(path_config(timeout="15s", triggers="  - {path: dc-path, parent: dc-ping, rtt: 150ms}\n"))
    triggers = PathTriggers()
    triggers.apply(config)
    degraded = ProbeResult(True, samples=[LOSS_RATIO(0.5)])
    assert [trigger.path for trigger in triggers.due("dc-ping", degraded, 100.0)] == ["dc-path"]


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ("{path: nowhere, parent: dc-ping}", "path_triggers[0].path: unknown target 'nowhere'"),
        ("{path: dc-ping, parent: dc-ping}", "path_triggers[0].path: target 'dc-ping' uses the icmp prober; expected a path target"),
        ("{path: dc-path, parent: lookup}", "path_triggers[0].parent: target 'lookup' uses the dns prober; expected a icmp or tcp target"),
        ("{path: dc-path, parent: dc-ping, cooldown: 0s}", "path_triggers[0].cooldown: must be greater than 0"),
        ("{path: dc-path, parent: dc-ping, loss_ratio: 1.5}", "path_triggers[0].loss_ratio: must be at least 0 and below 1"),
    ],
)
def test_invalid_triggers_are_rejected_with_file_line_and_key(trigger: str, message: str) -> None:
    lookup = "  - {name: lookup, address: 127.0.0.1, module: dns}\n"
    with pytest.raises(ConfigError) as error:
        parse_config(path_config(timeout="15s", triggers=f"  - {trigger}\n", extra_targets=lookup), "agent.yml")
    assert str(error.value).startswith("agent.yml:11: ") and message in str(error.value)


def test_a_trigger_of_a_target_whose_module_failed_adds_no_error_of_its_own() -> None:
    text = path_config("count: 0", timeout="15s", triggers="  - {path: dc-path, parent: dc-ping}\n")
    with pytest.raises(ConfigError) as error:
        parse_config(text, "agent.yml")
    assert str(error.value) == "agent.yml:5: modules.path.path.count: must be between 1 and 1000"


def test_a_trigger_whose_parent_is_disabled_waits() -> None:
    disabled = "  - {name: spare, address: 127.0.0.2, module: ping, enabled: false}\n"
    config = parse_config(path_config(timeout="15s", triggers="  - {path: dc-path, parent: spare}\n", extra_targets=disabled))
    triggers = PathTriggers()
    triggers.apply(config)
    assert triggers.due("spare", ProbeResult(False, failure=Failure.TIMEOUT), 0.0) == []


# --- reading a round --------------------------------------------------------------------------------------------


def hop(ttl: int, sent: int, received: int, silent: bool = False, unreachable: int | None = None) -> Hop:
    rtt = 0.001 if received else None
    return Hop(ttl, f"10.0.{ttl}.1" if received else None, 1 if received else 0, sent, received, rtt, rtt, rtt, 0.0 if received else None,
               rtt, silent, unreachable)


@pytest.mark.parametrize(
    ("received", "fault"),
    [
        ((10, 10, 10, 10), None),  # a healthy path
        ((10, 6, 6, 6), 2),  # loss from hop 2 on: hop 2 is where it breaks
        ((10, 1, 10, 10), None),  # hop 2 rate-limits its own replies: the hops after it lose nothing
        ((10, 1, 6, 6), 2),  # loss from hop 2 on, more at hop 2 itself (it rate-limits too): still hop 2
        ((10, 1, 10, 6, 6), 4),  # a rate-limiting hop before the real fault is not the fault
        ((10, 6, 1, 6), 2),  # nor one inside the lossy stretch
        ((10, 10, 10, 6), 4),  # only the destination loses
        ((10, 9, 10, 10), None),  # one lost probe of ten is not above the 10% threshold
    ],
)
def test_the_fault_hop_is_where_loss_starts_and_persists_to_the_destination(received: tuple[int, ...], fault: int | None) -> None:
    hops = [hop(ttl, 10, count) for ttl, count in enumerate(received, start=1)]
    assert fault_hop(hops, 0.1) == fault


def test_a_silent_hop_is_skipped_not_blamed() -> None:
    hops = [hop(1, 10, 10), hop(2, 10, 0, silent=True), hop(3, 10, 10), hop(4, 10, 10)]
    assert fault_hop(hops, 0.1) is None
    hops = [hop(1, 10, 10), hop(2, 10, 0, silent=True), hop(3, 10, 5), hop(4, 10, 5)]
    assert fault_hop(hops, 0.1) == 3


def test_a_router_without_a_way_on_breaks_the_path_at_its_hop() -> None:
    hops = [hop(1, 10, 10), hop(2, 10, 10), hop(3, 10, 10, unreachable=0)]
    assert fault_hop(hops, 0.1) == 3


def test_the_rtt_standard_deviation_is_never_negative() -> None:
    # E[x²] - E[x]² comes out slightly negative for equal values (network_exporter's -9.2e9); two passes do not
    equal = [0.3] * 1000
    assert sum(x * x for x in equal) / 1000 - (sum(equal) / 1000) ** 2 < 0
    low, average, high, deviation, last = rtt_stats(equal)
    assert (low, high, last) == (0.3, 0.3, 0.3) and average == pytest.approx(0.3)
    assert 0 <= deviation < 1e-12
    assert rtt_stats([0.001, 0.003])[3] == pytest.approx(0.001)


def test_the_path_hash_follows_the_addresses_in_ttl_order() -> None:
    assert path_hash(["a", "b", None]) == path_hash(["a", "b", None]) < 2**48
    assert len({path_hash(["a", "b"]), path_hash(["b", "a"]), path_hash(["a", None]), path_hash(["a"])}) == 4


# --- loopback (this kernel) -------------------------------------------------------------------------------------


async def test_loopback_answers_at_hop_one(resources: ProbeResources) -> None:
    module = path_module(count=3, packet_interval="20ms")
    result = await probe(ProbeTarget("lo", "127.0.0.1"), module, resources)
    assert result.success, result.detail
    labels = {"ttl": "1", "hop_address": "127.0.0.1"}
    assert value(result, "probe_path_hop_packets_sent", **labels) == 3
    assert value(result, "probe_path_hop_packets_received", **labels) == 3
    assert value(result, "probe_path_hop_loss_ratio", **labels) == 0
    assert 0 < value(result, "probe_path_hop_rtt_min_seconds", **labels) <= value(result, "probe_path_hop_rtt_max_seconds", **labels) < 0.01
    assert value(result, "probe_path_hop_rtt_stddev_seconds", **labels) >= 0
    assert value(result, "probe_path_hop_silent", **labels) == 0
    assert (value(result, "probe_path_hops"), value(result, "probe_path_destination_reached")) == (1, 1)
    assert value(result, "probe_path_fault_hop", hop_address="") == 0
    assert value(result, "probe_path_loss_ratio") == 0
    assert value(result, "probe_path_changes_total") == 0


async def test_a_trace_and_echo_probes_share_the_icmp_engines_socket(resources: ProbeResources) -> None:
    module = path_module(count=5, packet_interval="20ms")
    trace, *pings = await asyncio.gather(
        probe(ProbeTarget("lo", "127.0.0.1"), module, resources),
        *(icmp_probe(ProbeTarget(f"p{n}", f"127.0.2.{n}"), icmp_module(count=5, packet_interval="20ms"), resources)
          for n in range(1, 11)),
    )
    assert trace.success and all(ping.success for ping in pings), [r.detail for r in (trace, *pings)]
    assert all(value(ping, "probe_icmp_packets_received_total") == 5 for ping in pings)
    assert value(trace, "probe_path_hop_packets_received", ttl="1", hop_address="127.0.0.1") == 5
    assert len(resources.get(ICMP_ENGINE)._channels) == 1


async def test_the_same_path_twice_is_no_change_and_keeps_its_hash(resources: ProbeResources) -> None:
    module = path_module(count=2, packet_interval="20ms")
    first, second = [await probe(ProbeTarget("lo", "127.0.0.1"), module, resources) for _ in range(2)]
    assert [s.value for s in first.samples if s.metric is PATH_HASH] == [s.value for s in second.samples if s.metric is PATH_HASH]
    assert [s.value for s in second.samples if s.metric is PATH_CHANGES] == [0]


async def test_tcp_traces_end_at_a_listening_port_and_at_a_closed_one(resources: ProbeResources) -> None:
    server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for probed in (port, free_port()):  # SYN-ACK (timed by the kernel), then RST
            module = path_module(protocol="tcp", port=probed, count=3, packet_interval="20ms")
            result = await probe(ProbeTarget("lo", "127.0.0.1"), module, resources)
            assert result.success, result.detail
            assert value(result, "probe_path_hop_packets_received", ttl="1", hop_address="127.0.0.1") == 3
    finally:
        server.close()


async def test_udp_traces_end_at_the_destinations_port_unreachable(resources: ProbeResources) -> None:
    module = path_module(protocol="udp", count=3, packet_interval="20ms")
    result = await probe(ProbeTarget("lo", "127.0.0.1"), module, resources)
    assert result.success, result.detail
    assert value(result, "probe_path_hop_packets_received", ttl="1", hop_address="127.0.0.1") == 3


async def test_the_path_metrics_pass_promtool_check_metrics(resources: ProbeResources) -> None:
    from agents.exposition import render_chunks
    from agents.runner import run_target
    from agents.store import ResultStore

    config = parse_config(path_config("count: 2, packet_interval: 20ms"))
    target = config.target("dc-path")
    store = ResultStore()
    store.record(target, await run_target(target, resources))
    text = "".join(render_chunks(store.states()))
    assert 'probe_path_hop_rtt_avg_seconds{target="dc-path",module="path",hop_address="127.0.0.1",ttl="1"}' in text
    promtool = require_binary("promtool", "prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_the_example_config_traces_a_commune_link_with_a_trigger() -> None:
    done = subprocess.run([sys.executable, "-m", "agents.cli", "check-config", "config/examples/path.yml"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout.strip()) == (0, "config/examples/path.yml: OK (3 modules, 3 targets)"), done.stderr


def test_the_cli_prints_an_mtr_like_table() -> None:
    done = subprocess.run([sys.executable, "-m", "agents.cli", "trace", "127.0.0.1", "--count", "2", "--interval", "0.05"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("trace to 127.0.0.1 (127.0.0.1): icmp, ")
    assert lines[1].split() == ["TTL", "ADDRESS", "LOSS%", "SNT", "RCV", "LAST", "AVG", "BEST", "WRST", "STDEV"]
    assert lines[2].split()[:5] == ["1", "127.0.0.1", "0.0", "2", "2"]
    assert lines[-1] == "destination reached at hop 1; no fault"


def test_probe_once_shows_the_hops_under_the_result(tmp_path: Path) -> None:
    config = tmp_path / "agent.yml"
    config.write_text(path_config("count: 2, packet_interval: 20ms"))
    done = subprocess.run([sys.executable, "-m", "agents.cli", "probe", "--config", str(config), "--once", "--target", "dc-path"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2:5] == ["", "dc-path:", "  TTL  ADDRESS    LOSS%  SNT  RCV  AVG"]
    assert lines[5].split()[:5] == ["1", "127.0.0.1", "0.0", "2", "2"]


def test_the_cli_refuses_settings_out_of_bounds() -> None:
    done = subprocess.run([sys.executable, "-m", "agents.cli", "trace", "127.0.0.1", "--max-hops", "0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stderr.strip()) == (2, "netmon-agent trace: max_hops: must be between 1 and 64")


# --- triggers ---------------------------------------------------------------------------------------------------


def triggers_for(**trigger: object) -> PathTriggers:
    triggers = PathTriggers()
    triggers._by_parent = {"dc-ping": [PathTriggerConfig(path="dc-path", parent="dc-ping", **trigger)]}
    return triggers


@pytest.mark.parametrize(
    ("result", "fires"),
    [
        (ProbeResult(True, samples=[LOSS_RATIO(0.2), RTT_AVG(0.01)]), True),
        (ProbeResult(True, samples=[LOSS_RATIO(0.0), RTT_AVG(0.2)]), True),
        (ProbeResult(True, samples=[CONNECT_TIME(0.2)]), True),  # a tcp parent
        (ProbeResult(False, failure=Failure.TIMEOUT), True),
        (ProbeResult(False, failure=Failure.CONNECT_REFUSED), False),  # the service, not the path
        (ProbeResult(True, samples=[LOSS_RATIO(0.05), RTT_AVG(0.01)]), False),
    ],
)
def test_a_parent_above_its_loss_or_rtt_threshold_or_failing_on_the_network_triggers(result: ProbeResult, fires: bool) -> None:
    triggers = triggers_for(loss_ratio=0.1, rtt=0.1)
    assert [t.path for t in triggers.due("dc-ping", result, 10.0)] == (["dc-path"] if fires else [])


def test_a_trigger_fires_once_per_cooldown_while_the_parent_stays_degraded() -> None:
    triggers = triggers_for(loss_ratio=0.1, cooldown=60.0)
    degraded = ProbeResult(True, samples=[LOSS_RATIO(0.5)])
    fired = [bool(triggers.due("dc-ping", degraded, now)) for now in (0.0, 30.0, 59.0, 60.0, 61.0, 125.0)]
    assert fired == [True, False, False, True, False, True]
    assert triggers.due("other", degraded, 500.0) == []


# --- /trace ------------------------------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def test_the_agent_traces_on_demand_at_slash_trace(tmp_path: Path) -> None:
    from agents.app import Agent

    config_file = tmp_path / "agent.yml"
    config_file.write_text(path_config("count: 2, packet_interval: 20ms"))
    agent = Agent(parse_config(config_file.read_text(), str(config_file)), str(config_file), ("127.0.0.1", 0))
    await agent.start()
    base = f"http://127.0.0.1:{agent.address[1]}/trace"
    try:
        status, kind, body = await asyncio.to_thread(get, f"{base}?target=127.0.0.1&count=3&max_hops=4")
        assert (status, kind) == (200, "application/json; charset=utf-8"), body
        report = json.loads(body)
        assert (report["target"], report["reached"], report["fault_hop"]) == ("127.0.0.1", True, None)
        first = report["hops"][0]
        assert {key: first[key] for key in ("ttl", "address", "sent", "received", "loss_ratio", "silent")} == {
            "ttl": 1, "address": "127.0.0.1", "sent": 3, "received": 3, "loss_ratio": 0.0, "silent": False,
        }
        assert 0 < first["rtt_avg_seconds"] < 0.01
        status, kind, body = await asyncio.to_thread(get, f"{base}?target=127.0.0.1&module=path&format=table")
        assert (status, kind) == (200, "text/plain; charset=utf-8") and " 2     2 " in body
        for query, reason in [
            ("", "target parameter is missing"),
            ("?target=127.0.0.1&module=ping", "unknown path module 'ping' (path modules: path)"),
            ("?target=127.0.0.1&count=0", "count: must be between 1 and 1000"),
            ("?target=127.0.0.1&count=x", "count: expected an integer"),
            ("?target=no-such-name.invalid", "resolve_failed"),
        ]:
            status, _, body = await asyncio.to_thread(get, base + query)
            assert status == 400 and reason in body, (query, body)
    finally:
        await agent.stop()


async def test_slash_trace_runs_at_most_two_traces_at_once(tmp_path: Path) -> None:
    from agents.app import Agent

    config_file = tmp_path / "agent.yml"
    config_file.write_text(path_config(timeout="15s"))
    agent = Agent(parse_config(config_file.read_text(), str(config_file)), str(config_file), ("127.0.0.1", 0))
    await agent.start()
    slow = f"http://127.0.0.1:{agent.address[1]}/trace?target=127.0.0.1&count=8"  # 7 s of cycles
    try:
        running = [asyncio.ensure_future(asyncio.to_thread(get, slow)) for _ in range(2)]
        await asyncio.sleep(0.5)
        status, _, body = await asyncio.to_thread(get, slow)
        assert status == 429 and "2 traces are running already" in body
        for task in running:
            task.cancel()
    finally:
        await agent.stop()


# --- the scheduler runs a triggered target at once, never twice at once -----------------------------------------


async def test_run_now_runs_a_target_at_once_and_not_while_it_runs() -> None:
    from prometheus_client import CollectorRegistry

    from agents.scheduler import Scheduler
    from agents.selfmetrics import AgentMetrics
    from agents.store import ResultStore

    config = parse_config(path_config("count: 3, packet_interval: 100ms"))
    store, resources = ResultStore(), ProbeResources()
    scheduler = Scheduler("a", store, AgentMetrics(CollectorRegistry()), resources, 10)
    await scheduler.apply(tuple(t for t in config.targets if t.name == "dc-path"))  # interval 15m: no slot soon
    try:
        assert scheduler.run_now("dc-path") and not scheduler.run_now("dc-path")
        assert not scheduler.run_now("unknown")
        for _ in range(50):
            await asyncio.sleep(0.05)
            if store.get("dc-path") is not None:
                break
        assert store.get("dc-path").latest.success
        assert scheduler.run_now("dc-path")
    finally:
        await scheduler.stop()
        resources.close()
