"""SMTP prober: banner, EHLO, STARTTLS or implicit TLS, EHLO again, optional AUTH with real credentials, QUIT.

Replies are read whole (every `NNN-` line up to the `NNN ` one) before the prober says anything, so a
multi-line greeting such as postscreen's `220-` pre-greeting is waited out instead of answered early, which
postscreen punishes. Capabilities are every EHLO line after the first, the last (`250 STARTTLS`) included.

The conversation is also the first half of mail_roundtrip, which imports `open_session`.
"""

from __future__ import annotations

import base64
import functools
import re
import time
from dataclasses import dataclass
from typing import Literal

import msgspec

from agents.config.model import ModuleConfig
from agents.probes.base import ProberSpec
from agents.probes.mailproto import MailFailure as Failure  # the mail probers' reasons and the common ones
from agents.probes.mailproto import (
    Connection,
    Endpoint,
    MailAuth,
    MailError,
    Phases,
    TlsMode,
    TlsUpgrade,
    banner_matches,
    check_common,
    connect,
    excerpt,
    summary,
    target_endpoint,
)
from agents.probes.resolve import split_host_port
from agents.probes.tcp import FAILED_DUE_TO_REGEX
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


async def open_session(
    endpoint: Endpoint,
    settings: SmtpSettings,
    contexts: TlsContexts,
    deadline: float,
    phases: Phases,
    samples: list[Sample],
) -> Connection:
    """Connect and go as far as the settings ask: TLS, banner and EHLO checks, AUTH. Ready for QUIT or MAIL."""
    replay = functools.partial(_to_handshake, endpoint, settings, deadline)
    upgrade = TlsUpgrade(settings.tls_config, contexts, endpoint.server_name, replay, samples)
    connection = await connect(endpoint, deadline, phases)
    try:
        if settings.tls == "implicit":
            with phases.timed("tls"):
                await upgrade.secure(connection)
        with phases.timed("banner"):
            await _greeting(connection, settings, samples)
        with phases.timed("ehlo"):
            capabilities = await _ehlo(connection, settings)
        if settings.tls != "implicit":
            samples.append(STARTTLS_ADVERTISED(1 if "STARTTLS" in capabilities else 0))
        if settings.tls in ("starttls", "opportunistic") and "STARTTLS" in capabilities:
            with phases.timed("starttls"):
                await _starttls(connection)
                await upgrade.secure(connection)
            with phases.timed("ehlo"):
                capabilities = await _ehlo(connection, settings)
        elif settings.tls == "starttls":
            raise MailError(Failure.NO_STARTTLS, "the server does not offer STARTTLS")
        _check_mechanisms(settings.require_auth_mechanisms, capabilities)
        if settings.auth is not None:
            with phases.timed("auth"):
                await _authenticate(connection, settings, settings.auth, capabilities)
    except BaseException:
        connection.close()
        raise
    return connection


async def _to_handshake(endpoint: Endpoint, settings: SmtpSettings, deadline: float) -> Connection:
    """A second connection brought to where the TLS handshake starts (to read a failing server's certificates)."""
    connection = await connect(endpoint, deadline, Phases(DURATION))
    if settings.tls == "implicit":
        return connection
    try:
        await read_reply(connection)
        await _ehlo(connection, settings)
        await _starttls(connection)
    except BaseException:
        connection.close()
        raise
    return connection


async def _greeting(connection: Connection, settings: SmtpSettings, samples: list[Sample]) -> None:
    reply = await read_reply(connection)
    samples.append(BANNER_CODE(reply.code))
    if reply.code != 220:
        raise MailError(Failure.BAD_BANNER, f"the server greeted with {reply}")
    if settings.banner_regexp is not None:
        matched = banner_matches(settings.banner_regexp, list(reply.lines))
        samples.append(FAILED_DUE_TO_REGEX(0 if matched else 1))
        if not matched:
            raise MailError(Failure.BAD_BANNER, f"the greeting {reply} does not match {settings.banner_regexp!r}")


async def _ehlo(connection: Connection, settings: SmtpSettings) -> dict[str, list[str]]:
    name = settings.ehlo or _address_literal(connection.local_ip)
    reply = await command(connection, f"EHLO {name}", "EHLO")
    if reply.code != 250:
        raise MailError(Failure.PROTOCOL_ERROR, f"EHLO answered {reply}")
    return parse_capabilities(reply)


def _address_literal(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


async def _starttls(connection: Connection) -> None:
    reply = await command(connection, "STARTTLS")
    if reply.code != 220:
        raise MailError(Failure.NO_STARTTLS, f"STARTTLS answered {reply}")


def _check_mechanisms(required: list[str], capabilities: dict[str, list[str]]) -> None:
    offered = capabilities.get("AUTH", [])
    missing = [mechanism for mechanism in required if mechanism.upper() not in offered]
    if missing:
        raise MailError(
            Failure.AUTH_UNSUPPORTED,
            f"AUTH {' '.join(missing)} not offered (offered: {' '.join(offered) or 'no AUTH at all'})",
        )


async def _authenticate(connection: Connection, settings: SmtpSettings, auth: MailAuth, capabilities: dict[str, list[str]]) -> None:
    offered = capabilities.get("AUTH", [])
    mechanism = settings.auth_mechanism or ("PLAIN" if "PLAIN" in offered or "LOGIN" not in offered else "LOGIN")
    if mechanism not in offered:
        where = "on this connection" if connection.ssl_object is not None else "before TLS"
        raise MailError(Failure.AUTH_UNSUPPORTED, f"AUTH {mechanism} not offered {where} (offered: {' '.join(offered) or 'none'})")
    if mechanism == "PLAIN":
        reply = await command(connection, "AUTH PLAIN " + _b64(f"\0{auth.username}\0{auth.secret()}"), "AUTH PLAIN")
    else:
        reply = await _auth_login(connection, auth)
    if reply.code != 235:
        raise MailError(Failure.AUTH_FAILED, f"AUTH {mechanism} answered {reply}")


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
    settings = module.settings
    deadline = time.monotonic() + module.timeout
    phases = Phases(DURATION)
    samples: list[Sample] = []
    try:
        endpoint = await target_endpoint(target, settings.default_port, module, settings.tls_config.server_name)
        samples += endpoint.samples
        connection = await open_session(endpoint, settings, resources.get(TLS_CONTEXTS), deadline, phases, samples)
        try:
            with phases.timed("quit"):
                await quit_session(connection)
            detail = summary(connection, settings.auth is not None)
        finally:
            connection.close()
    except MailError as exc:
        return ProbeResult.failed(exc.failure, exc.detail, samples + phases.samples())
    return ProbeResult(success=True, detail=detail, samples=samples + phases.samples())


SPEC = ProberSpec("smtp", SmtpSettings, probe, host_of=lambda address: split_host_port(address, 0)[0], failures=Failure)
