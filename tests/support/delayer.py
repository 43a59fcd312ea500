"""Hold each packet of an NFQUEUE queue for a fixed delay, then accept it (a stand-in for netem delay).

Run inside the namespace whose egress is queued:
    python -m tests.support.delayer --queue N --delay-ms 50
It speaks nfnetlink_queue over a raw NETLINK_NETFILTER socket (no compiled dependency), prints "ready" once the
queue is bound, and on SIGTERM releases whatever it still holds and exits.

Every packet gets the same delay, so deadlines are in arrival order: a FIFO of (deadline, packet id) keeps packet
order, and packets queued together leave together instead of one delay after another.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from typing import Iterator

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33

NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id (the queue number, big-endian)
NFNETLINK_V0 = 0
NLATTR_HEADER = struct.Struct("=HH")  # length, type
NLA_TYPE_MASK = 0x3FFF  # strips the nested / byte-order flag bits

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = NFNL_SUBSYS_QUEUE << 8 | 0
NFQNL_MSG_CONFIG = NFNL_SUBSYS_QUEUE << 8 | 2
NFQNL_MSG_VERDICT_BATCH = NFNL_SUBSYS_QUEUE << 8 | 3

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_PACKET = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_ACCEPT = 1

COPY_RANGE = 128  # headers are enough: the payload is never read
QUEUE_MAXLEN = 16384  # the kernel drops packets beyond this many waiting in the queue
RECEIVE_BUFFER = 16 << 20  # room for a burst of notifications while we sleep
READ_SIZE = 1 << 16


def _attribute(kind: int, payload: bytes) -> bytes:
    length = NLATTR_HEADER.size + len(payload)
    return NLATTR_HEADER.pack(length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, flags: int, sequence: int, queue: int, attributes: bytes) -> bytes:
    body = NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, socket.htons(queue)) + attributes
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, flags, sequence, 0) + body


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload after the netlink header) for each message in one datagram."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            return
        yield kind, data[offset + NLMSG_HEADER.size : offset + length]
        offset += (length + 3) & ~3


def _attributes(payload: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + NLATTR_HEADER.size <= len(payload):
        length, kind = NLATTR_HEADER.unpack_from(payload, offset)
        if length < NLATTR_HEADER.size:
            return
        yield kind & NLA_TYPE_MASK, payload[offset + NLATTR_HEADER.size : offset + length]
        offset += (length + 3) & ~3


def _packet_id(payload: bytes) -> int | None:
    for kind, value in _attributes(payload[NFGENMSG.size :]):
        if kind == NFQA_PACKET_HDR:
            return struct.unpack_from(">I", value)[0]
    return None


def _configure(sock: socket.socket, queue: int) -> None:
    """Bind the queue and ask for packets; each step must be acknowledged, so failures (EBUSY: queue taken) show."""
    steps = [
        _attribute(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC)),
        _attribute(NFQA_CFG_PARAMS, struct.pack(">IB", COPY_RANGE, NFQNL_COPY_PACKET)),
        _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", QUEUE_MAXLEN)),
    ]
    for sequence, attributes in enumerate(steps, start=1):
        sock.send(_message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, sequence, queue, attributes))
        _expect_ack(sock)


def _expect_ack(sock: socket.socket) -> None:
    for kind, payload in _messages(sock.recv(READ_SIZE)):
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", payload)[0]
            if code:
                raise OSError(code, f"nfnetlink_queue config: {os.strerror(code)}")
            return
    raise RuntimeError("nfnetlink_queue config: no acknowledgement")


def _open_queue(queue: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    sock.bind((0, 0))
    _configure(sock, queue)
    sock.setblocking(False)
    return sock


def _receive_packet_ids(sock: socket.socket) -> list[int]:
    """Drain every notification waiting on the socket."""
    ids: list[int] = []
    while True:
        try:
            data = sock.recv(READ_SIZE)
        except BlockingIOError:
            return ids
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            # Notifications were lost, but their packets wait in the kernel queue; the next batch verdict
            # (it covers every id up to its own) releases them in order.
            print("delayer: receive buffer overflowed", file=sys.stderr, flush=True)
            continue
        for kind, payload in _messages(data):
            packet_id = _packet_id(payload) if kind == NFQNL_MSG_PACKET else None
            if packet_id is not None:
                ids.append(packet_id)


def _accept_up_to(sock: socket.socket, queue: int, packet_id: int) -> None:
    """One batch verdict accepts, in queue order, every packet with an id up to packet_id."""
    verdict = _attribute(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id))
    sock.send(_message(NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, 0, queue, verdict))


def _release_due(sock: socket.socket, queue: int, held: deque[tuple[float, int]], now: float) -> None:
    last_due: int | None = None
    while held and held[0][0] <= now:
        last_due = held.popleft()[1]
    if last_due is not None:
        _accept_up_to(sock, queue, last_due)


def run(queue: int, delay: float) -> None:
    stop_reader, stop_writer = socket.socketpair()
    stop_writer.setblocking(False)
    signal.signal(signal.SIGTERM, lambda *_: None)  # a handler must exist for the wakeup fd to be written
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.set_wakeup_fd(stop_writer.fileno())
    sock = _open_queue(queue)
    print("ready", flush=True)
    held: deque[tuple[float, int]] = deque()
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([sock, stop_reader], [], [], timeout)
        if stop_reader in readable:
            break
        if sock in readable:
            deadline = time.monotonic() + delay
            held.extend((deadline, packet_id) for packet_id in _receive_packet_ids(sock))
        _release_due(sock, queue, held, time.monotonic())
    if held:
        _accept_up_to(sock, queue, held[-1][1])
    sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE queue number to bind")
    parser.add_argument("--delay-ms", type=float, required=True, help="how long each packet is held")
    args = parser.parse_args(argv)
    run(args.queue, args.delay_ms / 1000)


if __name__ == "__main__":
    main()
