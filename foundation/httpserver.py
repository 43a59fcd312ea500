"""A small asyncio HTTP/1.1 server: the one server library of the agent and the collector.

Enough of HTTP/1.1 for Prometheus scrapes, remote_write pushes and a status page: keep-alive,
Content-Length bodies with a size cap, gzip responses, timeouts on every read, and a 4xx with a
reason for anything malformed. (aiohttp would cost more memory than the whole agent budget.)
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import logging
import resource
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192
MAX_HEADERS = 100
HEADER_TIMEOUT = 10.0  # for the request line, then again for the headers, then for the body: a slowloris client is gone by then
IDLE_TIMEOUT = 60.0
WRITE_TIMEOUT = 10.0  # for the client to take more of a response (a reader that stalls is aborted)
GZIP_MIN_BYTES = 1024
WRITE_BATCH_BYTES = 65536  # a streamed body is written in batches of about this size, not a write per piece
FD_RESERVE = 256  # descriptors kept for what the program opens itself: queue segments, outgoing connections, logs
PEER_SHARE = 2  # one client address may hold at most 1/PEER_SHARE of the connections
# why the server closed a connection before serving it whole (HttpServer.refusals, exported by both programs)
REFUSAL_REASONS = ("connection_limit", "idle_reclaimed", "timeout", "write_timeout", "bad_request", "too_large")


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    peer: str
    version: str = "HTTP/1.1"
    tls_peer_cert: dict | None = None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes | Iterable[bytes] = b""  # an iterable is sent chunk by chunk (chunked encoding)
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str, **headers: str) -> "Response":
        return cls(status, text.encode("utf-8"), headers=dict(headers))


Handler = Callable[[Request], Awaitable[Response]]
PREFIX_ROUTE = "*"  # a route "/a/b/*" serves every path under /a/b/ that no exact route serves


class HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.request: Request | None = None  # what was read of the request before the error: its body never is


# Told of every error reply the server gives itself (a body over the limit, a malformed request, a handler's
# HttpError or crash, an unknown path): the request as far as it was read (None when even its first line was not
# understood), the client's address and the error. The program counts and logs them with its own replies.
ErrorObserver = Callable[[Request | None, str, HttpError], None]


def default_max_connections() -> int:
    """Open connections the server allows: what the descriptor limit leaves after FD_RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 16 if soft == resource.RLIM_INFINITY else max(soft - FD_RESERVE, 64)


class HttpServer:
    """Connections beyond `max_connections`, or beyond half of them from one client address, are closed at once:
    a client holding connections open (slowloris) can neither exhaust the process's file descriptors (which the
    durable queue needs too) nor take every connection from the other clients. When the server is full, the
    connection idle longest between keep-alive requests is closed to make room (as nginx reuses idle keep-alive
    connections), so idle connections never lock out a new client. Every read and write has a deadline; every
    connection closed before it was served is counted in `refusals` by reason (REFUSAL_REASONS)."""

    def __init__(
        self, routes: dict[str, Handler], max_body_bytes: int = 1 << 20, ssl_context: ssl.SSLContext | None = None,
        max_connections: int | None = None, on_error: ErrorObserver | None = None,
    ) -> None:
        self._routes = routes
        self._on_error = on_error
        self._max_body = max_body_bytes
        self._ssl = ssl_context
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.max_connections = max_connections or default_max_connections()
        self._per_address: dict[str, int] = {}
        self._idle: dict[asyncio.Task, asyncio.StreamWriter] = {}  # waiting for a next request, longest first
        self._reclaimed: set[asyncio.Task] = set()  # idle connections aborted to make room, not yet ended
        self.refusals: collections.Counter[str] = collections.Counter()

    @property
    def refused_connections(self) -> int:
        """Closed at once for being over a limit."""
        return self.refusals["connection_limit"]

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self._ssl, limit=MAX_REQUEST_LINE)
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await self._server.wait_closed()
            self._server = None

    def _admit(self, address: str) -> bool:
        held = self._per_address.get(address, 0)
        full = len(self._connections) - len(self._reclaimed) >= self.max_connections
        if full and self._idle:
            task, writer = next(iter(self._idle.items()))
            del self._idle[task]
            self._reclaimed.add(task)  # counted as gone: its task ends on the next turn of the loop
            writer.transport.abort()
            self.refusals["idle_reclaimed"] += 1
            full = False
        if full or held >= self.max_connections // PEER_SHARE:
            self.refusals["connection_limit"] += 1
            return False
        self._per_address[address] = held + 1
        return True

    def _release(self, address: str) -> None:
        held = self._per_address.pop(address) - 1
        if held:
            self._per_address[address] = held

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if not self._admit(address):
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer_text = f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            keep_alive = True
            first = True
            while keep_alive:
                line = await self._request_line(reader, writer, first, peer_text)
                if not line:
                    return
                try:
                    request = await self._read_request(line, reader, peer_text)
                except HttpError as exc:
                    await self._refuse(writer, exc.request, peer_text, exc)
                    return
                request.tls_peer_cert = writer.get_extra_info("peercert")
                first = False
                connection = request.headers.get("connection", "").lower()
                keep_alive = connection == "keep-alive" if request.version == "HTTP/1.0" else connection != "close"
                response = await self._dispatch(request)
                if request.version == "HTTP/1.0" and not isinstance(response.body, (bytes, bytearray)):
                    response.body = b"".join(response.body)  # HTTP/1.0 has no chunked encoding
                await self._write(
                    writer, response, close=not keep_alive, gzip_ok="gzip" in request.headers.get("accept-encoding", ""),
                    head_only=request.method == "HEAD",
                )
        except asyncio.TimeoutError:
            self.refusals["timeout"] += 1  # headers or body not sent in time
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
                self._idle.pop(task, None)
                self._reclaimed.discard(task)
            self._release(address)
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, request: Request | None, peer: str, exc: HttpError) -> None:
        """Answer a request the server will not read on with its 4xx, count it, tell the observer, and close."""
        self.refusals["too_large" if exc.status in (413, 414, 431) else "bad_request"] += 1
        self._observe(request, peer, exc)
        await self._write(writer, Response.text(exc.status, exc.reason + "\n"), close=True)

    async def _request_line(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool, peer: str) -> bytes:
        """The next request line; b"" when the client is gone or too slow. Between keep-alive requests the
        connection is idle until the next request's first byte: the server may close it to make room for a new client."""
        start = b""
        if not first:
            task = asyncio.current_task()
            self._idle[task] = writer  # type: ignore[index]
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):  # a deadline, not wait_for's task per read
                    start = await reader.read(1)
            except TimeoutError:
                return b""  # an idle keep-alive connection ends: no refusal
            finally:
                self._idle.pop(task, None)  # type: ignore[arg-type]
            if not start:
                return b""
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                return start + await reader.readline()
        except TimeoutError:
            self.refusals["timeout"] += 1  # silent, or a request line begun and never ended (slowloris)
            return b""
        except ValueError:  # the stream's limit: a line longer than MAX_REQUEST_LINE
            await self._refuse(writer, None, peer, HttpError(414, "request line too long"))
            return b""

    async def _read_request(self, line: bytes, reader: asyncio.StreamReader, peer: str) -> Request:
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        try:
            split = urlsplit(target)
        except ValueError:  # e.g. "http://[::1/": an IPv6 authority without its bracket
            raise HttpError(400, "malformed request target") from None
        request = Request(method, unquote(split.path), parse_qs(split.query), {}, b"", peer, version)
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                request.headers = await self._read_headers(reader)
            request.body = await self._read_body(reader, request.headers)
        except HttpError as exc:
            exc.request = request
            raise
        return request

    async def _read_headers(self, reader: asyncio.StreamReader) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            try:
                line = await reader.readline()
            except ValueError:
                raise HttpError(431, "header line too long") from None
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, "malformed header line")
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        raise HttpError(431, "too many headers")

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(411, "chunked request bodies are not supported; send Content-Length")
        length_text = headers.get("content-length")
        if length_text is None:
            return b""
        if not (length_text.isascii() and length_text.isdigit()):  # isdigit() alone takes "²", which int() refuses
            raise HttpError(400, "invalid Content-Length")
        length = int(length_text)
        if length > self._max_body:
            raise HttpError(413, f"request body of {length} bytes exceeds the limit of {self._max_body} bytes")
        async with asyncio.timeout(HEADER_TIMEOUT):
            return await reader.readexactly(length)

    def _handler(self, path: str) -> Handler | None:
        """The exact route, else the longest prefix route the path is under."""
        handler = self._routes.get(path)
        if handler is not None:
            return handler
        prefixes = [route for route in self._routes if route.endswith(PREFIX_ROUTE) and path.startswith(route[:-1])]
        return self._routes[max(prefixes, key=len)] if prefixes else None

    async def _dispatch(self, request: Request) -> Response:
        handler = self._handler(request.path)
        try:
            if handler is None:
                raise HttpError(404, f"no such path {request.path}; see / for what is served")
            return await handler(request)
        except HttpError as exc:
            error = exc
        except Exception:  # noqa: BLE001 - one bad request must not take the server down
            log.exception("handler for %s failed", request.path)
            error = HttpError(500, "internal error; see the server log")
        self._observe(request, request.peer, error)
        return Response.text(error.status, error.reason + "\n")

    def _observe(self, request: Request | None, peer: str, error: HttpError) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(request, peer, error)
        except Exception:  # noqa: BLE001 - counting a refusal must not stop the reply
            log.exception("error observer failed")

    async def _write(
        self, writer: asyncio.StreamWriter, response: Response, close: bool, gzip_ok: bool = False, head_only: bool = False
    ) -> None:
        """head_only: the answer to a HEAD, the head the body would have had and no body."""
        if not isinstance(response.body, (bytes, bytearray)):
            await self._write_chunked(writer, response, close, gzip_ok, head_only)
            return
        body = response.body
        headers = {"Content-Type": response.content_type, **response.headers}
        if gzip_ok and len(body) >= GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        headers["Content-Length"] = str(len(body))
        if close:
            headers["Connection"] = "close"
        writer.write(_head(response.status, headers) + (b"" if head_only else body))
        await self._drain(writer)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait for the client to take what was written, within WRITE_TIMEOUT; else abort (closing would wait).
        Below the transport's high-water mark drain() returns at once: no deadline task for every chunk."""
        transport = writer.transport
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            await writer.drain()
            return
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except asyncio.TimeoutError:
            self.refusals["write_timeout"] += 1
            writer.transport.abort()
            raise ConnectionAbortedError("the client stopped reading") from None

    async def _write_chunked(self, writer: asyncio.StreamWriter, response: Response, close: bool, gzip_ok: bool, head_only: bool) -> None:
        """A large body piece by piece, so it is never whole in memory (a /metrics of 1,000 targets)."""
        headers = {"Content-Type": response.content_type, **response.headers, "Transfer-Encoding": "chunked"}
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31) if gzip_ok else None  # wbits 31: gzip framing
        if compressor is not None:
            headers["Content-Encoding"] = "gzip"
        if close:
            headers["Connection"] = "close"
        pending = [_head(response.status, headers)]  # written together up to WRITE_BATCH_BYTES: a send(2) per piece,
        size = 0  # on loopback, cost a scrape more than making its text
        if head_only:
            await self._flush(writer, pending)
            return
        for piece in response.body:
            data = compressor.compress(piece) if compressor is not None else piece
            if data:
                pending.append(b"%x\r\n%b\r\n" % (len(data), data))
                size += len(data)
                if size >= WRITE_BATCH_BYTES:
                    await self._flush(writer, pending)
                    size = 0
        tail = compressor.flush() if compressor is not None else b""
        pending.append((b"%x\r\n%b\r\n" % (len(tail), tail) if tail else b"") + b"0\r\n\r\n")
        await self._flush(writer, pending)

    async def _flush(self, writer: asyncio.StreamWriter, pending: list[bytes]) -> None:
        writer.write(b"".join(pending))
        pending.clear()
        await self._drain(writer)


def _head(status: int, headers: dict[str, str]) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 {status} {phrase}\r\n{lines}\r\n".encode("latin-1")


def require_method(request: Request, *methods: str) -> None:
    """HEAD is allowed wherever GET is: the server sends the GET answer's head without its body (RFC 9110 9.3.2)."""
    if request.method not in methods and not (request.method == "HEAD" and "GET" in methods):
        raise HttpError(405, f"method {request.method} not allowed; use {' or '.join(methods)}")
