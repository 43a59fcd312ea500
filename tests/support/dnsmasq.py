"""A real dnsmasq in the foreground on a free loopback port (UDP and TCP), with records from the test.

Its own config file in a temp dir replaces /etc/dnsmasq.conf; no upstream servers, no /etc/hosts, so it
answers only from the records given and never sends a packet off the machine. Stopped by PID.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_binary


@dataclass(frozen=True)
class Dnsmasq:
    host: str
    port: int
    log: Path

    @property
    def address(self) -> str:
        """host:port as a probe target or resolver, brackets around IPv6."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def free_udp_and_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on host (dnsmasq serves both on one port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        port = free_port(socket.SOCK_STREAM, host)
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


@contextmanager
def running_dnsmasq(directory: Path, records: Sequence[str], host: str = "127.0.0.1") -> Iterator[Dnsmasq]:
    """dnsmasq answering from `records` (dnsmasq.conf lines such as host-record=..., mx-host=...)."""
    binary = require_binary("dnsmasq")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "dnsmasq.conf"
    config.write_text("\n".join(records) + "\n", encoding="utf-8")
    log = directory / "dnsmasq.log"
    port = free_udp_and_tcp_port(host)
    argv = [
        binary, "-k", f"--conf-file={config}", "--no-resolv", "--no-hosts", "--bind-interfaces",
        f"--listen-address={host}", f"--port={port}", "--pid-file=", f"--log-facility={log}", "--log-queries",
    ]
    with running(argv, log_path=str(directory / "dnsmasq.out")) as proc:
        wait_for_port(host, port, proc=proc)
        yield Dnsmasq(host, port, log)
