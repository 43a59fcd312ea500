"""POP3 prober: greeting, CAPA, STLS or implicit TLS, USER/PASS with real credentials, optional STAT with the
maildrop's message count and size, QUIT.

A server that answers CAPA with -ERR (RFC 1939 only) has no known capabilities: STLS then counts as not offered.
mail_roundtrip imports `open_session` and `Pop3Session` to watch its probe mailbox.
"""

from __future__ import annotations

import re

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

    async def read_greeting(self) -> Greeting:
        line = await self.connection.read_line()
        return Greeting(line.startswith("+OK"), [line], excerpt(line))

    async def start_tls(self) -> None:
        status = await self.command("STLS")
        if not status.startswith("+OK"):
            raise MailError(Failure.NO_STARTTLS, f"STLS answered {excerpt(status)}")

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


POP3 = Dialect(
    session=lambda connection, settings: Pop3Session(connection),
    duration=DURATION,
    advertised=STARTTLS_ADVERTISED,
    starttls="STLS",
    capability_phase="capability",
)


async def open_session(
    endpoint: Endpoint,
    settings: Pop3Settings,
    contexts: TlsContexts,
    deadline: float,
    phases: Phases,
    samples: list[Sample],
) -> Pop3Session:
    """Connect, greet, secure as configured and log in when credentials are set."""
    return await mailproto.open_session(POP3, endpoint, settings, contexts, deadline, phases, samples)


async def probe(target: ProbeTarget, module: ModuleConfig[Pop3Settings], resources: ProbeResources) -> ProbeResult:
    return await mailproto.run_probe(POP3, target, module, resources.get(TLS_CONTEXTS), _stat_and_quit)


async def _stat_and_quit(session: Pop3Session, settings: Pop3Settings, phases: Phases, samples: list[Sample]) -> None:
    if settings.stat:
        with phases.timed("stat"):
            messages, size = await session.stat()
        samples += [MAILBOX_MESSAGES(messages), MAILBOX_SIZE(size)]
    with phases.timed("quit"):
        await session.quit()


SPEC = ProberSpec(
    "pop3", Pop3Settings, probe, host_of=lambda address: split_host_port(address, 0)[0], failures=Failure,
    prepare=mailproto.prepare,
)
