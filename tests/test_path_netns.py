"""The path prober over a real routed chain (tests/support/pathchain.py): agency → district router → provincial core →
data-center edge → server, each router answering with time exceeded from its own kernel.

Traces run as `netmon-agent trace --json` (or inside a running agent) in the agency's namespace; loss is nftables
in a router, delay the NFQUEUE delayer, both on a router's egress (tests/support/netns.py). Root traces use a raw
ICMP socket (a new namespace allows no datagram ICMP), the unprivileged ones a datagram socket or UDP/TCP sockets.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from tests.support.netns import REPO_ROOT, egress_delay, ns_exec, ns_popen, packet_loss
from tests.support.pathchain import HOPS, SECOND_CORE, SERVER_IP, Chain, linear_chain, router_chain
from tests.support.procs import stop
from tests.support.require import require_binary, require_root
from tests.test_agent_run import metric_value
from tests.test_icmp_netns import AS_NOBODY, OPEN_PING_GROUPS, SYSTEM_PYTHON

pytestmark = pytest.mark.netns

CLI_TIMEOUT = 60.0
AGENT_PORT = 19855  # inside the agency's namespace, which nothing else uses
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())"


@pytest.fixture
def chain() -> Iterator[Chain]:
    require_root("network namespaces, nftables and NFQUEUE")
    with router_chain() as created:
        yield created


def trace(chain: Chain, *args: str, unprivileged: bool = False) -> dict:
    """`netmon-agent trace SERVER ARGS --json` in the agency's namespace (as `nobody` if unprivileged)."""
    return trace_in(chain.agency, SERVER_IP, *args, unprivileged=unprivileged)


def trace_in(ns: str, *args: str, unprivileged: bool = False) -> dict:
    """`netmon-agent trace ARGS --json` in ns (as `nobody` if unprivileged)."""
    prefix: Sequence[str] = ()
    python, env = sys.executable, None
    if unprivileged:
        assert SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} is needed to trace as nobody (apt-get install python3)"
        prefix, python = AS_NOBODY, str(SYSTEM_PYTHON)
        env = {"PYTHONPATH": f"{REPO_ROOT}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    argv = [*prefix, python, "-m", "agents.cli", "trace", *args, "--json"]
    done = ns_exec(ns, argv, cwd=REPO_ROOT, timeout=CLI_TIMEOUT, env=env)
    assert done.returncode in (0, 1), f"exit {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)


def addresses(report: dict) -> list[str | None]:
    return [hop["address"] for hop in report["hops"]]


def losses(report: dict) -> list[float]:
    return [hop["loss_ratio"] for hop in report["hops"]]


# --- where it breaks ---------------------------------------------------------------------------------------------


def test_loss_at_the_second_router_makes_it_the_fault_hop_within_one_round(chain: Chain) -> None:
    # r2's egress drops half of what leaves it, its own time-exceeded messages and what it forwards alike.
    # 30 probes per hop: P(hop 2 shows 3 losses or fewer) is below 1e-5.
    with packet_loss(chain.ns["r2"], "district", 50), packet_loss(chain.ns["r2"], "edge", 50):
        report = trace(chain, "--count", "30", "--interval", "0.03")
    assert report["reached"], report["detail"]
    assert addresses(report) == list(HOPS)
    assert (report["fault_hop"], report["fault_address"]) == (2, HOPS[1])
    assert losses(report)[0] == 0  # the hop before it loses nothing
    assert all(loss > 0.1 for loss in losses(report)[1:])


def test_a_router_rate_limiting_its_own_replies_is_not_the_fault(chain: Chain) -> None:
    chain.drop_own_time_exceeded("r2", limit="2/second")  # its output only: what it forwards passes
    report = trace(chain, "--count", "30", "--interval", "0.03")
    assert report["reached"], report["detail"]
    assert addresses(report) == list(HOPS)
    first, second, third, server = losses(report)
    assert second >= 0.5  # the hop shows loss ...
    assert (first, third, server) == (0, 0, 0)  # ... which the hops after it do not
    assert report["fault_hop"] is None


def test_a_router_that_never_answers_is_a_silent_hop_not_loss_of_the_path(chain: Chain) -> None:
    chain.drop_own_time_exceeded("r2")
    report = trace(chain, "--count", "10", "--interval", "0.03")
    assert report["reached"], report["detail"]
    assert addresses(report) == [HOPS[0], None, HOPS[2], HOPS[3]]
    silent = report["hops"][1]
    assert (silent["silent"], silent["sent"], silent["received"]) == (True, 10, 0)
    assert [hop["silent"] for hop in report["hops"]] == [False, True, False, False]
    assert losses(report)[3] == 0 and report["fault_hop"] is None


def test_an_unreachable_destination_breaks_where_the_path_stops(chain: Chain) -> None:
    with packet_loss(chain.ns["r3"], "server", 100):  # the data-center edge's link to the server is dead
        report = trace(chain, "--count", "5", "--interval", "0.03", "--max-hops", "8")
    assert not report["reached"] and report["failure"] == "timeout"
    assert addresses(report) == [*HOPS[:3], None]  # up to the last hop that answered, and one past it
    assert report["fault_hop"] == 4 and losses(report) == [0, 0, 0, 1]


# --- side by side with mtr ----------------------------------------------------------------------------------------

REALTIME = ("chrt", "--fifo", "50")
MTR_LINE = re.compile(r"^\s*(\d+)\.\|--\s+(\S+)\s+([\d.]+)%\s+(\d+)\s+[\d.]+\s+([\d.]+)\s")


def mtr_report(chain: Chain, count: int, interval: float) -> list[tuple[str, float, float]]:
    """(address, loss %, average RTT ms) per hop of `mtr -n --report` in the agency's namespace, at real-time priority:
    mtr times replies when it reads them, so on a busy machine its RTTs would measure the scheduler too."""
    mtr = require_binary("mtr", "mtr-tiny")
    argv = [*REALTIME, mtr, "-n", "--report", "-c", str(count), "-i", str(interval), SERVER_IP]
    done = ns_exec(chain.agency, argv, timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr
    hops = [MTR_LINE.match(line) for line in done.stdout.splitlines()]
    return [(m.group(2), float(m.group(3)), float(m.group(5))) for m in hops if m]


def test_per_hop_loss_and_rtt_agree_with_mtr_on_the_same_path(chain: Chain) -> None:
    # Loss: every 5th ICMP packet r2 forwards towards r3 is dropped, so hops 3 and 4 lose 20% of whatever each
    # tool sends. (Random loss would not do: two independent samples of 100 differ by more than 5 points about
    # a third of the time.) Delay: 30 ms on r3's egress to the server, so only hop 4 is late; the delayer runs at
    # real-time priority, so the delay it adds does not depend on how busy the machine is while each tool runs.
    chain.drop_every_nth("r2", "edge", 5)
    with egress_delay(chain.ns["r3"], "server", 0.03) as delayer:
        subprocess.run(["chrt", "--fifo", "--pid", "50", str(delayer.pid)], check=True, timeout=10)
        theirs = mtr_report(chain, 100, 0.05)
        ours = trace(chain, "--count", "100", "--interval", "0.05")
    assert [address for address, _, _ in theirs] == addresses(ours) == list(HOPS)
    for hop, (address, loss_percent, avg_ms) in zip(ours["hops"], theirs):
        assert abs(hop["loss_ratio"] * 100 - loss_percent) <= 5, (address, hop["loss_ratio"], loss_percent)
        assert abs(hop["rtt_avg_seconds"] * 1000 - avg_ms) <= 1.0, (address, hop["rtt_avg_seconds"], avg_ms)
    assert [round(loss, 1) for loss in losses(ours)] == [0, 0, 0.2, 0.2]
    assert 0.030 <= ours["hops"][3]["rtt_avg_seconds"] <= 0.032
    assert ours["fault_hop"] == 3


# --- without privileges ------------------------------------------------------------------------------------------


def test_an_unprivileged_user_traces_over_a_datagram_icmp_socket(chain: Chain) -> None:
    ns_exec(chain.agency, ["sysctl", "-q", "-w", OPEN_PING_GROUPS], check=True)
    report = trace(chain, "--count", "5", "--interval", "0.03", unprivileged=True)
    assert report["socket"] == "datagram"
    assert report["reached"] and addresses(report) == list(HOPS)
    assert losses(report) == [0, 0, 0, 0] and report["fault_hop"] is None
    assert all(0 < hop["rtt_avg_seconds"] < 0.01 for hop in report["hops"])


def test_icmp_errors_for_one_round_do_not_fail_another_rounds_sends(chain: Chain) -> None:
    # On a datagram socket an ICMP error is also left pending on the socket, and the next sendto fails with it
    # instead of sending; the engine sends once more. Here r3 answers every echo to 10.77.9.9 with net unreachable
    # while another round pings the server on the same socket: that round must not end with host_unreachable.
    ns_exec(chain.agency, ["sysctl", "-q", "-w", OPEN_PING_GROUPS], check=True)
    with tempfile.TemporaryDirectory(prefix="netmon-path-") as directory:  # one `nobody` can read
        Path(directory).chmod(0o755)
        results = _probe_once_as_nobody(chain, Path(directory) / "agent.yml")
    assert (results["nowhere"]["failure"], "reported by 10.77.2.2" in results["nowhere"]["detail"]) == ("network_unreachable", True)
    assert results["server"]["success"], results["server"]["detail"]
    assert "(datagram socket)" in results["server"]["detail"] and "50/50 echo replies" in results["server"]["detail"]


def _probe_once_as_nobody(chain: Chain, config: Path) -> dict[str, dict]:
    config.write_text(
        "agent: {id: a, agency: b}\nmodules:\n  ping: {prober: icmp, timeout: 2s, icmp: {count: 50, packet_interval: 5ms}}\n"
        f"targets:\n  - {{name: server, address: {SERVER_IP}, module: ping}}\n  - {{name: nowhere, address: 10.77.9.9, module: ping}}\n"
    )
    config.chmod(0o644)
    env = {"PYTHONPATH": f"{REPO_ROOT}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    argv = [*AS_NOBODY, str(SYSTEM_PYTHON), "-m", "agents.cli", "probe", "--config", str(config), "--once", "--json"]
    done = ns_exec(chain.agency, argv, cwd=REPO_ROOT, timeout=CLI_TIMEOUT, env=env)
    assert done.returncode == 1, done.stderr  # the nowhere target fails
    return {entry["target"]: entry for entry in json.loads(done.stdout)["results"]}


BUSY_LOOP_TRACE = """
import asyncio, json, sys, time
from agents.path.probe import PathSettings, module_for, trace_path
from agents.resources import ProbeResources
from foundation.config.types import Duration

async def main():
    resources = ProbeResources()
    module = module_for(PathSettings(protocol=sys.argv[2], port=int(sys.argv[3]) or None, count=1, max_hops=4,
                                     packet_interval=Duration(0.1)))
    # The kernel turns receive timestamps on machine-wide, from a work queue, when the first socket asks for them;
    # until then it stamps a packet when it is read. A first trace (and a moment) lets that happen.
    await trace_path(sys.argv[1], module, resources)
    await asyncio.sleep(0.2)
    asyncio.get_running_loop().call_soon(time.sleep, 0.3)  # the loop is blocked while every answer arrives
    report = await trace_path(sys.argv[1], module, resources)
    resources.close()
    print(json.dumps([hop.rtt_max for hop in report.hops]))

asyncio.run(main())
"""


@pytest.mark.parametrize(("protocol", "port", "unprivileged"), [("icmp", 0, False), ("icmp", 0, True), ("udp", 33434, True)])
def test_hop_rtts_come_from_kernel_timestamps_not_from_a_busy_event_loop(
    chain: Chain, protocol: str, port: int, unprivileged: bool
) -> None:
    # raw ICMP reads time exceeded as packets; datagram ICMP and UDP read it from the error queue, stamped too
    ns_exec(chain.agency, ["sysctl", "-q", "-w", OPEN_PING_GROUPS if unprivileged else "net.ipv4.ping_group_range=1 0"], check=True)
    prefix, python, env = (), sys.executable, None
    if unprivileged:
        prefix, python = AS_NOBODY, str(SYSTEM_PYTHON)
        env = {"PYTHONPATH": f"{REPO_ROOT}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    argv = [*prefix, python, "-c", BUSY_LOOP_TRACE, SERVER_IP, protocol, str(port)]
    done = ns_exec(chain.agency, argv, cwd=REPO_ROOT, timeout=CLI_TIMEOUT, env=env)
    assert done.returncode == 0, done.stderr
    rtts = json.loads(done.stdout)
    assert len(rtts) == 4 and all(rtt is not None and rtt < 0.01 for rtt in rtts), rtts


@pytest.mark.parametrize(("protocol", "port"), [("udp", "33434"), ("tcp", "443")])
def test_udp_and_tcp_traces_need_no_privilege_at_all(chain: Chain, protocol: str, port: str) -> None:
    # no ping_group_range: ICMP sockets are refused to nobody, UDP and TCP sockets are not
    report = trace(chain, "--protocol", protocol, "--port", port, "--count", "5", "--interval", "0.03", unprivileged=True)
    assert (report["protocol"], report["reached"]) == (protocol, True), report["detail"]
    assert addresses(report) == list(HOPS)
    assert losses(report) == [0, 0, 0, 0]


def test_an_unprivileged_icmp_trace_without_ping_group_range_says_how_to_allow_it(chain: Chain) -> None:
    argv = [*AS_NOBODY, str(SYSTEM_PYTHON), "-m", "agents.cli", "trace", SERVER_IP, "--count", "1"]
    env = {"PYTHONPATH": f"{REPO_ROOT}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    done = ns_exec(chain.agency, argv, cwd=REPO_ROOT, timeout=CLI_TIMEOUT, env=env)
    assert done.returncode == 2
    assert "permission_denied" in done.stderr and "ping_group_range" in done.stderr and "udp or tcp" in done.stderr


def test_an_ipv6_path_is_traced_over_raw_and_datagram_icmpv6_sockets() -> None:
    require_root("network namespaces")
    with linear_chain(3) as chain:
        ns_exec(chain.agency, ["ping", "-6", "-c", "2", "-i", "0.2", chain.server_ip6])  # neighbour discovery first
        argv = [chain.server_ip6, "--ip", "ip6", "--count", "5", "--interval", "0.03"]
        as_root = trace_in(chain.agency, *argv)  # a new namespace allows no datagram ICMP: raw
        ns_exec(chain.agency, ["sysctl", "-q", "-w", OPEN_PING_GROUPS], check=True)  # it governs ICMPv6 too
        as_nobody = trace_in(chain.agency, *argv, unprivileged=True)
    for report, kind in ((as_root, "raw"), (as_nobody, "datagram")):
        assert (report["socket"], report["reached"], addresses(report)) == (kind, True, list(chain.hops6))
        assert losses(report) == [0, 0, 0, 0]


# --- inside the agent: path changes, triggers, /trace -----------------------------------------------------------


def agent_yaml(extra_targets: str, extra: str = "") -> str:
    return f"""\
agent: {{id: path-test, agency: so-test}}
listen: 127.0.0.1:{AGENT_PORT}
modules:
  ping: {{prober: icmp, timeout: 1s, icmp: {{count: 20, packet_interval: 10ms}}}}
  path: {{prober: path, timeout: 1s, path: {{count: 20, packet_interval: 20ms, reply_timeout: 500ms}}}}
targets:
{extra_targets}{extra}"""


def start_agent(chain: Chain, config_text: str, directory: Path) -> subprocess.Popen:
    config = directory / "agent.yml"
    config.write_text(config_text)
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    log = directory / "agent.log"
    with log.open("wb") as output:
        agent = ns_popen(chain.agency, argv, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while ns_exec(chain.agency, [sys.executable, "-c", FETCH, f"http://127.0.0.1:{AGENT_PORT}/-/healthy"]).returncode:
        if agent.poll() is not None or time.monotonic() > deadline:
            stop(agent)
            pytest.fail(f"the agent did not start: {log.read_text()}")
        time.sleep(0.2)
    return agent


def fetch(chain: Chain, path: str) -> str:
    done = ns_exec(chain.agency, [sys.executable, "-c", FETCH, f"http://127.0.0.1:{AGENT_PORT}{path}"], timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for_metric(chain: Chain, metric: str, predicate, timeout: float, **labels: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = fetch(chain, "/metrics")
        value = metric_value(text, metric, **labels)
        if value is not None and predicate(value):
            return text
        assert time.monotonic() < deadline, f"{metric}{labels} is {value} after {timeout}s"
        time.sleep(0.3)


def test_a_route_change_counts_one_path_change_and_shows_the_new_hop(chain: Chain, tmp_path: Path) -> None:
    agent = start_agent(chain, agent_yaml(f"  - {{name: dc-path, address: {SERVER_IP}, module: path, interval: 1s}}\n"), tmp_path)
    try:
        before = wait_for_metric(chain, "netmon_agent_probe_runs_total", lambda runs: runs >= 3, 15, target="dc-path")
        assert metric_value(before, "probe_path_hop_responders", ttl="2", hop_address=HOPS[1]) == 1
        chain.reroute_via_second_core()
        wait_for_metric(chain, "probe_path_hop_responders", lambda n: n == 1, 15, ttl="2", hop_address=SECOND_CORE)
        runs = metric_value(fetch(chain, "/metrics"), "netmon_agent_probe_runs_total", target="dc-path")
        after = wait_for_metric(chain, "netmon_agent_probe_runs_total", lambda n: n >= runs + 3, 15, target="dc-path")
    finally:
        stop(agent)
    assert metric_value(after, "probe_path_changes_total", target="dc-path") == 1
    assert metric_value(after, "probe_path_hop_responders", ttl="2", hop_address=HOPS[1]) is None  # one series per TTL
    assert metric_value(after, "probe_path_hop_loss_ratio", ttl="2", hop_address=SECOND_CORE) == 0
    assert metric_value(after, "probe_path_fault_hop", target="dc-path", hop_address="") == 0


def test_a_degraded_parent_triggers_its_path_trace_at_once(chain: Chain, tmp_path: Path) -> None:
    targets = (
        f"  - {{name: dc-ping, address: {SERVER_IP}, module: ping, interval: 1s}}\n"
        f"  - {{name: dc-path, address: {SERVER_IP}, module: path, interval: 1h}}\n"
    )
    triggers = "path_triggers:\n  - {path: dc-path, parent: dc-ping, loss_ratio: 0.1, cooldown: 1h}\n"
    agent = start_agent(chain, agent_yaml(targets, triggers), tmp_path)
    try:
        healthy = wait_for_metric(chain, "netmon_agent_probe_runs_total", lambda runs: runs >= 2, 15, target="dc-ping")
        assert metric_value(healthy, "probe_path_destination_reached") is None  # not traced while the parent is fine
        with packet_loss(chain.ns["r2"], "edge", 60):  # r2 → r3: hops 3 and 4 lose
            text = wait_for_metric(chain, "probe_path_destination_reached", lambda reached: reached == 1, 15)
        on_demand = json.loads(fetch(chain, f"/trace?target={SERVER_IP}&count=3"))
    finally:
        stop(agent)
    assert metric_value(text, "netmon_agent_path_traces_triggered_total", target="dc-path", parent="dc-ping") == 1
    assert metric_value(text, "probe_path_fault_hop", target="dc-path", hop_address=HOPS[2]) == 3
    assert metric_value(text, "probe_path_hop_loss_ratio", ttl="2", hop_address=HOPS[1]) == 0
    assert (on_demand["reached"], on_demand["fault_hop"], addresses(on_demand)) == (True, None, list(HOPS))
    assert [hop["sent"] for hop in on_demand["hops"]] == [3, 3, 3, 3]


def test_traces_do_not_delay_other_targets_schedules(chain: Chain, tmp_path: Path) -> None:
    # Two traces to a destination that never answers, so every cycle probes all 30 TTLs (600 probes a second),
    # beside 20 tcp targets every 500 ms: the scheduling test's bound holds, nobody starts 100 ms late.
    fast = "".join(
        f"  - {{name: fast-{i}, address: '127.0.0.1:{AGENT_PORT}', module: connect, interval: 500ms}}\n" for i in range(20)
    )
    paths = "".join(
        f"  - {{name: dark-{i}, address: {SERVER_IP}, module: dark_path, interval: 1s}}\n" for i in range(2)
    )
    modules = (
        "  connect: {prober: tcp, timeout: 400ms}\n"
        "  dark_path: {prober: path, timeout: 1s, path: {count: 10, packet_interval: 50ms, reply_timeout: 500ms}}\n"
    )
    config = agent_yaml(fast + paths).replace("modules:\n", "modules:\n" + modules)
    with packet_loss(chain.ns["server"], "edge", 100):
        agent = start_agent(chain, config, tmp_path)
        started = time.monotonic()
        try:
            wait_for_metric(chain, "netmon_agent_probe_runs_total", lambda runs: runs >= 5, 20, target="dark-1", result="failure")
            text = fetch(chain, "/metrics")
            elapsed = time.monotonic() - started
        finally:
            stop(agent)
    # reported up to one hop past the last that answered: the path stops at hop 4 (TTLs 5..30 were probed too)
    assert metric_value(text, "probe_path_hop_packets_sent", target="dark-0", ttl="4", hop_address="") == 10
    assert metric_value(text, "probe_path_fault_hop", target="dark-0") == 4
    for i in range(20):
        runs = metric_value(text, "netmon_agent_probe_runs_total", target=f"fast-{i}", result="success")
        assert runs is not None and runs >= int(elapsed / 0.5) - 2, (i, runs, elapsed)
    late = metric_value(text, "netmon_agent_scheduling_lag_seconds_count") - metric_value(
        text, "netmon_agent_scheduling_lag_seconds_bucket", le="0.1"
    )
    assert late == 0  # nobody started more than 100 ms after its slot
