"""icmp prober across a veth link between two namespaces, with injected loss and delay, and as an unprivileged user.

The agent runs in the client namespace (`netmon-agent probe --once --json`); the server
namespace's kernel answers the echo requests. Loss is nftables numgen drop and delay an NFQUEUE
delayer, both on the client's egress (see tests/support/netns.py).
"""

from __future__ import annotations

import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from agents.probes.icmp import IcmpFailure as Failure
from tests.support.netns import REPO_ROOT, NetnsPair, egress_delay, netns_pair, ns_exec, packet_loss
from tests.support.require import require_root
from tests.test_icmp import cli_value, icmp_config, run_cli_probe

pytestmark = pytest.mark.netns

# The venv's interpreter lives under /root, which `nobody` cannot enter: the same Python version from
# the system runs the agent there, with the checkout and the venv's packages on its path.
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
AS_NOBODY = ("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups")
OPEN_PING_GROUPS = "net.ipv4.ping_group_range=0 2147483647"


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    require_root("network namespaces, nftables and NFQUEUE")
    with netns_pair("nmi") as created:
        yield created


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temporary directory `nobody` can read (pytest's tmp_path is private to root)."""
    with tempfile.TemporaryDirectory(prefix="netmon-icmp-") as name:
        Path(name).chmod(0o755)
        yield Path(name)


def ping_config(address: str, **settings: object) -> str:
    """A config probing `address` as target "server" with one icmp module (timeout and icmp settings)."""
    return icmp_config({"ping": settings}, [("server", address, "ping")])


def test_measured_loss_matches_injected_20_percent_loss(pair: NetnsPair, tmp_path: Path) -> None:
    # 1000 requests: the standard deviation of the measured loss is 1.3 points, so +-5 points is ~4 sigma
    config = ping_config(pair.server_ip, timeout="3s", count=1000, packet_interval="2ms")
    with packet_loss(pair.client, pair.client_if, 20):
        entry = run_cli_probe(pair.client, config, tmp_path)["server"]
    assert entry["success"], entry["detail"]
    assert cli_value(entry, "probe_icmp_packets_sent_total") == 1000
    loss = cli_value(entry, "probe_icmp_packet_loss_ratio")
    assert 0.15 <= loss <= 0.25, loss
    assert cli_value(entry, "probe_icmp_packets_received_total") == round((1 - loss) * 1000)


def test_loss_above_max_loss_ratio_fails_with_packet_loss(pair: NetnsPair, tmp_path: Path) -> None:
    config = ping_config(pair.server_ip, timeout="2s", count=100, packet_interval="5ms", max_loss_ratio=0.05)
    with packet_loss(pair.client, pair.client_if, 20):
        entry = run_cli_probe(pair.client, config, tmp_path)["server"]
    assert (entry["success"], entry["failure"]) == (False, Failure.PACKET_LOSS.value)
    assert 0.05 < cli_value(entry, "probe_icmp_packet_loss_ratio") < 1


def test_measured_rtt_matches_injected_50ms_delay(pair: NetnsPair, tmp_path: Path) -> None:
    config = ping_config(pair.server_ip, timeout="2s", count=10, packet_interval="50ms")
    with egress_delay(pair.client, pair.client_if, 0.05):
        entry = run_cli_probe(pair.client, config, tmp_path)["server"]
    assert entry["success"], entry["detail"]
    assert cli_value(entry, "probe_icmp_packets_received_total") == 10
    assert abs(cli_value(entry, "probe_icmp_rtt_avg_seconds") - 0.05) <= 0.002
    assert cli_value(entry, "probe_icmp_rtt_min_seconds") >= 0.049


def test_absent_host_fails_with_host_unreachable_within_timeout(pair: NetnsPair, tmp_path: Path) -> None:
    absent = pair.server_ip.rsplit(".", 1)[0] + ".99"  # on the link's subnet; nobody answers ARP for it
    config = ping_config(absent, timeout="5s", count=3, packet_interval="500ms")
    entry = run_cli_probe(pair.client, config, tmp_path)["server"]
    assert (entry["success"], entry["failure"]) == (False, Failure.HOST_UNREACHABLE.value)
    assert entry["duration_seconds"] <= 5.0
    assert f"reported by {pair.client_ip}" in entry["detail"]


def test_silent_host_fails_with_timeout_within_timeout(pair: NetnsPair, tmp_path: Path) -> None:
    config = ping_config(pair.server_ip, timeout="2s", count=2, packet_interval="500ms")
    with packet_loss(pair.server, pair.server_if, 100):
        entry = run_cli_probe(pair.client, config, tmp_path)["server"]
    assert (entry["success"], entry["failure"]) == (False, Failure.TIMEOUT.value)
    assert 1.9 <= entry["duration_seconds"] <= 2.0
    assert cli_value(entry, "probe_icmp_packets_sent_total") == 2
    assert cli_value(entry, "probe_icmp_packet_loss_ratio") == 1


def _run_as_nobody(pair: NetnsPair, directory: Path) -> dict[str, dict]:
    assert SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} is needed to run the agent as nobody (apt-get install python3)"
    server_v6 = _add_ipv6(pair)
    modules = {
        "ping": {"count": 3, "packet_interval": "20ms"},
        "ping6": {"ip": "ip6", "count": 3, "packet_interval": "20ms"},
    }
    config = icmp_config(modules, [("server", pair.server_ip, "ping"), ("server6", server_v6, "ping6")])
    site_packages = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{REPO_ROOT}:{site_packages}", "PATH": "/usr/bin:/bin"}
    return run_cli_probe(pair.client, config, directory, prefix=AS_NOBODY, python=str(SYSTEM_PYTHON), env=env)


def _add_ipv6(pair: NetnsPair) -> str:
    """Give the link IPv6 addresses (the pair only has IPv4); the server's address."""
    prefix = "fd00:77"  # addresses inside our namespaces only, so any prefix does
    for ns, ifname, host in ((pair.client, pair.client_if, 1), (pair.server, pair.server_if, 2)):
        ns_exec(ns, ["ip", "-6", "addr", "add", f"{prefix}::{host}/64", "dev", ifname, "nodad"], check=True)
    return f"{prefix}::2"


def test_unprivileged_user_probes_over_a_datagram_socket(pair: NetnsPair, shared_dir: Path) -> None:
    ns_exec(pair.client, ["sysctl", "-q", "-w", OPEN_PING_GROUPS], check=True)
    results = _run_as_nobody(pair, shared_dir)
    for name in ("server", "server6"):
        assert results[name]["success"], results[name]["detail"]
        assert "(datagram socket)" in results[name]["detail"]
        assert cli_value(results[name], "probe_icmp_packets_received_total") == 3
        assert cli_value(results[name], "probe_icmp_reply_hop_limit") == 64


def test_unprivileged_user_without_ping_group_range_is_denied(pair: NetnsPair, shared_dir: Path) -> None:
    results = _run_as_nobody(pair, shared_dir)  # a new namespace starts with ping_group_range "1 0": nobody may not
    for name in ("server", "server6"):
        assert (results[name]["success"], results[name]["failure"]) == (False, Failure.PERMISSION.value)
        assert "ping_group_range" in results[name]["detail"]
