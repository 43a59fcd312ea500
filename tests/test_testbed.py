"""The namespace testbed itself, proven with the system ping run inside our own namespaces."""

from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import dataclass

import pytest

from tests.support.netns import (
    attach_to_router,
    egress_delay,
    namespace_pids,
    netns,
    netns_pair,
    ns_exec,
    ns_popen,
    packet_loss,
)
from tests.support.require import require_binary, require_root

pytestmark = pytest.mark.netns

DELAY = 0.050


@pytest.fixture(autouse=True)
def _testbed_tools() -> None:
    require_root("network namespaces, nftables and NFQUEUE")
    for binary, package in (("ip", "iproute2"), ("nft", "nftables"), ("iptables", "iptables"), ("ping", "iputils-ping")):
        require_binary(binary, package)


@dataclass(frozen=True)
class PingRun:
    sent: int
    received: int
    rtt_avg_ms: float
    rtt_max_ms: float
    reply_sequence: list[int]  # icmp_seq of each reply, in arrival order

    @property
    def loss_percent(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent


def ping(ns: str, address: str, count: int, interval: float = 0.01, preload: int = 1) -> PingRun:
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-l", str(preload), "-W", "1", address]
    output = ns_exec(ns, argv, timeout=count * interval + 10).stdout
    counts = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    rtt = re.search(r"= [\d.]+/([\d.]+)/([\d.]+)/", output)
    assert counts, output
    rtt_avg, rtt_max = (float(rtt[1]), float(rtt[2])) if rtt else (math.nan, math.nan)  # no replies, no rtt line
    sequence = [int(seq) for seq in re.findall(r"icmp_seq=(\d+)", output)]
    return PingRun(int(counts[1]), int(counts[2]), rtt_avg, rtt_max, sequence)


def namespace_names() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10)
    return {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}


def test_pair_server_answers_ping_from_client() -> None:
    with netns_pair() as pair:
        run = ping(pair.client, pair.server_ip, count=3)
    assert (run.sent, run.received) == (3, 3)


def test_pairs_in_use_at_once_get_distinct_names_and_subnets() -> None:
    with netns_pair() as first, netns_pair() as second:
        assert {first.client, first.server}.isdisjoint({second.client, second.server})
        assert first.client_ip.rsplit(".", 1)[0] != second.client_ip.rsplit(".", 1)[0]
        assert ping(second.client, second.server_ip, count=2).received == 2


def test_addresses_exist_only_inside_the_pair() -> None:
    with netns_pair() as pair:
        host_addresses = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, timeout=10).stdout
        assert pair.client_ip not in host_addresses and pair.server_ip not in host_addresses
        assert pair.client_ip in ns_exec(pair.client, ["ip", "-4", "addr", "show", pair.client_if]).stdout


def test_packet_loss_drops_the_requested_share_of_pings() -> None:
    # 1000 pings: the binomial standard deviation at 20% is 1.3 points, so +-5 points is a ~4 sigma bound.
    with netns_pair() as pair, packet_loss(pair.client, pair.client_if, 20):
        run = ping(pair.client, pair.server_ip, count=1000, interval=0.004)
    print(f"measured loss {run.loss_percent:.1f}% of {run.sent} pings with 20% injected")
    assert run.sent == 1000
    assert 15.0 <= run.loss_percent <= 25.0


def test_packet_loss_is_lifted_on_exit() -> None:
    with netns_pair() as pair:
        with packet_loss(pair.client, pair.client_if, 100):
            assert ping(pair.client, pair.server_ip, count=3).received == 0
        assert "netmon_loss" not in ns_exec(pair.client, ["nft", "list", "tables"], check=True).stdout
        assert ping(pair.client, pair.server_ip, count=3).received == 3


def test_egress_delay_adds_the_delay_to_the_round_trip() -> None:
    with netns_pair() as pair, egress_delay(pair.client, pair.client_if, DELAY):
        run = ping(pair.client, pair.server_ip, count=50, interval=0.01)
    print(f"measured rtt avg {run.rtt_avg_ms:.3f} ms max {run.rtt_max_ms:.3f} ms with {DELAY * 1000:g} ms injected")
    assert run.received == 50
    assert abs(run.rtt_avg_ms - DELAY * 1000) <= 2.0


def test_egress_delay_holds_a_burst_concurrently_not_one_after_another() -> None:
    with netns_pair() as pair, egress_delay(pair.client, pair.client_if, DELAY):
        run = ping(pair.client, pair.server_ip, count=100, preload=100)
    print(f"burst of 100: rtt avg {run.rtt_avg_ms:.3f} ms max {run.rtt_max_ms:.3f} ms")
    assert run.received == 100
    # one after another, the last of 100 would wait 100 delays (5 s), the second already 2 delays;
    # held together, each waits one delay (a single late wakeup on a busy machine measured +28 ms)
    assert run.rtt_max_ms < 2 * DELAY * 1000
    assert run.rtt_avg_ms < DELAY * 1000 + 5


def test_egress_delay_keeps_packet_order() -> None:
    with netns_pair() as pair, egress_delay(pair.client, pair.client_if, DELAY):
        run = ping(pair.client, pair.server_ip, count=100, preload=100)
    assert run.reply_sequence == list(range(1, 101))


def test_egress_delay_stops_its_process_and_lifts_the_delay_on_exit() -> None:
    with netns_pair() as pair:
        with egress_delay(pair.client, pair.client_if, DELAY) as delayer:
            assert ping(pair.client, pair.server_ip, count=2).rtt_avg_ms > DELAY * 1000
        assert delayer.returncode is not None
        assert namespace_pids(pair.client) == []
        assert ping(pair.client, pair.server_ip, count=3).rtt_max_ms < 5.0


def test_failed_test_still_removes_namespaces_and_their_processes() -> None:
    prefix = f"nmf{os.getpid()}"  # so a concurrent test run cannot reclaim the names before we look
    with pytest.raises(RuntimeError, match="test body failed"):
        with netns_pair(prefix) as pair, packet_loss(pair.client, pair.client_if, 10):
            with egress_delay(pair.client, pair.client_if, DELAY):
                sleeper = ns_popen(pair.server, ["sleep", "60"])
                raise RuntimeError("test body failed")
    assert sleeper.wait(timeout=5) is not None
    assert {pair.client, pair.server}.isdisjoint(namespace_names())


def test_router_forwards_between_attached_namespaces() -> None:
    with netns("nmr") as router, netns("nma") as agency_a, netns("nma") as agency_b:
        attach_to_router(router, agency_a, "10.201.1.0/24")
        link_b = attach_to_router(router, agency_b, "10.201.2.0/24")
        reply = ns_exec(agency_a, ["ping", "-n", "-c", "2", "-i", "0.05", "-W", "1", link_b.ip]).stdout
    assert "2 received" in reply
    assert "ttl=63" in reply  # one routed hop: the router
