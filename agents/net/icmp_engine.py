"""One shared ICMP echo socket per address family, for every icmp probe of the process.

A probe asks for a round of N echo requests (`IcmpEngine.ping`); the round object owns the round's
only future. Each socket keeps the rounds' next sends and deadlines in one heap behind one
`loop.call_at` timer, and one reader callback drains every waiting packet in a batch. No task,
future or timer exists per packet: a packet in flight is one dict entry.

Sockets: unprivileged datagram ICMP (SOCK_DGRAM, allowed by net.ipv4.ping_group_range) where the
kernel allows it, raw otherwise. The kernel rewrites the echo identifier of datagram sockets, so a
reply is matched by its sequence number (unique per socket among packets in flight), its source
address and a payload token; the identifier is checked on raw sockets only, where it filters out
other pingers. RTTs use the kernel's receive timestamp (SO_TIMESTAMPNS), so a busy event loop does
not inflate them.

The same socket and timeline carry path traces (agents/net/trace_engine.py): a round of another kind
sends with a TTL of its own (`Channel.send(..., ttl=)`), and the ICMP errors quoting its requests (time
exceeded, destination unreachable) reach it through `on_icmp_error` with the reporter and the RTT.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import itertools
import os
import socket
import struct
import sys
import time
from typing import Protocol

from agents.resources import Resource
from agents.results import Failure, Reason

SO_TIMESTAMPNS = 35  # also the cmsg type (SCM_TIMESTAMPNS)
SO_RCVBUFFORCE = 33
IP_RECVERR = 11
IP_RECVTTL = 12
IPV6_RECVERR = 25
SOL_RAW = 255
ICMP_FILTER = 1  # SOL_RAW option on raw IPv4 ICMP sockets
ICMP6_FILTER = 1  # IPPROTO_ICMPV6 option on raw ICMPv6 sockets
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

ICMP_ECHO_REPLY, ICMP_UNREACHABLE, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
ICMP6_UNREACHABLE, ICMP6_TIME_EXCEEDED, ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 1, 3, 128, 129
# what an ICMP error quoting one of our requests says, whatever the family's type numbers
UNREACHABLE, TIME_EXCEEDED = "unreachable", "time_exceeded"
# destination-unreachable codes that blame the network rather than the host
IPV4_NETWORK_CODES = frozenset({0, 6, 9, 11})  # net unreachable, net unknown, net prohibited, net for TOS
IPV6_NETWORK_CODES = frozenset({0})  # no route to destination

ECHO_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
TIMESPEC = struct.Struct("@qq")
EXTENDED_ERROR = struct.Struct("@IBBBB")  # sock_extended_err: errno, origin, type, code, pad
TOKEN_BYTES = 8
MIN_PAYLOAD_BYTES = TOKEN_BYTES
MAX_IN_FLIGHT = 0x10000  # one per sequence number

READ_BYTES = 512  # headers, the token and an error's quoted packet; the rest of a payload is never read
ANCILLARY_BYTES = 256
RECEIVE_BUFFER_BYTES = 4 << 20
# A burst of sends in one loop iteration (many probes starting together) would fill the receive
# buffer before the reader runs; reading inline every this many sends keeps it drained.
DRAIN_EVERY_SENDS = 64
# The longest a send (or a round's end) moves, at most a quarter of its round's interval, to share a
# loop wakeup with others.
SEND_SLACK_SECONDS = 0.025
# What a sendto error says about the destination. A route or policy refusal ends the round; EPERM is a
# local firewall dropping this one packet (nftables drop), so the round goes on. Others (ENOBUFS,
# EAGAIN) lose the packet and say nothing about the destination.
SEND_ERROR_FAILURES = {
    errno.ENETUNREACH: Failure.NETWORK_UNREACHABLE,
    errno.EINVAL: Failure.NETWORK_UNREACHABLE,  # a blackhole route
    errno.EHOSTUNREACH: Failure.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Failure.HOST_UNREACHABLE,
    errno.EACCES: Failure.PERMISSION,  # a prohibit route, or broadcast
    errno.EPERM: Failure.PERMISSION,
}
ROUND_ENDING_SEND_ERRORS = frozenset({errno.ENETUNREACH, errno.EINVAL, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.EACCES})
# An ICMP error that reached a datagram socket (IP_RECVERR) stays pending on it, and the next sendto fails with
# it instead of sending (sock_error): a time exceeded for a trace, or an unreachable for another round, would
# refuse an innocent request. A send that fails with one of these is tried once more; a route that really
# refuses fails twice, and the first attempt never sent anything. (EPERM, a local firewall's drop, is not
# retried: its packet was dropped, and a retry would hide the loss.)
PENDING_ERROR_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ECONNREFUSED, errno.EPROTO})


class Round(Protocol):
    """What a channel and its timeline need of a round (EchoRound here, TraceRound in trace_engine.py)."""

    ip: str  # the destination: replies must come from it, errors must quote it
    slack: float  # how far its sends and its end may move to share a wakeup
    finished: asyncio.Future[None]

    def next_due(self) -> float: ...

    def on_due(self) -> None: ...

    def on_reply(self, sequence: int, rtt_seconds: float, hop_limit: int | None) -> None: ...

    def on_icmp_error(self, sequence: int, kind: str, code: int, reporter: str, rtt_seconds: float) -> None: ...

    def close(self) -> None: ...


def unreachable_failure(family: int, code: int) -> Reason:
    network_codes = IPV4_NETWORK_CODES if family == socket.AF_INET else IPV6_NETWORK_CODES
    return Failure.NETWORK_UNREACHABLE if code in network_codes else Failure.HOST_UNREACHABLE


def canonical_ip(ip: str, family: int) -> str:
    """The address as recvmsg spells it ('::0001' -> '::1'), keeping an IPv6 scope."""
    host, sep, scope = ip.partition("%")
    return socket.inet_ntop(family, socket.inet_pton(family, host)) + sep + scope


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class EchoRound:
    """The echo requests of one probe: sent `interval` apart, finished when all are answered or at the deadline.

    sent counts the requests handed to sendto, refused ones included; rtts are in seconds, in arrival
    order; failure holds the first ICMP error or send error seen.
    """

    __slots__ = (
        "ip", "count", "interval", "sent", "rtts", "hop_limit", "failure", "error_detail", "slack",
        "finished", "_channel", "_payload", "_payload_sum", "_start", "_deadline", "_outstanding", "_in_flight",
    )  # fmt: skip

    def __init__(
        self, channel: "Channel", ip: str, count: int, interval: float, payload: tuple[bytes, int], deadline: float
    ) -> None:
        self.ip = ip
        self.count = count
        self.interval = interval
        self.sent = 0
        self.rtts: list[float] = []
        self.hop_limit: int | None = None
        self.failure: Reason | None = None
        self.error_detail = ""
        self.slack = min(SEND_SLACK_SECONDS, interval / 4)  # how far a send or the end may move to share a wakeup
        self.finished: asyncio.Future[None] = channel.loop.create_future()
        self._channel = channel
        self._payload, self._payload_sum = payload
        self._start = channel.loop.time()
        self._deadline = deadline
        self._outstanding = 0
        self._in_flight: list[int] = []

    def next_due(self) -> float:
        """When the round needs the channel next: its next send, or its deadline once all are sent."""
        if self.sent < self.count:
            return min(self._start + self.sent * self.interval, self._deadline)
        return self._deadline

    def on_due(self) -> None:
        if self.sent < self.count and self._start + self.sent * self.interval < self._deadline:
            self._send_one()
        else:
            self.close()

    def _send_one(self) -> None:
        self.sent += 1
        try:
            sequence = self._channel.send(self.ip, self._payload, self._payload_sum, self)
        except OSError as exc:
            self.on_error(SEND_ERROR_FAILURES.get(exc.errno or 0), f"sendto {self.ip}: {exc.strerror or exc}", counted=False)
            if exc.errno in ROUND_ENDING_SEND_ERRORS:
                self.close()
                return
        else:
            self._outstanding += 1
            self._in_flight.append(sequence)
        if self.sent == self.count and self._outstanding == 0:
            self.close()
            return
        self._channel.sent_one()

    def on_reply(self, sequence: int, rtt_seconds: float, hop_limit: int | None) -> None:
        self.rtts.append(rtt_seconds)
        if hop_limit is not None:
            self.hop_limit = hop_limit
        self._packet_done()

    def on_icmp_error(self, sequence: int, kind: str, code: int, reporter: str, rtt_seconds: float) -> None:
        if kind == UNREACHABLE:
            failure = unreachable_failure(self._channel.family, code)
            self.on_error(failure, f"destination unreachable (ICMP code {code}) reported by {reporter}")
        else:  # a routing loop: the request died on the way
            self.on_error(None, f"time exceeded in transit reported by {reporter}")

    def on_error(self, failure: Reason | None, detail: str, counted: bool = True) -> None:
        """Note the first error that names a failure (or, until one does, the first error at all)."""
        if self.failure is None and (failure is not None or not self.error_detail):
            self.failure, self.error_detail = failure, detail
        if counted:
            self._packet_done()

    def _packet_done(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0 and self.sent == self.count:
            self.close()

    def close(self) -> None:
        """Stop sending, forget the packets in flight and resolve the future; safe to call again.

        Its entry in the channel's timeline stays until it comes up, and is skipped then.
        """
        if self._in_flight:
            self._channel.forget(self, self._in_flight)
            self._in_flight = []
        if not self.finished.done():
            self.finished.set_result(None)


class Timeline:
    """The rounds' next due times in one heap behind one loop timer.

    Whenever the loop wakes it (its timer, a reply, a new round), every round due within its slack
    gets its turn, so a thousand rounds share a few wakeups instead of one each: on a small machine
    the wakeup, not the packet, is what costs CPU. One live entry per round.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Round]] = []  # (due, tie-breaker, round)
        self._tie_breaker = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_at = 0.0

    def start(self, a_round: Round) -> None:
        """Give the round its first turn now (a first send) and put it on the heap."""
        a_round.on_due()
        if not a_round.finished.done():
            heapq.heappush(self._heap, (a_round.next_due(), next(self._tie_breaker), a_round))
        self.run_due()

    def due_soon(self) -> bool:
        """Whether the first entry is due within the largest slack (worth a run after a read)."""
        return bool(self._heap) and self._heap[0][0] - SEND_SLACK_SECONDS <= self.loop.time()

    def run_due(self) -> None:
        now = self.loop.time()
        heap = self._heap
        while heap:
            due, _, a_round = heap[0]
            if a_round.finished.done():
                heapq.heappop(heap)
                continue
            if due - a_round.slack > now:
                break
            heapq.heappop(heap)
            a_round.on_due()
            if not a_round.finished.done():
                heapq.heappush(heap, (a_round.next_due(), next(self._tie_breaker), a_round))
        self._arm()

    def _arm(self) -> None:
        """Keep the timer no later than the first live entry's due time plus its slack."""
        if not self._heap:
            return
        due, _, a_round = self._heap[0]
        if self._wakeup is not None:
            if self._wakeup_at <= due + a_round.slack:
                return
            self._wakeup.cancel()
        self._wakeup_at = due
        self._wakeup = self.loop.call_at(due, self._on_wakeup)

    def _on_wakeup(self) -> None:
        self._wakeup = None
        self.run_due()

    def close(self) -> set[Round]:
        """Stop the timer and forget every entry; the rounds that were on it."""
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        rounds = {entry[2] for entry in self._heap}
        self._heap.clear()
        return rounds


class Channel:
    """One non-blocking ICMP socket of one address family, the requests in flight on it, and its timeline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, token: bytes) -> None:
        self.loop = loop
        self.family = family
        self.sock, self.raw = _open_socket(family)
        self.kind = "raw" if self.raw else "datagram"
        self.timeline = Timeline(loop)
        self._token = token
        self._ident = os.getpid() & 0xFFFF if self.raw else 0  # a datagram socket's kernel sets its own
        v4 = family == socket.AF_INET
        self._request_type = ICMP_ECHO_REQUEST if v4 else ICMP6_ECHO_REQUEST
        self._reply_type = ICMP_ECHO_REPLY if v4 else ICMP6_ECHO_REPLY
        self._error_kinds = (
            {ICMP_UNREACHABLE: UNREACHABLE, ICMP_TIME_EXCEEDED: TIME_EXCEEDED}
            if v4
            else {ICMP6_UNREACHABLE: UNREACHABLE, ICMP6_TIME_EXCEEDED: TIME_EXCEEDED}
        )
        self._ip_header = v4 and self.raw  # only raw IPv4 sockets receive the IP header
        self._fill_checksum = v4 and self.raw  # the kernel fills it on the other kinds
        self._header_sum = (self._request_type << 8) + self._ident
        self._hop_cmsg = (socket.IPPROTO_IP, socket.IP_TTL) if v4 else (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)
        self._error_cmsg = (socket.IPPROTO_IP, IP_RECVERR) if v4 else (socket.IPPROTO_IPV6, IPV6_RECVERR)
        self._pending: dict[int, tuple[Round, int]] = {}  # sequence -> (round, send time in ns)
        self._next_sequence = 0
        self._sends_since_drain = 0
        self._errors_queued = False  # a send consumed the pending error of errors still in the error queue
        self._buffer = bytearray(READ_BYTES)
        self._buffers = [self._buffer]
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for a_round in self.timeline.close() | {entry[0] for entry in self._pending.values()}:
            a_round.close()

    def start(self, a_round: Round) -> None:
        """Send the round's first request now and put the rest on the timeline."""
        self.timeline.start(a_round)

    # --- sending ---------------------------------------------------------------------------------------------

    def send(self, ip: str, payload: bytes, payload_sum: int, a_round: Round, ttl: int | None = None) -> int:
        """Send one echo request (with its own TTL / hop limit if given); its sequence number. Raises OSError."""
        sequence = self._free_sequence()
        checksum = 0
        if self._fill_checksum:
            total = self._header_sum + payload_sum + sequence
            total = (total & 0xFFFF) + (total >> 16)
            checksum = ~(total + (total >> 16)) & 0xFFFF
        packet = ECHO_HEADER.pack(self._request_type, 0, checksum, self._ident, sequence) + payload
        sent_ns = time.time_ns()
        try:
            self._send(packet, ip, ttl)
        except OSError as exc:
            if self.raw or exc.errno not in PENDING_ERROR_ERRNOS:
                raise
            self._errors_queued = True
            sent_ns = time.time_ns()
            self._send(packet, ip, ttl)
        self._pending[sequence] = (a_round, sent_ns)
        return sequence

    def _send(self, packet: bytes, ip: str, ttl: int | None) -> None:
        if ttl is None:
            self.sock.sendto(packet, (ip, 0))
        else:
            self.sock.sendmsg([packet], [(*self._hop_cmsg, ttl.to_bytes(4, sys.byteorder))], 0, (ip, 0))

    def sent_one(self) -> None:
        self._sends_since_drain += 1
        if self._sends_since_drain >= DRAIN_EVERY_SENDS:
            self._drain()

    def _free_sequence(self) -> int:
        pending = self._pending
        if len(pending) >= MAX_IN_FLIGHT:
            raise OSError(errno.ENOBUFS, "every ICMP sequence number is in flight")
        sequence = self._next_sequence
        while sequence in pending:  # wrapped around onto a packet still in flight
            sequence = (sequence + 1) & 0xFFFF
        self._next_sequence = (sequence + 1) & 0xFFFF
        return sequence

    def forget(self, a_round: Round, sequences: list[int]) -> None:
        pending = self._pending
        for sequence in sequences:
            entry = pending.get(sequence)
            if entry is not None and entry[0] is a_round:
                del pending[sequence]

    # --- receiving -------------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        self._drain()
        if self.timeline.due_soon():
            self.timeline.run_due()

    def _drain(self) -> None:
        self._sends_since_drain = 0
        receive = self.sock.recvmsg_into
        buffers = self._buffers
        while True:
            try:
                size, ancillary, _flags, address = receive(buffers, ANCILLARY_BYTES)
            except BlockingIOError:
                # errors whose pending mark a send consumed still wait in the error queue (and keep the socket
                # readable, so the loop would call us again and again)
                if not (self._errors_queued and self._drain_error_queue()):
                    return
                continue
            except OSError:
                # a datagram socket reports an ICMP error as a pending socket error; its details wait in the error queue
                if not self._drain_error_queue():
                    return
                continue
            self._on_packet(size, ancillary, address[0])

    def _on_packet(self, size: int, ancillary: list, source: str) -> None:
        buf = self._buffer
        offset = 0
        hop_limit = None
        if self._ip_header:
            if size < 20:
                return
            offset = (buf[0] & 0x0F) * 4
            hop_limit = buf[8]
        if size < offset + 8:
            return
        kind = buf[offset]
        if kind == self._reply_type:
            if size < offset + 8 + TOKEN_BYTES or buf[offset + 8 : offset + 8 + TOKEN_BYTES] != self._token:
                return
            if self.raw and (buf[offset + 4] << 8 | buf[offset + 5]) != self._ident:
                return
            sequence = buf[offset + 6] << 8 | buf[offset + 7]
            entry = self._pending.get(sequence)
            if entry is None or entry[0].ip != source:
                return
            del self._pending[sequence]
            received_ns = 0
            for level, cmsg_type, data in ancillary:
                if cmsg_type == SO_TIMESTAMPNS and level == socket.SOL_SOCKET and len(data) >= TIMESPEC.size:
                    received_ns = _timestamp_ns(data)
                elif (level, cmsg_type) == self._hop_cmsg and len(data) >= 4:
                    hop_limit = int.from_bytes(data[:4], sys.byteorder)
            rtt_ns = (received_ns or time.time_ns()) - entry[1]
            entry[0].on_reply(sequence, max(rtt_ns, 0) / 1e9, hop_limit)
        elif kind in self._error_kinds and self.raw:
            self._on_raw_error(size, offset, source, ancillary)

    def _on_raw_error(self, size: int, offset: int, reporter: str, ancillary: list) -> None:
        """An ICMP error quoting one of our requests: inner IP header, then our echo header."""
        buf = self._buffer
        inner = offset + 8
        if self.family == socket.AF_INET:
            if size < inner + 20 or buf[inner + 9] != socket.IPPROTO_ICMP:
                return
            destination = socket.inet_ntoa(bytes(buf[inner + 16 : inner + 20]))
            echo = inner + (buf[inner] & 0x0F) * 4
        else:
            if size < inner + 40 or buf[inner + 6] != socket.IPPROTO_ICMPV6:
                return
            destination = socket.inet_ntop(socket.AF_INET6, bytes(buf[inner + 24 : inner + 40]))
            echo = inner + 40
        if size < echo + 8 or buf[echo] != self._request_type:
            return
        if (buf[echo + 4] << 8 | buf[echo + 5]) != self._ident:
            return
        kind, code = self._error_kinds[buf[offset]], buf[offset + 1]
        self._on_error(destination, buf[echo + 6] << 8 | buf[echo + 7], kind, code, reporter, received_ns(ancillary))

    def _drain_error_queue(self) -> bool:
        """Read the ICMP errors queued on a datagram socket (IP_RECVERR); True if there was any."""
        self._errors_queued = False
        drained = False
        while True:
            try:
                size, ancillary, _flags, address = self.sock.recvmsg_into(self._buffers, ANCILLARY_BYTES, socket.MSG_ERRQUEUE)
            except OSError:
                return drained
            drained = True
            buf = self._buffer
            if size < 8 or buf[0] != self._request_type:
                continue
            for level, cmsg_type, data in ancillary:
                if (level, cmsg_type) != self._error_cmsg or len(data) < EXTENDED_ERROR.size:
                    continue
                _errno, origin, icmp_type, code, _pad = EXTENDED_ERROR.unpack_from(data)
                if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6) and icmp_type in self._error_kinds:
                    reporter = offender_address(data, self.family)
                    kind = self._error_kinds[icmp_type]
                    self._on_error(address[0], buf[6] << 8 | buf[7], kind, code, reporter, received_ns(ancillary))

    def _on_error(self, destination: str, sequence: int, kind: str, code: int, reporter: str, received_ns: int) -> None:
        entry = self._pending.get(sequence)
        if entry is None or entry[0].ip != destination:
            return
        del self._pending[sequence]
        rtt_ns = (received_ns or time.time_ns()) - entry[1]
        entry[0].on_icmp_error(sequence, kind, code, reporter, max(rtt_ns, 0) / 1e9)


def _timestamp_ns(data: bytes) -> int:
    seconds, nanoseconds = TIMESPEC.unpack_from(data)
    return seconds * 1_000_000_000 + nanoseconds


def received_ns(ancillary: list) -> int:
    """The kernel's receive time (SO_TIMESTAMPNS) among a message's ancillary data; 0 if absent."""
    for level, cmsg_type, data in ancillary:
        if cmsg_type == SO_TIMESTAMPNS and level == socket.SOL_SOCKET and len(data) >= TIMESPEC.size:
            return _timestamp_ns(data)
    return 0


def offender_address(data: bytes, family: int) -> str:
    """The address of the router that sent an ICMP error: the sockaddr after sock_extended_err."""
    start = EXTENDED_ERROR.size + 8  # errno..pad, then ee_info and ee_data
    try:
        if family == socket.AF_INET:
            return socket.inet_ntop(family, data[start + 4 : start + 8])
        return socket.inet_ntop(family, data[start + 8 : start + 24])
    except ValueError:
        return "an unknown router"



def _open_socket(family: int) -> tuple[socket.socket, bool]:
    """A datagram ICMP socket if ping_group_range allows it, else a raw one; (socket, is_raw)."""
    protocol = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        sock, raw = socket.socket(family, socket.SOCK_DGRAM, protocol), False
    except OSError:
        sock, raw = socket.socket(family, socket.SOCK_RAW, protocol), True
    try:
        _configure(sock, family, raw)
    except OSError:
        sock.close()
        raise
    return sock, raw


def _configure(sock: socket.socket, family: int, raw: bool) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
    except PermissionError:  # without CAP_NET_ADMIN: as much as net.core.rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    if family == socket.AF_INET:
        if raw:
            passed = (1 << ICMP_ECHO_REPLY) | (1 << ICMP_UNREACHABLE) | (1 << ICMP_TIME_EXCEEDED)
            sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("@I", ~passed & 0xFFFFFFFF))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        return
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    if raw:
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _icmp6_filter(ICMP6_ECHO_REPLY, ICMP6_UNREACHABLE, ICMP6_TIME_EXCEEDED))
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)


def _icmp6_filter(*passed_types: int) -> bytes:
    """struct icmp6_filter: 256 bits, a set bit blocks that ICMPv6 type."""
    words = [0xFFFFFFFF] * 8
    for icmp_type in passed_types:
        words[icmp_type >> 5] &= ~(1 << (icmp_type & 31)) & 0xFFFFFFFF
    return struct.pack("@8I", *words)


class IcmpEngine:
    """The process's ICMP echo machinery: one socket per address family, opened on first use."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._token = os.urandom(TOKEN_BYTES)
        self._channels: dict[int, Channel] = {}
        self._payloads: dict[int, tuple[bytes, int]] = {}  # payload size -> (payload, its checksum sum)

    def open(self, family: int) -> str:
        """Open the family's socket if needed; its kind, "datagram" or "raw". Raises OSError (e.g. EPERM)."""
        return self.channel(family).kind

    def channel(self, family: int) -> Channel:
        """The family's socket and timeline, opened if needed (path traces send on it too). Raises OSError."""
        channel = self._channels.get(family)
        if channel is None:
            channel = self._channels[family] = Channel(self._loop, family, self._token)
        return channel

    async def ping(self, ip: str, family: int, count: int, interval: float, payload_size: int, timeout: float) -> EchoRound:
        """Send count echo requests to ip, interval seconds apart; return once all are answered or timeout passed."""
        channel = self.channel(family)
        payload = self.payload(max(payload_size, MIN_PAYLOAD_BYTES))
        echo_round = EchoRound(channel, canonical_ip(ip, family), count, interval, payload, self._loop.time() + timeout)
        channel.start(echo_round)
        try:
            await echo_round.finished
        finally:
            echo_round.close()
        return echo_round

    def payload(self, size: int) -> tuple[bytes, int]:
        """The payload of that size (the engine's token, then zeros) and its checksum sum."""
        payload = self._payloads.get(size)
        if payload is None:
            data = self._token + bytes(size - TOKEN_BYTES)
            payload = self._payloads[size] = (data, _ones_complement_sum(data))
        return payload

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


# The process's one ICMP engine: its sockets are shared by every icmp target
ICMP_ENGINE: Resource[IcmpEngine] = Resource(
    "icmp_engine", lambda resources: IcmpEngine(asyncio.get_running_loop()), close=lambda engine: engine.close()
)
