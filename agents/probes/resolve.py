"""Name resolution shared by every prober, with blackbox_exporter's ip-protocol preference."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from dataclasses import dataclass

from agents.results import Failure, Metric, Reason, Sample

DEFAULT_GATEWAY = "default_gateway"  # address keyword: the host's IPv4 default route

DNS_LOOKUP_TIME = Metric("probe_dns_lookup_time_seconds", "Returns the time taken for probe dns lookup in seconds")
IP_PROTOCOL = Metric("probe_ip_protocol", "Specifies whether probe ip protocol is IP4 or IP6")
IP_ADDR_HASH = Metric("probe_ip_addr_hash", "Specifies the hash of IP address. It's useful to detect if the IP address changes.")


class ResolveError(Exception):
    def __init__(self, failure: Reason, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Resolved:
    ip: str
    family: int  # socket.AF_INET or socket.AF_INET6
    seconds: float

    def samples(self) -> list[Sample]:
        return [
            DNS_LOOKUP_TIME(self.seconds),
            IP_PROTOCOL(6 if self.family == socket.AF_INET6 else 4),
            IP_ADDR_HASH(ip_hash(self.ip)),
        ]


@functools.lru_cache(maxsize=4096)  # every run of a target asks again; ipaddress parsing was 8 % of an ICMP run
def ip_hash(ip: str) -> int:
    """blackbox_exporter's ipHash: FNV-1a (32 bit) over the address's bytes (4 for IPv4, 16 for IPv6, no zone)."""
    value = 0x811C9DC5
    for byte in ipaddress.ip_address(ip.split("%")[0]).packed:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def default_gateway() -> str | None:
    """The IPv4 default gateway from /proc/net/route (Linux), or None."""
    try:
        with open("/proc/net/route", encoding="ascii") as routes:
            next(routes)
            for line in routes:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000" and int(fields[3], 16) & 2:
                    return socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
    except (OSError, ValueError, StopIteration):
        return None
    return None


@functools.lru_cache(maxsize=4096)
def _literal(host: str) -> Resolved | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return Resolved(host.strip("[]"), family, 0.0)


async def resolve(host: str, preferred: str = "ip4", fallback: bool = True, timeout: float = 5.0) -> Resolved:
    """One address for host: literal IPs as they are, names through the system resolver."""
    if host == DEFAULT_GATEWAY:
        gateway = default_gateway()
        if gateway is None:
            raise ResolveError(Failure.RESOLVE, "this host has no IPv4 default gateway")
        host = gateway
    literal = _literal(host)
    if literal is not None:
        return literal
    all_ips = await resolve_all(host, preferred, fallback, timeout)
    return all_ips[0]


async def resolve_all(host: str, preferred: str = "ip4", fallback: bool = True, timeout: float = 5.0) -> list[Resolved]:
    """Every address of host in the preferred family (or, with fallback, the other one)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    first = socket.AF_INET if preferred == "ip4" else socket.AF_INET6
    families = [first] + ([socket.AF_INET6 if first == socket.AF_INET else socket.AF_INET] if fallback else [])
    started = time.perf_counter()
    deadline = started + timeout  # one budget for both families, not one each
    last_error = "no address"
    for family in families:
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM),
                max(deadline - time.perf_counter(), 0.001),
            )
        except asyncio.TimeoutError:
            raise ResolveError(Failure.TIMEOUT, f"resolving {host} timed out") from None
        except socket.gaierror as exc:
            last_error = exc.strerror or str(exc)
            continue
        ips = list(dict.fromkeys(info[4][0] for info in infos))
        if ips:
            seconds = time.perf_counter() - started
            return [Resolved(ip, family, seconds) for ip in ips]
    raise ResolveError(Failure.RESOLVE, f"cannot resolve {host}: {last_error}")


def split_host_port(address: str, default_port: int | None) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'v6' or 'host' (with default_port) -> (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    else:
        host, port_text = address, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"invalid port in {address!r}")
        return host, int(port_text)
    if default_port is None:
        raise ValueError(f"{address!r} has no port and the module sets none")
    return host, default_port
