"""The `ssh_hosts` and `ssh_checks` config sections (the SSH domain's top-level keys), and the resolved objects
the prober runs with.

Key files and known_hosts files are paths read at each new connection (as OpenSSH reads its IdentityFile and
known_hosts), so keys can be rotated and hosts added without a reload; only the key's passphrase is a secret in
the config, and only by reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from agents.ssh.hostkeys import HostKeyPolicy, known_hosts_entry
from agents.ssh.parsers import Parse
from foundation.config.types import Duration, Secret, SecretFile, SecretRef


class SshHostConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    address: str  # IP or name of the server
    port: int = 22
    user: str
    key_file: str  # private key (OpenSSH or PEM; ed25519, ecdsa or rsa)
    key_passphrase: SecretRef | None = None  # ${ENV}
    key_passphrase_file: SecretFile | None = None
    known_hosts: str | None = None  # an OpenSSH known_hosts file ...
    host_key_fingerprint: str | None = None  # ... or the host key's "SHA256:..." (ssh-keygen -lf)
    max_sessions: int = 2  # commands run at once on this host; more checks wait for a free session


class SshCheckConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    host: str  # a key of ssh_hosts
    command: str | None = None  # a fixed command with its arguments, e.g. "df /var/spool/postfix"
    exec: str | list[str] | None = None  # or any command: an argv list, or a string split like sh would
    parser: str | None = None  # default: the fixed command's own parser; exit_code for exec
    regex: str | None = None  # the regex parser's pattern, with named groups
    interval: Duration | None = None
    timeout: Duration | None = None
    labels: dict[str, str] = {}
    enabled: bool = True


class SshSections(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The top-level keys the SSH domain owns (registered by agents/ssh/probe.py's SPEC)."""

    ssh_hosts: dict[str, SshHostConfig] = {}  # servers without an agent, checked over SSH (docs/ssh.md)
    ssh_checks: list[SshCheckConfig] = []  # expanded into targets of the ssh prober (agents/ssh/targets.py)


@dataclass(frozen=True, slots=True)
class SshHost:
    """One server and how to log in to it; equal configs share one connection."""

    name: str
    address: str
    port: int
    user: str
    key_file: str
    key_passphrase: Secret | None
    host_keys: HostKeyPolicy
    max_sessions: int

    @property
    def known_hosts_entry(self) -> str:
        return known_hosts_entry(self.address, self.port)

    @property
    def display(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SshCheck:
    """The settings of one `ssh` prober target: where, what to run, how to read the output."""

    host: SshHost
    command: str  # the command line sent to the server
    fallback_command: str | None  # run instead when `command` exits non-zero without output
    parser: str
    parse: Parse
