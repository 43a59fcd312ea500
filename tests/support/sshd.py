"""A real OpenSSH sshd in the foreground on 127.0.0.1 and a high port, with keys made for this run.

The daemon has its own host key (made per run directory, so two runs have different host keys), accepts only
public keys (the ones the test passes) for an unprivileged test user and for root, and logs to a file the test
can read ("Accepted publickey ..." once per connection). It is stopped by PID.

sshd reads authorized keys as the logged-in user, and pytest's temporary directories are private to root, so
the authorized keys and a scratch directory the test user may write to live in a fresh world-readable directory
under /tmp, removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_binary, require_root

TEST_USER = "netmon-sshtest"  # unprivileged; created on first use and kept (creating it is idempotent)
TEST_USER_HOME = "/var/lib/netmon-sshtest"
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    host_public_key: str  # "ssh-ed25519 AAAA..." as in a known_hosts line
    host_key_fingerprint: str  # "SHA256:..." as `ssh-keygen -lf` prints it
    user: str
    log: Path
    directory: Path
    scratch: Path  # writable by the test user (e.g. for pid files of remote commands)

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key}\n"

    def accepted_logins(self) -> int:
        """Connections that authenticated so far (sshd logs one line per authenticated connection)."""
        return self.log.read_text(errors="replace").count("Accepted publickey")


def make_key(path: Path, passphrase: str = "") -> Path:
    """A new ed25519 client key pair at path and path.pub (OpenSSH format, encrypted when passphrase is set)."""
    keygen = require_binary("ssh-keygen", "openssh-client")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", passphrase, "-C", f"netmon-test-{path.name}", "-f", str(path)],
        check=True, capture_output=True, timeout=30,
    )
    return path


def fingerprint(public_key_file: Path) -> str:
    keygen = require_binary("ssh-keygen", "openssh-client")
    listing = subprocess.run([keygen, "-l", "-f", str(public_key_file)], check=True, capture_output=True, text=True, timeout=30)
    return listing.stdout.split()[1]


def ensure_test_user() -> pwd.struct_passwd:
    """The unprivileged login of the tests: a shell, a home, no password (key login only)."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--user-group", "--create-home", "--home-dir", TEST_USER_HOME, "--shell", "/bin/sh", TEST_USER],
        capture_output=True, timeout=30,
    )  # another test run may have created it meanwhile: the lookup below decides
    # without PAM a user with no password hash ("!") is locked and sshd refuses even key logins
    subprocess.run(["usermod", "-p", "*", TEST_USER], check=True, capture_output=True, timeout=30)
    return pwd.getpwnam(TEST_USER)


def _config(directory: Path, shared: Path, port: int) -> str:
    return f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {directory}/host_ed25519
PidFile {directory}/sshd.pid
AuthorizedKeysFile {shared}/authorized_keys/%u
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowUsers {TEST_USER} root
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
LogLevel INFO
"""


def _stop_connections(listener: int) -> None:
    """End the per-connection sshd processes: they start their own sessions, so stopping the listener's
    process group leaves them (and the clients' connections) running, as a restart of a real sshd does."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == listener:
            try:
                os.kill(int(stat.parent.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


@contextmanager
def running_sshd(directory: Path, authorized_keys: Sequence[Path], port: int | None = None) -> Iterator[Sshd]:
    """sshd accepting the given client keys (paths of private keys; their .pub is used) for TEST_USER and root."""
    require_root("sshd switches to the logged-in user")
    sshd = require_binary("sshd", "openssh-server")
    keygen = require_binary("ssh-keygen", "openssh-client")
    user = ensure_test_user()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    host_key = directory / "host_ed25519"
    if not host_key.exists():
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True, capture_output=True, timeout=30)
    with ExitStack() as cleanup:
        shared = Path(tempfile.mkdtemp(prefix="netmon-sshd-", dir="/tmp"))
        cleanup.callback(shutil.rmtree, shared, True)
        shared.chmod(0o755)
        keys = "".join(Path(f"{key}.pub").read_text() for key in authorized_keys)
        (shared / "authorized_keys").mkdir()
        for login in (TEST_USER, "root"):
            (shared / "authorized_keys" / login).write_text(keys)
        scratch = shared / "scratch"
        scratch.mkdir()
        os.chown(scratch, user.pw_uid, user.pw_gid)
        port = port or free_port()
        config = directory / "sshd_config"
        config.write_text(_config(directory, shared, port))
        subprocess.run([sshd, "-t", "-f", str(config)], check=True, capture_output=True, timeout=30)
        log = directory / "sshd.log"
        proc = cleanup.enter_context(running([sshd, "-D", "-e", "-f", str(config)], log_path=str(log)))
        cleanup.callback(_stop_connections, proc.pid)
        wait_for_port("127.0.0.1", port, proc=proc)
        public = Path(f"{host_key}.pub").read_text().split()
        yield Sshd(
            host="127.0.0.1",
            port=port,
            host_public_key=f"{public[0]} {public[1]}",
            host_key_fingerprint=fingerprint(Path(f"{host_key}.pub")),
            user=TEST_USER,
            log=log,
            directory=directory,
            scratch=scratch,
        )
