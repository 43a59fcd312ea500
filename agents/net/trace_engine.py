"""Path traces: probes with TTL 1..N, N packets per hop, timed by the kernel, without root where it allows.

A trace round sends `count` cycles `interval` apart; a cycle sends one probe to each TTL from 1 to the
round's limit at once (max_hops at first, then the TTL at which the destination, or a router's
unreachable, first answered). Each TTL's answers are tallied: who answered (time exceeded from a router,
a reply from the destination) and the RTTs, from the kernel's receive timestamp.

How a probe travels (the round does not care):

- icmp: echo requests on the ICMP engine's shared socket of the family (agents/net/icmp_engine.py), each
  with its own TTL in the ancillary data; the socket's timeline schedules the cycles. Datagram ICMP
  sockets (ping_group_range) get the routers' errors through IP_RECVERR's error queue, raw ones as packets.
- udp, tcp: one datagram socket or one non-blocking connect per probe, with IP_TTL and IP_RECVERR, as
  tracepath does: the offender of a time exceeded comes from the error queue (SO_EE_OFFENDER), with its
  kernel timestamp. A socket per probe tells the probes apart however little of the packet a router quotes.
  The destination answers a udp probe with port unreachable (or a datagram), a tcp one with SYN-ACK (RTT
  from TCP_INFO, the kernel's first RTT sample) or RST (timed when the loop sees it). None needs a privilege.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import struct
import time
from typing import Protocol

from agents.net.icmp_engine import (
    EXTENDED_ERROR,
    ICMP_ENGINE,
    IP_RECVERR,
    IPV6_RECVERR,
    MIN_PAYLOAD_BYTES,
    ROUND_ENDING_SEND_ERRORS,
    SEND_ERROR_FAILURES,
    SEND_SLACK_SECONDS,
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SO_TIMESTAMPNS,
    TIME_EXCEEDED,
    UNREACHABLE,
    Channel,
    IcmpEngine,
    Timeline,
    canonical_ip,
    offender_address,
    received_ns,
)
from agents.resources import Resource
from agents.results import Reason

ICMP_TYPES = {  # ee_type of a socket's queued error -> what it says, per family
    socket.AF_INET: {3: UNREACHABLE, 11: TIME_EXCEEDED},
    socket.AF_INET6: {1: UNREACHABLE, 3: TIME_EXCEEDED},
}
UDP_PAYLOAD = b"netmon-trace"
READ_BYTES = 512
ANCILLARY_BYTES = 256
TCP_INFO_BYTES = 104
TCP_INFO_RTT_OFFSET = 68  # struct tcp_info: tcpi_rtt, microseconds (the first sample, after a handshake)


class HopTally:
    """What one TTL of a round got: probes sent, and who answered how fast."""

    __slots__ = ("sent", "rtts", "responders", "last_responder", "unreachable_code")

    def __init__(self) -> None:
        self.sent = 0
        self.rtts: list[float] = []  # seconds, in arrival order
        self.responders: dict[str, int] = {}  # address -> answers (more than one: ECMP, or the path changed)
        self.last_responder: str | None = None
        self.unreachable_code: int | None = None  # a router answered "destination unreachable" (ICMP code)

    def answered(self, responder: str, rtt_seconds: float) -> None:
        self.rtts.append(rtt_seconds)
        self.responders[responder] = self.responders.get(responder, 0) + 1
        self.last_responder = responder


class ProbeSender(Protocol):
    """How a round's probes travel: icmp on the engine's shared socket, or udp/tcp sockets of their own."""

    timeline: Timeline

    def send(self, trace: "TraceRound", ttl: int) -> int:
        """Send one probe with that TTL; a key its answer will carry. Raises OSError."""
        ...

    def forget(self, trace: "TraceRound", keys: list[int]) -> None: ...


class TraceRound:
    """One round of a trace; resolved (`finished`) when every cycle is sent and answered, or at its deadline.

    An answer later than reply_timeout counts as lost, so early and late cycles are judged alike.
    """

    def __init__(
        self, sender: ProbeSender, loop: asyncio.AbstractEventLoop, ip: str, family: int, protocol: str, port: int,
        count: int, interval: float, max_hops: int, reply_timeout: float, deadline: float,
    ) -> None:
        self.ip = ip
        self.family = family
        self.protocol = protocol
        self.port = port
        self.count = count
        self.interval = interval
        self.reply_timeout = reply_timeout
        self.hops = [HopTally() for _ in range(max_hops)]  # index: TTL - 1
        self.destination_ttl: int | None = None  # the lowest TTL the destination answered at
        self.cycles = 0
        self.failure: Reason | None = None
        self.error_detail = ""
        self.slack = min(SEND_SLACK_SECONDS, interval / 4)
        self.finished: asyncio.Future[None] = loop.create_future()
        self._sender = sender
        self._loop = loop
        self._limit = max_hops  # the highest TTL a cycle sends to
        self._start = loop.time()
        self._deadline = min(deadline, self._start + (count - 1) * interval + reply_timeout)
        self._in_flight: dict[int, tuple[int, float]] = {}  # key -> (TTL, loop time sent)
        self._sending = False  # within a cycle: answers read inline (a drain) must not end the round

    @property
    def limit(self) -> int:
        return self._limit

    # --- the timeline's side -----------------------------------------------------------------------------------

    def next_due(self) -> float:
        if self.cycles < self.count:
            return min(self._start + self.cycles * self.interval, self._deadline)
        return self._deadline

    def on_due(self) -> None:
        now = self._loop.time()
        self._expire(now)
        if self.cycles < self.count and self._start + self.cycles * self.interval < self._deadline:
            self._send_cycle(now)
        else:
            self.close()

    def _send_cycle(self, now: float) -> None:
        self.cycles += 1
        self._sending = True
        try:
            for ttl in range(1, self._limit + 1):
                if not self._send_one(ttl, now):
                    self.close()
                    return
        finally:
            self._sending = False
        self._finish_if_done()

    def _send_one(self, ttl: int, now: float) -> bool:
        """Send one probe; False if the round must end (no route, no socket left)."""
        self.hops[ttl - 1].sent += 1
        try:
            key = self._sender.send(self, ttl)
        except OSError as exc:
            self._note_error(SEND_ERROR_FAILURES.get(exc.errno or 0), f"send to {self.ip}: {exc.strerror or exc}")
            return exc.errno not in ROUND_ENDING_SEND_ERRORS and exc.errno != errno.EMFILE
        self._in_flight[key] = (ttl, now)
        return True

    def _expire(self, now: float) -> None:
        """Give up on probes older than reply_timeout (their sockets, for udp and tcp, close now)."""
        expired = [key for key, (_, sent) in self._in_flight.items() if now - sent > self.reply_timeout]
        if expired:
            for key in expired:
                del self._in_flight[key]
            self._sender.forget(self, expired)

    # --- answers -----------------------------------------------------------------------------------------------

    def on_reply(self, key: int, rtt_seconds: float, hop_limit: int | None) -> None:
        """The destination itself answered (echo reply, a udp datagram, SYN-ACK or RST)."""
        ttl = self._answered_ttl(key, rtt_seconds)
        if ttl is not None:
            self._destination_at(ttl, rtt_seconds)
        self._finish_if_done()

    def on_icmp_error(self, key: int, kind: str, code: int, reporter: str, rtt_seconds: float) -> None:
        ttl = self._answered_ttl(key, rtt_seconds)
        if ttl is None:
            pass
        elif reporter == self.ip:  # port unreachable (udp), or the destination refusing: it is there
            self._destination_at(ttl, rtt_seconds)
        else:
            hop = self.hops[ttl - 1]
            hop.answered(reporter, rtt_seconds)
            if kind == UNREACHABLE:  # a router has no way on: the path ends at this TTL
                hop.unreachable_code = code
                self._limit = min(self._limit, ttl)
        self._finish_if_done()

    def on_lost(self, key: int) -> None:
        """The probe failed locally (its socket reported an error and no ICMP message): no answer."""
        self._in_flight.pop(key, None)
        self._finish_if_done()

    def _answered_ttl(self, key: int, rtt_seconds: float) -> int | None:
        """The TTL of the probe the key names, if it was still waited for and answered within reply_timeout."""
        entry = self._in_flight.pop(key, None)
        if entry is None or rtt_seconds > self.reply_timeout:
            return None
        return entry[0]

    def _destination_at(self, ttl: int, rtt_seconds: float) -> None:
        self.hops[ttl - 1].answered(self.ip, rtt_seconds)
        if self.destination_ttl is None or ttl < self.destination_ttl:
            self.destination_ttl = ttl
        self._limit = min(self._limit, ttl)

    def _note_error(self, failure: Reason | None, detail: str) -> None:
        if self.failure is None and (failure is not None or not self.error_detail):
            self.failure, self.error_detail = failure, detail

    def _finish_if_done(self) -> None:
        if self.cycles == self.count and not self._in_flight and not self._sending:
            self.close()

    def close(self) -> None:
        """Stop sending, forget the probes in flight and resolve the future; safe to call again."""
        if self._in_flight:
            keys = list(self._in_flight)
            self._in_flight.clear()
            self._sender.forget(self, keys)
        if not self.finished.done():
            self.finished.set_result(None)


class IcmpProbes:
    """Echo requests with a TTL on the ICMP engine's shared socket of one family."""

    def __init__(self, channel: Channel, payload: tuple[bytes, int]) -> None:
        self.timeline = channel.timeline
        self._channel = channel
        self._payload, self._payload_sum = payload

    def send(self, trace: TraceRound, ttl: int) -> int:
        sequence = self._channel.send(trace.ip, self._payload, self._payload_sum, trace, ttl)
        self._channel.sent_one()
        return sequence

    def forget(self, trace: TraceRound, keys: list[int]) -> None:
        self._channel.forget(trace, keys)


class SocketProbes:
    """UDP datagrams or TCP connects with a TTL, one socket per probe, for every udp and tcp trace."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timeline = Timeline(loop)
        self._loop = loop
        self._keys = itertools.count()
        self._probes: dict[int, tuple[socket.socket, TraceRound, int]] = {}  # key -> (socket, round, send time ns)
        self._buffer = bytearray(READ_BYTES)
        # The kernel stamps packets on arrival only while some socket asks for timestamps: it turns that on (and,
        # after the last such socket closes, off) machine-wide from a work queue, and meanwhile stamps a packet
        # when it is read. Probe sockets live for milliseconds; this one keeps the stamping on between them.
        self._keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def send(self, trace: TraceRound, ttl: int) -> int:
        tcp = trace.protocol == "tcp"
        sock = socket.socket(trace.family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        try:
            _configure_probe_socket(sock, trace.family, ttl)
            sent_ns = time.time_ns()
            if tcp:
                code = sock.connect_ex((trace.ip, trace.port))
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
            else:
                sock.connect((trace.ip, trace.port))
                sock.send(UDP_PAYLOAD)
        except OSError:
            sock.close()
            raise
        key = next(self._keys)
        self._probes[key] = (sock, trace, sent_ns)
        if tcp:  # connected, refused or an ICMP error: all make it writable
            self._loop.add_writer(sock.fileno(), self._on_tcp_event, key)
        else:
            self._loop.add_reader(sock.fileno(), self._on_udp_event, key)
        return key

    def forget(self, trace: TraceRound, keys: list[int]) -> None:
        for key in keys:
            entry = self._probes.get(key)
            if entry is not None and entry[1] is trace:
                self._close(key)

    def close(self) -> None:
        rounds = {trace for _, trace, _ in self._probes.values()} | self.timeline.close()
        for key in list(self._probes):
            self._close(key)
        for trace in rounds:
            trace.close()
        self._keeper.close()

    def _close(self, key: int) -> None:
        sock, trace, _ = self._probes.pop(key)
        if trace.protocol == "tcp":
            self._loop.remove_writer(sock.fileno())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no TIME_WAIT
        else:
            self._loop.remove_reader(sock.fileno())
        sock.close()

    def _on_udp_event(self, key: int) -> None:
        sock, trace, sent_ns = self._probes[key]
        try:
            _, ancillary, _, _ = sock.recvmsg_into([self._buffer], ANCILLARY_BYTES)
        except BlockingIOError:
            return
        except OSError:  # an ICMP error is pending: its details wait in the error queue
            self._on_queued_error(key)
            return
        self._close(key)
        trace.on_reply(key, _elapsed(sent_ns, received_ns(ancillary)), None)

    def _on_tcp_event(self, key: int) -> None:
        sock, trace, sent_ns = self._probes[key]
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:  # SYN-ACK: the kernel timed the handshake
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
            rtt_us = struct.unpack_from("@I", info, TCP_INFO_RTT_OFFSET)[0] if len(info) >= TCP_INFO_RTT_OFFSET + 4 else 0
            self._close(key)
            trace.on_reply(key, rtt_us / 1e6 if rtt_us else _elapsed(sent_ns, 0), None)
        elif code == errno.ECONNREFUSED:  # RST from the destination
            self._close(key)
            trace.on_reply(key, _elapsed(sent_ns, 0), None)
        else:
            self._on_queued_error(key)

    def _on_queued_error(self, key: int) -> None:
        """Read the ICMP error a router (or the destination) sent about this probe, then close the probe."""
        sock, trace, sent_ns = self._probes[key]
        error = _queued_icmp_error(sock, trace.family, self._buffer)
        self._close(key)
        if error is None:  # a local error without ICMP
            trace.on_lost(key)
            return
        kind, code, reporter, at_ns = error
        trace.on_icmp_error(key, kind, code, reporter, _elapsed(sent_ns, at_ns))


def _elapsed(sent_ns: int, received: int) -> float:
    return max((received or time.time_ns()) - sent_ns, 0) / 1e9


def _configure_probe_socket(sock: socket.socket, family: int, ttl: int) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # also stamps the error queue's messages
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)


def _queued_icmp_error(sock: socket.socket, family: int, buffer: bytearray) -> tuple[str, int, str, int] | None:
    """(kind, code, reporter, kernel receive time in ns) of the ICMP error in the socket's error queue, if any."""
    try:
        _, ancillary, _, _ = sock.recvmsg_into([buffer], ANCILLARY_BYTES, socket.MSG_ERRQUEUE)
    except OSError:
        return None
    types = ICMP_TYPES[family]
    for _level, _type, data in ancillary:
        if len(data) < EXTENDED_ERROR.size:
            continue
        _errno, origin, icmp_type, code, _pad = EXTENDED_ERROR.unpack_from(data)
        if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6) and icmp_type in types:
            return types[icmp_type], code, offender_address(data, family), received_ns(ancillary)
    return None


class TraceEngine:
    """The process's path traces: icmp on the ICMP engine's sockets, udp and tcp on sockets of their own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, icmp: IcmpEngine) -> None:
        self._loop = loop
        self._icmp = icmp
        self._sockets: SocketProbes | None = None

    def open(self, family: int, protocol: str) -> str:
        """Make ready to trace; the kind of socket ("datagram" or "raw" ICMP, "udp", "tcp"). Raises OSError."""
        if protocol == "icmp":
            return self._icmp.open(family)
        return protocol

    async def trace(
        self, ip: str, family: int, protocol: str, port: int, count: int, interval: float, max_hops: int,
        reply_timeout: float, timeout: float,
    ) -> TraceRound:
        """One round to ip; returns when every probe is answered, or reply_timeout after the last cycle, or at timeout."""
        sender = self._sender(family, protocol)
        trace = TraceRound(
            sender, self._loop, canonical_ip(ip, family), family, protocol, port, count, interval, max_hops,
            reply_timeout, self._loop.time() + timeout,
        )
        sender.timeline.start(trace)
        try:
            await trace.finished
        finally:
            trace.close()
        return trace

    def _sender(self, family: int, protocol: str) -> ProbeSender:
        if protocol == "icmp":
            return IcmpProbes(self._icmp.channel(family), self._icmp.payload(MIN_PAYLOAD_BYTES))
        if self._sockets is None:
            self._sockets = SocketProbes(self._loop)
        return self._sockets

    def close(self) -> None:
        if self._sockets is not None:
            self._sockets.close()
            self._sockets = None


# The process's traces: icmp ones share the ICMP engine (and so its sockets) with every icmp target
TRACE_ENGINE: Resource[TraceEngine] = Resource(
    "trace_engine",
    lambda resources: TraceEngine(asyncio.get_running_loop(), resources.get(ICMP_ENGINE)),
    close=lambda engine: engine.close(),
)
