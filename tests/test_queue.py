"""The durable queue: replay after restart, acknowledgements that survive a SIGKILL, corrupt and torn records,
byte and age bounds with counted drops, and a full disk (a real, small tmpfs) that never stops the producer."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from foundation.queue import DurableQueue, QueueLimits, QueueLocked
from tests.support.require import require_root

ROOT = Path(__file__).resolve().parent.parent
SMALL = QueueLimits(max_bytes=1 << 20, segment_bytes=1024, max_age=3600)


def fill(queue: DurableQueue, numbers: range, size: int = 40) -> None:
    for number in numbers:
        assert queue.append(record(number, size), 1)


def record(number: int, size: int = 40) -> bytes:
    return f"{number}:".encode().ljust(size, b".")


def number_of(payload: bytes) -> int:
    return int(payload.split(b":")[0])


def drain(queue: DurableQueue, batch_items: int = 1_000_000) -> list[int]:
    """Everything pending, acknowledged batch by batch."""
    numbers = []
    while (batch := queue.peek(batch_items, 1 << 30)) is not None:
        numbers += [number_of(p) for p in batch.payloads]
        queue.ack(batch)
    return numbers


def pending(directory: Path, limits: QueueLimits = SMALL) -> list[int]:
    """What a fresh process would send, without acknowledging it."""
    queue = DurableQueue(directory, limits)
    try:
        batch = queue.peek(1_000_000, 1 << 30)
        return [number_of(p) for p in batch.payloads] if batch else []
    finally:
        queue.close()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_records_are_replayed_in_order_after_reopening(tmp_path):
    queue = DurableQueue(tmp_path, SMALL)
    fill(queue, range(50))
    queue.close()
    assert len(segments(tmp_path)) > 2
    reopened = DurableQueue(tmp_path, SMALL)
    assert reopened.pending_items() == 50
    assert drain(reopened, batch_items=7) == list(range(50))


def test_acknowledged_records_are_not_sent_again_after_restart(tmp_path):
    queue = DurableQueue(tmp_path, SMALL)
    fill(queue, range(30))
    batch = queue.peek(12, 1 << 30)
    queue.ack(batch)
    queue.close()
    assert pending(tmp_path) == list(range(12, 30))


def test_a_batch_sent_but_not_acknowledged_is_sent_again_after_restart(tmp_path):
    queue = DurableQueue(tmp_path, SMALL)
    fill(queue, range(10))
    assert [number_of(p) for p in queue.peek(4, 1 << 30).payloads] == [0, 1, 2, 3]
    queue.close()
    assert pending(tmp_path) == list(range(10))


def test_fully_acknowledged_segments_are_deleted(tmp_path):
    queue = DurableQueue(tmp_path, SMALL)
    fill(queue, range(60))
    assert len(segments(tmp_path)) >= 3
    assert drain(queue) == list(range(60))
    assert len(segments(tmp_path)) == 1  # only the one still appended to
    queue.close()
    assert pending(tmp_path) == []
    assert segments(tmp_path) == []


WRITER = """
import sys
from foundation.queue import DurableQueue, QueueLimits
queue = DurableQueue(sys.argv[1], QueueLimits(max_bytes=64 << 20, segment_bytes=4096))
number = 0
while True:
    queue.append(f"{number}:".encode().ljust(40, b"."), 1)
    print("appended", number, flush=True)
    if number % 7 == 6:
        batch = queue.peek(5, 1 << 20)
        queue.ack(batch)
        print("acked", batch.payloads[-1].split(b":")[0].decode(), flush=True)
    if number % 50 == 0:
        queue.sync()
    number += 1
"""


def test_sigkilled_writer_loses_nothing_unacknowledged_and_resends_nothing_acknowledged(tmp_path):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = []
    try:
        for line in writer.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if len(lines) >= 3000:
                os.kill(writer.pid, signal.SIGKILL)  # mid-stream: it is appending as fast as it can
                break
        lines += writer.stdout.readlines()  # type: ignore[union-attr]
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    reported = [line.split() for line in lines if line.endswith("\n")]  # the kill may cut the last line
    last_appended = max(int(n) for kind, n in reported if kind == "appended")
    last_acked = max(int(n) for kind, n in reported if kind == "acked")
    left = pending(tmp_path, QueueLimits(max_bytes=64 << 20, segment_bytes=4096))
    assert left == list(range(left[0], left[-1] + 1)), "a gap in what is left"
    assert last_acked + 1 <= left[0] <= last_acked + 1 + 5  # at most one more (unreported) ack of 5
    assert last_appended <= left[-1] <= last_appended + 1  # at most one more (unreported) append


def test_torn_tail_is_cut_off_and_counted_and_the_records_before_it_kept(tmp_path):
    queue = DurableQueue(tmp_path, SMALL)
    fill(queue, range(5))
    queue.close()
    newest = segments(tmp_path)[-1]
    good_size = newest.stat().st_size
    with open(newest, "ab") as file:
        file.write(b"\x11\x22\x33\x44\x28\x00\x00\x00\x01\x00")  # half a header: a crash mid-append
    reopened = DurableQueue(tmp_path, SMALL)
    assert reopened.stats.corrupt_records == 1
    assert newest.stat().st_size == good_size
    assert reopened.append(record(5), 1)
    assert drain(reopened) == [0, 1, 2, 3, 4, 5]


def test_corrupt_record_ends_its_segment_and_later_segments_are_kept(tmp_path):
    queue = DurableQueue(tmp_path, SMALL)
    fill(queue, range(60))
    queue.close()
    first = segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    second_record_payload = 20 + 40 + 20 + 5  # header, payload, header, a byte into the payload
    data[second_record_payload] ^= 0xFF
    first.write_bytes(bytes(data))
    per_segment = 1024 // 60  # records of 60 bytes in a 1 KiB segment
    reopened = DurableQueue(tmp_path, SMALL)
    assert reopened.stats.corrupt_records == 1
    assert drain(reopened) == [0] + list(range(per_segment, 60))


def test_queue_stays_within_its_byte_bound_dropping_oldest_first(tmp_path):
    limits = QueueLimits(max_bytes=4096, segment_bytes=1024, max_age=3600)
    queue = DurableQueue(tmp_path, limits)
    for number in range(200):
        assert queue.append(record(number), 1)
        assert queue.disk_bytes() <= 4096
    kept = drain(queue)
    assert kept == list(range(kept[0], 200))
    assert queue.stats.dropped_items == {"queue_full": kept[0]}
    assert len(kept) > 4096 // 60 // 2


def test_records_older_than_max_age_are_dropped_and_counted(tmp_path):
    now = [1_000_000.0]
    queue = DurableQueue(tmp_path, QueueLimits(max_bytes=1 << 20, segment_bytes=1024, max_age=600), clock=lambda: now[0])
    for number in range(40):  # one record a minute during a 40-minute outage
        now[0] += 60
        assert queue.append(record(number), 3)
    assert queue.oldest_pending_time() <= now[0] - 600  # whole old segments went at append, the rest at read
    kept = drain(queue)
    assert kept == list(range(29, 40))  # the last 10 minutes
    assert queue.stats.dropped_items == {"too_old": 29 * 3}
    assert queue.oldest_pending_time() is None


def test_second_owner_of_a_queue_directory_is_refused(tmp_path):
    queue = DurableQueue(tmp_path, SMALL)
    with pytest.raises(QueueLocked):
        DurableQueue(tmp_path, SMALL)
    queue.close()
    DurableQueue(tmp_path, SMALL).close()


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB tmpfs: writes beyond it fail with ENOSPC."""
    require_root("mounting a small tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)  # a failed test left a file open


def fill_disk(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_full_disk_drops_oldest_segments_and_keeps_accepting_new_records(small_disk):
    queue = DurableQueue(small_disk / "queue", QueueLimits(max_bytes=64 << 20, segment_bytes=16 << 10))
    try:
        for number in range(600):  # 600 records of 1 KiB into 256 KiB
            assert queue.append(record(number, 1024), 1)
        dropped = queue.stats.dropped_items["disk_full"]
        assert dropped > 300
        assert drain(queue) == list(range(dropped, 600))  # the newest, without a gap
    finally:
        queue.close()


def test_producer_survives_a_disk_with_no_room_at_all_and_recovers_when_space_returns(small_disk):
    queue = DurableQueue(small_disk / "queue", QueueLimits(max_bytes=64 << 20, segment_bytes=16 << 10))
    try:
        filler = fill_disk(small_disk)
        accepted = [queue.append(record(number, 1024), 1) for number in range(20)]
        assert accepted == [False] * 20  # nothing to sacrifice: the new record itself is dropped
        assert queue.stats.dropped_items == {"disk_full": 20}
        filler.unlink()
        assert all(queue.append(record(number, 1024), 1) for number in range(20, 40))
        assert queue.stats.dropped_items == {"disk_full": 20}
        assert drain(queue) == list(range(20, 40))
    finally:
        queue.close()
