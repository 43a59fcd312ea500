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
    _, names = _claim_namespaces(lambda index: tuple(f"{prefix}{role}{index}" for role in ROLES))
    with _owned_namespaces(names):
        chain = Chain(dict(zip(ROLES, names)))
        for a, a_if, a_ip, b, b_if, b_ip in LINKS:
            _ip(chain.ns[a], "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", chain.ns[b])
            for role, ifname, address in ((a, a_if, a_ip), (b, b_if, b_ip)):
                _ip(chain.ns[role], "addr", "add", f"{address}/24", "dev", ifname)
                _ip(chain.ns[role], "link", "set", ifname, "up")
        for role, routes in ROUTES.items():
            for destination, gateway in routes:
                _ip(chain.ns[role], "route", "add", destination, "via", gateway)
        for role in (*ROUTERS, "server"):
            sysctls = ["net.ipv4.icmp_ratelimit=0"] + (["net.ipv4.ip_forward=1"] if role in ROUTERS else [])
            ns_exec(chain.ns[role], ["sysctl", "-q", "-w", *sysctls], check=True)
        yield chain
