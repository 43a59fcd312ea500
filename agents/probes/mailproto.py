"""What the smtp, imap, pop3 and mail_roundtrip probers share: settings pieces, a CRLF line connection bounded
by one deadline, phase timing, the TLS upgrade with certificate metrics, and the opening of a conversation
(greeting, capabilities, STARTTLS or implicit TLS, login) with each protocol's differences passed in (Dialect).

Every failure inside a mail conversation is raised as `MailError(failure, detail)`; run_probe turns it into a
failed ProbeResult with the samples gathered so far. Details quote the server's replies and name the step, never
what the prober sent, so a password cannot leak into one.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Collection
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Iterator, Literal, Protocol, TypeVar

import msgspec

from agents import linear_regex
from agents.config.model import ModuleConfig
from agents.probes.resolve import ResolveError, resolve, split_host_port
from agents.probes.tcp import FAILED_DUE_TO_REGEX
from agents.probes.tlsinfo import (
    TlsContexts,
    TlsSettings,
    certificate_samples,
    classify_tls_error,
    peer_chain_der,
    prepare_tls,
    session_samples,
    version_ok,
)
from agents.resources import ProbeResources
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Reason, Sample, socket_failure
from foundation.config.types import SecretFile, SecretRef

# starttls: upgrade, and fail with no_starttls when the server does not offer it; opportunistic: upgrade when
# offered, else go on in plain text; implicit: TLS from the first byte (ports 465, 993, 995); none: never TLS.
TlsMode = Literal["starttls", "opportunistic", "implicit", "none"]
T = TypeVar("T")

MAX_LITERAL_BYTES = 1 << 20  # IMAP literals the probers read are header excerpts, never whole mailboxes
MAX_READ_BYTES = 8 << 20  # all a server may send in one conversation: an endless multi-line reply ends here, not in memory
REPLY_EXCERPT = 200  # characters of a server reply quoted in a detail


class MailAuth(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Login credentials; the password only by reference (`${ENV}`) or from a file."""

    username: str
    password: SecretRef | None = None
    password_file: SecretFile | None = None

    def secret(self) -> str:
        source = self.password if self.password is not None else self.password_file
        return source.reveal() if source is not None else ""

    def check(self, key: str) -> None:
        if (self.password is None) == (self.password_file is None):
            raise ValueError(f"{key}: set exactly one of password and password_file")


def check_common(port: int | None, banner_regexp: str | None, auth: MailAuth | None) -> None:
    """The load-time checks every mail prober's settings share; raises ValueError('key: message')."""
    if port is not None and not 0 < port < 65536:
        raise ValueError("port: must be between 1 and 65535")
    if banner_regexp is not None:
        linear_regex.check_patterns("banner_regexp", [banner_regexp], multiline=True)
    if auth is not None:
        auth.check("auth")


class MailFailure(Failure):
    """The reasons of the mail probers (smtp, imap, pop3, mail_roundtrip), over the common ones."""

    AUTH_UNSUPPORTED = Reason("auth_unsupported")  # the required AUTH mechanism or login is not offered
    BAD_BANNER = Reason("bad_banner")  # greeting not 220 / OK / +OK, or not matching the expected regexp
    NO_STARTTLS = Reason("no_starttls")  # STARTTLS / STLS required but not offered
    MAIL_REJECTED = Reason("mail_rejected")  # the SMTP server refused the sender, recipient or message


class MailError(Exception):
    def __init__(self, failure: Reason, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


def excerpt(text: str) -> str:
    return repr(text[:REPLY_EXCERPT])


class Phases:
    """Seconds spent per phase of one conversation; a phase entered twice (EHLO after STARTTLS) adds up."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric
        self._seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - started

    def samples(self) -> list[Sample]:
        return [self._metric(seconds, phase=name) for name, seconds in self._seconds.items()]


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    server_name: str  # TLS SNI and certificate name: the configured host, not the resolved IP
    samples: tuple[Sample, ...] = ()  # name resolution


async def resolve_endpoint(
    address: str, default_port: int, module: ModuleConfig, server_name: str | None, pinned_ip: str | None = None
) -> Endpoint:
    try:
        host, port = split_host_port(address, default_port)
        resolved = await resolve(pinned_ip or host, module.preferred_ip_protocol, module.ip_protocol_fallback, module.timeout)
    except ValueError as exc:
        raise MailError(Failure.RESOLVE, str(exc)) from None
    except ResolveError as exc:
        raise MailError(exc.failure, exc.detail) from None
    return Endpoint(resolved.ip, port, server_name or host, tuple(resolved.samples()))


async def target_endpoint(target: ProbeTarget, default_port: int, module: ModuleConfig, server_name: str | None) -> Endpoint:
    return await resolve_endpoint(target.address, default_port, module, server_name, target.ip)


class Connection:
    """One TCP connection speaking CRLF lines; every read and write ends by the probe's deadline."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float) -> None:
        self._reader = reader
        self._writer = writer
        self.deadline = deadline
        self.last_step = "connect"  # named in timeout and hang-up details; never holds a credential
        self.unread = MAX_READ_BYTES  # what the server may still send in this conversation

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    async def _bounded(self, operation: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(operation, self.remaining())
        except asyncio.TimeoutError:
            raise MailError(Failure.TIMEOUT, f"no answer from the server after {self.last_step} within the timeout") from None
        except ssl.SSLError as exc:
            raise MailError(Failure.TLS_HANDSHAKE, f"TLS error after {self.last_step}: {exc.reason or exc}") from None
        except OSError as exc:
            raise MailError(socket_failure(exc), f"after {self.last_step}: {exc.strerror or exc}") from None

    async def read_line(self) -> str:
        try:
            raw = await self._bounded(self._reader.readline())
        except ValueError:  # no line end within the StreamReader's 64 KiB limit
            raise MailError(Failure.PROTOCOL_ERROR, f"a reply line longer than 64 KiB after {self.last_step}") from None
        if not raw.endswith(b"\n"):
            raise MailError(Failure.CONNECTION_RESET, f"the server closed the connection after {self.last_step}")
        self._count(len(raw))
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    def _count(self, size: int) -> None:
        self.unread -= size
        if self.unread < 0:
            raise MailError(Failure.PROTOCOL_ERROR, f"the server sent more than {MAX_READ_BYTES} bytes by {self.last_step}")

    async def read_exactly(self, size: int) -> bytes:
        if size > MAX_LITERAL_BYTES:
            raise MailError(Failure.PROTOCOL_ERROR, f"a {size}-byte literal after {self.last_step} is too long")
        self._count(size)
        try:
            return await self._bounded(self._reader.readexactly(size))
        except asyncio.IncompleteReadError:
            raise MailError(Failure.CONNECTION_RESET, f"the server closed the connection after {self.last_step}") from None

    async def send(self, data: bytes, step: str) -> None:
        """Write data; `step` names it in later details (say 'PASS', never the line with the password)."""
        self.last_step = step
        self._writer.write(data)
        await self._bounded(self._writer.drain())

    async def send_line(self, line: str, step: str | None = None) -> None:
        await self.send(line.encode("utf-8") + b"\r\n", step or line)

    async def start_tls(self, context: ssl.SSLContext, server_name: str) -> None:
        """The TLS handshake; ssl.SSLError and OSError propagate for the caller to classify."""
        try:
            await asyncio.wait_for(self._writer.start_tls(context, server_hostname=server_name), self.remaining())
        except asyncio.TimeoutError:
            raise MailError(Failure.TIMEOUT, "timed out in the TLS handshake") from None

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._writer.get_extra_info("ssl_object")

    @property
    def local_ip(self) -> str:
        return self._writer.get_extra_info("sockname")[0]

    def close(self) -> None:
        self._writer.transport.abort()


async def connect(endpoint: Endpoint, deadline: float, phases: Phases) -> Connection:
    with phases.timed("connect"):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(endpoint.ip, endpoint.port), max(deadline - time.monotonic(), 0.001)
            )
        except asyncio.TimeoutError:
            raise MailError(Failure.TIMEOUT, f"connect to {endpoint.ip}:{endpoint.port} timed out") from None
        except OSError as exc:
            raise MailError(socket_failure(exc), f"connect to {endpoint.ip}:{endpoint.port}: {exc.strerror or exc}") from None
    return Connection(reader, writer, deadline)


Replay = Callable[[], Awaitable[Connection]]  # a fresh connection brought to the point of the TLS handshake


@dataclass(slots=True)
class TlsUpgrade:
    """How to secure one conversation; `replay` lets a failed verification still report the certificates."""

    settings: TlsSettings
    contexts: TlsContexts
    server_name: str
    replay: Replay
    samples: list[Sample]  # the prober's list: secure() adds version, cipher and certificate metrics to it

    async def secure(self, connection: Connection) -> None:
        try:
            await connection.start_tls(self.contexts.get(self.settings), self.server_name)
        except ssl.SSLCertVerificationError as exc:
            self.samples += await self._unverified_certificates()
            raise MailError(Failure.TLS_VERIFY, f"TLS: {exc.verify_message or exc}") from None
        except (ssl.SSLError, OSError) as exc:
            raise MailError(classify_tls_error(exc), f"TLS handshake failed: {exc}") from None
        ssl_object = connection.ssl_object
        assert ssl_object is not None
        self.samples += session_samples(ssl_object, verified=not self.settings.insecure_skip_verify)
        if not version_ok(ssl_object, self.settings.min_version):
            raise MailError(Failure.TLS_VERSION, f"TLS version {ssl_object.version()} is below {self.settings.min_version}")

    async def _unverified_certificates(self) -> list[Sample]:
        """Certificates of a server that failed verification: again, to the handshake, without verifying."""
        try:
            connection = await self.replay()
        except MailError:
            return []
        try:
            await connection.start_tls(self.contexts.get(self.settings, verify=False), self.server_name)
            ssl_object = connection.ssl_object
            return certificate_samples(peer_chain_der(ssl_object)) if ssl_object is not None else []
        except (MailError, ssl.SSLError, OSError):
            return []
        finally:
            connection.close()


def banner_matches(pattern: str, lines: list[str]) -> bool:
    """The expected-banner check: the regexp searched in the greeting's lines, one per line (re.MULTILINE)."""
    return linear_regex.search(pattern, "\n".join(lines), multiline=True)


def summary(connection: Connection, authenticated: bool) -> str:
    """The success detail `probe --once` shows: TLS version (or its absence) and whether we logged in."""
    ssl_object = connection.ssl_object
    parts = [(ssl_object.version() or "TLS") if ssl_object is not None else "no TLS"]
    if authenticated:
        parts.append("logged in")
    return ", ".join(parts)


class MailSettings(Protocol):
    """What every mail prober's settings have (SmtpSettings, ImapSettings, Pop3Settings)."""

    @property
    def tls(self) -> TlsMode: ...
    @property
    def tls_config(self) -> TlsSettings: ...
    @property
    def banner_regexp(self) -> str | None: ...
    @property
    def auth(self) -> MailAuth | None: ...
    @property
    def default_port(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Greeting:
    ready: bool  # the server says it will serve us: 220, `* OK` / `* PREAUTH`, `+OK`
    lines: list[str]  # what the banner_regexp is searched in
    shown: str  # the excerpt quoted in details
    samples: tuple[Sample, ...] = ()  # what the protocol reports of it (SMTP: the status code)


class MailSession(Protocol):
    """One conversation as open_session drives it (SmtpSession, ImapSession, Pop3Session)."""

    connection: Connection

    @property
    def capabilities(self) -> Collection[str]: ...
    async def read_greeting(self) -> Greeting: ...
    async def refresh_capabilities(self) -> None: ...
    async def start_tls(self) -> None: ...  # STARTTLS or STLS, up to where the TLS handshake begins
    async def login(self, auth: MailAuth) -> None: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=MailSession)


def _nothing_required(session: Any, settings: Any) -> None:
    """IMAP and POP3 require nothing of the capabilities beyond what their login checks."""


@dataclass(frozen=True, slots=True)
class Dialect(Generic[S]):
    """Where the openings of SMTP, IMAP and POP3 differ; open_session is the rest."""

    session: Callable[[Connection, Any], S]  # a session over a new connection, with the prober's settings
    duration: Metric  # the prober's phase durations
    advertised: Metric  # 1 if the capabilities before TLS offer it
    starttls: str  # the capability that offers TLS and its command: STARTTLS, STLS
    capability_phase: str  # the phase that asks for the capabilities: ehlo, capability
    capabilities_before_starttls: bool = False  # SMTP: a server takes STARTTLS only after EHLO
    check_capabilities: Callable[[S, Any], None] = _nothing_required  # the final ones, before logging in


async def open_session(
    dialect: Dialect[S], endpoint: Endpoint, settings: MailSettings, contexts: TlsContexts, deadline: float,
    phases: Phases, samples: list[Sample],
) -> S:
    """Connect and go as far as the settings ask: TLS (implicit, or STARTTLS/STLS), greeting and capability
    checks, login. The session is ready for the prober's own commands."""
    replay = functools.partial(_to_handshake, dialect, endpoint, settings, deadline)
    upgrade = TlsUpgrade(settings.tls_config, contexts, endpoint.server_name, replay, samples)
    session = dialect.session(await connect(endpoint, deadline, phases), settings)
    try:
        await _secure_and_log_in(dialect, session, settings, upgrade, phases, samples)
    except BaseException:
        session.close()
        raise
    return session


async def _secure_and_log_in(
    dialect: Dialect[S], session: S, settings: MailSettings, upgrade: TlsUpgrade, phases: Phases, samples: list[Sample]
) -> None:
    if settings.tls == "implicit":
        with phases.timed("tls"):
            await upgrade.secure(session.connection)
    with phases.timed("banner"):
        _check_greeting(await session.read_greeting(), settings.banner_regexp, samples)
    with phases.timed(dialect.capability_phase):
        await session.refresh_capabilities()
    if settings.tls != "implicit":
        samples.append(dialect.advertised(1 if dialect.starttls in session.capabilities else 0))
    if settings.tls in ("starttls", "opportunistic") and dialect.starttls in session.capabilities:
        with phases.timed("starttls"):
            await session.start_tls()
            await upgrade.secure(session.connection)
        with phases.timed(dialect.capability_phase):
            await session.refresh_capabilities()  # RFC 3207, 3501, 2595: what was said before TLS no longer counts
    elif settings.tls == "starttls":
        raise MailError(MailFailure.NO_STARTTLS, f"the server does not offer {dialect.starttls}")
    dialect.check_capabilities(session, settings)
    if settings.auth is not None:
        with phases.timed("auth"):
            await session.login(settings.auth)


def _check_greeting(greeting: Greeting, banner_regexp: str | None, samples: list[Sample]) -> None:
    samples += greeting.samples
    if not greeting.ready:
        raise MailError(MailFailure.BAD_BANNER, f"the server greeted with {greeting.shown}")
    if banner_regexp is not None:
        matched = banner_matches(banner_regexp, greeting.lines)
        samples.append(FAILED_DUE_TO_REGEX(0 if matched else 1))
        if not matched:
            raise MailError(MailFailure.BAD_BANNER, f"the greeting {greeting.shown} does not match {banner_regexp!r}")


async def _to_handshake(dialect: Dialect[S], endpoint: Endpoint, settings: MailSettings, deadline: float) -> Connection:
    """A second connection brought to where the TLS handshake starts (to read a failing server's certificates)."""
    connection = await connect(endpoint, deadline, Phases(dialect.duration))
    if settings.tls == "implicit":
        return connection
    session = dialect.session(connection, settings)
    try:
        await session.read_greeting()
        if dialect.capabilities_before_starttls:
            await session.refresh_capabilities()
        await session.start_tls()
    except BaseException:
        connection.close()
        raise
    return connection


async def run_probe(
    dialect: Dialect[S], target: ProbeTarget, module: ModuleConfig[Any], contexts: TlsContexts,
    converse: Callable[[S, Any, Phases, list[Sample]], Awaitable[None]],
) -> ProbeResult:
    """One probe: open the session, let the prober `converse` (its own commands, through logging out), close.
    Every MailError is the failure, with the samples gathered until then."""
    settings: MailSettings = module.settings
    deadline = time.monotonic() + module.timeout
    phases = Phases(dialect.duration)
    samples: list[Sample] = []
    try:
        endpoint = await target_endpoint(target, settings.default_port, module, settings.tls_config.server_name)
        samples += endpoint.samples
        session = await open_session(dialect, endpoint, settings, contexts, deadline, phases, samples)
        try:
            await converse(session, settings, phases, samples)
            detail = summary(session.connection, settings.auth is not None)
        finally:
            session.close()
    except MailError as exc:
        return ProbeResult.failed(exc.failure, exc.detail, samples + phases.samples())
    return ProbeResult(success=True, detail=detail, samples=samples + phases.samples())


def prepare_settings(settings: Any, resources: ProbeResources) -> None:
    """The TLS client context of one protocol's settings, unless they never speak TLS."""
    if settings.tls != "none":
        prepare_tls(resources, settings.tls_config)


def prepare(module: ModuleConfig[Any], resources: ProbeResources) -> None:
    prepare_settings(module.settings, resources)
