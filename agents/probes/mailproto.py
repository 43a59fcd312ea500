"""What the smtp, imap, pop3 and mail_roundtrip probers share: settings pieces, a CRLF line connection bounded
by one deadline, phase timing, and the TLS upgrade with certificate metrics.

Every failure inside a mail conversation is raised as `MailError(failure, detail)`; the prober turns it into a
failed ProbeResult with the samples gathered so far. Details quote the server's replies and name the step, never
what the prober sent, so a password cannot leak into one.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Literal, TypeVar

import msgspec

from agents.config.model import ModuleConfig
from foundation.config.types import SecretFile, SecretRef
from agents.results import Failure, Metric, ProbeTarget, Reason, Sample, socket_failure
from agents.probes.resolve import ResolveError, resolve, split_host_port
from agents.probes.tlsinfo import (
    TlsContexts,
    TlsSettings,
    certificate_samples,
    classify_tls_error,
    peer_chain_der,
    session_samples,
    version_ok,
)

# starttls: upgrade, and fail with no_starttls when the server does not offer it; opportunistic: upgrade when
# offered, else go on in plain text; implicit: TLS from the first byte (ports 465, 993, 995); none: never TLS.
TlsMode = Literal["starttls", "opportunistic", "implicit", "none"]
T = TypeVar("T")

MAX_LITERAL_BYTES = 1 << 20  # IMAP literals the probers read are header excerpts, never whole mailboxes
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
        try:
            re.compile(banner_regexp)
        except re.error as exc:
            raise ValueError(f"banner_regexp: invalid regexp: {exc}") from None
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
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def read_exactly(self, size: int) -> bytes:
        if size > MAX_LITERAL_BYTES:
            raise MailError(Failure.PROTOCOL_ERROR, f"a {size}-byte literal after {self.last_step} is too long")
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
    return re.search(pattern, "\n".join(lines), re.MULTILINE) is not None


def summary(connection: Connection, authenticated: bool) -> str:
    """The success detail `probe --once` shows: TLS version (or its absence) and whether we logged in."""
    ssl_object = connection.ssl_object
    parts = [(ssl_object.version() or "TLS") if ssl_object is not None else "no TLS"]
    if authenticated:
        parts.append("logged in")
    return ", ".join(parts)


async def secure_and_log_in(
    session: Any,
    settings: Any,
    upgrade: TlsUpgrade,
    phases: Phases,
    samples: list[Sample],
    *,
    greet: Callable[[], Awaitable[None]],
    starttls: Callable[[], Awaitable[None]],
    keyword: str,
    advertised: Metric,
) -> None:
    """The IMAP and POP3 opening: TLS (implicit, or STARTTLS/STLS as configured), greeting, capabilities, login.

    `session` has `.connection`, `.capabilities`, `refresh_capabilities()` and `login(auth)`; `keyword` is the
    capability that offers TLS (STARTTLS, STLS) and `starttls` sends the command that starts it.
    """
    if settings.tls == "implicit":
        with phases.timed("tls"):
            await upgrade.secure(session.connection)
    with phases.timed("banner"):
        await greet()
    with phases.timed("capability"):
        await session.refresh_capabilities()
    if settings.tls != "implicit":
        samples.append(advertised(1 if keyword in session.capabilities else 0))
    if settings.tls in ("starttls", "opportunistic") and keyword in session.capabilities:
        with phases.timed("starttls"):
            await starttls()
            await upgrade.secure(session.connection)
        with phases.timed("capability"):
            await session.refresh_capabilities()  # RFC 3501 / RFC 2595: what was said before TLS no longer counts
    elif settings.tls == "starttls":
        raise MailError(MailFailure.NO_STARTTLS, f"the server does not offer {keyword}")
    if settings.auth is not None:
        with phases.timed("auth"):
            await session.login(settings.auth)
