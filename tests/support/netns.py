"""Network namespaces for tests: a client/server pair on a veth link, agency namespaces behind a router namespace,
and packet loss or delay on the egress of a link (this kernel has no netem: nftables numgen and NFQUEUE instead).

Names are claimed with `ip netns add`, which fails if the name exists, so concurrent test processes never share a
namespace. Everything a helper creates lives inside namespaces it created and dies with them.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tests.support.procs import stop

COMMAND_TIMEOUT = 15.0
STOP_GRACE = 3.0
DELAYER_START_TIMEOUT = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_NAMESPACE_INDEX = 100 * 256  # pair subnets 10.100.0.0/24 .. 10.199.255.0/24
PAIR_CLIENT_IF = "veth-c"
PAIR_SERVER_IF = "veth-s"


@dataclass(frozen=True)
class NetnsPair:
    client: str
    server: str
    client_ip: str
    server_ip: str
    client_if: str
    server_if: str


@dataclass(frozen=True)
class RouterLink:
    """A namespace's link to the router: `ip` on `ifname` in `ns`, `gateway` on `router_if` in the router."""

    ns: str
    ifname: str
    ip: str
    router_if: str
    gateway: str


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with code {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _ip(ns: str, *args: str) -> str:
    return _run(["ip", "-n", ns, *args])


def ns_exec(
    ns: str, argv: Sequence[str], check: bool = False, timeout: float = 30.0, **kw
) -> subprocess.CompletedProcess:
    """Run argv inside ns; output is captured as text unless the caller routes stdout/stderr itself."""
    if "stdout" not in kw and "stderr" not in kw:
        kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout, **kw)


def ns_popen(ns: str, argv: Sequence[str], **kw) -> subprocess.Popen:
    """Start argv inside ns (`ip netns exec` execs into it, so the Popen's pid is the program's)."""
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)


# --- namespaces -------------------------------------------------------------------------------------------------


def _try_create_namespace(name: str) -> bool:
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode == 0:
        return True
    if "File exists" in done.stderr:
        return False
    raise RuntimeError(f"ip netns add {name} failed: {done.stderr.strip()}")


def _claim_namespaces(names_for: Callable[[int], tuple[str, ...]]) -> tuple[int, tuple[str, ...]]:
    """The first index whose names could all be created, and those names (now existing, empty namespaces)."""
    for index in range(MAX_NAMESPACE_INDEX):
        names = names_for(index)
        created: list[str] = []
        for name in names:
            if not _try_create_namespace(name):
                break
            created.append(name)
        if len(created) == len(names):
            return index, names
        for name in created:
            _run(["ip", "netns", "delete", name])
    raise RuntimeError(f"no free namespace names among {MAX_NAMESPACE_INDEX} indices (stale namespaces left?)")


def namespace_pids(ns: str) -> list[int]:
    return [int(pid) for pid in _run(["ip", "netns", "pids", ns]).split()]


def _stop_processes_in(ns: str) -> None:
    """SIGTERM every process in ns by PID, then SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = namespace_pids(ns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = namespace_pids(ns)
        if not pids:
            return
    raise RuntimeError(f"processes {pids} in namespace {ns} survived SIGKILL")


def _remove_namespace(ns: str) -> None:
    try:
        _stop_processes_in(ns)
    finally:
        _run(["ip", "netns", "delete", ns])


@contextmanager
def _owned_namespaces(names: tuple[str, ...]) -> Iterator[None]:
    """Bring `lo` up in each of names; on exit, whatever happened, delete them all."""
    with ExitStack() as cleanup:
        for name in names:
            cleanup.callback(_remove_namespace, name)
        for name in names:
            _ip(name, "link", "set", "lo", "up")
        yield


@contextmanager
def netns(name_prefix: str = "nm") -> Iterator[str]:
    """A fresh namespace (only `lo`, up), deleted on exit with every process still running in it."""
    _, (name,) = _claim_namespaces(lambda index: (f"{name_prefix}{index}",))
    with _owned_namespaces((name,)):
        yield name


def _pair_subnet(index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.{100 + index // 256}.{index % 256}.0/24")


@contextmanager
def netns_pair(prefix: str = "nm") -> Iterator[NetnsPair]:
    """Two fresh namespaces joined by a veth pair on 10.x.y.0/24 (client .1, server .2).

    The subnet follows the names' index, so pairs of one prefix never share one (pairs are isolated anyway).
    """
    index, (client, server) = _claim_namespaces(lambda n: (f"{prefix}c{n}", f"{prefix}s{n}"))
    with _owned_namespaces((client, server)):
        subnet = _pair_subnet(index)
        client_ip, server_ip = itertools.islice(subnet.hosts(), 2)
        _ip(client, "link", "add", PAIR_CLIENT_IF, "type", "veth", "peer", "name", PAIR_SERVER_IF, "netns", server)
        _configure_interface(client, PAIR_CLIENT_IF, f"{client_ip}/{subnet.prefixlen}")
        _configure_interface(server, PAIR_SERVER_IF, f"{server_ip}/{subnet.prefixlen}")
        yield NetnsPair(client, server, str(client_ip), str(server_ip), PAIR_CLIENT_IF, PAIR_SERVER_IF)


def _configure_interface(ns: str, ifname: str, address: str) -> None:
    _ip(ns, "addr", "add", address, "dev", ifname)
    _ip(ns, "link", "set", ifname, "up")


# --- router -----------------------------------------------------------------------------------------------------


def _link_names(ns: str) -> set[str]:
    return {link["ifname"] for link in json.loads(_ip(ns, "-j", "link", "show"))}


def attach_to_router(router_ns: str, ns: str, subnet: str, ifname: str = "uplink") -> RouterLink:
    """Link ns to router_ns by a veth on `subnet` (router: first host, ns: second) and route ns through it.

    Routed rather than bridged, so impairments on either end of any one agency's link see the traffic
    (nftables/iptables inet hooks do not see bridged frames). The link dies with either namespace.
    """
    network = ipaddress.ip_network(subnet)
    gateway, address = itertools.islice(network.hosts(), 2)
    taken = _link_names(router_ns)
    router_if = next(f"port{n}" for n in itertools.count() if f"port{n}" not in taken)
    _ip(router_ns, "link", "add", router_if, "type", "veth", "peer", "name", ifname, "netns", ns)
    _configure_interface(router_ns, router_if, f"{gateway}/{network.prefixlen}")
    _configure_interface(ns, ifname, f"{address}/{network.prefixlen}")
    _ip(ns, "route", "add", "default", "via", str(gateway))
    ns_exec(router_ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], check=True, timeout=COMMAND_TIMEOUT)
    return RouterLink(ns, ifname, str(address), router_if, str(gateway))


# --- impairments ------------------------------------------------------------------------------------------------


def _nft(ns: str, script: str) -> None:
    _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=script)


def _nft_table_name(kind: str, ifname: str) -> str:
    return f"netmon_{kind}_" + re.sub(r"[^A-Za-z0-9_]", "_", ifname)


@contextmanager
def packet_loss(ns: str, ifname: str, percent: int) -> Iterator[None]:
    """Drop `percent`% of the packets leaving ns through ifname (chosen at random per packet)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"loss percent must be within 0..100, got {percent}")
    table = _nft_table_name("loss", ifname)
    # A draw of 1..100 (not 0..99 with "< percent") lets nft accept both 0% and 100%.
    _nft(ns, f"""
table inet {table} {{
    chain egress {{
        type filter hook postrouting priority 0; policy accept;
        oifname "{ifname}" numgen random mod 100 offset 1 <= {int(percent)} drop
    }}
}}
""")
    try:
        yield
    finally:
        _nft(ns, f"delete table inet {table}")


def _ifindex(ns: str, ifname: str) -> int:
    return json.loads(_ip(ns, "-j", "link", "show", "dev", ifname))[0]["ifindex"]


def _wait_until_ready(delayer: subprocess.Popen) -> None:
    assert delayer.stdout is not None
    readable, _, _ = select.select([delayer.stdout], [], [], DELAYER_START_TIMEOUT)
    line = delayer.stdout.readline().strip() if readable else b""
    if line != b"ready":
        raise RuntimeError(
            f"delayer not ready after {DELAYER_START_TIMEOUT}s (exit code {delayer.poll()}, said {line!r})"
        )


@contextmanager
def _nfqueue_rule(ns: str, ifname: str, queue: int) -> Iterator[None]:
    """Queue IPv4 and IPv6 packets leaving through ifname; --queue-bypass lets them pass if nobody listens."""
    rule = ["POSTROUTING", "-o", ifname, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    with ExitStack() as cleanup:
        for tool in ("iptables", "ip6tables"):
            _run(["ip", "netns", "exec", ns, tool, "-w", "-t", "mangle", "-A", *rule])
            cleanup.callback(_run, ["ip", "netns", "exec", ns, tool, "-w", "-t", "mangle", "-D", *rule])
        yield


@contextmanager
def egress_delay(ns: str, ifname: str, seconds: float) -> Iterator[subprocess.Popen]:
    """Hold every packet leaving ns through ifname for `seconds` (order kept; packets wait concurrently)."""
    queue = _ifindex(ns, ifname)  # unique per interface within ns, and NFQUEUE queues are per namespace
    argv = [sys.executable, "-m", "tests.support.delayer", "--queue", str(queue), "--delay-ms", repr(seconds * 1000)]
    delayer = ns_popen(ns, argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, start_new_session=True)
    try:
        _wait_until_ready(delayer)
        with _nfqueue_rule(ns, ifname, queue):
            yield delayer
    finally:
        stop(delayer)
        delayer.stdout.close()  # type: ignore[union-attr]
