"""The collector as an operator runs it (`python -m collector.cli run`), driven over real HTTP: per-agent
credentials, identity labels from the inventory, liveness, and every kind of bad push answered with its 4xx."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import exposition
from foundation import remote_write as rw
from foundation.remote_write import make_series
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.tsdb import running_victoria_metrics, victoria_metrics_export
from tests.test_agent_run import http_get, metric_value

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"so-tttt-1": "tok-so-tttt-1-9f3a", "xa-my-tho-1": "tok-xa-my-tho-1-77c2", "cai-be-1": "tok-cai-be-1-1b0e"}
TOKEN_ENV = {f"NETMON_TEST_TOKEN_{agent.upper().replace('-', '_')}": token for agent, token in TOKENS.items()}

INVENTORY = """\
agencies:
  - {id: so-tttt, name: "Sở Thông tin và Truyền thông", district: tp-my-tho, level: department}
  - {id: xa-my-tho, name: "Ủy ban nhân dân xã Mỹ Thọ", district: cao-lanh, level: commune}
  - {id: ubnd-cai-be, name: "Ủy ban nhân dân huyện Cái Bè", district: cai-be, level: district}
  - {id: so-y-te, name: "Sở Y tế", district: tp-my-tho, level: department}
agents:
  - {id: so-tttt-1, agency: so-tttt, mode: push, bearer_token: "${NETMON_TEST_TOKEN_SO_TTTT_1}"}
  - {id: xa-my-tho-1, agency: xa-my-tho, mode: push, bearer_token: "${NETMON_TEST_TOKEN_XA_MY_THO_1}"}
  - {id: cai-be-1, agency: ubnd-cai-be, mode: push, bearer_token_file: "TOKEN_FILE"}
"""


@dataclass
class RunningCollector:
    url: str
    port: int
    log: Path
    proc: subprocess.Popen

    def metrics(self) -> str:
        status, text = http_get(f"{self.url}/metrics")
        assert status == 200, text
        return text


def collector_config(directory: Path, port: int, extra: str = "", inventory: str = INVENTORY) -> Path:
    token_file = directory / "cai-be-1.token"
    token_file.write_text(TOKENS["cai-be-1"] + "\n", encoding="utf-8")
    config = directory / "collector.yml"
    config.write_text(f"listen: 127.0.0.1:{port}\n{inventory.replace('TOKEN_FILE', str(token_file))}{extra}", encoding="utf-8")
    return config


def collector_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "collector.cli", "run", "--config", str(config)]


@contextmanager
def running_collector(directory: Path, extra: str = "", port: int | None = None, inventory: str = INVENTORY) -> Iterator[RunningCollector]:
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = collector_config(directory, port, extra, inventory)
    log = directory / "collector.log"
    with running(collector_argv(config), log_path=str(log), env=TOKEN_ENV, cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield RunningCollector(f"http://127.0.0.1:{port}", port, log, proc)


def push(url: str, body: bytes, token: str | None, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    sent = {**dict(rw.HEADERS), **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/api/v1/write", data=body, method="POST", headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode(), dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def now_ms() -> int:
    return int(time.time() * 1000)


def probe_series(value: float = 1.0, target: str = "dc", **labels: str) -> rw.Series:
    return make_series("probe_success", {"target": target, "module": "icmp", **labels}, [(now_ms(), value)])


def wait_until(condition, timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def series_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name]


@pytest.fixture(scope="module")
def collector(tmp_path_factory) -> Iterator[RunningCollector]:
    extra = "defaults: {interval: 1s, ttl: 3s}\ningest: {max_body_bytes: 200000, max_decompressed_bytes: 1000000}\n"
    with running_collector(tmp_path_factory.mktemp("collector"), extra) as running_one:
        yield running_one


# --- identity and credentials


def test_pushed_series_carry_the_identity_labels_of_the_agent_the_token_belongs_to(collector):
    status, text, _ = push(collector.url, rw.encode([probe_series(target="identity-check")]), TOKENS["so-tttt-1"])
    assert status == 204, text
    lines = series_lines(collector.metrics(), "probe_success")
    assert 'probe_success{agency="so-tttt",agent="so-tttt-1",district="tp-my-tho",level="department",module="icmp",target="identity-check"} 1.0' in lines


def test_an_agent_cannot_write_another_agencys_series(collector):
    spoofed = probe_series(target="spoof-check", agency="so-tttt", agent="so-tttt-1", district="tp-my-tho", level="department")
    status, text, _ = push(collector.url, rw.encode([spoofed]), TOKENS["xa-my-tho-1"])
    assert status == 204, text
    lines = [line for line in series_lines(collector.metrics(), "probe_success") if 'target="spoof-check"' in line]
    assert lines == [
        'probe_success{agency="xa-my-tho",agent="xa-my-tho-1",district="cao-lanh",level="commune",module="icmp",target="spoof-check"} 1.0'
    ]


def test_a_token_from_a_file_authenticates_its_agent(collector):
    status, text, _ = push(collector.url, rw.encode([probe_series(target="file-token")]), TOKENS["cai-be-1"])
    assert status == 204, text
    assert any('agent="cai-be-1"' in line and 'target="file-token"' in line for line in series_lines(collector.metrics(), "probe_success"))


@pytest.mark.parametrize("token", [None, "not-a-known-token", TOKENS["so-tttt-1"] + "x"], ids=["missing", "unknown", "near-miss"])
def test_push_without_a_known_token_is_refused_with_401(collector, token):
    status, text, headers = push(collector.url, rw.encode([probe_series(target="intruder")]), token)
    assert (status, text.split(":")[0]) == (401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert 'target="intruder"' not in collector.metrics()


def test_agency_info_names_every_inventory_agency_in_utf8(collector):
    lines = series_lines(collector.metrics(), "netmon_agency_info")
    assert 'netmon_agency_info{agency="xa-my-tho",district="cao-lanh",level="commune",name="Ủy ban nhân dân xã Mỹ Thọ"} 1.0' in lines
    assert len(lines) == 4


# --- liveness


def test_an_inventory_agent_never_seen_is_down_from_the_start(tmp_path):
    with running_collector(tmp_path) as fresh:
        text = fresh.metrics()
    for agent in TOKENS:
        assert metric_value(text, "netmon_agent_up", agent=agent) == 0.0
        assert metric_value(text, "netmon_agent_last_seen_timestamp_seconds", agent=agent) == 0.0


def test_a_silent_agent_goes_down_within_its_ttl_and_its_series_leave_metrics(collector):
    status, _, _ = push(collector.url, rw.encode([probe_series(target="liveness")]), TOKENS["xa-my-tho-1"])
    assert status == 204
    pushed_at = time.time()
    text = collector.metrics()
    assert metric_value(text, "netmon_agent_up", agent="xa-my-tho-1") == 1.0
    assert abs(metric_value(text, "netmon_agent_last_seen_timestamp_seconds", agent="xa-my-tho-1") - pushed_at) < 2
    wait_until(lambda: metric_value(collector.metrics(), "netmon_agent_up", agent="xa-my-tho-1") == 0.0, 6, "up 0")
    down_after = time.time() - pushed_at
    assert 3.0 <= down_after < 5.5  # ttl 3s; /metrics computes liveness when scraped
    assert not any('agent="xa-my-tho-1"' in line for line in series_lines(collector.metrics(), "probe_success"))


def test_a_stale_marker_ends_a_series_at_once(collector):
    assert push(collector.url, rw.encode([probe_series(target="ending")]), TOKENS["so-tttt-1"])[0] == 204
    assert 'target="ending"' in collector.metrics()
    stale = make_series("probe_success", {"target": "ending", "module": "icmp"}, [(now_ms(), rw.STALE_NAN)])
    status, text, _ = push(collector.url, rw.encode([stale]), TOKENS["so-tttt-1"])
    assert status == 204, text
    assert 'target="ending"' not in collector.metrics()


# --- batches sent again (the agent's acknowledgement was lost)


def counters(text: str) -> tuple[float, float]:
    return (
        metric_value(text, "netmon_collector_samples_received_total", mode="push") or 0.0,
        metric_value(text, "netmon_collector_samples_duplicate_total") or 0.0,
    )


def test_a_batch_sent_again_is_acknowledged_and_counted_as_duplicates_not_stored_twice(collector):
    stamp = now_ms()
    body = rw.encode([make_series("probe_success", {"target": f"again-{n}", "module": "icmp"}, [(stamp, 1.0)]) for n in range(3)])
    assert push(collector.url, body, TOKENS["so-tttt-1"])[0] == 204
    received, duplicates = counters(collector.metrics())
    status, text, _ = push(collector.url, body, TOKENS["so-tttt-1"])
    assert (status, text) == (204, "")
    assert counters(collector.metrics()) == (received, duplicates + 3)


def test_a_sample_older_than_its_series_last_one_is_dropped(collector):
    stamp = now_ms()
    newer = make_series("probe_success", {"target": "out-of-order", "module": "icmp"}, [(stamp, 1.0)])
    older = make_series("probe_success", {"target": "out-of-order", "module": "icmp"}, [(stamp - 1_000, 0.0)])
    assert push(collector.url, rw.encode([newer]), TOKENS["so-tttt-1"])[0] == 204
    assert push(collector.url, rw.encode([older]), TOKENS["so-tttt-1"])[0] == 204
    assert [line.split()[-1] for line in series_lines(collector.metrics(), "probe_success") if 'target="out-of-order"' in line] == ["1.0"]


def test_a_batch_sent_again_does_not_revive_the_series_its_stale_marker_ended(collector):
    stamp = now_ms()
    ended = make_series("probe_success", {"target": "ended-once", "module": "icmp"}, [(stamp, 1.0), (stamp + 1, rw.STALE_NAN)])
    for _ in range(2):
        assert push(collector.url, rw.encode([ended]), TOKENS["so-tttt-1"])[0] == 204
    assert 'target="ended-once"' not in collector.metrics()


def test_remote_write_out_gets_each_sample_once_in_order_when_batches_overlap(tmp_path):
    start = now_ms() - 60_000
    batches = [[(start + n * 1_000, float(n)) for n in range(first, first + 3)] for first in (0, 0, 2, 1)]  # again, overlapping, older
    with running_victoria_metrics(tmp_path / "vm") as vm:
        forward = f"remote_write:\n  - url: {vm.url}/api/v1/write\n    queue: {{directory: {tmp_path / 'queue'}}}\n    interval: 200ms\n"
        with running_collector(tmp_path / "collector", forward) as running_one:
            for samples in batches:
                body = rw.encode([make_series("netmon_test_resent", {"target": "dc"}, samples)])
                assert push(running_one.url, body, TOKENS["so-tttt-1"])[0] == 204
            wait_until(lambda: victoria_metrics_export(vm, "netmon_test_resent") != {}, 20, "samples in VictoriaMetrics")
            wait_until(lambda: metric_value(running_one.metrics(), "netmon_collector_remote_write_queue_pending_samples") == 0, 20, "the queue to drain")
            exported = victoria_metrics_export(vm, "netmon_test_resent")
    assert list(exported.values()) == [[(start + n * 1_000, float(n)) for n in range(5)]]


YEAR_2100_MS = 4_102_444_800_000


def test_samples_with_timestamps_the_tsdb_refuses_are_dropped_and_counted_the_rest_of_the_push_is_forwarded(tmp_path):
    """VictoriaMetrics acknowledges samples outside its retention (-retentionPeriod, 1d in the tests) or more than 2
    days ahead (its -futureRetention) and drops them silently (vm_rows_ignored_total): the collector, told the
    retention by ingest.max_sample_age, drops them itself, counts them and logs the agent; the push's other samples
    are stored and forwarded, and VictoriaMetrics ignores none of what it gets."""
    now = now_ms()
    stamps = {"epoch": 0, "two-days-old": now - 2 * 86_400_000, "year-2100": YEAR_2100_MS, "hour-old": now - 3_600_000, "now": now}
    body = rw.encode([make_series("netmon_test_clock", {"at": name}, [(stamp, 1.0)]) for name, stamp in stamps.items()])
    with running_victoria_metrics(tmp_path / "vm") as vm:
        extra = (f"ingest: {{max_sample_age: 1d}}\nremote_write:\n  - url: {vm.url}/api/v1/write\n"
                 f"    queue: {{directory: {tmp_path / 'queue'}}}\n    interval: 200ms\n")
        with running_collector(tmp_path / "collector", extra) as running_one:
            status, text, _ = push(running_one.url, body, TOKENS["so-tttt-1"])
            wait_until(lambda: metric_value(running_one.metrics(), "netmon_collector_remote_write_samples_sent_total") == 2, 20, "forwarding")
            wait_until(lambda: len(victoria_metrics_export(vm, "netmon_test_clock")) == 2, 20, "samples in VictoriaMetrics")
            exported = victoria_metrics_export(vm, "netmon_test_clock")
            metrics, log = running_one.metrics(), running_one.log.read_text(encoding="utf-8")
        with urllib.request.urlopen(f"{vm.url}/metrics", timeout=10) as reply:
            vm_metrics = reply.read().decode()
    assert (status, text) == (204, "")
    assert metric_value(metrics, "netmon_collector_samples_dropped_total", reason="timestamp_too_old") == 2
    assert metric_value(metrics, "netmon_collector_samples_dropped_total", reason="timestamp_too_new") == 1
    assert metric_value(metrics, "netmon_collector_samples_received_total", mode="push") == 2
    assert sorted(re.search(r'at="([^"]+)"', line).group(1) for line in series_lines(metrics, "netmon_test_clock")) == ["hour-old", "now"]
    assert sorted(dict(labels)["at"] for labels in exported) == ["hour-old", "now"]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in vm_metrics.splitlines() if line.startswith("vm_rows_ignored_total")) == 0
    assert ("push from so-tttt-1: samples dropped for their timestamps, 2 older than ingest.max_sample_age and 1 ahead" in log
            and 'netmon_test_clock{agency="so-tttt",agent="so-tttt-1",at="epoch",district="tp-my-tho",level="department"} '
                "at 1970-01-01T00:00:00.000+00:00" in log)


def test_a_sample_from_the_far_future_does_not_stop_its_series(collector):
    """Stored, it would make every later sample look like a duplicate until the year 2100."""
    stamp = now_ms()
    for samples in ([(stamp, 1.0)], [(YEAR_2100_MS, 5.0)], [(stamp + 1_000, 2.0)]):
        body = rw.encode([make_series("netmon_test_future", {"target": "dc"}, samples)])
        assert push(collector.url, body, TOKENS["so-tttt-1"])[0] == 204
    assert [line.rsplit(" ", 1)[1] for line in series_lines(collector.metrics(), "netmon_test_future")] == ["2.0"]


# --- bad input


def raw_body(labels: list[tuple[str, str]], value: float = 1.0) -> bytes:
    """A WriteRequest exactly as given: unsorted or duplicate labels included."""
    request = rw.WriteRequest()
    series = request.timeseries.add()
    for name, label_value in labels:
        series.labels.add(name=name, value=label_value)
    series.samples.add(value=value, timestamp=now_ms())
    return rw.compress(request.SerializeToString())


BAD_BODIES = {
    "garbage": (b"\x00\xffnot snappy at all", 400, "bad_snappy"),
    "framed-snappy": (bytes(cramjam.snappy.compress(rw.encode([probe_series()]))), 400, "bad_snappy"),
    "not-protobuf": (rw.compress(b"\xff\xff\xff\xff\xff"), 400, "bad_protobuf"),
    "unsorted-labels": (raw_body([("__name__", "probe_success"), ("zone", "a"), ("agent", "x")]), 400, "unsorted_labels"),
    "duplicate-label": (raw_body([("__name__", "probe_success"), ("target", "a"), ("target", "b")]), 400, "duplicate_label"),
    "invalid-metric-name": (raw_body([("__name__", "probe success")]), 400, "invalid_metric_name"),
    "invalid-label-name": (raw_body([("__name__", "probe_success"), ("bad-label", "x")]), 400, "invalid_label_name"),
    "no-metric-name": (raw_body([("target", "x")]), 400, "missing_metric_name"),
    "reserved-name": (raw_body([("__name__", "netmon_agent_up")], 1.0), 400, "reserved_name"),
    "decompresses-too-large": (rw.compress(b"\x00" * 1_000_001), 413, "too_large"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_push_gets_its_4xx_with_the_reason_and_the_collector_keeps_serving(collector, case):
    body, expected_status, reason = BAD_BODIES[case]
    status, text, _ = push(collector.url, body, TOKENS["so-tttt-1"])
    assert (status, text.split(":")[0]) == (expected_status, reason), text
    assert push(collector.url, rw.encode([probe_series(target="after-bad")]), TOKENS["so-tttt-1"])[0] == 204
    assert metric_value(collector.metrics(), "netmon_collector_write_requests_total", code=str(expected_status), reason=reason) >= 1


def test_a_push_with_one_bad_series_stores_none_of_it(collector):
    good = rw.WriteRequest.FromString(rw.decompress(rw.encode([probe_series(target="all-or-nothing")]), 1 << 20))
    bad = rw.WriteRequest.FromString(rw.decompress(raw_body([("__name__", "netmon_agent_up")]), 1 << 20))
    good.MergeFrom(bad)
    status, text, _ = push(collector.url, rw.compress(good.SerializeToString()), TOKENS["so-tttt-1"])
    assert (status, text.split(":")[0]) == (400, "reserved_name")
    assert 'target="all-or-nothing"' not in collector.metrics()


def test_nan_and_infinite_values_are_stored_and_shown_as_prometheus_shows_them(collector):
    """Prometheus in agent mode and vmagent send NaN (a summary's quantile without observations) and ±Inf: a 400
    would make them drop the whole batch."""
    stamp = now_ms()
    values = {"nan": math.nan, "plus-inf": math.inf, "minus-inf": -math.inf, "finite": 0.25}
    body = rw.encode([make_series("netmon_test_special", {"target": name}, [(stamp, value)]) for name, value in values.items()])
    status, text, _ = push(collector.url, body, TOKENS["so-tttt-1"])
    assert (status, text) == (204, "")
    shown = {re.search(r'target="([^"]+)"', line).group(1): line.rsplit(" ", 1)[1] for line in series_lines(collector.metrics(), "netmon_test_special")}
    assert shown == {"nan": "NaN", "plus-inf": "+Inf", "minus-inf": "-Inf", "finite": "0.25"}


def test_a_nan_value_does_not_end_its_series_only_the_stale_marker_does(collector):
    stamp = now_ms()
    series = [make_series("netmon_test_nan_then", {"target": "kept"}, [(stamp, 1.0), (stamp + 1, math.nan)])]
    assert push(collector.url, rw.encode(series), TOKENS["so-tttt-1"])[0] == 204
    assert [line.rsplit(" ", 1)[1] for line in series_lines(collector.metrics(), "netmon_test_nan_then")] == ["NaN"]
    stale = [make_series("netmon_test_nan_then", {"target": "kept"}, [(stamp + 2, rw.STALE_NAN)])]
    assert push(collector.url, rw.encode(stale), TOKENS["so-tttt-1"])[0] == 204
    assert series_lines(collector.metrics(), "netmon_test_nan_then") == []


def write_requests(collector: RunningCollector, code: str, reason: str) -> float:
    return metric_value(collector.metrics(), "netmon_collector_write_requests_total", code=code, reason=reason) or 0.0


def test_a_body_larger_than_the_limit_is_refused_with_413_counted_and_logged(collector):
    """The HTTP server answers before the body is read, so before the receiver: the reply is counted all the same."""
    before = write_requests(collector, "413", "too_large")
    status, text, _ = push(collector.url, os.urandom(200_001), TOKENS["xa-my-tho-1"])
    assert status == 413, text
    assert write_requests(collector, "413", "too_large") == before + 1
    wait_until(lambda: "push from xa-my-tho-1 refused (413 too_large): request body of 200001 bytes" in collector.log.read_text(), 5, "the log line")
    assert push(collector.url, rw.encode([probe_series()]), TOKENS["so-tttt-1"])[0] == 204


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        return sock.recv(4096)


@pytest.mark.parametrize(
    "head, code, reason",
    [
        (b"GET /api/v1/write HTTP/1.1\r\nHost: x\r\n\r\n", "405", "method_not_allowed"),
        (b"POST /api/v1/write HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "411", "length_required"),
        (b"POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n", "400", "bad_request"),
    ],
    ids=["wrong-method", "chunked-body", "bad-content-length"],
)
def test_every_reply_to_a_push_is_counted_whatever_layer_gives_it(collector, head, code, reason):
    before = write_requests(collector, code, reason)
    assert raw_request(collector.port, head).startswith(f"HTTP/1.1 {code} ".encode())
    assert write_requests(collector, code, reason) == before + 1


def test_a_non_snappy_content_encoding_is_refused(collector):
    status, text, _ = push(collector.url, rw.encode([probe_series()]), TOKENS["so-tttt-1"], {"Content-Encoding": "gzip"})
    assert (status, text.split(":")[0]) == (400, "bad_encoding")


def test_pushes_beyond_the_sample_budget_get_429_with_retry_after(tmp_path):
    with running_collector(tmp_path, "ingest: {max_samples_per_second: 100}\n") as small:
        body = rw.encode([probe_series(target=f"t{i}") for i in range(60)])
        statuses = [push(small.url, body, TOKENS["so-tttt-1"]) for _ in range(3)]
    assert [status for status, _, _ in statuses[:1]] == [204]
    throttled = [(text, headers) for status, text, headers in statuses if status == 429]
    assert throttled, [s for s, _, _ in statuses]
    text, headers = throttled[0]
    assert text.startswith("overloaded:") and int(headers["Retry-After"]) >= 1


def test_pushes_of_new_series_beyond_the_first_sight_share_get_429_while_known_series_pass(tmp_path):
    """After a restart every push brings new series: beyond their share of time they wait (429), the rest flows."""
    with running_collector(tmp_path, "ingest: {first_sight_share: 0.001}\n") as small:  # 1 ms of work per second
        known = [f"t{i}" for i in range(2000)]  # storing 2,000 new series takes well over 1 ms
        first = push(small.url, rw.encode([probe_series(target=target) for target in known]), TOKENS["so-tttt-1"])
        new = push(small.url, rw.encode([probe_series(target="new")]), TOKENS["xa-my-tho-1"])
        time.sleep(0.01)
        again = push(small.url, rw.encode([probe_series(2.0, target=target) for target in known]), TOKENS["so-tttt-1"])
        page = small.metrics()
    assert first[0] == 204
    assert new[0] == 429 and new[1].startswith("overloaded: the collector is busy with series it has not seen before")
    assert int(new[2]["Retry-After"]) >= 1
    assert again[0] == 204
    assert 'target="new"' not in page and 'probe_success{agency="so-tttt",agent="so-tttt-1",district="tp-my-tho",level="department",module="icmp",target="t7"} 2.0' in page


def test_one_agent_over_its_share_is_throttled_while_the_others_keep_writing(tmp_path):
    """A leaked or runaway agent spends its own share of the budget, not everyone's."""
    extra = "ingest: {max_samples_per_second: 1000, max_samples_per_second_per_agent: 100}\n"
    with running_collector(tmp_path, extra) as small:
        body = rw.encode([probe_series(target=f"t{i}") for i in range(60)])
        runaway = [push(small.url, body, TOKENS["so-tttt-1"]) for _ in range(3)]
        other = push(small.url, body, TOKENS["xa-my-tho-1"])
    assert [status for status, _, _ in runaway] == [204, 429, 429]
    assert runaway[1][1].startswith("overloaded: this agent is over its share")
    assert other[0] == 204


def test_an_agents_share_defaults_to_twice_an_even_split_and_never_starves():
    from collector.ingest import agent_share

    assert agent_share(2_000_000, None, 210) == 19_047
    assert agent_share(20_000, None, 61) == 1_000  # the floor: a queue replay still moves
    assert agent_share(500, None, 3) == 500  # never more than the whole budget
    assert agent_share(2_000_000, 5_000, 210) == 5_000


def test_metrics_has_no_timestamps_and_passes_promtool(collector):
    from tests.support.require import require_binary

    push(collector.url, rw.encode([probe_series(target="lint")]), TOKENS["so-tttt-1"])
    text = collector.metrics()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    after_labels = [line.rsplit("}", 1)[-1] if "}" in line else line.split(" ", 1)[1] for line in samples]
    assert all(len(rest.split()) == 1 for rest in after_labels)  # value only, no timestamp
    check = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
    assert metric_value(text, "netmon_collector_connections_refused_total") == 0.0


def test_agent_process_metrics_join_the_collectors_own_families_once(collector):
    """Agents push process_* and python_* too: each name heads one family on the page, or parsers refuse it."""
    from tests.support.require import require_binary

    stamp = now_ms()
    pushed = [
        rw.make_series("process_cpu_seconds_total", {}, [(stamp, 3.5)]),
        rw.make_series("process_resident_memory_bytes", {}, [(stamp, 4.0e7)]),
        rw.make_series("python_gc_objects_collected_total", {"generation": "0"}, [(stamp, 10.0)]),
    ]
    assert push(collector.url, rw.encode(pushed), TOKENS["so-tttt-1"])[0] == 204
    text = collector.metrics()
    heads = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert sorted(heads) == sorted(set(heads))
    family = text.split("# HELP process_cpu_seconds_total ")[1].split("# HELP ")[0]
    assert "# TYPE process_cpu_seconds_total counter" in family
    assert 'process_cpu_seconds_total{agency="so-tttt",agent="so-tttt-1"' in family
    check = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


def test_no_token_appears_in_the_log_or_metrics(collector):
    push(collector.url, rw.encode([probe_series()]), "wrong-" + TOKENS["so-tttt-1"])
    exposed = collector.metrics() + collector.log.read_text(encoding="utf-8") + http_get(f"{collector.url}/")[1]
    for token in TOKENS.values():
        assert token not in exposed


# --- property: nothing a client sends crashes the receiver


def in_process_receiver(tmp_dir: Path):
    from collector.config import parse_collector_config
    from collector.ingest import Receiver, TokenBucket
    from collector.store import SeriesStore

    os.environ.update(TOKEN_ENV)
    config = parse_collector_config(collector_config(tmp_dir, 9856).read_text(encoding="utf-8"))
    store = SeriesStore(config.agents)
    return Receiver(config, store, lambda series, now: None, TokenBucket(1e9)), store


def test_label_sets_that_differ_only_in_identity_labels_are_one_series_whichever_comes_first(tmp_path):
    receiver, store = in_process_receiver(tmp_path)
    start = now_ms()
    label_sets = ({}, {"agency": "elsewhere", "level": "commune"}, {"agent": "other"})  # the plain one first
    for step, extra in enumerate(label_sets):
        series = make_series("probe_success", {"target": "dc", "module": "icmp", **extra}, [(start + step * 1000, step + 1.0)])
        assert receiver.write(f"Bearer {TOKENS['so-tttt-1']}", None, rw.encode([series])).status == 204
    rendered = [line for line in exposition.page("", store.render_groups(time.time())).splitlines() if not line.startswith("#")]
    assert rendered == ['probe_success{agency="so-tttt",agent="so-tttt-1",district="tp-my-tho",level="department",module="icmp",target="dc"} 3.0']


LABEL_NAMES = ("__name__", "agency", "agent", "district", "level", "job")
LABEL_TEXT = st.text(alphabet=st.sampled_from("ab_Z9:-. é\x00\\\"\n"), max_size=6)


@given(body=st.binary(max_size=4096))
@settings(max_examples=300, deadline=None)
def test_random_bytes_get_a_4xx_never_an_exception(tmp_path_factory, body):
    receiver, _ = in_process_receiver(tmp_path_factory.mktemp("hyp"))
    outcome = receiver.write(f"Bearer {TOKENS['so-tttt-1']}", "snappy", body)
    assert outcome.status in (204, 400, 413)


@given(
    series=st.lists(
        st.tuples(
            st.lists(st.tuples(st.one_of(LABEL_TEXT, st.sampled_from(LABEL_NAMES)), LABEL_TEXT), max_size=5),
            st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True)), max_size=3),
        ),
        max_size=5,
    )
)
@settings(max_examples=300, deadline=None)
def test_random_write_requests_are_stored_whole_or_refused_whole(tmp_path_factory, series):
    receiver, store = in_process_receiver(tmp_path_factory.mktemp("hyp"))
    request = rw.WriteRequest()
    for labels, samples in series:
        added = request.timeseries.add()
        for name, value in labels:
            added.labels.add(name=name, value=value)
        for timestamp, value in samples:
            added.samples.add(timestamp=timestamp, value=value)
    outcome = receiver.write(f"Bearer {TOKENS['so-tttt-1']}", None, rw.compress(request.SerializeToString()))
    assert outcome.status in (204, 400)
    stored = store.states["so-tttt-1"].series
    if outcome.status == 400:
        assert not stored
    rendered = [line for line in exposition.page("", store.render_groups(time.time())).splitlines() if not line.startswith("#")]
    assert len(rendered) == len({entry.prefix for entry in stored.values()})  # identity-only differences merge
    assert all('agency="so-tttt",agent="so-tttt-1",district="tp-my-tho",level="department"' in line for line in rendered)


# --- configuration


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "collector.cli", "check-config", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})


def test_check_config_accepts_the_example_inventory():
    example = ROOT / "config" / "collector.example.yml"
    names = sorted(set(re.findall(r"\$\{(NETMON_TOKEN_[A-Z0-9_]+)\}", example.read_text(encoding="utf-8"))))
    done = check_config(example, {name: f"example-token-{index}" for index, name in enumerate(names)})
    assert done.returncode == 0, done.stderr
    assert "10 agencies, 7 push and 3 pull agents, 1 remote_write out" in done.stdout
    assert "example-token" not in done.stdout + done.stderr


AGENCY = '  - {id: so-tttt, name: "Sở Thông tin và Truyền thông", district: tp-my-tho, level: department}\n'
PUSH_AGENT = '  - {id: a1, agency: so-tttt, mode: push, bearer_token: "${NETMON_TEST_TOKEN_SO_TTTT_1}"}\n'
BAD_CONFIGS = {
    "unknown-agency": ("agencies:\n" + AGENCY + "agents:\n  - {id: a1, agency: so-x, mode: pull, address: '10.0.0.1:9855'}\n",
                       ":4: agents[0].agency: unknown agency 'so-x'"),
    "duplicate-agency": ("agencies:\n" + AGENCY + AGENCY, ":3: agencies[1].id: duplicate id 'so-tttt' (first defined in agencies[0])"),
    "bad-level": ("agencies:\n  - {id: x, name: X, district: d, level: hamlet}\n", ":2: agencies[0].level: invalid value 'hamlet'; expected one of: commune, department, district, province"),
    "pull-without-address": ("agencies:\n" + AGENCY + "agents:\n  - {id: a1, agency: so-tttt, mode: pull}\n",
                             ":4: agents[0].address: a pull agent needs address"),
    "push-without-token": ("agencies:\n" + AGENCY + "agents:\n  - {id: a1, agency: so-tttt, mode: push}\n",
                           ":4: agents[0]: a push agent needs bearer_token"),
    "literal-token": ("agencies:\n" + AGENCY + "agents:\n  - {id: a1, agency: so-tttt, mode: push, bearer_token: hunter2-literal}\n",
                      ":4: agents[0].bearer_token: secrets are accepted only by reference"),
    "shared-token": ("agencies:\n" + AGENCY + "agents:\n" + PUSH_AGENT + PUSH_AGENT.replace("a1", "a2"),
                     ":5: agents[1].bearer_token: the same credential is already bound to agent 'a1'"),
    "unknown-key": ("agencies:\n" + AGENCY + "listn: 1.2.3.4:5\n", ":3: listn: unknown key"),
    "mtls-without-ca": ("tls_server_config:\n  cert_file: CERT\n  key_file: CERT\n  client_auth_type: RequireAndVerifyClientCert\n",
                        ":1: tls_server_config.client_ca_file: client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
    "remote-write-url": ("remote_write:\n  - url: ftp://tsdb/\n    queue: {directory: /tmp/q}\n",
                         ":2: remote_write[0].url: expected http(s)://HOST[:PORT]/PATH"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_check_config_names_file_line_and_key_of_a_mistake_and_exits_2(tmp_path, case):
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / "collector.yml"
    path.write_text(text.replace("CERT", str(path)), encoding="utf-8")
    done = check_config(path, TOKEN_ENV)
    assert done.returncode == 2, done.stdout
    assert f"{path}{expected}" in done.stderr
    assert "hunter2" not in done.stderr and TOKENS["so-tttt-1"] not in done.stderr


def test_a_backlog_replayed_after_the_ttl_ended_its_series_is_stored_and_forwarded_whole(tmp_path):
    """A commune's link comes back after its agent was declared silent: the stale markers went out at the TTL,
    and the rounds the agent queued meanwhile (older than those markers) must still be stored and forwarded."""
    receiver, store = in_process_receiver(tmp_path)
    state = store.states["so-tttt-1"]
    labels = (("__name__", "probe_success"), ("module", "icmp"), ("target", "dc"))
    start = now_ms()
    assert store.accept(state, [(labels, ((start, 1.0),))], start / 1000)[0] == 1
    silent_at = start / 1000 + state.agent.ttl + 5
    ended = store.expire(silent_at)
    assert len(ended) == 1 and rw.is_stale_marker(ended[0][1][0][1])
    backlog = tuple((start + step * 1000, 0.0) for step in range(1, int(state.agent.ttl) + 10))  # across the marker
    stored, forward = store.accept(state, [(labels, backlog)], silent_at + 1)
    assert stored == len(backlog)
    assert [samples for _, samples in forward] == [backlog]
    assert store.duplicate_samples == 0
