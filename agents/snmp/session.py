"""One request PDU to one device and its response, over a connected UDP socket: v1/v2c and v3 (USM).

Both sessions answer `request()` with an `agents.snmp.ber.Response` (OIDs encoded, values as Python types),
so the walker above them does not care which one it talks to. Retries, adaptive bulk sizes and error
classes of the PDU are the walker's business; a session raises `RequestTimeout` or `SnmpError`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any, Callable, Generic, Protocol, TypeVar

from agents.results import Failure, Reason, socket_failure
from agents.snmp import ber
from agents.snmp.failures import SnmpFailure
from agents.snmp.schema import SnmpAuth
from agents.snmp.usm import (
    NOT_IN_TIME_WINDOW,
    REPORTED_FAILURES,
    UNKNOWN_ENGINE_ID,
    AuthenticationError,
    Incoming,
    UsmPeer,
    discovery_message,
    read_message,
    request_message,
)

Payload = TypeVar("Payload")


class RequestTimeout(Exception):
    """No response to one request PDU within its timeout; the message says what did come, if anything."""


class SnmpError(Exception):
    """A poll-ending error with its bounded class; `detail` is for humans and never holds a secret."""

    def __init__(self, failure: Reason, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class Session(Protocol):
    version: int  # ber.VERSION_1, ber.VERSION_2C or ber.VERSION_3

    async def request(self, pdu: int, oids: list[bytes], max_repetitions: int, timeout: float) -> ber.Response: ...

    def close(self) -> None: ...


class _Responses(asyncio.DatagramProtocol, Generic[Payload]):
    """Parses datagrams on one connected UDP socket and hands each to the request waiting for its ID.

    A datagram that does not parse, or fails authentication, is dropped and remembered, so a request
    that then times out can say why instead of only "timeout".
    """

    def __init__(self, parse: Callable[[bytes], tuple[int, Payload]]) -> None:
        self._parse = parse
        self.waiting: dict[int, asyncio.Future[Payload]] = {}
        self.dropped: tuple[Reason, str] | None = None
        self.unmatched: int | None = None  # the ID of the last response that answered no request in flight

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            key, payload = self._parse(data)
        except ber.DecodeError as exc:
            self.dropped = (SnmpFailure.DECODE_ERROR, f"undecodable response: {exc}")
            return
        except AuthenticationError:
            self.dropped = (Failure.AUTH_FAILED, "responses fail authentication: wrong auth password or protocol")
            return
        future = self.waiting.get(key)
        if future is None:
            self.unmatched = key  # a late answer to an earlier try, or an agent that answers with the wrong ID
        elif not future.done():
            future.set_result(payload)

    def error_received(self, exc: Exception) -> None:
        # ICMP port/host unreachable on a connected socket: every waiting request has its answer
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)


class _UdpSession(Generic[Payload]):
    def __init__(self, transport: asyncio.DatagramTransport, responses: _Responses[Payload]) -> None:
        self._transport = transport
        self._responses = responses
        self._ids = itertools.count(random.randrange(1, 2**30))

    @staticmethod
    async def _connect(parse: Callable[[bytes], tuple[int, Payload]], ip: str, port: int) -> tuple[Any, Any]:
        try:
            return await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Responses(parse), remote_addr=(ip, port)
            )
        except OSError as exc:
            raise SnmpError(socket_failure(exc), f"cannot open a UDP socket to {ip}:{port}: {exc.strerror}") from None

    def _next_id(self) -> int:
        return next(self._ids) & 0x7FFFFFFF

    async def _exchange(self, key: int, message: bytes, timeout: float) -> Payload:
        future: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
        self._responses.waiting[key] = future
        self._responses.dropped = self._responses.unmatched = None
        try:
            self._transport.sendto(message)
            return await asyncio.wait_for(future, max(timeout, 0.001))
        except asyncio.TimeoutError:
            if self._responses.dropped is not None:
                raise SnmpError(*self._responses.dropped) from None
            unmatched = self._responses.unmatched
            raise RequestTimeout("" if unmatched is None else f"a response came with ID {unmatched}, not the {key} asked") from None
        except OSError as exc:
            hint = " (ICMP port unreachable: no SNMP agent listens on that port)" if isinstance(exc, ConnectionRefusedError) else ""
            raise SnmpError(socket_failure(exc), f"UDP: {exc.strerror or exc}{hint}") from None
        finally:
            del self._responses.waiting[key]

    def close(self) -> None:
        self._transport.abort()


def _parse_response(data: bytes) -> tuple[int, ber.Response]:
    _, _, response = ber.decode_response(data)
    return response.request_id, response


class CommunitySession(_UdpSession[ber.Response]):
    """SNMP v1/v2c: requests matched to responses by request-id."""

    def __init__(self, version: int, community: bytes, transport: Any, responses: Any) -> None:
        super().__init__(transport, responses)
        self.version = version
        self._community = community

    @classmethod
    async def open(cls, auth: SnmpAuth, ip: str, port: int) -> "CommunitySession":
        version = ber.VERSION_1 if auth.version == 1 else ber.VERSION_2C
        community = auth.community_secret.reveal().encode()  # type: ignore[union-attr]
        transport, responses = await cls._connect(_parse_response, ip, port)
        return cls(version, community, transport, responses)

    async def request(self, pdu: int, oids: list[bytes], max_repetitions: int, timeout: float) -> ber.Response:
        request_id = self._next_id()
        repetitions = max_repetitions if pdu == ber.GETBULK else 0
        message = ber.encode_request(self.version, self._community, pdu, request_id, oids, max_repetitions=repetitions)
        return await self._exchange(request_id, message, timeout)


class UsmSession(_UdpSession[Incoming]):
    """SNMPv3: engine discovery, time synchronization and USM reports, requests matched by msgID."""

    version = ber.VERSION_3

    def __init__(self, peer: UsmPeer, transport: Any, responses: Any) -> None:
        super().__init__(transport, responses)
        self._peer = peer

    @classmethod
    async def open(cls, peer: UsmPeer, ip: str, port: int) -> "UsmSession":
        def parse(data: bytes) -> tuple[int, Incoming]:
            incoming = read_message(data, peer.user)
            return incoming.message_id, incoming

        transport, responses = await cls._connect(parse, ip, port)
        return cls(peer, transport, responses)

    async def request(self, pdu: int, oids: list[bytes], max_repetitions: int, timeout: float) -> ber.Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        engine = self._peer.engine
        if not engine.id:
            await self._discover(deadline - loop.time())
        repetitions = max_repetitions if pdu == ber.GETBULK else 0
        body = ber.encode_pdu(pdu, self._next_id(), oids, max_repetitions=repetitions)
        resynchronized = False
        while True:
            message_id = self._next_id()
            incoming = await self._exchange(message_id, request_message(self._peer.user, engine, message_id, body),
                                            deadline - loop.time())
            if incoming.pdu_tag == ber.RESPONSE:
                engine.sync(incoming.boots, incoming.time)
                return incoming.response
            report = incoming.response.varbinds[0].oid if incoming.response.varbinds else b""
            # the agent rebooted or its clock moved (an authenticated report), or another engine answers here now
            if not resynchronized and (report == UNKNOWN_ENGINE_ID or report == NOT_IN_TIME_WINDOW and incoming.level):
                resynchronized = True
                engine.id = incoming.engine_id
                engine.sync(incoming.boots, incoming.time)
                continue
            raise self._reported(report)

    async def _discover(self, timeout: float) -> None:
        message_id = self._next_id()
        incoming = await self._exchange(message_id, discovery_message(message_id, self._next_id()), timeout)
        if not incoming.engine_id:
            raise SnmpError(Failure.PROTOCOL_ERROR, "SNMPv3 engine discovery: the agent reported no engine ID")
        self._peer.engine.id = incoming.engine_id
        self._peer.engine.sync(incoming.boots, incoming.time)

    def _reported(self, report: bytes) -> SnmpError:
        failure, text = REPORTED_FAILURES.get(report, (Failure.PROTOCOL_ERROR, f"the agent reported {ber.decode_oid(report)}"))
        return SnmpError(failure, f"SNMPv3 user {self._peer.user.name.decode(errors='replace')}: {text}")
