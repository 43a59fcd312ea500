"""Which host keys a host may present: those in a known_hosts file, or one pinned fingerprint.

An unknown or changed key is refused, never added: a key is trusted only once an admin has put it in the file
or the config. The known_hosts file is read at each new connection (as OpenSSH does), so adding a host needs no
reload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # paramiko costs ~20 MB; the config model imports this module even where SSH is unused
    import paramiko

FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")  # as `ssh-keygen -lf` prints it, without padding

# The host key algorithms that present a key of each known_hosts key type (RSA keys sign with SHA-2 first).
_ALGORITHMS_OF_KEY_TYPE = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


class HostKeyUnknown(Exception):
    """The host presented a key, and nothing is known about this host."""


class HostKeyChanged(Exception):
    """The host presented a key other than the one(s) trusted for it."""


@dataclass(frozen=True, slots=True)
class HostKeyPolicy:
    known_hosts: str | None = None  # path of an OpenSSH known_hosts file (hashed entries work)
    fingerprint: str | None = None  # pinned "SHA256:..." of the host's key

    def trusted_keys(self, entry: str) -> dict[str, paramiko.PKey]:
        """Key type -> key trusted for the known_hosts entry ("host" or "[host]:port"); read now."""
        if self.known_hosts is None:
            return {}
        from agents.ssh.sshlib import paramiko

        try:
            known = paramiko.HostKeys(self.known_hosts)
        except OSError as exc:
            raise HostKeyUnknown(f"known_hosts file {self.known_hosts} cannot be read: {exc.strerror}") from None
        except paramiko.hostkeys.InvalidHostKey as exc:
            raise HostKeyUnknown(f"known_hosts file {self.known_hosts} has an invalid line: {exc.line.strip()[:80]}") from None
        found = known.lookup(entry)
        return dict(found) if found is not None else {}

    def prefer(self, options: paramiko.SecurityOptions, trusted: dict[str, paramiko.PKey]) -> None:
        """Ask first for a key type we already trust, so a host with several host keys shows a known one."""
        wanted = [algorithm for key_type in trusted for algorithm in _ALGORITHMS_OF_KEY_TYPE.get(key_type, (key_type,))]
        supported = list(options.key_types)
        first = [algorithm for algorithm in wanted if algorithm in supported]
        options.key_types = tuple(first + [algorithm for algorithm in supported if algorithm not in first])

    def verify(self, entry: str, key: paramiko.PKey, trusted: dict[str, paramiko.PKey]) -> None:
        """Raise HostKeyUnknown or HostKeyChanged unless key is trusted for entry."""
        presented = f"{key.get_name()} {key.fingerprint}"
        if self.fingerprint is not None:
            if key.fingerprint != self.fingerprint:
                raise HostKeyChanged(f"{entry} presented host key {presented}, not the pinned {self.fingerprint}")
            return
        if not trusted:
            raise HostKeyUnknown(f"{entry} presented host key {presented}, which is not in {self.known_hosts}")
        known = trusted.get(key.get_name())
        if known is None or known.asbytes() != key.asbytes():
            types = ", ".join(sorted(trusted))
            raise HostKeyChanged(f"{entry} presented host key {presented}, not the {types} key in {self.known_hosts}")


def known_hosts_entry(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: bare on port 22, "[host]:port" otherwise."""
    return address if port == 22 else f"[{address}]:{port}"
