"""mail_roundtrip prober: send one tagged message through the SMTP server (the target), watch the probe mailbox
over IMAP or POP3 until it arrives, measure send and delivery time, and delete it.

One run, bounded by the module timeout:

1. Open the mailbox (IMAP keeps one session for the whole run; POP3 logs in afresh for every look, because a
   POP3 session never sees mail that arrives after its login) and look once: messages of earlier runs that
   were still missing are counted late and deleted.
2. Send the message (AUTH if configured). Its `X-Netmon-Roundtrip` header holds a token that names it.
3. Look every `poll_interval` until it is there or the time left is only the cleanup reserve. Delivery time is
   from the SMTP server's 250 after DATA to the reply of the look that first shows the message, so it is
   late by at most one poll interval plus one round trip.
4. A message still missing stays pending in the ROUNDTRIP_STATES resource: a later run that finds it counts
   it late (never lost) and deletes it; after `lost_after` it is counted lost. Probe messages older than
   `lost_after` that no pending entry knows (an agent restart, or a message already counted lost) are deleted
   uncounted, so the mailbox never fills; younger ones are left alone, since they may belong to a run in
   progress (another agent, or `/probe`, sharing the mailbox).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Callable, Protocol

import msgspec

from agents.config.model import ModuleConfig
from agents.probes import imap, mailproto, pop3, smtp
from agents.probes.base import ProberSpec
from agents.probes.mailproto import Endpoint, MailError, MailFailure, Phases, resolve_endpoint, target_endpoint
from agents.probes.resolve import split_host_port
from agents.probes.tlsinfo import TLS_CONTEXTS, TlsContexts
from agents.resources import ProbeResources, Resource
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Reason, Sample
from foundation.config.types import Duration

log = logging.getLogger(__name__)

SEND_SUCCESS = Metric("probe_mail_roundtrip_send_success", "1 if the SMTP server accepted this run's probe message, else 0")
DELIVERY_SUCCESS = Metric(
    "probe_mail_roundtrip_delivery_success", "1 if this run's probe message reached the mailbox within the timeout, else 0"
)
SEND_DURATION = Metric(
    "probe_mail_roundtrip_send_duration_seconds", "From connecting to the SMTP server until it accepted this run's message"
)
SENT_TIMESTAMP = Metric(
    "probe_mail_roundtrip_sent_timestamp_seconds", "When the SMTP server accepted this run's message, in unixtime"
)
LAST_DELIVERY = Metric(
    "probe_mail_roundtrip_last_delivery_duration_seconds",
    "From acceptance to appearance in the mailbox, for the latest message delivered within the timeout",
)
DELIVERY_TIME = Metric(
    "probe_mail_roundtrip_delivery_duration_seconds",
    "From acceptance to appearance in the mailbox, for each message delivered within the timeout",
    kind="histogram",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
LAST_SUCCESS = Metric(
    "probe_mail_roundtrip_last_success_timestamp_seconds", "When a probe message last arrived within the timeout, in unixtime"
)
SENT = Metric("probe_mail_roundtrip_messages_sent_total", "Probe messages the SMTP server accepted", kind="counter")
DELIVERED = Metric(
    "probe_mail_roundtrip_messages_delivered_total", "Probe messages that arrived within the timeout", kind="counter"
)
LATE = Metric(
    "probe_mail_roundtrip_messages_late_total", "Probe messages that arrived after their timeout, found by a later run", kind="counter"
)
LOST = Metric("probe_mail_roundtrip_messages_lost_total", "Probe messages that had not arrived after lost_after", kind="counter")
PENDING = Metric("probe_mail_roundtrip_pending_messages", "Probe messages sent, not yet arrived and not yet counted lost")

TOKEN_HEADER = "X-Netmon-Roundtrip"
# a header line of its own (POP3), or right after the section name in an IMAP FETCH response
_TOKEN_IN_HEADERS = re.compile(rf"(?:^|\s){TOKEN_HEADER}:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_UID = re.compile(r"\bUID (\d+)", re.IGNORECASE)
_ADDRESS = re.compile(r"^[^\s<>@]+@[^\s<>@]+$")
CLEANUP_RESERVE_RATIO, CLEANUP_RESERVE_MAX = 0.1, 2.0  # of the timeout, kept for deleting and logging out
QUIT_GRACE = 1.0  # seconds to wait for the answer to QUIT once the message is accepted


class RoundtripFailure(MailFailure):
    NOT_DELIVERED = Reason("not_delivered")  # the message did not reach the mailbox in time


class ImapMailbox(imap.ImapSettings, tag_field="protocol", tag="imap"):
    server: str | None = None  # host or host:port of the mailbox server; default the target's host
    poll_interval: Duration = Duration(0.025)  # a look is NOOP + UID SEARCH on one session: cheap


class Pop3Mailbox(pop3.Pop3Settings, tag_field="protocol", tag="pop3"):
    server: str | None = None
    poll_interval: Duration = Duration(0.25)  # each look is a new login: poll less often than over IMAP


class RoundtripSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    mail_from: str
    rcpt_to: str  # the probe mailbox's address
    smtp: smtp.SmtpSettings = smtp.SmtpSettings()
    mailbox: ImapMailbox | Pop3Mailbox  # `protocol: imap` or `protocol: pop3`, then that prober's settings
    lost_after: Duration = Duration(900)

    def validate(self, timeout: float) -> None:
        for key, address in (("mail_from", self.mail_from), ("rcpt_to", self.rcpt_to)):
            if not _ADDRESS.match(address):
                raise ValueError(f"{key}: expected a plain address like probe@example.gov.vn, got {address!r}")
        for key, settings in (("smtp", self.smtp), ("mailbox", self.mailbox)):
            try:
                settings.validate(timeout)
            except ValueError as exc:
                raise ValueError(f"{key}.{exc}") from None
        if self.mailbox.auth is None:
            raise ValueError("mailbox.auth: the probe mailbox needs credentials (username and password)")
        if self.mailbox.poll_interval <= 0:
            raise ValueError("mailbox.poll_interval: must be greater than 0")
        if self.lost_after <= timeout:
            raise ValueError(f"lost_after: must be longer than the module timeout ({timeout:g}s)")


@dataclass(slots=True)
class RoundtripState:
    """What one target remembers between runs."""

    pending: dict[str, float] = field(default_factory=dict)  # token -> when the SMTP server accepted it (unixtime)
    last_delivery_seconds: float | None = None
    last_success_at: float | None = None


class RoundtripStates:
    """Every mail_roundtrip target's state (the ROUNDTRIP_STATES resource)."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str, str | None], RoundtripState] = {}

    def get(self, target: ProbeTarget, module: ModuleConfig) -> RoundtripState:
        return self._states.setdefault((target.name, module.name, target.ip), RoundtripState())


# Messages mail_roundtrip sent and still waits for, per target: they outlive one probe run
ROUNDTRIP_STATES: Resource[RoundtripStates] = Resource("mail_roundtrips", lambda resources: RoundtripStates())


@dataclass(frozen=True, slots=True)
class Sent:
    token: str
    message_id: str
    seconds: float  # connect to accepted
    accepted_at: float  # unix time
    accepted_mono: float  # time.monotonic()
    reply: str = ""  # the server's 250 to the message, e.g. Postfix's "250 2.0.0 Ok: queued as 4Xc1..."


@dataclass(slots=True)
class Run:
    """One run's bookkeeping; `decide` is asked about every probe message a look finds."""

    token: str
    claimed: dict[str, float]  # pending from earlier runs, taken out of the state for this run
    lost_after: float
    sent: Sent | None = None
    delivery_seconds: float | None = None
    late: int = 0
    handled: set[str] = field(default_factory=set)

    def decide(self, token: str | None, seen_at: float) -> bool:
        """Whether to delete the message carrying token; counts it on first sight. Safe to ask twice."""
        if token is None:
            return False
        if token in self.handled:
            return True
        if self.sent is not None and token == self.sent.token:
            self.delivery_seconds = max(seen_at - self.sent.accepted_mono, 0.0)
        elif token in self.claimed:
            del self.claimed[token]
            self.late += 1
        elif not self._abandoned(token):
            return False
        self.handled.add(token)
        return True

    def _abandoned(self, token: str) -> bool:
        sent_ms = token.partition("-")[0]
        return sent_ms.isdigit() and time.time() - int(sent_ms) / 1000 > self.lost_after


def new_token() -> str:
    """Send time in milliseconds (lets any later run judge a leftover's age) and randomness."""
    return f"{int(time.time() * 1000)}-{secrets.token_hex(8)}"


def compose(settings: RoundtripSettings, token: str) -> tuple[str, bytes]:
    """The probe message: its Message-ID, and its bytes as DATA sends them (CRLF, dot-stuffed, final dot)."""
    domain = settings.mail_from.rpartition("@")[2]
    message_id = f"<netmon-roundtrip.{token}@{domain}>"
    lines = [
        f"From: <{settings.mail_from}>",
        f"To: <{settings.rcpt_to}>",
        f"Subject: netmon mail roundtrip {token}",
        f"Date: {formatdate(localtime=True)}",
        f"Message-ID: {message_id}",
        f"{TOKEN_HEADER}: {token}",
        "Auto-Submitted: auto-generated",  # RFC 3834: no vacation replies to the probe
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "netmon measures mail delivery with this message and deletes it when it arrives.",
    ]
    stuffed = ("." + line if line.startswith(".") else line for line in lines)
    return message_id, ("\r\n".join(stuffed) + "\r\n.\r\n").encode("ascii")


async def send(endpoint: Endpoint, settings: RoundtripSettings, contexts: TlsContexts, deadline: float, token: str) -> Sent:
    message_id, data = compose(settings, token)
    started = time.perf_counter()
    connection = await smtp.open_session(endpoint, settings.smtp, contexts, deadline, Phases(smtp.DURATION), [])
    try:
        for line, step, accepted in (
            (f"MAIL FROM:<{settings.mail_from}>", "MAIL FROM", (250,)),
            (f"RCPT TO:<{settings.rcpt_to}>", "RCPT TO", (250, 251)),
            ("DATA", "DATA", (354,)),
        ):
            reply = await smtp.command(connection, line, step)
            if reply.code not in accepted:
                raise MailError(MailFailure.MAIL_REJECTED, f"{step} answered {reply}")
        await connection.send(data, "the message")
        reply = await smtp.read_reply(connection)
        if reply.code != 250:
            raise MailError(MailFailure.MAIL_REJECTED, f"the message was refused: {reply}")
        sent = Sent(token, message_id, time.perf_counter() - started, time.time(), time.monotonic(), str(reply))
        connection.deadline = min(connection.deadline, time.monotonic() + QUIT_GRACE)
        try:
            await smtp.quit_session(connection)
        except MailError:
            pass  # the message is accepted; a server slow to say goodbye does not unsend it
        return sent
    finally:
        connection.close()


Decide = Callable[[str | None, float], bool]


class Watcher(Protocol):
    async def look(self, decide: Decide) -> None:
        """Find the probe messages in the mailbox and delete those `decide` says to."""

    async def close(self) -> None: ...


class ImapWatcher:
    """One IMAP session for the whole run, the probe mailbox selected read-write."""

    def __init__(self, session: imap.ImapSession) -> None:
        self._session = session
        self._tokens: dict[str, str | None] = {}  # UID -> token, fetched once per message

    @classmethod
    async def open(cls, endpoint: Endpoint, settings: ImapMailbox, contexts: TlsContexts, deadline: float) -> "ImapWatcher":
        session = await imap.open_session(endpoint, settings, contexts, deadline, Phases(imap.DURATION), [])
        try:
            await session.open_mailbox(settings.mailbox or "INBOX", read_only=False)
        except BaseException:
            session.close()
            raise
        return cls(session)

    async def look(self, decide: Decide) -> None:
        # Dovecot takes in newly delivered mail on NOOP, not on SEARCH alone: what SEARCH finds was there when
        # NOOP's reply came, the earliest moment this look can vouch for
        await self._checked("NOOP")
        seen_at = time.monotonic()
        found = await self._checked("UID", "SEARCH", "HEADER", TOKEN_HEADER, '""', step="UID SEARCH")
        uids = [word for line in found.untagged if line.upper().startswith("* SEARCH") for word in line.split()[2:]]
        unknown = [uid for uid in uids if uid not in self._tokens]
        if unknown:
            await self._fetch_tokens(unknown)
        doomed = [uid for uid in uids if decide(self._tokens.get(uid), seen_at)]
        if doomed:
            await self._delete(doomed)

    async def _fetch_tokens(self, uids: list[str]) -> None:
        fetched = await self._checked(
            "UID", "FETCH", ",".join(uids), f"(BODY.PEEK[HEADER.FIELDS ({TOKEN_HEADER})])", step="UID FETCH"
        )
        for line in fetched.untagged:
            uid = _UID.search(line)
            if uid is not None:
                token = _TOKEN_IN_HEADERS.search(line)
                self._tokens[uid.group(1)] = token.group(1) if token else None

    async def _delete(self, uids: list[str]) -> None:
        numbers = ",".join(uids)
        await self._checked("UID", "STORE", numbers, "+FLAGS.SILENT", r"(\Deleted)", step="UID STORE")
        if "UIDPLUS" in self._session.capabilities:
            await self._checked("UID", "EXPUNGE", numbers, step="UID EXPUNGE")
        else:
            await self._checked("EXPUNGE")
        for uid in uids:
            self._tokens.pop(uid, None)

    async def _checked(self, *parts: str, step: str | None = None) -> imap.Response:
        response = await self._session.command(*parts, step=step)
        if response.status != "OK":
            raise MailError(Failure.PROTOCOL_ERROR, f"{step or parts[0]} answered {response}")
        return response

    async def close(self) -> None:
        try:
            await self._session.logout()
        except MailError:
            pass
        finally:
            self._session.close()


class Pop3Watcher:
    """A fresh POP3 login for every look; deletions take effect at its QUIT."""

    def __init__(self, endpoint: Endpoint, settings: Pop3Mailbox, contexts: TlsContexts, deadline: float) -> None:
        self._endpoint, self._settings, self._contexts, self._deadline = endpoint, settings, contexts, deadline
        self._tokens: dict[str, str | None] = {}  # UIDL -> token, read once per message

    async def look(self, decide: Decide) -> None:
        session = await pop3.open_session(
            self._endpoint, self._settings, self._contexts, self._deadline, Phases(pop3.DURATION), []
        )
        try:
            seen_at = time.monotonic()  # the maildrop was opened at login
            doomed = []
            for number, key in await self._listing(session):
                if decide(await self._token(session, number, key), seen_at):
                    doomed.append(number)
            for number in doomed:
                status = await session.command(f"DELE {number}")
                if not status.startswith("+OK"):
                    raise MailError(Failure.PROTOCOL_ERROR, f"DELE answered {status[:200]!r}")
            await session.quit()
        finally:
            session.close()

    @staticmethod
    async def _listing(session: pop3.Pop3Session) -> list[tuple[str, str | None]]:
        """(message number, UIDL or None when the server has no UIDL) of every message."""
        status, lines = await session.multiline("UIDL")
        if status.startswith("+OK"):
            return [(parts[0], parts[1]) for parts in (line.split() for line in lines) if len(parts) == 2]
        status, lines = await session.multiline("LIST")
        return [(line.split()[0], None) for line in lines if line.split()]

    async def _token(self, session: pop3.Pop3Session, number: str, key: str | None) -> str | None:
        if key is not None and key in self._tokens:
            return self._tokens[key]
        verb = f"TOP {number} 0" if "TOP" in session.capabilities else f"RETR {number}"
        status, lines = await session.multiline(verb)
        headers = "\n".join(lines[: lines.index("")] if "" in lines else lines) if status.startswith("+OK") else ""
        match = _TOKEN_IN_HEADERS.search(headers)
        token = match.group(1) if match else None
        if key is not None:
            self._tokens[key] = token
        return token

    async def close(self) -> None:
        return None


async def _open_watcher(
    target: ProbeTarget, module: ModuleConfig[RoundtripSettings], settings: RoundtripSettings, contexts: TlsContexts, deadline: float
) -> Watcher:
    mailbox = settings.mailbox
    server = mailbox.server or split_host_port(target.address, settings.smtp.default_port)[0]
    endpoint = await resolve_endpoint(server, mailbox.default_port, module, mailbox.tls_config.server_name)
    if isinstance(mailbox, ImapMailbox):
        return await ImapWatcher.open(endpoint, mailbox, contexts, deadline)
    return Pop3Watcher(endpoint, mailbox, contexts, deadline)


async def _watch_until_delivered(watcher: Watcher, run: Run, interval: float, until: float) -> None:
    while run.delivery_seconds is None and time.monotonic() < until:
        await watcher.look(run.decide)
        if run.delivery_seconds is None:
            await asyncio.sleep(max(min(interval, until - time.monotonic()), 0))


@dataclass(slots=True)
class Errors:
    send: MailError | None = None
    mailbox: MailError | None = None


async def probe(target: ProbeTarget, module: ModuleConfig[RoundtripSettings], resources: ProbeResources) -> ProbeResult:
    settings = module.settings
    state = resources.get(ROUNDTRIP_STATES).get(target, module)
    run = Run(new_token(), state.pending, settings.lost_after)
    state.pending = {}  # claimed by this run; whatever it does not find goes back in _settle, whatever happens
    try:
        errors = await _roundtrip(run, target, module, resources.get(TLS_CONTEXTS))
    finally:
        lost = _settle(state, run)
    return _result(run, errors, _samples(run, state, lost), _earlier_runs(run.late, lost))


async def _roundtrip(run: Run, target: ProbeTarget, module: ModuleConfig[RoundtripSettings], contexts: TlsContexts) -> Errors:
    settings = module.settings
    deadline = time.monotonic() + module.timeout
    looks_until = deadline - min(module.timeout * CLEANUP_RESERVE_RATIO, CLEANUP_RESERVE_MAX)
    errors = Errors()
    watcher: Watcher | None = None
    try:
        try:
            watcher = await _open_watcher(target, module, settings, contexts, deadline)
            await watcher.look(run.decide)  # late messages of earlier runs, before this run's is on its way
        except MailError as exc:
            errors.mailbox = exc
        try:
            endpoint = await target_endpoint(target, settings.smtp.default_port, module, settings.smtp.tls_config.server_name)
            run.sent = await send(endpoint, settings, contexts, deadline, run.token)
            # the Message-ID (and the server's queue id) to find this run's message in the mail server's log
            log.info("mail_roundtrip %s: %s accepted by %s:%d: %s", target.name, run.sent.message_id, endpoint.ip, endpoint.port,
                     run.sent.reply)
        except MailError as exc:
            errors.send = exc
        if watcher is not None and errors.mailbox is None and run.sent is not None:
            try:
                await _watch_until_delivered(watcher, run, settings.mailbox.poll_interval, looks_until)
            except MailError as exc:
                errors.mailbox = exc
    finally:
        if watcher is not None:
            await watcher.close()
    return errors


def _result(run: Run, errors: Errors, samples: list[Sample], earlier: str) -> ProbeResult:
    if errors.send is not None:
        return ProbeResult.failed(errors.send.failure, f"smtp: {errors.send.detail}{earlier}", samples)
    if errors.mailbox is not None:
        return ProbeResult.failed(errors.mailbox.failure, f"mailbox: {errors.mailbox.detail}{earlier}", samples)
    assert run.sent is not None
    if run.delivery_seconds is None:
        detail = f"{run.sent.message_id} not in the mailbox within the timeout; it stays pending{earlier}"
        return ProbeResult.failed(RoundtripFailure.NOT_DELIVERED, detail, samples)
    sent_ms, delivered_ms = run.sent.seconds * 1000, run.delivery_seconds * 1000
    detail = f"{run.sent.message_id} sent in {sent_ms:.0f} ms, delivered in {delivered_ms:.0f} ms{earlier}"
    return ProbeResult(success=True, detail=detail, samples=samples)


def _earlier_runs(late: int, lost: int) -> str:
    parts = [f"{late} late" if late else "", f"{lost} lost" if lost else ""]
    counted = " and ".join(part for part in parts if part)
    return f"; earlier runs' messages: {counted}" if counted else ""


def _settle(state: RoundtripState, run: Run) -> int:
    """Put back what is still missing, count what waited too long as lost; the number lost."""
    now = time.time()
    lost = 0
    for token, accepted_at in run.claimed.items():
        if now - accepted_at > run.lost_after:
            lost += 1
        else:
            state.pending[token] = accepted_at
    if run.sent is not None and run.delivery_seconds is None:
        state.pending[run.sent.token] = run.sent.accepted_at
    if run.delivery_seconds is not None:
        state.last_delivery_seconds = run.delivery_seconds
        state.last_success_at = now
    return lost


def _samples(run: Run, state: RoundtripState, lost: int) -> list[Sample]:
    delivered = run.delivery_seconds is not None
    samples = [
        SEND_SUCCESS(1 if run.sent is not None else 0),
        DELIVERY_SUCCESS(1 if delivered else 0),
        SENT(1 if run.sent is not None else 0),
        DELIVERED(1 if delivered else 0),
        LATE(run.late),
        LOST(lost),
        PENDING(len(state.pending)),
        DELIVERY_TIME.observe([run.delivery_seconds] if run.delivery_seconds is not None else []),
    ]
    if run.sent is not None:
        samples += [SEND_DURATION(run.sent.seconds), SENT_TIMESTAMP(run.sent.accepted_at)]
    if state.last_delivery_seconds is not None and state.last_success_at is not None:
        samples += [LAST_DELIVERY(state.last_delivery_seconds), LAST_SUCCESS(state.last_success_at)]
    return samples


def prepare(module: ModuleConfig[RoundtripSettings], resources: ProbeResources) -> None:
    for settings in (module.settings.smtp, module.settings.mailbox):
        mailproto.prepare_settings(settings, resources)


SPEC = ProberSpec(
    "mail_roundtrip", RoundtripSettings, probe, host_of=lambda address: split_host_port(address, 0)[0],
    failures=RoundtripFailure, prepare=prepare,
)
