"""HTTP(S) prober: a small HTTP/1.1 client on asyncio streams, timed phase by phase like Go's httptrace.

Not aiohttp/httpx: the agent's whole memory budget is 45 MB and aiohttp alone costs about 25 MB. One
request per connection (`Connection: close`), so there is no pool and the framing stays simple.

Phases follow blackbox_exporter's `probe_http_duration_seconds{phase}` and, as there, are SUMMED over the
redirect chain: resolve (name lookup of each hop), connect (TCP), tls (handshake), processing (connection
ready -> first response byte), transfer (first byte -> body read). Only the final response's body is read,
so transfer belongs to the last hop. A phase is counted once it ended, even by failing (a refused connect,
a failed handshake); a phase cut off by the deadline is not counted.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import re
import ssl
import time
import zlib
from dataclasses import dataclass, field
from typing import Awaitable, Literal, Protocol, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import msgspec

from agents import linear_regex
from agents.config.model import ModuleConfig
from agents.probes.base import ProberSpec
from agents.probes.resolve import ResolveError, resolve
from agents.probes.tlsinfo import (
    TLS_CONTEXTS,
    TlsContexts,
    TlsSettings,
    classify_tls_error,
    fetch_chain,
    prepare_tls,
    session_samples,
    version_ok,
)
from agents.resources import ProbeResources
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Reason, Sample, socket_failure
from foundation import __version__
from foundation.config.types import Duration, SecretFile, SecretRef

DURATION = Metric("probe_http_duration_seconds", "Duration of http request by phase, summed over all redirects")
CONTENT_LENGTH = Metric("probe_http_content_length", "Length of http content response")
BODY_LENGTH = Metric("probe_http_uncompressed_body_length", "Length of uncompressed response body")
REDIRECTS = Metric("probe_http_redirects", "The number of redirects")
IS_SSL = Metric("probe_http_ssl", "Indicates if SSL was used for the final redirect")
STATUS_CODE = Metric("probe_http_status_code", "Response HTTP status code")
HTTP_VERSION = Metric("probe_http_version", "Returns the version of HTTP of the probe response")
FAILED_DUE_TO_REGEX = Metric("probe_failed_due_to_regex", "Indicates if probe failed due to regex")
LAST_MODIFIED = Metric(
    "probe_http_last_modified_timestamp_seconds", "Returns the Last-Modified HTTP response header in unixtime"
)
CONTENT_AGE = Metric(
    "probe_http_content_age_seconds",
    "Age of the content: the response's Date header (or the agent's clock without one) minus Last-Modified",
)


class HttpFailure(Failure):
    HTTP_STATUS = Reason("http_status")  # the final status is not one of valid_status_codes
    HTTP_BODY_MISMATCH = Reason("http_body_mismatch")  # fail_if_body_(not_)matches_regexp
    HTTP_TOO_MANY_REDIRECTS = Reason("http_too_many_redirects")  # more redirects than max_redirects
    HTTP_CONTENT_TOO_OLD = Reason("http_content_too_old")  # max_content_age exceeded, or no Last-Modified


PHASES = ("resolve", "connect", "tls", "processing", "transfer")
USER_AGENT = f"egov-netmon/{__version__}"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_LINE_BYTES = 64 * 1024  # one status, header or chunk-size line
MAX_HEAD_BYTES = 256 * 1024  # status line plus all header lines of one response
MAX_INFORMATIONAL = 8  # 1xx responses skipped before the final one
REGEX_BODY_BYTES = 1024 * 1024  # body regexes see the first MiB: memory stays bounded on big pages
READ_BYTES = 64 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([1-9][0-9][0-9])(?:[ \t][^\r\n]*)?\r?\n")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNSAFE_TEXT = re.compile(r"[\r\n\x00]")
T = TypeVar("T")


class BasicAuth(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    username: str
    password: SecretRef | None = None  # `${ENV_VAR}` only
    password_file: SecretFile | None = None


class HttpSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    method: str = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    valid_status_codes: list[int] = []  # empty: any 2xx
    valid_http_versions: list[Literal["HTTP/1.0", "HTTP/1.1"]] = []
    no_follow_redirects: bool = False
    max_redirects: int = 10
    fail_if_ssl: bool = False
    fail_if_not_ssl: bool = False
    fail_if_body_matches_regexp: list[str] = []
    fail_if_body_not_matches_regexp: list[str] = []
    max_content_age: Duration | None = None  # fails when Last-Modified is older, or missing
    compression: Literal["", "identity", "gzip", "deflate"] = ""  # decode the body with this
    body_size_limit: int | None = None  # bytes after decompression; a longer body fails the probe
    basic_auth: BasicAuth | None = None
    bearer_token: SecretRef | None = None
    bearer_token_file: SecretFile | None = None
    tls_config: TlsSettings = TlsSettings()

    def validate(self, timeout: float) -> None:
        if not _TOKEN.match(self.method):
            raise ValueError(f"method: {self.method!r} is not an HTTP method token")
        self._validate_headers()
        self._validate_auth()
        for code in self.valid_status_codes:
            if not 100 <= code <= 599:
                raise ValueError(f"valid_status_codes: {code} is not an HTTP status code")
        if self.max_redirects < 0:
            raise ValueError("max_redirects: must not be negative")
        if self.fail_if_ssl and self.fail_if_not_ssl:
            raise ValueError("fail_if_not_ssl: cannot be set together with fail_if_ssl (the probe would always fail)")
        for key in ("fail_if_body_matches_regexp", "fail_if_body_not_matches_regexp"):
            linear_regex.check_patterns(key, getattr(self, key))
        if self.max_content_age is not None and self.max_content_age <= 0:
            raise ValueError("max_content_age: must be greater than 0")
        if self.body_size_limit is not None and self.body_size_limit <= 0:
            raise ValueError("body_size_limit: must be a positive number of bytes")

    def _validate_headers(self) -> None:
        for name, value in self.headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"headers: {name!r} is not a valid header name")
            if _UNSAFE_TEXT.search(value):
                raise ValueError(f"headers: the value of {name} must not contain CR, LF or NUL")
            if name.lower() in ("content-length", "transfer-encoding"):
                raise ValueError(f"headers: {name} is set by the prober from `body`")
            if name.lower() == "authorization" and (self.basic_auth or self.bearer_token or self.bearer_token_file):
                raise ValueError("headers: Authorization cannot be set together with basic_auth or bearer_token")

    def _validate_auth(self) -> None:
        schemes = [self.basic_auth is not None, self.bearer_token is not None, self.bearer_token_file is not None]
        if sum(schemes) > 1:
            raise ValueError("basic_auth: use only one of basic_auth, bearer_token and bearer_token_file")
        if self.basic_auth is not None:
            if self.basic_auth.password is not None and self.basic_auth.password_file is not None:
                raise ValueError("basic_auth: use only one of password and password_file")
            if ":" in self.basic_auth.username or _UNSAFE_TEXT.search(self.basic_auth.username):
                raise ValueError("basic_auth: username must not contain ':', CR, LF or NUL")


class _HopFailure(Exception):
    """Ends the probe with this failure; raised where the cause is known."""

    def __init__(self, failure: Reason, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Url:
    https: bool
    host: str  # lowercase, IDNA-encoded, IPv6 without brackets
    port: int
    authority: str  # the Host header: the host (IPv6 in brackets), with the port when the URL gives one
    target: str  # request target: path and query

    @property
    def text(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.authority}{self.target}"


@dataclass(slots=True)
class HopTrace:
    """perf_counter times of one request's boundaries, as Go's httptrace reports them."""

    tls: bool
    start: float
    resolved: float | None = None
    connected: float | None = None
    tls_done: float | None = None
    first_byte: float | None = None
    body_done: float | None = None


@dataclass(slots=True)
class Response:
    version: str  # "HTTP/1.1"
    status: int
    headers: list[tuple[str, str]]  # names in lowercase, in the order received
    received_at: float  # unix time, for content age when the server sends no Date

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def first(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None


@dataclass(slots=True)
class Body:
    declared_length: int  # Content-Length, -1 when the body is chunked or ends at close
    length: int = 0  # bytes after decompression
    kept: bytearray = field(default_factory=bytearray)  # the start of the body, for regexes


@dataclass(slots=True)
class _Run:
    """What the probe learned so far; a timeout or failure still reports all of it."""

    traces: list[HopTrace] = field(default_factory=list)
    resolve_samples: list[Sample] = field(default_factory=list)
    tls_samples: list[Sample] = field(default_factory=list)  # of the latest hop's connection
    redirects: int = 0
    response: Response | None = None
    final_https: bool = False
    body: Body | None = None
    regex_failed: bool = False


async def probe(target: ProbeTarget, module: ModuleConfig[HttpSettings], resources: ProbeResources) -> ProbeResult:
    settings = module.settings
    run = _Run()
    try:
        async with asyncio.timeout(module.timeout):
            await _exchange_chain(target, module, settings, run, resources)
        outcome = _check_response(run, settings)
    except _HopFailure as exc:
        outcome = (exc.failure, exc.detail)
    except TimeoutError:
        outcome = (Failure.TIMEOUT, f"timed out in the {_current_phase(run)} phase after {module.timeout:g}s")
    except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises into the scheduler
        outcome = (Failure.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    samples = _samples(run)
    if outcome is not None:
        return ProbeResult.failed(outcome[0], outcome[1], samples)
    assert run.response is not None
    return ProbeResult(success=True, detail=f"{run.response.version} {run.response.status}", samples=samples)


# --- the redirect chain --------------------------------------------------------------------------


@dataclass(slots=True)
class _Chain:
    """State shared by the requests of one probe's redirect chain."""

    first: Url
    ip: str | None  # the target host's address: target.ip, or resolved on the first request
    deadline: float  # time.monotonic()
    contexts: TlsContexts
    context: ssl.SSLContext | None = None  # taken on the first https request
    jar: "Cookies" = field(default_factory=lambda: HostCookies())  # per host: cookie-check redirects work
    body_kept: int = 0  # bytes of the final body kept for a caller's queries, whatever the body regexes


async def _exchange_chain(
    target: ProbeTarget, module: ModuleConfig[HttpSettings], settings: HttpSettings, run: _Run, resources: ProbeResources
) -> None:
    try:
        first = parse_url(target.address)
    except ValueError as exc:
        raise _HopFailure(Failure.RESOLVE, f"invalid target URL {target.address!r}: {exc}") from None
    chain = _Chain(first, target.ip, time.monotonic() + module.timeout, resources.get(TLS_CONTEXTS))
    await _follow(first, settings.method, settings.body, chain, module, settings, run)


async def _follow(
    url: Url, method: str, body: str | None, chain: _Chain, module: ModuleConfig, settings: HttpSettings, run: _Run
) -> None:
    """One request and the redirects it leads to; the final response and body end up in `run`."""
    while (redirect := await _exchange(url, method, body, chain, module, settings, run)) is not None:
        location = _location(redirect) or ""
        if run.redirects > settings.max_redirects:
            raise _HopFailure(
                HttpFailure.HTTP_TOO_MANY_REDIRECTS, f"more than {settings.max_redirects} redirects (last to {location})"
            )
        url = _redirect_url(url, location)
        method, body = _redirect_request(redirect.status, method, body)


async def _exchange(
    url: Url, method: str, body: str | None, chain: _Chain, module: ModuleConfig[HttpSettings], settings: HttpSettings, run: _Run
) -> Response | None:
    """One request on its own connection: the redirect to follow next, or None once the final body is read."""
    trace = HopTrace(tls=url.https, start=time.perf_counter())
    run.traces.append(trace)
    ip = await _address(url, chain, module, trace, run)
    reader, writer = await _connect(ip, url.port, trace)
    try:
        run.tls_samples = []
        if url.https:
            await _handshake(writer, ip, url, chain, settings, trace, run)
        request = _request_bytes(method, url, chain.first, settings, body, chain.jar.header(url))
        response = await _guarded(_send_and_read_head(reader, writer, request, trace))
        run.response, run.final_https, run.body = response, url.https, None
        chain.jar.keep(url, response)
        if _location(response) is not None:
            run.redirects += 1
            if not settings.no_follow_redirects:
                return response
        run.body = await _guarded(_read_body(reader, method, response, settings, chain.body_kept))
        trace.body_done = time.perf_counter()
        return None
    finally:
        writer.transport.abort()


async def _address(url: Url, chain: _Chain, module: ModuleConfig, trace: HopTrace, run: _Run) -> str:
    """The IP to connect to. The whole chain on the target's own host keeps the target's address."""
    same_host = url.host == chain.first.host
    host = (chain.ip or url.host) if same_host else url.host
    remaining = max(chain.deadline - time.monotonic(), 0.001)
    try:
        resolved = await resolve(host, module.preferred_ip_protocol, module.ip_protocol_fallback, remaining)
    except ResolveError as exc:
        trace.resolved = time.perf_counter()
        raise _HopFailure(exc.failure, exc.detail) from None
    trace.resolved = time.perf_counter()
    if same_host and chain.ip is None:
        chain.ip = resolved.ip
    if not run.resolve_samples:
        run.resolve_samples = resolved.samples()
    return resolved.ip


async def _connect(ip: str, port: int, trace: HopTrace) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        streams = await asyncio.open_connection(ip, port, limit=MAX_LINE_BYTES)
    except OSError as exc:
        trace.connected = time.perf_counter()
        raise _HopFailure(socket_failure(exc), f"connect to {ip} port {port}: {exc.strerror or exc}") from None
    trace.connected = time.perf_counter()
    return streams


async def _handshake(
    writer: asyncio.StreamWriter, ip: str, url: Url, chain: _Chain, settings: HttpSettings, trace: HopTrace, run: _Run
) -> None:
    if chain.context is None:
        chain.context = chain.contexts.get(settings.tls_config, alpn=("http/1.1",))
    server_name = _server_name(url, chain.first, settings)
    try:
        await writer.start_tls(chain.context, server_hostname=server_name)
    except (ssl.SSLError, OSError) as exc:
        trace.tls_done = time.perf_counter()
        if isinstance(exc, ssl.SSLCertVerificationError):
            # expiry alerts need the certificates most when they no longer verify
            remaining = max(chain.deadline - time.monotonic(), 0.001)
            run.tls_samples = await fetch_chain(ip, url.port, server_name, settings.tls_config, remaining)
        raise _HopFailure(
            classify_tls_error(exc), f"TLS with {url.authority}: {getattr(exc, 'verify_message', None) or exc}"
        ) from None
    trace.tls_done = time.perf_counter()
    session = writer.get_extra_info("ssl_object")
    run.tls_samples = session_samples(session, verified=not settings.tls_config.insecure_skip_verify)
    if not version_ok(session, settings.tls_config.min_version):
        raise _HopFailure(
            Failure.TLS_VERSION, f"{url.authority} negotiated {session.version()}, below {settings.tls_config.min_version}"
        )


def _location(response: Response) -> str | None:
    """Where a redirect points; like Go, a 3xx without Location is a final response."""
    return response.first("location") if response.status in REDIRECT_STATUSES else None


def _redirect_url(current: Url, location: str) -> Url:
    try:
        return parse_url(urljoin(current.text, location.strip()))
    except ValueError as exc:
        raise _HopFailure(Failure.PROTOCOL_ERROR, f"cannot follow redirect to {location!r}: {exc}") from None


def _redirect_request(status: int, method: str, body: str | None) -> tuple[str, str | None]:
    """Like Go's client: 307/308 repeat the request; 301/302/303 turn it into a GET without body."""
    if status in (307, 308):
        return method, body
    return ("HEAD" if method == "HEAD" else "GET"), None


class Cookies(Protocol):
    """Where a chain's requests take their Cookie header from and put the cookies responses set."""

    def header(self, url: Url) -> str | None: ...

    def keep(self, url: Url, response: Response) -> None: ...


class HostCookies:
    """The http prober's cookies: name -> value per host, for the redirects of one probe."""

    def __init__(self) -> None:
        self._hosts: dict[str, dict[str, str]] = {}

    def header(self, url: Url) -> str | None:
        cookies = self._hosts.get(url.host)
        return "; ".join(f"{name}={value}" for name, value in cookies.items()) if cookies else None

    def keep(self, url: Url, response: Response) -> None:
        _keep_cookies(response, self._hosts.setdefault(url.host, {}))


def _keep_cookies(response: Response, jar: dict[str, str]) -> None:
    for value in response.values("set-cookie"):
        name, sep, rest = value.partition("=")
        if sep and name.strip():
            jar[name.strip()] = rest.split(";", 1)[0].strip()


# --- URLs and requests ---------------------------------------------------------------------------


def parse_url(text: str) -> Url:
    """An http(s) URL (scheme optional, http assumed) -> Url; ValueError when it is not one."""
    text = text.strip()
    if not _SCHEME.match(text):
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"scheme {parts.scheme!r} is not http or https")
    if parts.username is not None:
        raise ValueError("credentials in the URL are not accepted: use basic_auth")
    if not parts.hostname:
        raise ValueError("no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii") if not parts.hostname.isascii() else parts.hostname
    except UnicodeError as exc:
        raise ValueError(f"host {parts.hostname!r}: {exc}") from None
    explicit_port = parts.port  # ValueError when out of range or not a number
    https = parts.scheme.lower() == "https"
    authority = f"[{host}]" if ":" in host else host
    if explicit_port is not None:
        authority += f":{explicit_port}"
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    query = quote(parts.query, safe="/?%:@!$&'()*+,;=~")
    port = explicit_port if explicit_port is not None else (443 if https else 80)
    return Url(https, host, port, authority, path + (f"?{query}" if query else ""))


def _server_name(url: Url, first: Url, settings: HttpSettings) -> str:
    """SNI and the name to verify: tls_config.server_name, else a configured Host header, else the URL's host.

    Hops to another host use their own host name, as blackbox_exporter does.
    """
    if url.host != first.host:
        return url.host
    if settings.tls_config.server_name:
        return settings.tls_config.server_name
    host_header = _configured(settings, "host")
    if host_header:
        return urlsplit("//" + host_header).hostname or url.host
    return url.host


def _configured(settings: HttpSettings, name: str) -> str | None:
    return next((value for key, value in settings.headers.items() if key.lower() == name), None)


def _authorization(settings: HttpSettings) -> str | None:
    if settings.basic_auth is not None:
        secret = settings.basic_auth.password or settings.basic_auth.password_file
        password = secret.reveal() if secret is not None else ""
        pair = f"{settings.basic_auth.username}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")
    token = settings.bearer_token or settings.bearer_token_file
    return f"Bearer {token.reveal()}" if token is not None else None


def _request_bytes(
    method: str, url: Url, first: Url, settings: HttpSettings, body: str | None, cookie: str | None
) -> bytes:
    """Request line and headers. Credentials and a configured Host go only to the target's own host."""
    same_host = url.host == first.host
    headers: dict[str, tuple[str, str]] = {
        "host": ("Host", url.authority),
        "user-agent": ("User-Agent", USER_AGENT),
        "accept-encoding": ("Accept-Encoding", settings.compression or "identity"),
        "connection": ("Connection", "close"),
    }
    authorization = _authorization(settings) if same_host else None
    if authorization is not None:
        headers["authorization"] = ("Authorization", authorization)
    if cookie:
        headers["cookie"] = ("Cookie", cookie)
    for name, value in settings.headers.items():
        key = name.lower()
        if key == "authorization" and not same_host:
            continue
        if key == "host" and url.authority != first.authority:
            continue
        headers[key] = (name, value)
    payload = body.encode() if body is not None else b""
    if body is not None or method in ("POST", "PUT", "PATCH"):
        headers["content-length"] = ("Content-Length", str(len(payload)))
    lines = [f"{method} {url.target} HTTP/1.1"] + [f"{name}: {value}" for name, value in headers.values()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


# --- reading the response ------------------------------------------------------------------------


class _ProtocolError(Exception):
    """The server's bytes are not a valid HTTP/1.x response."""


async def _guarded(step: Awaitable[T]) -> T:
    """Await one read step, turning what a broken or hostile server causes into a probe failure."""
    try:
        return await step
    except _ProtocolError as exc:
        raise _HopFailure(Failure.PROTOCOL_ERROR, str(exc)) from None
    except asyncio.IncompleteReadError as exc:
        raise _HopFailure(
            Failure.PROTOCOL_ERROR, f"connection closed mid-response after {len(exc.partial)} bytes of a read"
        ) from None
    except asyncio.LimitOverrunError:
        raise _HopFailure(Failure.PROTOCOL_ERROR, f"a response line is longer than {MAX_LINE_BYTES} bytes") from None
    except ssl.SSLError as exc:
        raise _HopFailure(Failure.PROTOCOL_ERROR, f"TLS error while reading: {exc}") from None
    except OSError as exc:
        raise _HopFailure(socket_failure(exc), f"connection lost: {exc.strerror or exc}") from None


async def _send_and_read_head(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, trace: HopTrace
) -> Response:
    writer.write(request)
    await writer.drain()
    for _ in range(MAX_INFORMATIONAL + 1):
        first = await reader.readexactly(1)
        if trace.first_byte is None:
            trace.first_byte = time.perf_counter()
        line = first if first == b"\n" else first + await reader.readuntil(b"\n")
        version, status = _parse_status_line(line)
        headers = await _read_header_lines(reader, MAX_HEAD_BYTES - len(line))
        if not 100 <= status < 200 or status == 101:
            return Response(version, status, headers, time.time())
    raise _ProtocolError(f"more than {MAX_INFORMATIONAL} informational (1xx) responses")


def _parse_status_line(line: bytes) -> tuple[str, int]:
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise _ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return "HTTP/" + match.group(1).decode(), int(match.group(2))


async def _read_header_lines(reader: asyncio.StreamReader, budget: int) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    while True:
        raw = await reader.readuntil(b"\n")
        budget -= len(raw)
        if budget < 0:
            raise _ProtocolError(f"response header section is larger than {MAX_HEAD_BYTES} bytes")
        line = raw.rstrip(b"\r\n").decode("latin-1")
        if not line:
            return headers
        if line[0] in " \t":
            if not headers:
                raise _ProtocolError("response headers start with a continuation line")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")  # obsolete line folding, as RFC 9112 says
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise _ProtocolError(f"malformed response header line: {line[:80]!r}")
        headers.append((name.lower(), value.strip()))


def _declared_length(response: Response) -> int:
    values = {part.strip() for value in response.values("content-length") for part in value.split(",")}
    if not values:
        return -1
    if len(values) > 1 or not (next(iter(values)).isascii() and next(iter(values)).isdigit()):  # isdigit() takes "²"
        raise _ProtocolError(f"invalid Content-Length {sorted(values)!r}")
    return int(next(iter(values)))


def _is_chunked(response: Response) -> bool:
    codings = [c.strip().lower() for value in response.values("transfer-encoding") for c in value.split(",")]
    codings = [coding for coding in codings if coding]
    if codings and codings != ["chunked"]:
        raise _ProtocolError(f"unsupported Transfer-Encoding {', '.join(codings)!r}")
    return bool(codings)


async def _read_body(
    reader: asyncio.StreamReader, method: str, response: Response, settings: HttpSettings, keep_at_least: int = 0
) -> Body:
    chunked = _is_chunked(response)
    declared = -1 if chunked else _declared_length(response)
    body = Body(declared)
    keep = REGEX_BODY_BYTES if settings.fail_if_body_matches_regexp or settings.fail_if_body_not_matches_regexp else 0
    keep = max(keep, keep_at_least)
    sink = _BodySink(body, keep, settings.body_size_limit, settings.compression)
    if method == "HEAD" or response.status in (101, 204, 304):
        return body
    if chunked:
        await _read_chunked(reader, sink)
    elif declared >= 0:
        await _read_exactly(reader, declared, sink)
    else:
        while data := await reader.read(READ_BYTES):
            sink.feed(data)
    sink.finish()
    return body


async def _read_exactly(reader: asyncio.StreamReader, length: int, sink: "_BodySink") -> None:
    remaining = length
    while remaining:
        data = await reader.read(min(remaining, READ_BYTES))
        if not data:
            raise _ProtocolError(f"connection closed after {length - remaining} of {length} body bytes")
        remaining -= len(data)
        sink.feed(data)


async def _read_chunked(reader: asyncio.StreamReader, sink: "_BodySink") -> None:
    while True:
        size_line = (await reader.readuntil(b"\n")).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_line):
            raise _ProtocolError(f"invalid chunk size line {size_line[:40]!r}")
        size = int(size_line, 16)
        if size == 0:
            await _read_header_lines(reader, MAX_HEAD_BYTES)  # trailers, read and ignored
            return
        await _read_exactly(reader, size, sink)
        if (await reader.readuntil(b"\n")).strip():
            raise _ProtocolError("chunk data is not followed by CRLF")


class _BodySink:
    """Counts the body, decompresses it as configured, keeps its start for regexes, enforces the limit."""

    def __init__(self, body: Body, keep: int, limit: int | None, compression: str) -> None:
        self._body, self._keep, self._limit = body, keep, limit
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(compression)
        self._decoder = zlib.decompressobj(wbits) if wbits is not None else None
        self._compression = compression

    def feed(self, data: bytes) -> None:
        if self._decoder is None:
            self._take(data)
            return
        try:
            self._take(self._decoder.decompress(data, READ_BYTES))
            while self._decoder.unconsumed_tail:  # decompress in bounded steps: a small bomb stays small
                self._take(self._decoder.decompress(self._decoder.unconsumed_tail, READ_BYTES))
        except zlib.error as exc:
            raise _ProtocolError(f"body is not valid {self._compression}: {exc}") from None

    def finish(self) -> None:
        if self._decoder is not None and not self._decoder.eof:
            raise _ProtocolError(f"{self._compression} body ends before the end of its compressed stream")

    def _take(self, data: bytes) -> None:
        self._body.length += len(data)
        if self._limit is not None and self._body.length > self._limit:
            raise _ProtocolError(f"body is larger than body_size_limit ({self._limit} bytes)")
        room = self._keep - len(self._body.kept)
        if room > 0:
            self._body.kept += data[:room]


# --- judging the response and reporting ----------------------------------------------------------


def _check_response(run: _Run, settings: HttpSettings) -> tuple[Reason, str] | None:
    """blackbox_exporter's order: status, body regexes, HTTP version, SSL policy; then content age."""
    response, body = run.response, run.body
    assert response is not None and body is not None
    valid = response.status in settings.valid_status_codes if settings.valid_status_codes else 200 <= response.status < 300
    if not valid:
        wanted = ", ".join(map(str, settings.valid_status_codes)) or "2xx"
        return HttpFailure.HTTP_STATUS, f"status {response.status}, wanted {wanted}"
    regex_failure = _check_body(body, settings)
    if regex_failure is not None:
        run.regex_failed = True
        return HttpFailure.HTTP_BODY_MISMATCH, regex_failure
    if settings.valid_http_versions and response.version not in settings.valid_http_versions:
        return Failure.EXPECT_MISMATCH, f"{response.version} is not one of {', '.join(settings.valid_http_versions)}"
    if settings.fail_if_ssl and run.final_https:
        return Failure.EXPECT_MISMATCH, "the final response came over TLS and fail_if_ssl is set"
    if settings.fail_if_not_ssl and not run.final_https:
        return Failure.EXPECT_MISMATCH, "the final response came without TLS and fail_if_not_ssl is set"
    return _check_content_age(response, settings)


def _check_body(body: Body, settings: HttpSettings) -> str | None:
    text = body.kept.decode("utf-8", "replace")
    for pattern in settings.fail_if_body_matches_regexp:
        if linear_regex.search(pattern, text):
            return f"body matches {pattern!r}"
    for pattern in settings.fail_if_body_not_matches_regexp:
        if not linear_regex.search(pattern, text):
            return f"body does not match {pattern!r}"
    return None


def _check_content_age(response: Response, settings: HttpSettings) -> tuple[Reason, str] | None:
    if settings.max_content_age is None:
        return None
    last_modified = _http_date(response.first("last-modified"))
    if last_modified is None:
        return HttpFailure.HTTP_CONTENT_TOO_OLD, "no valid Last-Modified header: content age is unknown"
    age = _content_age(response, last_modified)
    if age > settings.max_content_age:
        return HttpFailure.HTTP_CONTENT_TOO_OLD, f"content is {age:.0f}s old, more than max_content_age {settings.max_content_age:g}s"
    return None


def _content_age(response: Response, last_modified: float) -> float:
    """Against the server's own Date when it sends one: the agent's clock may be off, the server's is consistent."""
    now = _http_date(response.first("date"))
    return (now if now is not None else response.received_at) - last_modified


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def _current_phase(run: _Run) -> str:
    trace = run.traces[-1] if run.traces else None
    if trace is None or trace.resolved is None:
        return "resolve"
    if trace.connected is None:
        return "connect"
    if trace.tls and trace.tls_done is None:
        return "tls"
    return "processing" if trace.first_byte is None else "transfer"


def _phase_totals(traces: list[HopTrace]) -> dict[str, float]:
    totals = dict.fromkeys(PHASES, 0.0)
    for trace in traces:
        if trace.resolved is None:
            continue
        totals["resolve"] += trace.resolved - trace.start
        if trace.connected is None:
            continue
        totals["connect"] += trace.connected - trace.resolved
        ready = trace.connected
        if trace.tls_done is not None:
            totals["tls"] += trace.tls_done - trace.connected
            ready = trace.tls_done
        if trace.first_byte is None:
            continue
        totals["processing"] += trace.first_byte - ready
        if trace.body_done is not None:
            totals["transfer"] += trace.body_done - trace.first_byte
    return totals


def _samples(run: _Run) -> list[Sample]:
    response, body = run.response, run.body
    samples = list(run.resolve_samples)
    samples += [DURATION(seconds, phase=phase) for phase, seconds in _phase_totals(run.traces).items()]
    samples += [
        STATUS_CODE(response.status if response else 0),
        CONTENT_LENGTH(body.declared_length if body else 0),
        BODY_LENGTH(body.length if body else 0),
        REDIRECTS(run.redirects),
        IS_SSL(1 if response is not None and run.final_https else 0),
        HTTP_VERSION(float(response.version[5:]) if response else 0),
        FAILED_DUE_TO_REGEX(1 if run.regex_failed else 0),
    ]
    if response is not None:
        last_modified = _http_date(response.first("last-modified"))
        if last_modified is not None:
            samples += [LAST_MODIFIED(last_modified), CONTENT_AGE(_content_age(response, last_modified))]
    return samples + run.tls_samples


# --- the client as a building block --------------------------------------------------------------------------
# agents/probes/transaction.py runs each step's request through this client: a chain with its own cookie jar
# and body size to keep, `follow`, and the phase bookkeeping of one request's run.

Chain = _Chain
Run = _Run
HopFailure = _HopFailure
follow = _follow
phase_totals = _phase_totals
current_phase = _current_phase


def prepare(module: ModuleConfig[HttpSettings], resources: ProbeResources) -> None:
    prepare_tls(resources, module.settings.tls_config, alpn=("http/1.1",))  # any URL may redirect to https


SPEC = ProberSpec(
    "http", HttpSettings, probe, host_of=lambda address: parse_url(address).host, failures=HttpFailure, prepare=prepare
)
