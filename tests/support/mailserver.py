"""A real Postfix + Dovecot pair on 127.0.0.1 high ports, sharing one Maildir tree, for the mail probers' tests.

Postfix delivers the virtual domain `test.local` into Maildirs that Dovecot serves over IMAP and POP3; Postfix
AUTH is SASL through Dovecot's auth socket. Every listener a test needs is there at once:

* Postfix: `smtp` (STARTTLS offered, no AUTH, like an MX), `submission` (TLS required, AUTH), `smtps` (implicit
  TLS, AUTH), `smtp_no_tls` (neither STARTTLS nor TLS, AUTH allowed), `smtp_expired` (STARTTLS with an expired
  certificate), `smtp_starttls_last` (STARTTLS is the last EHLO line), `smtp_tls12` (TLS 1.3 disabled),
  `postscreen` (a `220-` pre-greeting; a client that talks before the full banner is dropped).
* Dovecot: imap, imaps, pop3, pop3s on `host`; the same ports on `no_tls_host` offer no STARTTLS/STLS, and on
  `expired_host` present the expired certificate.

Configs, queue, logs and Maildirs live in one fresh directory under /tmp (mode 0755: Postfix's delivery agent and
Dovecot's mail processes run as the `mail` user and must reach the Maildirs). Both daemons run in the foreground,
in their own process groups, and are stopped by PID.

`mail_module`, `sample_value`, `has_sample` and `phases` are the small helpers the mail tests share.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from agents.catalog import parse_config
from agents.config.model import ModuleConfig
from agents.results import ProbeResult
from tests.support.certs import CertFiles, make_ca, make_leaf
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_binary, require_root

DOMAIN = "test.local"
MAIL_USER = "mail"  # Debian's own system user for mail storage: no user is created for the tests
STARTUP_TIMEOUT = 15.0
POSTSCREEN_GREET_WAIT = "1s"


@dataclass(frozen=True)
class Mailbox:
    address: str
    password: str


# A space and a double quote exercise IMAP quoting; the non-ASCII one needs an IMAP literal.
USER = Mailbox(f"user@{DOMAIN}", 'se cret"pw')
PROBE = Mailbox(f"probe@{DOMAIN}", "probe-pw-7")
NON_ASCII = Mailbox(f"viet@{DOMAIN}", "mật-khẩu-9")
MAILBOXES = (USER, PROBE, NON_ASCII)

SMTP_LISTENERS = (
    "smtp", "submission", "smtps", "smtp_no_tls", "smtp_expired", "smtp_starttls_last", "smtp_tls12", "postscreen",
)
DOVECOT_LISTENERS = ("imap", "imaps", "pop3", "pop3s")


@dataclass(frozen=True)
class MailSystem:
    root: Path
    ports: dict[str, int]  # listener name -> port (see the module docstring)
    ca: CertFiles  # signs the valid and the expired server certificate
    certificate: CertFiles
    expired_certificate: CertFiles
    postfix_config: Path
    postfix_log: Path
    host: str = "127.0.0.1"
    no_tls_host: str = "127.0.0.2"
    expired_host: str = "127.0.0.3"

    def address(self, listener: str, host: str | None = None) -> str:
        return f"{host or self.host}:{self.ports[listener]}"

    def maildir(self, mailbox: Mailbox) -> Path:
        local, _, domain = mailbox.address.partition("@")
        return self.root / "mail" / domain / local / "Maildir"

    def message_count(self, mailbox: Mailbox) -> int:
        """Messages in the Maildir as Dovecot would count them (new/ and cur/), read from disk."""
        maildir = self.maildir(mailbox)
        return sum(len(list((maildir / sub).iterdir())) for sub in ("new", "cur") if (maildir / sub).is_dir())

    def password_file(self, mailbox: Mailbox) -> Path:
        """A file holding the mailbox's password, for `password_file:` in probe settings."""
        return self.root / "secrets" / mailbox.address

    def put_message(self, mailbox: Mailbox, subject: str) -> None:
        """Drop a message straight into the Maildir, as a delivery agent would (owned by the mail user)."""
        maildir = self.maildir(mailbox)
        name = f"{time.time_ns()}.netmon-test.{os.getpid()}"
        text = f"From: <someone@{DOMAIN}>\r\nTo: <{mailbox.address}>\r\nSubject: {subject}\r\n\r\nhello\r\n"
        path = maildir / "tmp" / name
        path.write_text(text, encoding="ascii")
        owner = pwd.getpwnam(MAIL_USER)
        os.chown(path, owner.pw_uid, owner.pw_gid)
        path.rename(maildir / "new" / name)

    def flush_queue(self) -> None:
        """`postqueue -f`: deliver deferred mail now, also mail held back by defer_transports."""
        subprocess.run(["postqueue", "-c", str(self.postfix_config), "-f"], check=True, timeout=10, capture_output=True)

    def queue_size(self) -> int:
        listing = subprocess.run(
            ["postqueue", "-c", str(self.postfix_config), "-j"], check=True, timeout=10, capture_output=True, text=True
        )
        return len(listing.stdout.splitlines())


@dataclass(frozen=True)
class _Setup:
    """What both daemons' configs need to agree on."""

    certificate: CertFiles
    expired_certificate: CertFiles
    uid: int  # the mail user's, owner of every Maildir
    gid: int
    mail_root: Path
    sasl_socket: Path  # Dovecot's auth listener for Postfix


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _make_certificates(directory: Path) -> tuple[CertFiles, CertFiles, CertFiles]:
    ca = make_ca(directory)
    names = ("localhost", "127.0.0.1", "127.0.0.2", "127.0.0.3")
    valid = make_leaf(directory, ca, "server", names)
    now = dt.datetime.now(dt.timezone.utc)
    expired = make_leaf(
        directory, ca, "expired", names, valid_from=now - dt.timedelta(days=60), valid_until=now - dt.timedelta(days=2)
    )
    return ca, valid, expired


def _write_password_files(directory: Path) -> None:
    directory.mkdir(mode=0o700)
    for mailbox in MAILBOXES:
        _write(directory / mailbox.address, mailbox.password + "\n")


def _make_maildirs(root: Path, uid: int, gid: int) -> None:
    for mailbox in MAILBOXES:
        local = mailbox.address.partition("@")[0]
        for sub in ("new", "cur", "tmp"):
            (root / DOMAIN / local / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
    for directory, _, files in os.walk(root):
        os.chown(directory, uid, gid)
        for name in files:
            os.chown(os.path.join(directory, name), uid, gid)


# --- Dovecot ------------------------------------------------------------------------------------------------------


def _dovecot_config(directory: Path, system: _Setup, ports: dict[str, int]) -> str:
    valid, expired = system.certificate, system.expired_certificate
    return f"""\
protocols = imap pop3
listen = 127.0.0.1 127.0.0.2 127.0.0.3
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
ssl = yes
ssl_cert = <{valid.cert}
ssl_key = <{valid.key}
mail_location = maildir:~/Maildir
first_valid_uid = {system.uid}
auth_mechanisms = plain login
disable_plaintext_auth = no
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
mail_max_userip_connections = 100
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = {directory}/users
}}
userdb {{
  driver = passwd-file
  args = {directory}/users
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {ports["imap"]}
  }}
  inet_listener imaps {{
    port = {ports["imaps"]}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {ports["pop3"]}
  }}
  inet_listener pop3s {{
    port = {ports["pop3s"]}
    ssl = yes
  }}
}}
local 127.0.0.2 {{
  ssl = no
}}
local 127.0.0.3 {{
  ssl_cert = <{expired.cert}
  ssl_key = <{expired.key}
}}
"""


def _dovecot_users(mail_root: Path, uid: int, gid: int) -> str:
    lines = []
    for mailbox in MAILBOXES:
        local, _, domain = mailbox.address.partition("@")
        lines.append(f"{mailbox.address}:{{PLAIN}}{mailbox.password}:{uid}:{gid}::{mail_root / domain / local}::")
    return "\n".join(lines) + "\n"


# --- Postfix ------------------------------------------------------------------------------------------------------


def _postfix_main(directory: Path, system: _Setup, defer_delivery: bool) -> str:
    valid = system.certificate
    return f"""\
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
maillog_file_prefixes = {directory}
maillog_file = {directory}/postfix.log
# microsecond arrival times (in the queue ID) and delays in the log: the roundtrip accuracy check reads them
enable_long_queue_ids = yes
delay_logging_resolution_limit = 6
myhostname = mail.{DOMAIN}
mydomain = {DOMAIN}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
biff = no
smtpd_banner = $myhostname ESMTP netmon-test
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {system.mail_root}
virtual_mailbox_maps = texthash:{directory}/vmailbox
virtual_minimum_uid = {system.uid}
virtual_uid_maps = static:{system.uid}
virtual_gid_maps = static:{system.gid}
default_transport = error:outbound mail disabled
relay_transport = error:outbound mail disabled
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_tls_chain_files = {valid.key}, {valid.cert}
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = {system.sasl_socket}
smtpd_sasl_auth_enable = no
postscreen_greet_action = drop
postscreen_greet_wait = {POSTSCREEN_GREET_WAIT}
defer_transports = {"virtual" if defer_delivery else ""}
"""


def _postfix_master(ports: dict[str, int], expired: CertFiles) -> str:
    auth = "-o smtpd_sasl_auth_enable=yes"
    hidden_after_starttls = "chunking,smtputf8,dsn,8bitmime,enhancedstatuscodes,auth"
    services = [
        f"127.0.0.1:{ports['smtp']} inet n - n - - smtpd",
        f"127.0.0.1:{ports['submission']} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt {auth}",
        f"127.0.0.1:{ports['smtps']} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes {auth}",
        f"127.0.0.1:{ports['smtp_no_tls']} inet n - n - - smtpd -o smtpd_tls_security_level=none {auth}",
        f"127.0.0.1:{ports['smtp_expired']} inet n - n - - smtpd -o smtpd_tls_chain_files={expired.key},{expired.cert}",
        f"127.0.0.1:{ports['smtp_starttls_last']} inet n - n - - smtpd -o smtpd_discard_ehlo_keywords={hidden_after_starttls}",
        f"127.0.0.1:{ports['smtp_tls12']} inet n - n - - smtpd -o smtpd_tls_protocols=!TLSv1.3",
        f"127.0.0.1:{ports['postscreen']} inet n - n - 1 postscreen -o postscreen_access_list=",
        "smtpd pass - - n - - smtpd",
        "dnsblog unix - - n - 0 dnsblog",
        "tlsproxy unix - - n - 0 tlsproxy",
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "proxywrite unix - - n - 1 proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "local unix - n n - - local",
        "virtual unix - n n - - virtual",
        "lmtp unix - - n - - lmtp",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(services) + "\n"


def _postfix_mailboxes() -> str:
    lines = []
    for mailbox in MAILBOXES:
        local, _, domain = mailbox.address.partition("@")
        lines.append(f"{mailbox.address} {domain}/{local}/Maildir/")
    return "\n".join(lines) + "\n"


def _prepare_postfix(directory: Path, system: _Setup, ports: dict[str, int], defer_delivery: bool) -> None:
    _write(directory / "main.cf", _postfix_main(directory, system, defer_delivery))
    _write(directory / "master.cf", _postfix_master(ports, system.expired_certificate))
    _write(directory / "vmailbox", _postfix_mailboxes())
    postfix = pwd.getpwnam("postfix")
    (directory / "queue").mkdir(exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    os.chown(directory / "data", postfix.pw_uid, postfix.pw_gid)  # the master dies on master.lock otherwise
    # `postfix check` creates the queue directories with their owners and modes
    done = subprocess.run(["postfix", "-c", str(directory), "check"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        log = directory / "postfix.log"
        said = log.read_text(errors="replace") if log.exists() else done.stdout + done.stderr
        raise RuntimeError(f"postfix check failed: {said.strip()}")


def _wait_for_all(host_ports: list[tuple[str, int]], procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for host, port in host_ports:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode} during startup")
        wait_for_port(host, port, timeout=max(deadline - time.monotonic(), 0.1))


@contextmanager
def running_mail_system(defer_delivery: bool = False) -> Iterator[MailSystem]:
    """Postfix + Dovecot, ready to accept connections on every listener; stopped and removed on exit.

    defer_delivery sets Postfix's `defer_transports = virtual`: mail is accepted and queued but not delivered
    until `flush_queue()`.
    """
    require_root("Postfix and Dovecot switch to their own users")
    master = require_binary("master", "postfix")
    dovecot = require_binary("dovecot", "dovecot-imapd")
    require_binary("postfix", "postfix")
    require_binary("postqueue", "postfix")
    with ExitStack() as cleanup:
        root = Path(tempfile.mkdtemp(prefix="netmon-mail-", dir="/tmp"))
        cleanup.callback(shutil.rmtree, root, True)
        root.chmod(0o755)
        mail_user = pwd.getpwnam(MAIL_USER)
        uid, gid = mail_user.pw_uid, mail_user.pw_gid
        ca, valid, expired = _make_certificates(root / "certs")
        _make_maildirs(root / "mail", uid, gid)
        _write_password_files(root / "secrets")
        ports = {name: free_port() for name in SMTP_LISTENERS + DOVECOT_LISTENERS}
        dovecot_dir, postfix_dir = root / "dovecot", root / "postfix"
        system = _Setup(valid, expired, uid, gid, root / "mail", dovecot_dir / "run" / "auth-postfix")
        _write(dovecot_dir / "users", _dovecot_users(root / "mail", uid, gid))
        _write(dovecot_dir / "dovecot.conf", _dovecot_config(dovecot_dir, system, ports))
        _prepare_postfix(postfix_dir, system, ports, defer_delivery)
        dovecot_proc = cleanup.enter_context(
            running([dovecot, "-F", "-c", str(dovecot_dir / "dovecot.conf")], log_path=str(root / "dovecot.out"))
        )
        postfix_proc = cleanup.enter_context(
            running([master, "-c", str(postfix_dir), "-d"], log_path=str(root / "postfix.out"))
        )
        # not the postscreen port: a probing connect would be a postscreen client of its own
        listening = [name for name in DOVECOT_LISTENERS + SMTP_LISTENERS if name != "postscreen"]
        try:
            _wait_for_all([("127.0.0.1", ports[name]) for name in listening], [dovecot_proc, postfix_proc])
        except (TimeoutError, RuntimeError) as exc:  # say which listener and what the servers logged
            logs = {name: (root / name).read_text(errors="replace")[-2000:]
                    for name in ("dovecot.out", "postfix.out", "postfix/postfix.log") if (root / name).exists()}
            raise RuntimeError(f"{exc}; ports {ports}; server output: {logs}") from exc
        yield MailSystem(
            root=root,
            ports=ports,
            ca=ca,
            certificate=valid,
            expired_certificate=expired,
            postfix_config=postfix_dir,
            postfix_log=postfix_dir / "postfix.log",
        )


def mail_module(prober: str, settings: str, timeout: str = "5s") -> ModuleConfig:
    """A module of `prober` whose settings are a YAML flow mapping, loaded by the real config loader."""
    config = (
        "agent: {id: mail-test, agency: so-test}\n"
        f"modules:\n  m:\n    prober: {prober}\n    timeout: {timeout}\n    {prober}: {settings}\n"
    )
    return parse_config(config, "mail-test.yml").modules["m"]


def sample_value(result: ProbeResult, name: str, **labels: str) -> float:
    found = [s.value for s in result.samples if s.metric.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {sorted({s.metric.name for s in result.samples})}"
    return found[0]


def has_sample(result: ProbeResult, name: str) -> bool:
    return any(sample.metric.name == name for sample in result.samples)


def phases(result: ProbeResult, metric: str) -> dict[str, float]:
    return {dict(s.labels)["phase"]: s.value for s in result.samples if s.metric.name == metric}
