"""SNMP devices that lie: a small UDP responder of our own crafts each lie with the project's BER encoder (no
real device lies on demand; every other SNMP test talks to net-snmp's snmpd). Each lie ends in a clear failure
reason or a correct result within the poll's timeout: never a hang, never an unbounded walk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agents.catalog import parse_config
from agents.resources import ProbeResources
from agents.results import ProbeResult
from agents.runner import run_target
from agents.snmp import ber
from agents.snmp.failures import SnmpFailure as Failure

COMMUNITY = b"liar"
COLUMN = "1.3.6.1.4.1.99999.1.1.2"  # portOctets of the profile below
SYS_UPTIME = ber.encode_oid("1.3.6.1.2.1.1.3.0")
CONFIG = """\
agent: {{id: liar-test, agency: so-tttt}}
snmp_auths:
  v2c: {{version: 2c, community: "${{LIAR_COMMUNITY}}"}}
snmp_profiles:
  ports:
    tables:
      - name: ports
        index: [{{name: portIndex}}]
        metrics:
          - {{name: portOctets, oid: {column}, type: counter}}
snmp_devices:
  - {{name: liar, address: 127.0.0.1, port: {port}, auth: v2c, profiles: [ports], timeout: 2s, request_timeout: 300ms, retries: 1}}
"""


@dataclass
class Request:
    pdu: int
    request_id: int
    max_repetitions: int
    oids: list[bytes]


def read_request(data: bytes) -> Request:
    """A v2c request as our codec sends it (the responder's side of ber.encode_request)."""
    start, _ = ber.expect(data, 0, ber.SEQUENCE, "message")
    _, pos = ber.read_integer(data, start, "version")
    _, pos = ber.read_octets(data, pos, "community")
    pdu, start, _ = ber.header(data, pos)
    request_id, pos = ber.read_integer(data, start, "request-id")
    _, pos = ber.read_integer(data, pos, "non-repeaters")
    max_repetitions, pos = ber.read_integer(data, pos, "max-repetitions")
    start, end = ber.expect(data, pos, ber.SEQUENCE, "varbinds")
    oids = []
    while start < end:
        _, content, after = ber.header(data, start)
        oid_start, oid_end = ber.expect(data, content, ber.OBJECT_IDENTIFIER, "name")
        oids.append(data[oid_start:oid_end])
        start = after
    return Request(pdu, request_id, max_repetitions, oids)


def varbind(oid: bytes, tag: int, content: bytes) -> bytes:
    return ber.tlv(ber.SEQUENCE, ber.tlv(ber.OBJECT_IDENTIFIER, oid) + ber.tlv(tag, content))


def response(request_id: int, varbinds: list[bytes]) -> bytes:
    pdu = ber.tlv(ber.RESPONSE, ber.integer(request_id) + ber.integer(0) + ber.integer(0) + ber.tlv(ber.SEQUENCE, b"".join(varbinds)))
    return ber.tlv(ber.SEQUENCE, ber.integer(ber.VERSION_2C) + ber.tlv(ber.OCTET_STRING, COMMUNITY) + pdu)


def uptime_or_nothing(request: Request) -> list[bytes]:
    """A GET's answer: sysUpTime, and noSuchObject for the rest."""
    return [varbind(oid, ber.TIMETICKS, b"\x01\x00") if oid == SYS_UPTIME else varbind(oid, ber.NO_SUCH_OBJECT, b"")
            for oid in request.oids]


def honest_table(rows: dict[int, int]) -> Callable[[Request], list[bytes]]:
    """A GETBULK's answer over one counter column of these rows (index -> value), ending with the column."""
    column = ber.encode_oid(COLUMN)
    instances = sorted((column + ber.encode_oid(f"1.3.{index}")[1:], value) for index, value in rows.items())

    def answer(request: Request) -> list[bytes]:
        if request.pdu == ber.GET:
            return uptime_or_nothing(request)
        after = [(oid, value) for oid, value in instances if ber.decode_subids(oid) > ber.decode_subids(request.oids[0])]
        out = [varbind(oid, ber.COUNTER64, value.to_bytes(8, "big")) for oid, value in after[: request.max_repetitions]]
        return out or [varbind(ber.encode_oid("1.3.6.1.4.1.99999.2"), ber.INTEGER, b"\x00")]  # past the column

    return answer


class Responder(asyncio.DatagramProtocol):
    """Answers each request with what `lie` makes of it: (varbinds, request ID to answer with)."""

    def __init__(self, lie: Callable[[Request], tuple[list[bytes], int] | None], reply_from: asyncio.DatagramTransport | None = None):
        self.lie = lie
        self.reply_from = reply_from  # another socket to answer from (another address or port)
        self.requests: list[Request] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        request = read_request(data)
        self.requests.append(request)
        answer = self.lie(request)
        if answer is not None:
            varbinds, request_id = answer
            (self.reply_from or self.transport).sendto(response(request_id, varbinds), addr)


async def poll_liar(monkeypatch, lie, times: int = 1, reply_from_other_port: bool = False) -> tuple[list[ProbeResult], Responder, float]:
    monkeypatch.setenv("LIAR_COMMUNITY", COMMUNITY.decode())
    loop = asyncio.get_running_loop()
    other = None
    if reply_from_other_port:
        other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.2", 0))
    transport, responder = await loop.create_datagram_endpoint(lambda: Responder(lie, other), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    (target,) = parse_config(CONFIG.format(column=COLUMN, port=port)).targets
    resources = ProbeResources()
    started = time.monotonic()
    try:
        results = [await run_target(target, resources) for _ in range(times)]
    finally:
        resources.close()
        transport.close()
        if other is not None:
            other.close()
    return results, responder, time.monotonic() - started


def samples(result: ProbeResult, name: str) -> dict[str, float]:
    return {dict(s.labels)["portIndex"]: s.value for s in result.samples if s.metric.name == name}


async def test_the_honest_responder_is_read_correctly(monkeypatch):
    table = honest_table({1: 100, 2: 200, 3: 300})
    (result,), _, _ = await poll_liar(monkeypatch, lambda request: (table(request), request.request_id))
    assert result.success, result.detail
    assert samples(result, "portOctets") == {"1": 100, "2": 200, "3": 300}


async def test_a_reply_with_the_request_id_of_another_request_is_not_taken_and_the_timeout_says_so(monkeypatch):
    table = honest_table({1: 100})
    (result,), responder, took = await poll_liar(monkeypatch, lambda request: (table(request), request.request_id + 1))
    assert result.failure == Failure.TIMEOUT and took < 3
    assert "a response came with ID" in result.detail and "not the" in result.detail
    assert not samples(result, "portOctets")


async def test_a_walk_that_loops_on_the_same_oid_ends_as_a_protocol_error(monkeypatch):
    def same_oid_forever(request: Request):
        if request.pdu == ber.GET:
            return uptime_or_nothing(request), request.request_id
        return [varbind(ber.encode_oid(f"{COLUMN}.1"), ber.COUNTER64, b"\x01")], request.request_id

    (result,), responder, took = await poll_liar(monkeypatch, same_oid_forever)
    assert result.failure == Failure.PROTOCOL_ERROR and "OID not increasing" in result.detail
    assert took < 1 and len(responder.requests) <= 3


async def test_a_walk_that_goes_backwards_without_repeating_ends_as_a_protocol_error(monkeypatch):
    def backwards(request: Request):
        if request.pdu == ber.GET:
            return uptime_or_nothing(request), request.request_id
        last = ber.decode_subids(request.oids[0])
        index = last[-1] - 1 if len(last) > len(ber.decode_subids(ber.encode_oid(COLUMN))) else 1_000_000
        return [varbind(ber.encode_oid(f"{COLUMN}.{index}"), ber.COUNTER64, b"\x01")], request.request_id

    (result,), responder, took = await poll_liar(monkeypatch, backwards)
    assert result.failure == Failure.PROTOCOL_ERROR and "OID not increasing" in result.detail
    assert took < 1 and len(responder.requests) <= 3


async def test_a_getbulk_answered_with_10000_varbinds_is_refused(monkeypatch):
    flood = [b"\x30\x04\x06\x00\x05\x00"] * 10_000  # 10,000 (empty-OID, NULL) varbinds: 60 kB, one datagram

    def ten_thousand(request: Request):
        if request.pdu == ber.GET:
            return uptime_or_nothing(request), request.request_id
        return flood, request.request_id

    (result,), _, took = await poll_liar(monkeypatch, ten_thousand)
    assert result.failure == Failure.PROTOCOL_ERROR and "answered 10000 varbinds to a request for at most" in result.detail
    assert took < 1


async def test_a_counter_that_goes_backwards_is_exposed_as_read(monkeypatch):
    """A reset between two polls: exposed as read, for Prometheus's rate() to take as a counter reset."""
    first_table, second_table = honest_table({1: 5_000}), honest_table({1: 70})
    polls: list[str] = []

    def by_poll(request: Request):
        if request.pdu == ber.GET:
            polls.append("get")
        table = first_table if polls.count("get") <= 1 else second_table
        return table(request), request.request_id

    (first, second), _, _ = await poll_liar(monkeypatch, by_poll, times=2)
    assert first.success and second.success, (first.detail, second.detail)
    assert samples(first, "portOctets") == {"1": 5_000} and samples(second, "portOctets") == {"1": 70}


async def test_an_answer_from_another_address_is_never_taken(monkeypatch):
    table = honest_table({1: 100})
    (result,), responder, took = await poll_liar(monkeypatch, lambda request: (table(request), request.request_id),
                                                 reply_from_other_port=True)
    assert responder.requests  # the device was asked, and answered from 127.0.0.2
    assert result.failure == Failure.TIMEOUT and took < 3
    assert not samples(result, "portOctets")


@pytest.mark.parametrize("rows", [2_000])
async def test_a_long_honest_table_is_walked_whole(monkeypatch, rows):
    table = honest_table({index: index * 10 for index in range(1, rows + 1)})
    (result,), responder, _ = await poll_liar(monkeypatch, lambda request: (table(request), request.request_id))
    assert result.success, result.detail
    assert len(samples(result, "portOctets")) == rows
