"""A real net-snmp snmpd in the foreground on a loopback UDP port: v2c community and a v3 SHA/AES user.

Each start gets a fresh persistent directory (snmpd saves the v3 user there on exit, and a stale one would
change the user's keys). The many-interface variant runs snmpd inside a network namespace that holds veth
pairs (this kernel has no dummy or vlan links); `call_in_netns` runs test code in a thread that has entered
that namespace, so the code under test opens its sockets there without knowing about namespaces.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from tests.support.netns import netns, ns_popen
from tests.support.ports import free_port
from tests.support.procs import stop
from tests.support.require import require_binary

COMMUNITY = "c0mmunity-s3cret"  # distinctive, so tests can prove it never leaks
# this community sees no ifXTable (a view excludes 1.3.6.1.2.1.31), like a cheap switch with 32-bit counters only
NO_IFX_COMMUNITY = "0ld-sw1tch-s3cret"
V3_USER = "testuser"
V3_AUTH_PASSWORD = "authpass123"
V3_PRIV_PASSWORD = "privpass123"
READY_TIMEOUT = 10.0
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
V3_AUTH_ONLY_USER = "authonly"  # authNoPriv, SHA
V3_NO_AUTH_USER = "noauth"  # noAuthNoPriv
# more v3 users, one per protocol pair worth proving (net-snmp spellings; same passphrases as V3_USER)
V3_PROTOCOL_USERS = {
    "md5des": ("MD5", "DES"),
    "sha224aes192": ("SHA-224", "AES-192"),
    "sha256aes": ("SHA-256", "AES"),
    "sha384aes256c": ("SHA-384", "AES-256-C"),
    "sha512aes256": ("SHA-512", "AES-256"),
}
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


@dataclass
class Snmpd:
    """A running snmpd; `restart()` stops it by PID and starts it again on the same port (sysUpTime resets)."""

    host: str
    port: int
    directory: Path
    ns: str | None = None
    community: str = COMMUNITY
    user: str = V3_USER
    auth_password: str = V3_AUTH_PASSWORD
    priv_password: str = V3_PRIV_PASSWORD
    proc: subprocess.Popen | None = field(default=None, repr=False)
    starts: itertools.count = field(default_factory=itertools.count, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        run_dir = self.directory / f"run{next(self.starts)}"
        (run_dir / "persist").mkdir(parents=True)
        config = run_dir / "snmpd.conf"
        config.write_text(_config(self.host, self.port), encoding="utf-8")
        argv = [
            require_binary("snmpd"), "-f", "-C", "-c", str(config), "-I", "-smux,mteTrigger,mteTriggerConf",
            "-LF", "0-5", str(run_dir / "snmpd.log"), "-p", str(run_dir / "snmpd.pid"),
        ]
        env = {**os.environ, "SNMP_PERSISTENT_DIR": str(run_dir / "persist"), "MIBS": ""}
        popen = dict(stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.proc = ns_popen(self.ns, argv, **popen) if self.ns else subprocess.Popen(argv, **popen)
        self._wait_until_answering()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def snmp_command(self, tool: str, *args: str, version: str = "2c") -> list[str]:
        """argv of a net-snmp client tool (snmpget, snmpbulkwalk...) against this agent, run where snmpd runs."""
        if version == "3":
            auth = ["-v3", "-l", "authPriv", "-u", self.user, "-a", "SHA", "-A", self.auth_password,
                    "-x", "AES", "-X", self.priv_password]
        else:
            auth = [f"-v{version}", "-c", self.community]
        argv = [require_binary(tool, "snmp"), "-On", "-Ln", *auth, self.address, *args]
        return ["ip", "netns", "exec", self.ns, *argv] if self.ns else argv

    def run_tool(self, tool: str, *args: str, version: str = "2c", timeout: float = 30.0) -> str:
        env = {**os.environ, "MIBS": ""}
        done = subprocess.run(self.snmp_command(tool, *args, version=version), capture_output=True, text=True,
                              timeout=timeout, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed with code {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"snmpd exited with code {self.proc.returncode}; see {self.directory}")
            try:
                self.run_tool("snmpget", "-t", "0.2", "-r", "0", SYS_UPTIME, timeout=5)
                return
            except RuntimeError:
                time.sleep(0.05)
        raise TimeoutError(f"snmpd on {self.address} not answering after {READY_TIMEOUT}s")


def agent_config(devices: str, extra: str = "") -> str:
    """An agent config with auths `v1`, `v2c`, `v3` and `no_ifx` (v2c without ifXTable; secrets from AGENT_ENV's
    variables) and these snmp_devices."""
    return (
        "agent: {id: snmp-test, agency: so-tttt}\n"
        "snmp_auths:\n"
        '  v1: {version: 1, community: "${SNMPD_COMMUNITY}"}\n'
        '  v2c: {version: 2c, community: "${SNMPD_COMMUNITY}"}\n'
        '  no_ifx: {version: 2c, community: "${SNMPD_NO_IFX_COMMUNITY}"}\n'
        f'  v3: {{version: 3, username: {V3_USER}, auth_protocol: SHA, auth_password: "${{SNMPD_AUTH}}", '
        'priv_protocol: AES, priv_password: "${SNMPD_PRIV}"}\n'
        f"snmp_devices:\n{devices}{extra}"
    )


AGENT_ENV = {
    "SNMPD_COMMUNITY": COMMUNITY, "SNMPD_NO_IFX_COMMUNITY": NO_IFX_COMMUNITY,
    "SNMPD_AUTH": V3_AUTH_PASSWORD, "SNMPD_PRIV": V3_PRIV_PASSWORD,
}


def _config(host: str, port: int) -> str:
    users = {V3_USER: ("SHA", "AES"), **V3_PROTOCOL_USERS}
    return (
        f"agentAddress udp:{host}:{port}\nrocommunity {COMMUNITY} 127.0.0.1\n"
        f"view noifxtable included .1\nview noifxtable excluded .1.3.6.1.2.1.31\n"
        f"rocommunity {NO_IFX_COMMUNITY} 127.0.0.1 -V noifxtable\n"
        + "".join(
            f'createUser {user} {auth} "{V3_AUTH_PASSWORD}" {priv} "{V3_PRIV_PASSWORD}"\nrouser {user} priv\n'
            for user, (auth, priv) in users.items()
        )
        + f'createUser {V3_AUTH_ONLY_USER} SHA "{V3_AUTH_PASSWORD}"\nrouser {V3_AUTH_ONLY_USER} auth\n'
        + f"createUser {V3_NO_AUTH_USER}\nrouser {V3_NO_AUTH_USER} noauth\n"
    )


@contextmanager
def running_snmpd(directory: Path, ns: str | None = None) -> Iterator[Snmpd]:
    """snmpd on 127.0.0.1 at a free high UDP port (of the host, or of namespace `ns`)."""
    port = free_port(socket.SOCK_DGRAM) if ns is None else 16161
    server = Snmpd("127.0.0.1", port, directory, ns)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def add_veth_pairs(ns: str, first: int, count: int) -> None:
    """`count` veth pairs vaN/vbN (N from `first`) inside ns, up: two interfaces each."""
    commands = "".join(
        f"link add va{n} type veth peer name vb{n}\nlink set va{n} up\nlink set vb{n} up\n"
        for n in range(first, first + count)
    )
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=commands, text=True, check=True, capture_output=True,
                   timeout=60)


@contextmanager
def snmpd_with_interfaces(directory: Path, veth_pairs: int = 100) -> Iterator[Snmpd]:
    """snmpd inside a fresh namespace holding `veth_pairs` veth pairs plus lo (2 * veth_pairs + 1 interfaces)."""
    with netns("snmp") as ns:
        add_veth_pairs(ns, 0, veth_pairs)
        with running_snmpd(directory, ns) as server:
            yield server


def call_in_netns(ns: str, function: Callable[[], T]) -> T:
    """Run `function` in a new thread that has entered namespace `ns`; sockets it opens live there."""
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            _enter_netns(ns)
            outcome["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=body, name=f"in-netns-{ns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _enter_netns(ns: str) -> None:
    """setns(2) for the calling thread only (os.setns needs Python 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {ns}: {os.strerror(errno)}")
    finally:
        os.close(fd)
