"""POP3 prober: greeting, CAPA, STLS or implicit TLS, USER/PASS with real credentials, optional STAT with the
maildrop's message count and size, QUIT.

A server that answers CAPA with -ERR (RFC 1939 only) has no known capabilities: STLS then counts as not offered.
mail_roundtrip imports `open_session` and `Pop3Session` to watch its probe mailbox.
"""

from __future__ import annotations

import functools
import re
import time

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
    secure_and_log_in,
    summary,
    target_endpoint,
)
from agents.probes.resolve import split_host_port
from agents.probes.tcp import FAILED_DUE_TO_REGEX
from agents.probes.tlsinfo import TLS_CONTEXTS, TlsContexts, TlsSettings
from agents.resources import ProbeResources
from agents.results import Metric, ProbeResult, ProbeTarget, Sample

DURATION = Metric("probe_pop3_duration_seconds", "Duration of the POP3 conversation by phase")
MAILBOX_MESSAGES = Metric("probe_pop3_mailbox_messages", "Messages in the maildrop (STAT)")
MAILBOX_SIZE = Metric("probe_pop3_mailbox_size_bytes", "Size of the maildrop in bytes (STAT)")
STARTTLS_ADVERTISED = Metric("probe_pop3_starttls_advertised", "1 if CAPA before TLS offered STLS, else 0")

POP3_PORT, POP3S_PORT = 110, 995
_STAT = re.compile(r"^\+OK (\d+) (\d+)")


class Pop3Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    port: int | None = None  # used when the address has no ':port'; default 995 for tls: implicit, else 110
    tls: TlsMode = "starttls"
    tls_config: TlsSettings = TlsSettings()
    banner_regexp: str | None = None  # searched in the greeting line
    auth: MailAuth | None = None  # USER/PASS with these credentials
    stat: bool = False  # STAT after login: report the maildrop's message count and size

    def validate(self, timeout: float) -> None:
        check_common(self.port, self.banner_regexp, self.auth)
        if self.stat and self.auth is None:
            raise ValueError("stat: STAT needs auth (username and password)")

    @property
    def default_port(self) -> int:
        """The port when the address names none."""
        if self.port is not None:
            return self.port
        return POP3S_PORT if self.tls == "implicit" else POP3_PORT


class Pop3Session:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.capabilities: set[str] = set()

    async def command(self, line: str, step: str | None = None) -> str:
        """One command and its status line (+OK ... or -ERR ...)."""
        await self.connection.send_line(line, step)
        return await self.status_line()

    async def status_line(self) -> str:
        line = await self.connection.read_line()
        if not line.startswith(("+OK", "-ERR")):
            raise MailError(Failure.PROTOCOL_ERROR, f"not a POP3 reply after {self.connection.last_step}: {excerpt(line)}")
        return line

    async def multiline(self, line: str) -> tuple[str, list[str]]:
        """A command with a multi-line answer: the status line, and the lines up to '.' with dot-stuffing undone."""
        status = await self.command(line)
        if not status.startswith("+OK"):
            return status, []
        lines: list[str] = []
        while (text := await self.connection.read_line()) != ".":
            lines.append(text[1:] if text.startswith(".") else text)
        return status, lines

    async def refresh_capabilities(self) -> None:
        status, lines = await self.multiline("CAPA")
        self.capabilities = {line.split()[0].upper() for line in lines if line.split()} if status.startswith("+OK") else set()

    async def login(self, auth: MailAuth) -> None:
        if self.capabilities and "USER" not in self.capabilities:
            raise MailError(Failure.AUTH_UNSUPPORTED, "the server does not offer USER/PASS on this connection")
        for line, step in ((f"USER {auth.username}", "USER"), (f"PASS {auth.secret()}", "PASS")):
            status = await self.command(line, step)
            if not status.startswith("+OK"):
                raise MailError(Failure.AUTH_FAILED, f"{step} answered {excerpt(status)}")

    async def stat(self) -> tuple[int, int]:
        status = await self.command("STAT")
        match = _STAT.match(status)
        if match is None:
            raise MailError(Failure.PROTOCOL_ERROR, f"STAT answered {excerpt(status)}")
        return int(match.group(1)), int(match.group(2))

    async def quit(self) -> None:
        status = await self.command("QUIT")
        if not status.startswith("+OK"):
            raise MailError(Failure.PROTOCOL_ERROR, f"QUIT answered {excerpt(status)}")

    def close(self) -> None:
        self.connection.close()


async def open_session(
    endpoint: Endpoint,
    settings: Pop3Settings,
    contexts: TlsContexts,
    deadline: float,
    phases: Phases,
    samples: list[Sample],
) -> Pop3Session:
    """Connect, greet, secure as configured and log in when credentials are set."""
    replay = functools.partial(_to_handshake, endpoint, settings, deadline)
    upgrade = TlsUpgrade(settings.tls_config, contexts, endpoint.server_name, replay, samples)
    session = Pop3Session(await connect(endpoint, deadline, phases))
    try:
        await secure_and_log_in(
            session, settings, upgrade, phases, samples,
            greet=lambda: _greeting(session, settings, samples),
            starttls=lambda: _stls(session),
            keyword="STLS",
            advertised=STARTTLS_ADVERTISED,
        )
    except BaseException:
        session.close()
        raise
    return session


async def _to_handshake(endpoint: Endpoint, settings: Pop3Settings, deadline: float) -> Connection:
    connection = await connect(endpoint, deadline, Phases(DURATION))
    if settings.tls == "implicit":
        return connection
    session = Pop3Session(connection)
    try:
        await session.status_line()
        await _stls(session)
    except BaseException:
        connection.close()
        raise
    return connection


async def _greeting(session: Pop3Session, settings: Pop3Settings, samples: list[Sample]) -> None:
    line = await session.connection.read_line()
    if not line.startswith("+OK"):
        raise MailError(Failure.BAD_BANNER, f"the server greeted with {excerpt(line)}")
    if settings.banner_regexp is not None:
        matched = banner_matches(settings.banner_regexp, [line])
        samples.append(FAILED_DUE_TO_REGEX(0 if matched else 1))
        if not matched:
            raise MailError(Failure.BAD_BANNER, f"the greeting {excerpt(line)} does not match {settings.banner_regexp!r}")


async def _stls(session: Pop3Session) -> None:
    status = await session.command("STLS")
    if not status.startswith("+OK"):
        raise MailError(Failure.NO_STARTTLS, f"STLS answered {excerpt(status)}")


async def probe(target: ProbeTarget, module: ModuleConfig[Pop3Settings], resources: ProbeResources) -> ProbeResult:
    settings = module.settings
    deadline = time.monotonic() + module.timeout
    phases = Phases(DURATION)
    samples: list[Sample] = []
    try:
        endpoint = await target_endpoint(target, settings.default_port, module, settings.tls_config.server_name)
        samples += endpoint.samples
        session = await open_session(endpoint, settings, resources.get(TLS_CONTEXTS), deadline, phases, samples)
        try:
            if settings.stat:
                with phases.timed("stat"):
                    messages, size = await session.stat()
                samples += [MAILBOX_MESSAGES(messages), MAILBOX_SIZE(size)]
            with phases.timed("quit"):
                await session.quit()
            detail = summary(session.connection, settings.auth is not None)
        finally:
            session.close()
    except MailError as exc:
        return ProbeResult.failed(exc.failure, exc.detail, samples + phases.samples())
    return ProbeResult(success=True, detail=detail, samples=samples + phases.samples())


SPEC = ProberSpec("pop3", Pop3Settings, probe, host_of=lambda address: split_host_port(address, 0)[0], failures=Failure)
