"""icmp prober over loopback (raw sockets, as root) and in namespaces of its own for unreachable addresses.

The probes here run in the test's own event loop against 127.0.0.0/8 and ::1, whose kernel
answers every echo request. Namespace tests (and tests/test_icmp_netns.py) run the real
`netmon-agent probe --once --json` inside the namespace, since a process cannot switch its
network namespace per probe.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.config.model import ModuleConfig
from agents.net.icmp_engine import ICMP_ENGINE
from agents.probes.icmp import probe
from agents.resources import ProbeResources
from agents.results import Failure, ProbeResult, ProbeTarget
from tests.support.netns import REPO_ROOT, netns, netns_pair, ns_exec, ns_popen
from tests.support.procs import stop
from tests.support.require import require_root

SO_TIMESTAMPNS = 35
CLI_TIMEOUT_SECONDS = 30.0
RESPONDER_START_TIMEOUT = 10.0

# Answers each echo request it sees with forgeries the prober must not count (altered token, a sequence
# never sent, no payload, a reply from another address, an unreachable about another host), and every
# other request, after those, with a genuine reply. argv: the other address to reply from, the other host.
FORGING_RESPONDER = r"""
import socket, struct, sys

def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def icmp(kind, code, rest):
    return struct.pack("!BBH", kind, code, checksum(struct.pack("!BBH", kind, code, 0) + rest)) + rest

listener = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
impostor = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
impostor.bind((sys.argv[1], 0))
other_host = socket.inet_aton(sys.argv[2])
print("ready", flush=True)
requests = 0
while True:
    packet, (client, _) = listener.recvfrom(65535)
    start = (packet[0] & 0x0F) * 4
    if packet[start] != 8:
        continue
    request = packet[start:]
    ident, sequence = struct.unpack("!HH", request[4:8])
    payload = request[8:]
    for forged in (
        icmp(0, 0, request[4:8] + bytes([payload[0] ^ 0xFF]) + payload[1:]),
        icmp(0, 0, struct.pack("!HH", ident, (sequence + 1000) & 0xFFFF) + payload),
        icmp(0, 0, request[4:8]),
        icmp(3, 1, bytes(4) + packet[:16] + other_host + packet[20:start] + request[:8]),
    ):
        listener.sendto(forged, (client, 0))
    impostor.sendto(icmp(0, 0, request[4:]), (client, 0))
    if requests % 2 == 0:
        listener.sendto(icmp(0, 0, request[4:]), (client, 0))
    requests += 1
"""


def icmp_config(modules: dict[str, dict], targets: Sequence[tuple[str, str, str]] = ()) -> str:
    """An agent config. modules: name -> icmp settings plus `timeout` and `ip`; targets: (name, address, module)."""
    lines = ["agent: {id: test-agent, agency: so-test}", "modules:"]
    for name, spec in modules.items():
        settings = {k: v for k, v in spec.items() if k not in ("timeout", "ip")}
        body = ", ".join(f"{key}: {value}" for key, value in settings.items())
        lines += [
            f"  {name}:",
            "    prober: icmp",
            f"    timeout: {spec.get('timeout', '2s')}",
            f"    preferred_ip_protocol: {spec.get('ip', 'ip4')}",
            f"    icmp: {{{body}}}",
        ]
    lines.append("targets:" if targets else "targets: []")
    lines += [f"  - {{name: {name}, address: '{address}', module: {module}}}" for name, address, module in targets]
    return "\n".join(lines) + "\n"


def icmp_module(timeout: str = "2s", ip: str = "ip4", **settings: object) -> ModuleConfig:
    return parse_config(icmp_config({"m": {"timeout": timeout, "ip": ip, **settings}}), "test.yml").modules["m"]


def value(result: ProbeResult, name: str, **labels: str) -> float:
    found = [s.value for s in result.samples if s.metric.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {[s.metric.name for s in result.samples]}"
    return found[0]


def observations(result: ProbeResult, name: str) -> tuple[float, ...]:
    (sample,) = [s for s in result.samples if s.metric.name == name]
    return sample.observations


def run_cli_probe(
    ns: str, config_text: str, directory: Path, prefix: Sequence[str] = (), python: str = sys.executable, **kw
) -> dict[str, dict]:
    """Run `netmon-agent probe --once --json` in ns (after argv `prefix`, e.g. setpriv); results by target name."""
    config = directory / "agent.yml"
    config.write_text(config_text)
    config.chmod(0o644)
    argv = [*prefix, python, "-m", "agents.cli", "probe", "--config", str(config), "--once", "--json"]
    done = ns_exec(ns, argv, cwd=REPO_ROOT, timeout=CLI_TIMEOUT_SECONDS, **kw)
    assert done.returncode in (0, 1), f"exit {done.returncode}: {done.stderr}"
    return {entry["target"]: entry for entry in json.loads(done.stdout)["results"]}


def cli_value(entry: dict, name: str, **labels: str) -> float:
    found = [s["value"] for s in entry["samples"] if s["name"] == name and s["labels"] == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


@pytest.fixture
async def resources():
    shared = ProbeResources()
    yield shared
    shared.close()


class EchoRequestCapture:
    """A raw ICMP socket that sees every echo request on loopback, with the kernel's receive time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)

    def request_times(self, destination: str) -> list[float]:
        times = []
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(2048, 256)
            except BlockingIOError:
                return times
            header = (data[0] & 0x0F) * 4
            if data[header] == 8 and socket.inet_ntoa(data[16:20]) == destination:
                seconds, nanoseconds = struct.unpack("@qq", ancillary[0][2][:16])
                times.append(seconds + nanoseconds / 1e9)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def capture():
    require_root("a raw socket to watch the echo requests")
    watcher = EchoRequestCapture()
    yield watcher
    watcher.close()


def _socket_count() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # the directory handle listdir itself used
            pass
    return count


# --- loopback ---------------------------------------------------------------------------------------------------


async def test_ipv4_loopback_answers_every_request(resources: ProbeResources) -> None:
    result = await probe(ProbeTarget("lo", "127.0.0.1"), icmp_module(count=3, packet_interval="20ms"), resources)
    assert result.success, result.detail
    assert value(result, "probe_icmp_packets_sent_total") == 3
    assert value(result, "probe_icmp_packets_received_total") == 3
    assert value(result, "probe_icmp_packet_loss_ratio") == 0
    rtt_min, rtt_avg, rtt_max = (value(result, f"probe_icmp_rtt_{k}_seconds") for k in ("min", "avg", "max"))
    assert 0 < rtt_min <= rtt_avg <= rtt_max < 0.01
    assert len(observations(result, "probe_icmp_rtt_seconds")) == 3
    assert value(result, "probe_icmp_duration_seconds", phase="rtt") == rtt_avg
    assert 0 <= value(result, "probe_icmp_jitter_seconds") <= rtt_max - rtt_min
    assert value(result, "probe_icmp_reply_hop_limit") == 64
    assert value(result, "probe_ip_protocol") == 4


async def test_ipv6_loopback_answers_every_request(resources: ProbeResources) -> None:
    result = await probe(ProbeTarget("lo6", "::1"), icmp_module(ip="ip6", count=3, packet_interval="20ms"), resources)
    assert result.success, result.detail
    assert value(result, "probe_icmp_packets_received_total") == 3
    assert value(result, "probe_icmp_reply_hop_limit") == 64
    assert value(result, "probe_ip_protocol") == 6


async def test_requests_are_spread_by_packet_interval(resources: ProbeResources, capture: EchoRequestCapture) -> None:
    result = await probe(ProbeTarget("lo", "127.0.0.7"), icmp_module(count=4, packet_interval="150ms"), resources)
    assert result.success, result.detail
    sent_at = capture.request_times("127.0.0.7")
    gaps = [later - earlier for earlier, later in zip(sent_at, sent_at[1:])]
    assert len(sent_at) == 4
    assert all(0.12 <= gap <= 0.18 for gap in gaps), gaps


async def test_rtt_comes_from_kernel_timestamps_not_from_a_busy_event_loop(resources: ProbeResources) -> None:
    # the loop is blocked for 300 ms right after the request goes out; the reply waits in the socket meanwhile
    asyncio.get_running_loop().call_soon(time.sleep, 0.3)
    result = await probe(ProbeTarget("lo", "127.0.0.1"), icmp_module(count=1), resources)
    assert result.success, result.detail
    assert value(result, "probe_icmp_rtt_max_seconds") < 0.005


async def test_concurrent_probes_share_one_socket_and_get_their_own_replies(resources: ProbeResources) -> None:
    addresses = [f"127.0.1.{n}" for n in range(1, 251)]
    module = icmp_module(count=3, packet_interval="50ms")
    sockets_before = _socket_count()
    results = await asyncio.gather(*(probe(ProbeTarget(a, a), module, resources) for a in addresses))
    assert _socket_count() == sockets_before + 1
    for address, result in zip(addresses, results):
        assert result.success, result.detail
        assert value(result, "probe_icmp_packets_received_total") == 3, address
        assert f"from {address} " in result.detail


async def test_malformed_icmp_does_not_disturb_a_probe(resources: ProbeResources) -> None:
    require_root("a raw socket to send malformed ICMP")
    failures: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: failures.append(context))
    running = asyncio.ensure_future(
        probe(ProbeTarget("lo", "127.0.0.1"), icmp_module(count=5, packet_interval="50ms"), resources)
    )
    garbage = _garbage(ident=os.getpid() & 0xFFFF)  # the engine's raw sockets use the process id
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as injector:
        while not running.done():
            for packet in garbage:
                injector.sendto(packet, ("127.0.0.1", 0))
            await asyncio.sleep(0.01)
    result = running.result()
    assert failures == []
    assert result.success, result.detail
    assert value(result, "probe_icmp_packets_received_total") == 5


def _garbage(ident: int) -> list[bytes]:
    """Malformed ICMP with our identifier and the first sequence numbers, and random bytes."""
    packets = [b"\x00\x00\x00", b"\x03\x01", bytes(7)]
    inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 0, 0, 64, 1, 0, bytes(4), socket.inet_aton("127.0.0.1"))
    for sequence in range(8):
        inner_echo = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
        packets += [
            struct.pack("!BBHHH", 0, 0, 0, ident, sequence),  # a reply cut after its header
            struct.pack("!BBHHH", 0, 0, 0, ident, sequence) + b"\x01\x02\x03",  # and inside its token
            struct.pack("!BBHI", 3, 1, 0, 0) + b"\x4f" + bytes(10),  # an unreachable whose quote is cut short
            struct.pack("!BBHI", 3, 1, 0, 0) + inner_ip[:20],  # quoting no echo header
            struct.pack("!BBHI", 3, 1, 0, 0) + b"\x4f" + inner_ip[1:] + inner_echo,  # claiming a 60-byte IP header
        ]
    packets += [os.urandom(n) for n in range(2, 200, 3)]
    packets += [bytes([kind]) + os.urandom(n) for kind in (0, 3) for n in range(1, 120, 7)]
    return packets


async def test_cancelled_probe_stops_sending(resources: ProbeResources, capture: EchoRequestCapture) -> None:
    running = asyncio.ensure_future(
        probe(ProbeTarget("lo", "127.0.0.9"), icmp_module(timeout="5s", count=5, packet_interval="200ms"), resources)
    )
    await asyncio.sleep(0.3)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.sleep(0.6)
    assert len(capture.request_times("127.0.0.9")) == 2


async def test_engine_close_ends_a_round_in_flight(resources: ProbeResources) -> None:
    loop = asyncio.get_running_loop()
    engine = resources.get(ICMP_ENGINE)
    running = asyncio.ensure_future(engine.ping("127.0.0.1", socket.AF_INET, 5, 1.0, 56, 10.0))
    await asyncio.sleep(0.1)
    started = loop.time()
    engine.close()
    echo = await asyncio.wait_for(running, 1.0)
    assert loop.time() - started < 0.1
    assert (echo.sent, len(echo.rtts)) == (1, 1)


# --- settings ---------------------------------------------------------------------------------------------------


def test_requests_that_leave_the_last_reply_no_time_are_rejected_at_load() -> None:
    with pytest.raises(ConfigError) as caught:
        icmp_module(timeout="5s", count=6, packet_interval="1s")
    assert "modules.m.icmp.packet_interval" in str(caught.value)
    assert "leaves the last reply less than 1s" in str(caught.value)


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"count": 0}, "count"),
        ({"payload_size": 4}, "payload_size"),
        ({"max_loss_ratio": 1.5}, "max_loss_ratio"),
        ({"packet_interval": "0s"}, "packet_interval"),
    ],
)
def test_invalid_settings_are_rejected_with_their_key(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        icmp_module(**settings)
    assert f"modules.m.icmp.{key}" in str(caught.value)


def test_defaults_send_five_requests_a_second_apart() -> None:
    settings = icmp_module(timeout="10s").settings
    assert (settings.count, settings.packet_interval, settings.payload_size, settings.max_loss_ratio) == (5, 1.0, 56, 1.0)


# --- unreachable, in a namespace of our own ----------------------------------------------------------------------


@pytest.fixture
def lonely_namespace():
    """A namespace with only `lo`: 10.0.0.0/8 has no route there, 192.0.2.0/24 a blackhole route."""
    require_root("network namespaces")
    with netns("nmicmp") as ns:
        subprocess.run(["ip", "-n", ns, "route", "add", "blackhole", "192.0.2.0/24"], check=True, timeout=10)
        yield ns


@pytest.mark.netns
def test_address_without_route_fails_at_once_with_network_unreachable(lonely_namespace: str, tmp_path: Path) -> None:
    module = {"ping": {"timeout": "3s", "count": 3, "packet_interval": "500ms"}}
    entry = run_cli_probe(lonely_namespace, icmp_config(module, [("gone", "10.9.9.9", "ping")]), tmp_path)["gone"]
    assert (entry["success"], entry["failure"]) == (False, Failure.NETWORK_UNREACHABLE.value)
    assert entry["duration_seconds"] < 0.5
    assert cli_value(entry, "probe_icmp_packet_loss_ratio") == 1


@pytest.mark.netns
def test_blackholed_address_fails_at_once_with_network_unreachable(lonely_namespace: str, tmp_path: Path) -> None:
    module = {"ping": {"timeout": "3s", "count": 3, "packet_interval": "500ms"}}
    entry = run_cli_probe(lonely_namespace, icmp_config(module, [("hole", "192.0.2.1", "ping")]), tmp_path)["hole"]
    assert (entry["success"], entry["failure"]) == (False, Failure.NETWORK_UNREACHABLE.value)
    assert entry["duration_seconds"] < 0.5
    assert cli_value(entry, "probe_icmp_packets_sent_total") == 1  # the round ends at the first refusal


@contextmanager
def forging_responder(ns: str, impostor_ip: str, other_host: str) -> Iterator[None]:
    """FORGING_RESPONDER running in ns, whose kernel stops answering echo requests itself."""
    ns_exec(ns, ["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1"], check=True)
    argv = [sys.executable, "-c", FORGING_RESPONDER, impostor_ip, other_host]
    responder = ns_popen(ns, argv, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert responder.stdout is not None
        readable, _, _ = select.select([responder.stdout], [], [], RESPONDER_START_TIMEOUT)
        assert readable and responder.stdout.readline() == b"ready\n", f"responder exited with {responder.poll()}"
        yield
    finally:
        stop(responder)
        responder.stdout.close()  # type: ignore[union-attr]


@pytest.mark.netns
def test_forged_replies_are_not_counted(tmp_path: Path) -> None:
    require_root("network namespaces and raw sockets")
    with netns_pair("nmf") as pair:
        subnet = pair.server_ip.rsplit(".", 1)[0]
        impostor_ip, other_host = f"{subnet}.3", f"{subnet}.77"
        ns_exec(pair.server, ["ip", "addr", "add", f"{impostor_ip}/24", "dev", pair.server_if], check=True)
        module = {"ping": {"timeout": "1s", "count": 6, "packet_interval": "50ms"}}
        config = icmp_config(module, [("server", pair.server_ip, "ping")])
        with forging_responder(pair.server, impostor_ip, other_host):
            entry = run_cli_probe(pair.client, config, tmp_path)["server"]
    assert entry["success"], entry["detail"]
    assert cli_value(entry, "probe_icmp_packets_sent_total") == 6
    assert cli_value(entry, "probe_icmp_packets_received_total") == 3
    assert "unreachable" not in entry["detail"]
