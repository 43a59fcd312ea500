"""The one asyncio HTTP/1.1 client of the agent and the collector: push and forward (POST remote_write), the
agent's config fetch (GET with If-None-Match) and the collector's scrape of pull agents (GET /metrics).

GET and POST over one connection kept alive between requests (or closed after each, `keep_alive=False`);
Content-Length, chunked and close-delimited bodies; gzip bodies when asked for; TLS and mTLS; one deadline per
request from connect to the last body byte; a cap on the body. Anything that is not HTTP/1.x as we read it raises
ProtocolError. No aiohttp/httpx: either would cost more memory than the whole agent's budget allows.
(The HTTP prober keeps a client of its own, agents/probes/http.py, for its exact phase timing.)
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from foundation import __version__
from foundation.config.types import Secret

MAX_HEADER_LINES = 100
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_USER_AGENT = f"netmon/{__version__}"
READ_BLOCK = 1 << 16
BODYLESS_STATUSES = (204, 304)
OWS = " \t"  # the whitespace HTTP allows around a header value (RFC 9110 5.6.3)

Headers = tuple[tuple[str, str], ...]


class ProtocolError(Exception):
    """The peer's reply is not HTTP/1.x we understand, or larger than the caller allows."""


class TlsSettings(Protocol):
    """What a config's `tls:` section says about the server and, for mTLS, this client (PushTls has it)."""

    @property
    def ca_file(self) -> str | None: ...
    @property
    def cert_file(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...
    @property
    def server_name(self) -> str | None: ...
    @property
    def insecure_skip_verify(self) -> bool: ...


def tls_client_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file or None)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def bearer_authorization(token: Secret | None) -> Secret | None:
    """The whole Authorization header value for a bearer token, still a Secret (kept out of logs and reprs)."""
    return Secret(f"Bearer {token.reveal()}", token.source) if token is not None else None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to send: parsed once from a URL and TLS settings."""

    url: str
    host: str
    port: int
    target: str  # path and query
    ssl_context: ssl.SSLContext | None
    server_hostname: str | None
    timeout: float  # one request: connect to the last byte of the reply
    authorization: Secret | None = None  # the whole header value, e.g. "Bearer ..."

    @classmethod
    def from_url(
        cls, url: str, timeout: float, ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None, authorization: Secret | None = None,
    ) -> Endpoint:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        if https and ssl_context is None:
            ssl_context = ssl.create_default_context()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        port = parts.port or (443 if https else 80)
        host = parts.hostname or ""
        server_hostname = (server_name or host) if https else None
        return cls(url, host, port, target, ssl_context if https else None, server_hostname, timeout, authorization)

    @classmethod
    def configured(cls, url: str, timeout: float, tls: TlsSettings, token: Secret | None) -> Endpoint:
        """As a config section gives it: its TLS settings apply to an https URL only, its token is sent as Bearer."""
        context = tls_client_context(tls) if url.startswith("https:") else None
        return cls.from_url(url, timeout, context, tls.server_name, bearer_authorization(token))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.ssl_context else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Reply:
    status_line: str  # as received, e.g. "HTTP/1.1 404 Not Found"
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes  # without its transfer coding (and gzip, when asked for); truncated when asked to

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class BodyLimit:
    max_bytes: int
    truncate: bool  # keep the first max_bytes rather than fail (an error page for a log line)


class HttpClient:
    """Requests to one endpoint, one at a time, over one kept-alive connection that is reopened when gone."""

    def __init__(self, endpoint: Endpoint, user_agent: str = DEFAULT_USER_AGENT, keep_alive: bool = True) -> None:
        self.endpoint = endpoint
        self.user_agent = user_agent
        self.keep_alive = keep_alive  # False: `Connection: close`, a new connection for every request
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, headers: Headers = (), *, max_body: int = DEFAULT_MAX_BODY, accept_gzip: bool = False) -> Reply:
        """Raises OSError, TimeoutError or ProtocolError when no whole reply came."""
        if accept_gzip:
            headers = (("Accept-Encoding", "gzip"), *headers)
        return await self._request("GET", b"", headers, BodyLimit(max_body, False), accept_gzip)

    async def post(self, body: bytes, headers: Headers = (), *, max_body: int = DEFAULT_MAX_BODY, truncate: bool = False) -> Reply:
        """Raises OSError, TimeoutError or ProtocolError when no whole reply came (truncate: a reply body over
        max_body is cut there, and the connection closed, rather than refused)."""
        return await self._request("POST", body, headers, BodyLimit(max_body, truncate), False)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None

    async def _request(self, method: str, body: bytes, headers: Headers, limit: BodyLimit, gunzip: bool) -> Reply:
        request = self._request_head(method, body, headers) + body
        try:
            async with asyncio.timeout(self.endpoint.timeout):
                if self._writer is not None:
                    try:
                        return await self._exchange(request, limit, gunzip)
                    except (OSError, asyncio.IncompleteReadError):
                        self.close()  # the server closed the idle connection: once more on a new one
                return await self._exchange(request, limit, gunzip)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise ProtocolError(f"incomplete or oversized reply: {exc}") from exc
        except BaseException:
            self.close()
            raise

    async def _exchange(self, request: bytes, limit: BodyLimit, gunzip: bool) -> Reply:
        if self._writer is None:
            endpoint = self.endpoint
            self._reader, self._writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=endpoint.ssl_context, server_hostname=endpoint.server_hostname
            )
        assert self._reader is not None
        self._writer.write(request)
        await self._writer.drain()
        status_line, version, status = _parse_status_line(await self._reader.readuntil(b"\n"))
        headers = await _read_headers(self._reader)
        body, complete = (b"", True) if status in BODYLESS_STATUSES else await _read_body(self._reader, headers, limit)
        if not (complete and self.keep_alive and version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()):
            self.close()
        if gunzip:
            body = _decode_content(body, headers.get("content-encoding", ""), limit)
        return Reply(status_line, status, headers, body)

    def _request_head(self, method: str, body: bytes, headers: Headers) -> bytes:
        lines = [
            f"{method} {self.endpoint.target} HTTP/1.1",
            f"Host: {self.endpoint.host_header}",
            f"User-Agent: {self.user_agent}",
        ]
        if method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        if not self.keep_alive:
            lines.append("Connection: close")
        lines += [f"{name}: {value}" for name, value in headers]
        if self.endpoint.authorization is not None:
            lines.append(f"Authorization: {self.endpoint.authorization.reveal()}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_status_line(line: bytes) -> tuple[str, str, int]:
    text = line.decode("latin-1").rstrip("\r\n")
    parts = text.split(" ", 2)
    code_ok = len(parts) > 1 and len(parts[1]) == 3 and _is_number(parts[1]) and parts[1] >= "100"  # RFC 9110 15: 100-599
    if not code_ok or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"not an HTTP status line: {line[:60]!r}")
    return text, parts[0], int(parts[1])


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readuntil(b"\n")).decode("latin-1").rstrip("\r\n")
        if not line:
            return headers
        name, colon, value = line.partition(":")
        key, value = name.strip(OWS).lower(), value.strip(OWS)  # str.strip() alone would also take "\x1f" for space
        if not colon or not key:
            raise ProtocolError(f"not a header line: {line[:60]!r}")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise ProtocolError(f"more than {MAX_HEADER_LINES} header lines")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], limit: BodyLimit) -> tuple[bytes, bool]:
    """The body, and whether the connection can carry another request after it."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, limit)
    length_text = headers.get("content-length")
    if length_text is None:
        return await _read_until_close(reader, limit), False
    if not _is_number(length_text):
        raise ProtocolError(f"invalid Content-Length {length_text[:20]!r}")
    length = int(length_text)
    if length > limit.max_bytes:
        _refuse_unless_truncating(limit)
        return await reader.readexactly(limit.max_bytes), False
    return await reader.readexactly(length), True


async def _read_chunked(reader: asyncio.StreamReader, limit: BodyLimit) -> tuple[bytes, bool]:
    body = bytearray()
    while size := _chunk_size(await reader.readuntil(b"\n")):
        if len(body) + size > limit.max_bytes:
            _refuse_unless_truncating(limit)
            body += await reader.readexactly(limit.max_bytes - len(body))
            return bytes(body), False
        body += await reader.readexactly(size)
        if (await reader.readuntil(b"\n")).rstrip(b"\r\n"):
            raise ProtocolError("chunk data longer than its size")
    await _read_headers(reader)  # trailers, ignored
    return bytes(body), True


def _chunk_size(line: bytes) -> int:
    size_text = line.split(b";")[0].strip()
    if not 0 < len(size_text) <= 16 or size_text.strip(b"0123456789abcdefABCDEF"):  # int() would take "-1", "0x1", "1_0"
        raise ProtocolError(f"bad chunk size {size_text[:20]!r}")
    return int(size_text, 16)


def _is_number(text: str) -> bool:
    """Decimal ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


async def _read_until_close(reader: asyncio.StreamReader, limit: BodyLimit) -> bytes:
    body = bytearray()
    while block := await reader.read(min(READ_BLOCK, limit.max_bytes + 1 - len(body))):
        body += block
        if len(body) > limit.max_bytes:
            _refuse_unless_truncating(limit)
            return bytes(body[: limit.max_bytes])
    return bytes(body)


def _refuse_unless_truncating(limit: BodyLimit) -> None:
    if not limit.truncate:
        raise ProtocolError(f"reply larger than {limit.max_bytes} bytes")


def _decode_content(body: bytes, encoding: str, limit: BodyLimit) -> bytes:
    """A gzip body inflated, never beyond the limit (a small reply may inflate to gigabytes)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise ProtocolError(f"Content-Encoding {encoding[:20]!r} was not asked for")
    inflater = zlib.decompressobj(wbits=31)  # 31: gzip framing
    try:
        data = inflater.decompress(body, limit.max_bytes + 1)
    except zlib.error as exc:
        raise ProtocolError(f"bad gzip body: {exc}") from None
    if len(data) > limit.max_bytes:
        _refuse_unless_truncating(limit)
        return data[: limit.max_bytes]
    if not inflater.eof:
        raise ProtocolError("truncated gzip body")
    return data
