"""SMTP prober: banner, EHLO, STARTTLS or implicit TLS, EHLO again, optional AUTH with real credentials, QUIT.

Replies are read whole (every `NNN-` line up to the `NNN ` one) before the prober says anything, so a
multi-line greeting such as postscreen's `220-` pre-greeting is waited out instead of answered early, which
postscreen punishes. Capabilities are every EHLO line after the first, the last (`250 STARTTLS`) included.

The conversation is also the first half of mail_roundtrip, which imports `open_session`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Literal

import msgspec

from agents.config.model import ModuleConfig
from agents.probes import mailproto
from agents.probes.base import ProberSpec
from agents.probes.mailproto import (
    Connection,
    Dialect,
    Endpoint,
    Greeting,
    MailAuth,
    MailError,
    Phases,
    TlsMode,
    check_common,
    excerpt,
)
from agents.probes.mailproto import MailFailure as Failure  # the mail probers' reasons and the common ones
from agents.probes.resolve import split_host_port
from agents.probes.tlsinfo import TLS_CONTEXTS, TlsContexts, TlsSettings
from agents.resources import ProbeResources
from agents.results import Metric, ProbeResult, ProbeTarget, Sample

DURATION = Metric("probe_smtp_duration_seconds", "Duration of the SMTP conversation by phase")
BANNER_CODE = Metric("probe_smtp_banner_status_code", "Status code of the server's greeting (220 when ready)")
STARTTLS_ADVERTISED = Metric("probe_smtp_starttls_advertised", "1 if the EHLO reply before TLS offered STARTTLS, else 0")

SMTP_PORT, SMTPS_PORT = 25, 465
_REPLY_LINE = re.compile(r"^(\d{3})([ -]|$)")


class SmtpSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    port: int | None = None  # used when the address has no ':port'; default 465 for tls: implicit, else 25
    tls: TlsMode = "starttls"
    tls_config: TlsSettings = TlsSettings()
    ehlo: str | None = None  # EHLO name; default the address literal of our end, e.g. [10.0.0.5]
    banner_regexp: str | None = None  # searched in the greeting, one line each, e.g. '^220 mail\.tinh\.gov\.vn '
    require_auth_mechanisms: list[str] = []  # fail with auth_unsupported unless EHLO offers each of them
    auth: MailAuth | None = None  # log in with these credentials
    auth_mechanism: Literal["PLAIN", "LOGIN"] | None = None  # default PLAIN when offered, else LOGIN

    def validate(self, timeout: float) -> None:
        check_common(self.port, self.banner_regexp, self.auth)
        if self.auth_mechanism is not None and self.auth is None:
            raise ValueError("auth_mechanism: set auth (username and password) as well")

    @property
    def default_port(self) -> int:
        """The port when the address names none."""
        if self.port is not None:
            return self.port
        return SMTPS_PORT if self.tls == "implicit" else SMTP_PORT


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # as received, codes included

    @property
    def texts(self) -> list[str]:
        return [line[4:] for line in self.lines]

    def __str__(self) -> str:
        return excerpt(" / ".join(self.lines))


async def read_reply(connection: Connection) -> Reply:
    """One reply: `NNN-text` lines up to and including the `NNN text` line."""
    lines: list[str] = []
    while True:
        line = await connection.read_line()
        match = _REPLY_LINE.match(line)
        if match is None:
            raise MailError(Failure.PROTOCOL_ERROR, f"not an SMTP reply after {connection.last_step}: {excerpt(line)}")
        lines.append(line)
        if match.group(2) != "-":
            return Reply(int(match.group(1)), tuple(lines))


async def command(connection: Connection, line: str, step: str | None = None) -> Reply:
    await connection.send_line(line, step)
    return await read_reply(connection)


def parse_capabilities(reply: Reply) -> dict[str, list[str]]:
    """EHLO keywords (upper case) -> parameters; the first line is the server's name, not a capability."""
    capabilities: dict[str, list[str]] = {}
    for text in reply.texts[1:]:
        keyword, *parameters = re.split(r"[ =]", text.strip())  # `AUTH=LOGIN PLAIN` from old servers too
        if keyword:
            capabilities[keyword.upper()] = [p.upper() for p in parameters if p]
    return capabilities


async def quit_session(connection: Connection) -> None:
    reply = await command(connection, "QUIT")
    if reply.code != 221:
        raise MailError(Failure.PROTOCOL_ERROR, f"QUIT answered {reply}")


class SmtpSession:
    """One SMTP conversation (mailproto.MailSession): EHLO names our end as the settings say, AUTH as offered."""

    def __init__(self, connection: Connection, settings: SmtpSettings) -> None:
        self.connection = connection
        self.settings = settings
        self.capabilities: dict[str, list[str]] = {}  # of the last EHLO

    async def read_greeting(self) -> Greeting:
        reply = await read_reply(self.connection)
        return Greeting(reply.code == 220, list(reply.lines), str(reply), (BANNER_CODE(reply.code),))

    async def refresh_capabilities(self) -> None:
        name = self.settings.ehlo or _address_literal(self.connection.local_ip)
        reply = await command(self.connection, f"EHLO {name}", "EHLO")
        if reply.code != 250:
            raise MailError(Failure.PROTOCOL_ERROR, f"EHLO answered {reply}")
        self.capabilities = parse_capabilities(reply)

    async def start_tls(self) -> None:
        reply = await command(self.connection, "STARTTLS")
        if reply.code != 220:
            raise MailError(Failure.NO_STARTTLS, f"STARTTLS answered {reply}")

    async def login(self, auth: MailAuth) -> None:
        offered = self.capabilities.get("AUTH", [])
        mechanism = self.settings.auth_mechanism or ("PLAIN" if "PLAIN" in offered or "LOGIN" not in offered else "LOGIN")
        if mechanism not in offered:
            where = "on this connection" if self.connection.ssl_object is not None else "before TLS"
            raise MailError(Failure.AUTH_UNSUPPORTED, f"AUTH {mechanism} not offered {where} (offered: {' '.join(offered) or 'none'})")
        if mechanism == "PLAIN":
            reply = await command(self.connection, "AUTH PLAIN " + _b64(f"\0{auth.username}\0{auth.secret()}"), "AUTH PLAIN")
        else:
            reply = await _auth_login(self.connection, auth)
        if reply.code != 235:
            raise MailError(Failure.AUTH_FAILED, f"AUTH {mechanism} answered {reply}")

    def close(self) -> None:
        self.connection.close()


def _check_mechanisms(session: SmtpSession, settings: SmtpSettings) -> None:
    offered = session.capabilities.get("AUTH", [])
    missing = [mechanism for mechanism in settings.require_auth_mechanisms if mechanism.upper() not in offered]
    if missing:
        raise MailError(
            Failure.AUTH_UNSUPPORTED,
            f"AUTH {' '.join(missing)} not offered (offered: {' '.join(offered) or 'no AUTH at all'})",
        )


SMTP = Dialect(
    session=SmtpSession,
    duration=DURATION,
    advertised=STARTTLS_ADVERTISED,
    starttls="STARTTLS",
    capability_phase="ehlo",
    capabilities_before_starttls=True,
    check_capabilities=_check_mechanisms,
)


async def open_session(
    endpoint: Endpoint,
    settings: SmtpSettings,
    contexts: TlsContexts,
    deadline: float,
    phases: Phases,
    samples: list[Sample],
) -> Connection:
    """Connect and go as far as the settings ask: TLS, banner and EHLO checks, AUTH. Ready for QUIT or MAIL."""
    return (await mailproto.open_session(SMTP, endpoint, settings, contexts, deadline, phases, samples)).connection


def _address_literal(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


async def _auth_login(connection: Connection, auth: MailAuth) -> Reply:
    reply = await command(connection, "AUTH LOGIN")
    if reply.code != 334:
        return reply
    reply = await command(connection, _b64(auth.username), "the AUTH LOGIN user name")
    if reply.code != 334:
        return reply
    return await command(connection, _b64(auth.secret()), "the AUTH LOGIN password")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


async def probe(target: ProbeTarget, module: ModuleConfig[SmtpSettings], resources: ProbeResources) -> ProbeResult:
    return await mailproto.run_probe(SMTP, target, module, resources.get(TLS_CONTEXTS), _quit)


async def _quit(session: SmtpSession, settings: SmtpSettings, phases: Phases, samples: list[Sample]) -> None:
    with phases.timed("quit"):
        await quit_session(session.connection)


SPEC = ProberSpec(
    "smtp", SmtpSettings, probe, host_of=lambda address: split_host_port(address, 0)[0], failures=Failure,
    prepare=mailproto.prepare,
)
