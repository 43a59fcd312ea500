"""IMAP prober: greeting, CAPABILITY, STARTTLS or implicit TLS, LOGIN with real credentials, optional EXAMINE of a
mailbox with its message count, LOGOUT.

EXAMINE is the read-only SELECT: the probe never changes flags. A user name or password that cannot travel as a
quoted string (non-ASCII, quotes are fine) is sent as a synchronizing literal. mail_roundtrip imports
`open_session` and `ImapSession` to watch its probe mailbox.
"""

from __future__ import annotations

import base64
import itertools
import re
from dataclasses import dataclass

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

DURATION = Metric("probe_imap_duration_seconds", "Duration of the IMAP conversation by phase")
MAILBOX_MESSAGES = Metric("probe_imap_mailbox_messages", "Messages in the examined mailbox (EXISTS)")
STARTTLS_ADVERTISED = Metric("probe_imap_starttls_advertised", "1 if CAPABILITY before TLS offered STARTTLS, else 0")

IMAP_PORT, IMAPS_PORT = 143, 993
_LITERAL_AT_END = re.compile(r"\{(\d+)\}$")
_EXISTS = re.compile(r"^\* (\d+) EXISTS\b", re.IGNORECASE)
_QUOTABLE = re.compile(r"^[\x20-\x7e]*$")


class ImapSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    port: int | None = None  # used when the address has no ':port'; default 993 for tls: implicit, else 143
    tls: TlsMode = "starttls"
    tls_config: TlsSettings = TlsSettings()
    banner_regexp: str | None = None  # searched in the greeting line
    auth: MailAuth | None = None  # LOGIN with these credentials
    mailbox: str | None = None  # EXAMINE this mailbox after LOGIN and report its message count

    def validate(self, timeout: float) -> None:
        check_common(self.port, self.banner_regexp, self.auth)
        if self.mailbox is not None and self.auth is None:
            raise ValueError("mailbox: examining a mailbox needs auth (username and password)")

    @property
    def default_port(self) -> int:
        """The port when the address names none."""
        if self.port is not None:
            return self.port
        return IMAPS_PORT if self.tls == "implicit" else IMAP_PORT


@dataclass(frozen=True, slots=True)
class Response:
    status: str  # OK, NO or BAD
    text: str
    untagged: tuple[str, ...]

    def __str__(self) -> str:
        return excerpt(f"{self.status} {self.text}")


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def astring(text: str) -> str | bytes:
    """A quoted string where IMAP allows one, else the bytes of a literal."""
    return quoted(text) if _QUOTABLE.match(text) else text.encode("utf-8")


def mailbox_name(name: str) -> str:
    """The quoted mailbox name in RFC 3501 modified UTF-7: 'Thư đến' travels as "Th&AbA- &AREevw-n"."""
    out: list[str] = []
    for printable, run in itertools.groupby(name, key=lambda char: 0x20 <= ord(char) <= 0x7E):
        text = "".join(run)
        if printable:
            out.append(text.replace("&", "&-"))
        else:
            encoded = base64.b64encode(text.encode("utf-16-be")).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{encoded}-")
    return quoted("".join(out))


class ImapSession:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.capabilities: set[str] = set()
        self._tags = 0

    async def read_line(self) -> str:
        """One response line with any literals it carries inlined (as FETCH of header fields returns them)."""
        line = await self.connection.read_line()
        while (literal := _LITERAL_AT_END.search(line)) is not None:
            data = await self.connection.read_exactly(int(literal.group(1)))
            line = line[: literal.start()] + data.decode("utf-8", "replace") + await self.connection.read_line()
        return line

    async def command(self, *parts: str | bytes, step: str | None = None) -> Response:
        """Send one tagged command (bytes parts as literals) and read up to its tagged response."""
        self._tags += 1
        tag = f"n{self._tags}"
        step = step or str(parts[0])
        pending = tag
        for part in parts:
            if isinstance(part, bytes):
                await self.connection.send(f"{pending} {{{len(part)}}}\r\n".encode(), step)
                rejected = await self._continuation(tag)
                if rejected is not None:
                    return rejected
                await self.connection.send(part, step)
                pending = ""
            else:
                pending += f" {part}"
        await self.connection.send(pending.encode("utf-8") + b"\r\n", step)
        return await self._response(tag)

    async def _continuation(self, tag: str) -> Response | None:
        """Wait for '+' before a literal; the tagged response instead if the server refuses it."""
        untagged: list[str] = []
        while True:
            line = await self.read_line()
            if line.startswith("+"):
                return None
            if line.startswith(f"{tag} "):
                return _tagged(line, tag, untagged)
            untagged.append(line)

    async def _response(self, tag: str) -> Response:
        untagged: list[str] = []
        while True:
            line = await self.read_line()
            if line.startswith(f"{tag} "):
                return _tagged(line, tag, untagged)
            untagged.append(line)

    async def read_greeting(self) -> Greeting:
        line = await self.read_line()
        return Greeting(re.match(r"^\* (OK|PREAUTH)\b", line, re.IGNORECASE) is not None, [line], excerpt(line))

    async def start_tls(self) -> None:
        response = await self.command("STARTTLS")
        if response.status != "OK":
            raise MailError(Failure.NO_STARTTLS, f"STARTTLS answered {response}")

    async def refresh_capabilities(self) -> None:
        response = await self.command("CAPABILITY")
        if response.status != "OK":
            raise MailError(Failure.PROTOCOL_ERROR, f"CAPABILITY answered {response}")
        self.capabilities = {
            word.upper() for line in response.untagged if line.upper().startswith("* CAPABILITY ") for word in line.split()[2:]
        }

    async def login(self, auth: MailAuth) -> None:
        if "LOGINDISABLED" in self.capabilities:
            raise MailError(Failure.AUTH_UNSUPPORTED, "the server refuses LOGIN on this connection (LOGINDISABLED): use TLS")
        response = await self.command("LOGIN", astring(auth.username), astring(auth.secret()), step="LOGIN")
        if response.status != "OK":
            raise MailError(Failure.AUTH_FAILED, f"LOGIN answered {response}")

    async def open_mailbox(self, name: str, read_only: bool) -> int:
        """EXAMINE (read-only) or SELECT a mailbox; its message count."""
        verb = "EXAMINE" if read_only else "SELECT"
        response = await self.command(verb, mailbox_name(name))
        if response.status != "OK":
            raise MailError(Failure.PROTOCOL_ERROR, f"{verb} {name!r} answered {response}")
        counts = [int(match.group(1)) for line in response.untagged if (match := _EXISTS.match(line))]
        return counts[-1] if counts else 0

    async def logout(self) -> None:
        response = await self.command("LOGOUT")
        if response.status != "OK":
            raise MailError(Failure.PROTOCOL_ERROR, f"LOGOUT answered {response}")

    def close(self) -> None:
        self.connection.close()


def _tagged(line: str, tag: str, untagged: list[str]) -> Response:
    status, _, text = line[len(tag) + 1 :].partition(" ")
    return Response(status.upper(), text, tuple(untagged))


IMAP = Dialect(
    session=lambda connection, settings: ImapSession(connection),
    duration=DURATION,
    advertised=STARTTLS_ADVERTISED,
    starttls="STARTTLS",
    capability_phase="capability",
)


async def open_session(
    endpoint: Endpoint,
    settings: ImapSettings,
    contexts: TlsContexts,
    deadline: float,
    phases: Phases,
    samples: list[Sample],
) -> ImapSession:
    """Connect, greet, secure as configured and LOGIN when credentials are set."""
    return await mailproto.open_session(IMAP, endpoint, settings, contexts, deadline, phases, samples)


async def probe(target: ProbeTarget, module: ModuleConfig[ImapSettings], resources: ProbeResources) -> ProbeResult:
    return await mailproto.run_probe(IMAP, target, module, resources.get(TLS_CONTEXTS), _examine_and_log_out)


async def _examine_and_log_out(session: ImapSession, settings: ImapSettings, phases: Phases, samples: list[Sample]) -> None:
    if settings.mailbox is not None:
        with phases.timed("select"):
            samples.append(MAILBOX_MESSAGES(await session.open_mailbox(settings.mailbox, read_only=True)))
    with phases.timed("logout"):
        await session.logout()


SPEC = ProberSpec(
    "imap", ImapSettings, probe, host_of=lambda address: split_host_port(address, 0)[0], failures=Failure,
    prepare=mailproto.prepare,
)
