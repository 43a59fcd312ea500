"""A routed chain of namespaces for path traces: agency → district router → provincial core → data-center edge → server.

```
 agency ── 10.77.0.0/24 ── r1 (district) ── 10.77.1.0/24 ── r2 (core) ── 10.77.2.0/24 ── r3 (DC edge) ── 10.77.3.0/24 ── server
 .2                        .1      .1  │                      .2    .1                   .2    .1                          .2
                                       └─ 10.77.11.0/24 ── r2b (second core) ── 10.77.12.0/24 ─┘
                                          .1             .2               .1                .2
```

Every router forwards and answers with time exceeded from the address of its link towards the agency (r1
10.77.0.1, r2 10.77.1.2, r3 10.77.2.2, r2b 10.77.11.2). r1 routes to the data center through r2; moving that
route to r2b (`Chain.reroute_via_second_core`) changes hop 2. Linux's own ICMP rate limit is off in the routers
and the server (`icmp_ratelimit=0`), so loss a test sees is the loss it injects. Namespaces are created with
unique names and deleted, with every process in them, when the context ends.
"""

from __future__ import annotations

import ipaddress
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from tests.support.netns import _claim_namespaces, _ip, _nft, _owned_namespaces, ns_exec

ROLES = ("agency", "r1", "r2", "r3", "server", "r2b")
# (namespace a, its interface, its address) -- (namespace b, ...), one veth pair per link, all /24
LINKS = (
    ("agency", "uplink", "10.77.0.2", "r1", "agency", "10.77.0.1"),
    ("r1", "core", "10.77.1.1", "r2", "district", "10.77.1.2"),
    ("r2", "edge", "10.77.2.1", "r3", "core", "10.77.2.2"),
    ("r3", "server", "10.77.3.1", "server", "edge", "10.77.3.2"),
    ("r1", "core2", "10.77.11.1", "r2b", "district", "10.77.11.2"),
    ("r2b", "edge", "10.77.12.1", "r3", "core2", "10.77.12.2"),
)
ROUTES = {
    "agency": [("default", "10.77.0.1")],
    "r1": [("default", "10.77.1.2")],
    "r2": [("10.77.0.0/24", "10.77.1.1"), ("default", "10.77.2.2")],
    "r3": [("10.77.0.0/24", "10.77.2.1"), ("10.77.1.0/24", "10.77.2.1"), ("10.77.11.0/24", "10.77.12.1")],
    "r2b": [("10.77.0.0/24", "10.77.11.1"), ("default", "10.77.12.2")],
    "server": [("default", "10.77.3.1")],
}
ROUTERS = ("r1", "r2", "r3", "r2b")
SERVER_IP = "10.77.3.2"
HOPS = ("10.77.0.1", "10.77.1.2", "10.77.2.2", SERVER_IP)  # what a trace from the agency shows, TTL 1..4
SECOND_CORE = "10.77.11.2"  # hop 2 once r1 routes through r2b


@dataclass(frozen=True)
class Chain:
    ns: dict[str, str]  # role -> namespace name

    @property
    def agency(self) -> str:
        return self.ns["agency"]

    def reroute_via_second_core(self) -> None:
        """r1 sends traffic for the data center through r2b instead of r2."""
        _ip(self.ns["r1"], "route", "replace", "default", "via", "10.77.11.2")

    def drop_own_time_exceeded(self, role: str, limit: str | None = None) -> None:
        """The router's own time-exceeded messages are dropped on its output hook: all of them, or those over `limit`
        (an nftables rate such as "2/second"); traffic it forwards is untouched."""
        match = f"limit rate over {limit} " if limit else ""
        _nft(self.ns[role], f"""
table inet netmon_silence {{
    chain out {{
        type filter hook output priority 0; policy accept;
        icmp type time-exceeded {match}drop
    }}
}}
""")

    def drop_every_nth(self, role: str, ifname: str, n: int) -> None:
        """Drop every n-th ICMP packet the router forwards out of ifname: the same share for every tool, however
        few packets it sends (random loss would make two tools' samples differ by more than the loss's spread)."""
        _nft(self.ns[role], f"""
table inet netmon_every_nth {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        oifname "{ifname}" meta l4proto icmp numgen inc mod {n} == 0 drop
    }}
}}
""")


@contextmanager
def router_chain(prefix: str = "nmp") -> Iterator[Chain]:
    """The chain above in fresh namespaces, deleted (with their processes) on exit."""
    with _namespaces(prefix, ROLES) as ns:
        _build(ns, LINKS, ROUTES, ROUTERS)
        yield Chain(ns)


@dataclass(frozen=True)
class LinearChain:
    agency: str  # the namespace to trace from
    server_ip: str
    hops: tuple[str, ...]  # what a trace shows, TTL 1.. (the routers, then the server)
    server_ip6: str
    hops6: tuple[str, ...]


@contextmanager
def linear_chain(routers: int, prefix: str = "nml") -> Iterator[LinearChain]:
    """agency ── r1 ── … ── rN ── server on 10.78.i.0/24 and fd78:i::/64 (link i: .1 / ::1 on the agency's side, .2 /
    ::2 on the other): a path of N + 1 hops, router i answering from 10.78.(i-1).2 and fd78:i-1::2."""
    if not 1 <= routers <= 250:
        raise ValueError(f"routers: 1..250, got {routers}")
    roles = ("agency", *(f"r{i}" for i in range(1, routers + 1)), "server")
    links = tuple(
        (roles[i], "right", f"10.78.{i}.1", roles[i + 1], "left", f"10.78.{i}.2") for i in range(len(roles) - 1)
    )
    routes = {"agency": [("default", "10.78.0.2")], "server": [("default", f"10.78.{routers}.1")]}
    for i in range(1, routers + 1):
        routes[f"r{i}"] = [("default", f"10.78.{i}.2")] + ([("10.78.0.0/24", f"10.78.{i - 1}.1")] if i > 1 else [])
    with _namespaces(prefix, roles) as ns:
        _build(ns, links, routes, roles[1:-1])
        _add_ipv6(ns, roles)
        yield LinearChain(
            ns["agency"], f"10.78.{routers}.2", tuple(f"10.78.{i}.2" for i in range(routers + 1)),
            _v6(f"fd78:{routers:x}::2"), tuple(_v6(f"fd78:{i:x}::2") for i in range(routers + 1)),
        )


def _v6(address: str) -> str:
    return str(ipaddress.IPv6Address(address))  # as the kernel spells it: fd78:0::2 is fd78::2


def _add_ipv6(ns: dict[str, str], roles: tuple[str, ...]) -> None:
    """The same chain in IPv6 (no DAD wait): addresses, default routes onward and the agency's prefix back."""
    last = len(roles) - 1
    for i, role in enumerate(roles):
        if i < last:
            _ip(ns[role], "-6", "addr", "add", f"fd78:{i:x}::1/64", "dev", "right", "nodad")
            _ip(ns[role], "-6", "route", "add", "default", "via", f"fd78:{i:x}::2")
        if i > 0:
            _ip(ns[role], "-6", "addr", "add", f"fd78:{i - 1:x}::2/64", "dev", "left", "nodad")
        if 1 < i < last:
            _ip(ns[role], "-6", "route", "add", "fd78:0::/64", "via", f"fd78:{i - 1:x}::1")
        if 0 < i < last:
            ns_exec(ns[role], ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"], check=True)
        if i > 0:
            ns_exec(ns[role], ["sysctl", "-q", "-w", "net.ipv6.icmp.ratelimit=0"], check=True)
    _ip(ns[roles[last]], "-6", "route", "add", "default", "via", f"fd78:{last - 1:x}::1")


@contextmanager
def _namespaces(prefix: str, roles: tuple[str, ...]) -> Iterator[dict[str, str]]:
    _, names = _claim_namespaces(lambda index: tuple(f"{prefix}{role}{index}" for role in roles))
    with _owned_namespaces(names):
        yield dict(zip(roles, names))


def _build(ns: dict[str, str], links: tuple, routes: dict[str, list[tuple[str, str]]], routers: tuple[str, ...]) -> None:
    """veth pairs with their /24 addresses, static routes, forwarding in the routers, no ICMP rate limit."""
    for a, a_if, a_ip, b, b_if, b_ip in links:
        _ip(ns[a], "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", ns[b])
        for role, ifname, address in ((a, a_if, a_ip), (b, b_if, b_ip)):
            _ip(ns[role], "addr", "add", f"{address}/24", "dev", ifname)
            _ip(ns[role], "link", "set", ifname, "up")
    for role, role_routes in routes.items():
        for destination, gateway in role_routes:
            _ip(ns[role], "route", "add", destination, "via", gateway)
    for role in (*routers, "server"):
        sysctls = ["net.ipv4.icmp_ratelimit=0"] + (["net.ipv4.ip_forward=1"] if role in routers else [])
        ns_exec(ns[role], ["sysctl", "-q", "-w", *sysctls], check=True)
