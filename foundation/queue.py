"""The durable queue (DESIGN decision 8): what the agent pushes and the collector forwards, on disk
until the receiver has acknowledged it.

Layout of the queue directory:
- `<base>.seg` segment files, append-only. `base` is the queue-wide offset of the segment's first
  byte, so an offset names one position in the whole queue. Each record is a header
  (crc32, payload length, item count, timestamp in ms) followed by the payload; the crc covers the
  rest of the header and the payload, so a torn or rotten record is recognised.
- `ack`: the offset up to which the receiver has acknowledged, replaced atomically (temporary file,
  fsync, rename, fsync of the directory) after each 2xx.
- `lock`: flock'ed while a process owns the queue; the kernel releases it when the process dies.

Writes go straight to the file (os.write), so a killed process loses nothing it appended; `sync()`
fsyncs what was written since the last call, and the owner calls it on a bounded cadence, so a power
cut loses at most that much. On open, each segment is checked record by record: a torn tail of the
newest segment is cut off, a corrupt record elsewhere ends its segment; both are counted and the
good records before them are kept. The queue is bounded by bytes on disk and by the age of records:
the oldest go first, counted by reason, and so does the oldest segment when the disk is full.

Thread-safe: the event loop appends while `peek`, `ack` and `sync` may run in a worker thread.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIIq")  # crc32, payload length, item count, timestamp (ms)
SEGMENT_SUFFIX = ".seg"
ACK_FILE = "ack"
LOCK_FILE = "lock"
MAX_RECORD_BYTES = 64 << 20  # a larger length in a header is corruption, not a record to allocate for
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

REASON_BYTES = "queue_full"
REASON_AGE = "too_old"
REASON_DISK_FULL = "disk_full"
REASON_CORRUPT = "corrupt"


class QueueLocked(OSError):
    """Another process owns this queue directory."""


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_bytes: int = 256 << 20  # segment files on disk, in total
    max_age: float = 86400.0  # seconds; older records are dropped unsent
    segment_bytes: int = 8 << 20  # a segment is closed once it reaches this size

    def __post_init__(self) -> None:
        if self.segment_bytes > self.max_bytes:
            raise ValueError(f"segment_bytes ({self.segment_bytes}) must not exceed max_bytes ({self.max_bytes})")


@dataclass(slots=True)
class _Segment:
    base: int
    path: Path
    size: int = 0  # bytes of good records; the file may hold more after a corruption
    file_size: int = 0
    pending_items: int = 0  # items of records at or after the ack offset
    last_time_ms: int = 0
    fd: int | None = None  # open while appended to, and after that until its next fsync
    sealed: bool = False  # takes no more appends

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    end: int
    items: int
    time_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """Records read from the ack offset on, oldest first; `ack(batch)` acknowledges all of them."""

    payloads: list[bytes]
    items: int
    end: int  # the offset just past the last record
    items_by_segment: dict[int, int]


@dataclass(slots=True)
class QueueStats:
    appended_items: int = 0
    dropped_items: dict[str, int] = field(default_factory=dict)  # by reason
    corrupt_records: int = 0  # places where a record failed its checksum (its items are unknown)


class _BatchBuilder:
    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self.payloads: list[bytes] = []
        self.items = self.size = self.end = 0
        self.by_segment: dict[int, int] = {}

    def add(self, segment_base: int, record: Record) -> bool:
        """Take the record unless it would overflow a non-empty batch."""
        if self.payloads and (self.items + record.items > self.max_items or self.size + len(record.payload) > self.max_bytes):
            return False
        self.payloads.append(record.payload)
        self.items += record.items
        self.size += len(record.payload)
        self.end = record.end
        self.by_segment[segment_base] = self.by_segment.get(segment_base, 0) + record.items
        return True

    def build(self) -> Batch | None:
        return Batch(self.payloads, self.items, self.end, self.by_segment) if self.payloads else None


class _Corrupt(Exception):
    def __init__(self, offset: int) -> None:
        self.offset = offset


class DurableQueue:
    def __init__(self, directory: str | Path, limits: QueueLimits = QueueLimits(), clock=time.time) -> None:
        self.directory = Path(directory)
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._ack_file_lock = threading.Lock()
        self.stats = QueueStats()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.directory / LOCK_FILE)
        self._segments: list[_Segment] = []
        self._directory_dirty = False
        self._ack = 0
        self._ack_persisted = 0
        self._recover()

    # --- appending

    def append(self, payload: bytes, items: int, time_ms: int | None = None) -> bool:
        """Add one record; False if it had to be dropped (disk full). Never raises for a full disk."""
        if time_ms is None:
            time_ms = int(self._clock() * 1000)
        body = HEADER.pack(0, len(payload), items, time_ms)[4:] + payload
        record = struct.pack("<I", zlib.crc32(body)) + body
        with self._lock:
            self._drop_expired_segments()
            self._make_room(len(record))
            while True:
                try:
                    self._write(record)
                    break
                except OSError as exc:
                    if exc.errno not in DISK_FULL:
                        raise
                    if not self._drop_oldest_for_space():
                        self._count_drop(REASON_DISK_FULL, items)
                        log.warning("queue %s: disk full, record of %d items dropped", self.directory, items)
                        return False
            segment = self._segments[-1]
            segment.pending_items += items
            segment.last_time_ms = max(segment.last_time_ms, time_ms)
            self.stats.appended_items += items
            return True

    def _write(self, record: bytes) -> None:
        segment = self._active_segment(len(record))
        assert segment.fd is not None
        try:
            _write_all(segment.fd, record)
        except OSError:
            os.ftruncate(segment.fd, segment.file_size)  # no half record left behind
            raise
        segment.size += len(record)
        segment.file_size += len(record)

    def _active_segment(self, record_bytes: int) -> _Segment:
        newest = self._segments[-1] if self._segments else None
        if newest is not None and not newest.sealed:
            if newest.size == 0 or newest.size + record_bytes <= self.limits.segment_bytes:
                return newest
            newest.sealed = True
        base = max(self._ack, newest.base + newest.file_size if newest else 0)
        path = self.directory / f"{base:020d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        segment = _Segment(base, path, fd=fd)
        self._segments.append(segment)
        self._directory_dirty = True
        return segment

    # --- bounds

    def _make_room(self, record_bytes: int) -> None:
        while self._segments and self._disk_bytes() + record_bytes > self.limits.max_bytes:
            self._drop_segment(self._segments[0], REASON_BYTES)

    def _drop_oldest_for_space(self) -> bool:
        if not self._segments or self._segments[0].file_size == 0:
            return False
        self._drop_segment(self._segments[0], REASON_DISK_FULL)
        return True

    def _drop_expired_segments(self) -> None:
        cutoff = int((self._clock() - self.limits.max_age) * 1000)
        while self._segments and self._segments[0].file_size and self._segments[0].last_time_ms < cutoff:
            self._drop_segment(self._segments[0], REASON_AGE)

    def _drop_segment(self, segment: _Segment, reason: str) -> None:
        if segment.fd is not None:
            os.close(segment.fd)  # at once: an open file keeps its space after the unlink
            segment.fd = None
        self._segments.remove(segment)
        self._count_drop(reason, segment.pending_items)
        self._ack = max(self._ack, segment.base + segment.file_size)
        _unlink(segment.path)
        if segment.pending_items:
            log.warning("queue %s: dropped %d unsent items (%s)", self.directory, segment.pending_items, reason)

    def _count_drop(self, reason: str, items: int) -> None:
        if items:
            self.stats.dropped_items[reason] = self.stats.dropped_items.get(reason, 0) + items

    def _disk_bytes(self) -> int:
        return sum(segment.file_size for segment in self._segments)

    # --- reading and acknowledging

    def peek(self, max_items: int, max_bytes: int) -> Batch | None:
        """The next unacknowledged records: at least one if there is any, else within the limits."""
        with self._lock:
            self._drop_expired_segments()
            cutoff = int((self._clock() - self.limits.max_age) * 1000)
            batch = _BatchBuilder(max_items, max_bytes)
            for segment in list(self._segments):
                start = max(self._ack, segment.base)
                if start >= segment.end:
                    continue
                for record in self._read_segment(segment, start, batch.by_segment):
                    if not batch.payloads and record.time_ms < cutoff:  # expired at the head: dropped
                        self._skip(segment, record, REASON_AGE)
                    elif not batch.add(segment.base, record):
                        return batch.build()
            return batch.build()

    def _skip(self, segment: _Segment, record: Record, reason: str) -> None:
        segment.pending_items -= record.items
        self._count_drop(reason, record.items)
        self._ack = max(self._ack, record.end)

    def _read_segment(self, segment: _Segment, start: int, in_batch: dict[int, int]) -> Iterator[Record]:
        try:
            with open(segment.path, "rb") as file:
                yield from _records(file, segment.base, start, segment.end)
        except FileNotFoundError:
            log.error("queue %s: segment %s vanished", self.directory, segment.path.name)
            self._forget_corrupt(segment, start, in_batch.get(segment.base, 0))
        except _Corrupt as corrupt:
            log.error("queue %s: corrupt record at offset %d of %s", self.directory, corrupt.offset - segment.base, segment.path.name)
            self._forget_corrupt(segment, corrupt.offset, in_batch.get(segment.base, 0))

    def _forget_corrupt(self, segment: _Segment, offset: int, items_before: int) -> None:
        """Records from `offset` on are unreadable: the segment ends there (and takes no more appends)."""
        segment.sealed = True
        self.stats.corrupt_records += 1
        self._count_drop(REASON_CORRUPT, segment.pending_items - items_before)
        segment.pending_items = items_before
        segment.size = offset - segment.base

    def ack(self, batch: Batch) -> None:
        """The receiver took the batch: never send it again, and delete segments nobody needs."""
        with self._lock:
            if batch.end <= self._ack:
                return
            for base, items in batch.items_by_segment.items():
                segment = next((s for s in self._segments if s.base == base), None)
                if segment is not None:
                    segment.pending_items -= items
            self._ack = batch.end
            done = [s for s in self._segments if s.sealed and s.end <= self._ack]  # the one appended to stays
            for segment in done:
                self._segments.remove(segment)
                if segment.fd is not None:
                    os.close(segment.fd)
                    segment.fd = None
            ack = self._ack
        self._persist_ack(ack)
        for segment in done:
            _unlink(segment.path)

    def _persist_ack(self, ack: int) -> None:
        with self._ack_file_lock:
            if ack <= self._ack_persisted:
                return
            try:
                _replace_atomically(self.directory / ACK_FILE, f"{ack}\n".encode())
            except OSError as exc:
                # Not fatal: after a restart the records past the persisted offset are sent again, never lost.
                log.warning("queue %s: cannot record acknowledged offset: %s", self.directory, exc)
                return
            self._ack_persisted = ack

    # --- durability

    def sync(self) -> None:
        """fsync what was written since the last call (blocking: run it in a worker thread)."""
        with self._lock:
            fds = [self._take_fd_to_sync(segment) for segment in self._segments if segment.fd is not None]
            directory_dirty, self._directory_dirty = self._directory_dirty, False
        for fd in fds:
            try:
                os.fsync(fd)
            except OSError as exc:
                log.warning("queue %s: fsync failed: %s", self.directory, exc)
            finally:
                os.close(fd)
        if directory_dirty:
            _fsync_directory(self.directory)

    @staticmethod
    def _take_fd_to_sync(segment: _Segment) -> int:
        """A descriptor the caller fsyncs and closes: a copy while the segment is appended to."""
        if not segment.sealed:
            assert segment.fd is not None
            return os.dup(segment.fd)
        fd, segment.fd = segment.fd, None
        assert fd is not None
        return fd

    def close(self) -> None:
        with self._lock:
            for segment in self._segments:
                segment.sealed = True
        self.sync()
        os.close(self._lock_fd)

    # --- what the metrics show

    def pending_items(self) -> int:
        with self._lock:
            return sum(segment.pending_items for segment in self._segments)

    def disk_bytes(self) -> int:
        with self._lock:
            return self._disk_bytes()

    def oldest_pending_time(self) -> float | None:
        """Timestamp (seconds) of the oldest record not yet acknowledged, None when all are."""
        with self._lock:
            for segment in self._segments:
                start = max(self._ack, segment.base)
                if segment.pending_items > 0 and start < segment.end:
                    with open(segment.path, "rb") as file:
                        file.seek(start - segment.base)
                        header = file.read(HEADER.size)
                    if len(header) == HEADER.size:
                        return HEADER.unpack(header)[3] / 1000
            return None

    # --- recovery

    def _recover(self) -> None:
        _unlink(self.directory / f"{ACK_FILE}.tmp")
        self._ack = self._ack_persisted = self._read_ack()
        paths = sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"), key=lambda p: p.name)
        for path in paths:
            try:
                base = int(path.stem)
            except ValueError:
                log.warning("queue %s: ignoring %s (not a segment name)", self.directory, path.name)
                continue
            segment = self._scan(_Segment(base, path, file_size=path.stat().st_size, sealed=True))
            if segment.end <= self._ack or segment.size == 0:
                _unlink(path)  # fully acknowledged (deletion interrupted), or nothing readable
                continue
            self._segments.append(segment)
        self._cut_torn_tail()
        if self._segments:
            newest = self._segments[-1]
            log.info(
                "queue %s: %d items pending in %d segments, offsets %d..%d",
                self.directory, sum(s.pending_items for s in self._segments), len(self._segments), self._ack, newest.end,
            )

    def _read_ack(self) -> int:
        try:
            return int((self.directory / ACK_FILE).read_text().strip())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("queue %s: unreadable ack file (%s): everything on disk will be sent", self.directory, exc)
            return 0

    def _scan(self, segment: _Segment) -> _Segment:
        """Walk every record: sizes, pending items, newest time; stop at the first bad one."""
        offset = segment.base
        try:
            with open(segment.path, "rb") as file:
                for record in _records(file, segment.base, segment.base, segment.base + segment.file_size):
                    if record.offset >= self._ack:
                        segment.pending_items += record.items
                    segment.last_time_ms = max(segment.last_time_ms, record.time_ms)
                    offset = record.end
        except _Corrupt as corrupt:
            offset = corrupt.offset
            self.stats.corrupt_records += 1
            log.warning(
                "queue %s: %s has a torn or corrupt record at byte %d; %d bytes after it skipped",
                self.directory, segment.path.name, offset - segment.base, segment.base + segment.file_size - offset,
            )
        segment.size = offset - segment.base
        return segment

    def _cut_torn_tail(self) -> None:
        """A crash mid-append leaves a partial record at the end of the newest segment: cut it off."""
        if self._segments and self._segments[-1].size < self._segments[-1].file_size:
            newest = self._segments[-1]
            os.truncate(newest.path, newest.size)
            newest.file_size = newest.size


def _records(file, base: int, start: int, end: int) -> Iterator[Record]:
    """Records of one segment file between two queue offsets; raises _Corrupt at a bad one."""
    file.seek(start - base)
    offset = start
    while offset < end:
        header = file.read(HEADER.size)
        if len(header) < HEADER.size:
            raise _Corrupt(offset)
        crc, length, items, time_ms = HEADER.unpack(header)
        if length > MAX_RECORD_BYTES or offset + HEADER.size + length > end:
            raise _Corrupt(offset)
        payload = file.read(length)
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(header[4:])) != crc:
            raise _Corrupt(offset)
        record_end = offset + HEADER.size + length
        yield Record(offset, record_end, items, time_ms, payload)
        offset = record_end


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _replace_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        _write_all(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise QueueLocked(f"queue directory {path.parent} is in use by another process") from None
    return fd
