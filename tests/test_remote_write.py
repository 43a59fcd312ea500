"""remote_write 1.0 encoding: our bodies are accepted by real Prometheus and VictoriaMetrics, bodies of a real
Prometheus sender decode, and every kind of bad input fails with its own error (never anything else)."""

from __future__ import annotations

import json
import math
import struct
import time
import urllib.error
import urllib.request

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation import remote_write as rw
from foundation.remote_write import Series, make_series
from tests.fuzz.fuzz_remote_write import BIG, POOL_LABELS, full_schema_decode, outcome, warm_decoder
from tests.support.httpd import HttpServer, Reply
from tests.support.ports import free_port
from tests.support.tsdb import query_prometheus, running_prometheus, running_victoria_metrics, stored_samples


def post_body(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(rw.HEADERS))
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def now_ms() -> int:
    return int(time.time() * 1000)


def test_prometheus_stores_our_series_with_their_timestamps(tmp_path):
    start = now_ms() - 60_000
    series = [
        make_series("netmon_test_rtt_seconds", {"target": "dc", "agency": "so-tttt", "name": "Sở Thông tin"},
                    [(start + i * 15_000, 0.01 * i) for i in range(4)]),
        make_series("netmon_test_up", {"target": "mail"}, [(start, 1.0)]),
    ]
    with running_prometheus(tmp_path) as prometheus:
        assert post_body(f"{prometheus.url}/api/v1/write", rw.encode(series)) == (204, "")
        stored = stored_samples(prometheus, '{__name__=~"netmon_test_.*"}')
    assert stored == {
        (("__name__", "netmon_test_rtt_seconds"), ("agency", "so-tttt"), ("name", "Sở Thông tin"), ("target", "dc")):
            [(start + i * 15_000, 0.01 * i) for i in range(4)],
        (("__name__", "netmon_test_up"), ("target", "mail")): [(start, 1.0)],
    }


def test_prometheus_takes_our_stale_marker_as_the_end_of_a_series(tmp_path):
    start = now_ms() - 30_000
    with running_prometheus(tmp_path) as prometheus:
        body = rw.encode([make_series("netmon_test_gone", {}, [(start, 1.0), (start + 10_000, rw.STALE_NAN)])])
        assert post_body(f"{prometheus.url}/api/v1/write", body)[0] == 204
        before = query_prometheus(prometheus, "netmon_test_gone", at=(start + 5_000) / 1000)
        after = query_prometheus(prometheus, "netmon_test_gone", at=(start + 11_000) / 1000)
    assert [s["value"][1] for s in before] == ["1"]
    assert after == []  # a plain NaN would be returned as "NaN" for up to 5 minutes


def test_victoria_metrics_stores_our_series_with_their_timestamps(tmp_path):
    start = now_ms() - 60_000
    samples = [(start + i * 5_000, float(i)) for i in range(6)]
    with running_victoria_metrics(tmp_path) as vm:
        status, text = post_body(f"{vm.url}/api/v1/write", rw.encode([make_series("netmon_test_vm", {"agent": "a1"}, samples)]))
        assert status == 204, text
        urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=10).read()
        with urllib.request.urlopen(f"{vm.url}/api/v1/export?match[]=netmon_test_vm", timeout=10) as reply:
            exported = [json.loads(line) for line in reply.read().decode().splitlines()]
    assert len(exported) == 1
    assert exported[0]["metric"] == {"__name__": "netmon_test_vm", "agent": "a1"}
    assert list(zip(exported[0]["timestamps"], exported[0]["values"])) == samples


def test_bodies_of_prometheus_agent_mode_decode_with_our_decoder(tmp_path):
    """The reference sender (Prometheus agent mode scraping itself) -> our decoder, through real HTTP."""
    with HttpServer(routes={"/api/v1/write": Reply(204, b"")}) as receiver:
        port = free_port()
        config = (
            "global: {scrape_interval: 1s}\n"
            f"scrape_configs: [{{job_name: self, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}]\n"
            f"remote_write: [{{url: '{receiver.url('/api/v1/write')}', queue_config: {{batch_send_deadline: 1s}}}}]\n"
        )
        with running_prometheus(tmp_path, port=port, config=config, agent_mode=True):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(rw.decode(r.body, BIG) for r in list(receiver.requests)):
                time.sleep(0.2)
        requests = list(receiver.requests)
    assert requests, "prometheus agent never remote-wrote"
    assert requests[0].headers["content-encoding"] == "snappy"
    series = [s for request in requests for s in rw.decode(request.body, BIG)]
    up = [s for s in series if dict(s.labels)["__name__"] == "up"]
    assert up and dict(up[0].labels)["job"] == "self"
    assert all(value == 1.0 and abs(ts - now_ms()) < 120_000 for s in up for ts, value in s.samples)


def test_decode_returns_exactly_what_was_encoded():
    series = [
        make_series("probe_icmp_duration_seconds", {"phase": "rtt", "target": "Trạm y tế"}, [(1, 0.5), (2, math.inf), (3, -0.0)]),
        make_series("probe_success", {"target": "dc"}, [(-5, 1.0)]),
        make_series("probe_empty", {}, []),
    ]
    assert rw.decode(rw.encode(series), BIG) == series


def test_decoded_stale_marker_keeps_its_bit_pattern():
    [decoded] = rw.decode(rw.encode([make_series("x", {}, [(1, rw.STALE_NAN), (2, math.nan)])]), BIG)
    stale, plain_nan = (value for _, value in decoded.samples)
    assert struct.pack("<d", stale) == struct.pack("<Q", 0x7FF0000000000002)
    assert rw.is_stale_marker(stale) and not rw.is_stale_marker(plain_nan)


def test_encoder_sorts_labels_by_name():
    unsorted = Series((("zone", "a"), ("__name__", "m"), ("Agency", "x")), ((1, 1.0),))
    [decoded] = rw.decode(rw.encode([unsorted]), BIG)
    assert decoded.labels == (("Agency", "x"), ("__name__", "m"), ("zone", "a"))


def test_joined_bodies_hold_the_series_of_all_of_them():
    first, second = make_series("a", {}, [(1, 1.0)]), make_series("b", {"k": "v"}, [(2, 2.0)])
    joined = rw.join_bodies([rw.encode([first]), rw.encode([second])], BIG)
    assert rw.decode(joined, BIG) == [first, second]


def test_decoder_remembers_label_sets_it_has_seen():
    body = rw.encode([make_series("probe_success", {"target": "dc"}, [(1, 1.0)])])
    decoder = rw.Decoder(BIG)
    assert decoder.decode(body)[0].labels is decoder.decode(body)[0].labels


def raw_write_request(labels: list[tuple[str, str]]) -> bytes:
    """A snappy body built with the full prompb schema, labels exactly as given (no sorting, no checks)."""
    request = rw.WriteRequest()
    series = request.timeseries.add()
    for name, value in labels:
        series.labels.add(name=name, value=value)
    series.samples.add(value=1.0, timestamp=1)
    return rw.compress(request.SerializeToString())


def bad_utf8_label() -> bytes:
    label = rw.Label(name="a", value="Z").SerializeToString().replace(b"Z", b"\xff")
    series = b"\x0a" + bytes([len(label)]) + label
    return rw.compress(b"\x0a" + bytes([len(series)]) + series)


@pytest.mark.parametrize(
    "body, error",
    [
        (b"\xff\x06\x00\x00sNaPpY", rw.BadSnappy),  # the framed stream format, not the block format
        (b"", rw.BadSnappy),
        (rw.compress(b"x" * 100)[:-3], rw.BadSnappy),  # truncated
        (b"\xff\xff\xff\xff\x07", rw.TooLarge),  # header announces 2 GiB, nothing follows
        (rw.compress(b"\x0a\x05\x0a\x03\x0a\x01"), rw.BadProtobuf),  # a length running past the end
        (bad_utf8_label(), rw.BadProtobuf),
        (raw_write_request([("__name__", "9lives")]), rw.InvalidMetricName),
        (raw_write_request([("__name__", "up"), ("bad-name", "x")]), rw.InvalidLabelName),
        (raw_write_request([("__name__", "up"), ("b", "1"), ("a", "2")]), rw.UnsortedLabels),
        (raw_write_request([("__name__", "up"), ("a", "1"), ("a", "2")]), rw.DuplicateLabel),
        (raw_write_request([("job", "x")]), rw.MissingMetricName),
    ],
    ids=[
        "framed-snappy", "empty", "truncated-snappy", "oversize", "bad-protobuf", "bad-utf8", "invalid-metric-name",
        "invalid-label-name", "unsorted-labels", "duplicate-label", "missing-name",
    ],
)
def test_each_kind_of_bad_body_raises_its_own_error(body, error):
    with pytest.raises(error) as raised:
        rw.decode(body, 1 << 20)
    assert raised.value.reason == error.reason
    assert type(raised.value) is error


def test_size_limit_applies_to_the_decompressed_body():
    body = rw.encode([make_series("x", {"pad": "y" * 5000}, [(1, 1.0)])])
    assert len(body) < 1000
    with pytest.raises(rw.TooLarge):
        rw.decode(body, 4096)


def test_encoder_refuses_series_the_decoder_would_refuse():
    with pytest.raises(rw.InvalidLabelName):
        rw.encode([Series((("__name__", "x"), ("bad-name", "v")), ((1, 1.0),))])
    with pytest.raises(rw.MissingMetricName):
        rw.encode([Series((("job", "x"),), ((1, 1.0),))])


def test_headers_name_the_remote_write_1_0_protocol():
    assert dict(rw.HEADERS) == {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_our_errors(data):
    for body in (data, bytes(cramjam.snappy.compress_raw(data))):  # raw garbage, and garbage protobuf
        try:
            decoded = rw.decode(body, 1 << 20)
        except rw.RemoteWriteError:
            continue
        assert all(isinstance(series, Series) for series in decoded)


label_names = st.text(alphabet="abcXYZ_09-:", min_size=0, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(label_names, st.text(max_size=8)), max_size=5), st.floats(allow_nan=False))
def test_random_series_round_trip_or_fail_with_our_errors(labels, value):
    series = Series(tuple(labels), ((1, value),))
    try:
        body = rw.encode([series])
    except rw.RemoteWriteError:
        return
    [decoded] = rw.decode(body, 1 << 20)
    assert decoded.labels == tuple(sorted(labels)) and decoded.samples == ((1, value),)


# --- the decoder's fast path (a cached label block + one Sample of a fixed shape) is exactly protobuf's reading

TIMESTAMPS = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 1, 2**35 - 1, 2**35, 2**42 - 1, 2**42, 1_764_000_000_000]),
    st.integers(2**35 - 10, 2**42 + 10),
)
VALUES = st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, -0.0, rw.STALE_NAN]))


def protobuf_label_block(labels: rw.Labels) -> bytes:
    """Labels (sorted) as the start of a TimeSeries, written by protobuf."""
    return rw._WireTimeSeries(labels=[rw.Label(name=n, value=v).SerializeToString() for n, v in labels]).SerializeToString()


def sample_field(timestamp: int, value: float) -> bytes:
    """One sample as a TimeSeries field, written by protobuf."""
    return rw._WireTimeSeries(samples=[rw._Sample(timestamp=timestamp, value=value)]).SerializeToString()


STAMP_BYTES = st.one_of(  # mostly a 6-byte varint, sometimes not one
    st.builds(lambda five, last: bytes(b | 0x80 for b in five) + bytes([last & 0x7F]), st.binary(min_size=5, max_size=5), st.integers(0, 255)),
    st.binary(min_size=6, max_size=6),
)
FAST_SHAPES = st.one_of(
    st.builds(lambda labels, stamp, value: protobuf_label_block(labels) + sample_field(stamp, value), st.sampled_from(POOL_LABELS), TIMESTAMPS, VALUES),
    # the fast path's shapes with arbitrary bytes where the value and the timestamp go
    st.builds(lambda labels, value, stamp: protobuf_label_block(labels) + b"\x12\x10\x09" + value + b"\x10" + stamp,
              st.sampled_from(POOL_LABELS), st.binary(min_size=8, max_size=8), STAMP_BYTES),
    st.builds(lambda labels, stamp: protobuf_label_block(labels) + b"\x12\x07\x10" + stamp, st.sampled_from(POOL_LABELS), STAMP_BYTES),
)
NEAR_MISSES = st.one_of(
    # a label block cut or extended, several samples, trailing bytes, random bytes
    st.builds(lambda labels, cut, tail: protobuf_label_block(labels)[:cut] + tail, st.sampled_from(POOL_LABELS), st.integers(0, 40), st.binary(max_size=24)),
    st.builds(lambda labels, stamps, tail: protobuf_label_block(labels) + b"".join(sample_field(t, 1.5) for t in stamps) + tail,
              st.sampled_from(POOL_LABELS), st.lists(TIMESTAMPS, max_size=3), st.binary(max_size=3)),
    st.binary(max_size=40),
)
BODIES = st.builds(lambda fast, misses, at: fast[:at] + misses + fast[at:], st.lists(FAST_SHAPES, min_size=1, max_size=4),
                   st.lists(NEAR_MISSES, max_size=1), st.integers(0, 4))


@settings(max_examples=1500, deadline=None)
@given(BODIES)
def test_the_fast_path_reads_every_series_exactly_as_protobuf_does(series_bytes):
    raw = rw._SplitWriteRequest(timeseries=series_bytes).SerializeToString()
    with_fast_path = outcome(warm_decoder().parse, raw)
    assert with_fast_path == outcome(rw.Decoder(BIG, cache_size=0).parse, raw)  # no cache: protobuf only
    reference = outcome(full_schema_decode, raw)
    if isinstance(reference, list) or isinstance(with_fast_path, list):
        assert with_fast_path == reference
    # else both refuse the body (with two faults in it, each may name a different one first)


def test_a_known_series_comes_back_with_its_cached_labels():
    labels = POOL_LABELS[1]
    decoder = warm_decoder()
    cached = decoder.parse(rw.Encoder(cache_size=0).write_request([Series(labels, ((1, 1.0),))]))[0].labels
    [series] = decoder.parse(rw._SplitWriteRequest(timeseries=[protobuf_label_block(labels) + sample_field(1_764_000_000_123, 0.25)]).SerializeToString())
    assert series == Series(labels, ((1_764_000_000_123, 0.25),))
    assert series.labels is cached


# --- a label set seen for the first time is read from known labels and known tails (what follows the first label)
# of label sets seen before; whatever the mix, exactly as protobuf reads it

PAIR_POOL = [
    ("__name__", "up"), ("__name__", "probe_success"), ("phase", "rtt"), ("target", "dc"), ("target", "Trạm y tế"),
    ("a", "1"), ("Z", "z"), ("bad-name", "x"), ("__name__", "9lives"), ("", "empty-name"), ("b", ""),
]
ANY_LABELS = st.lists(st.sampled_from(PAIR_POOL), max_size=4)  # unsorted, repeated names and all
SORTED_LABELS = ANY_LABELS.map(lambda labels: sorted(dict(labels).items()))
LABEL_SETS = st.lists(st.one_of(SORTED_LABELS, ANY_LABELS), min_size=1, max_size=6)
NOW_MS = 1_764_000_000_000  # a timestamp of the decoder's fast path (a 6-byte varint)


def request_of(label_sets: list[list[tuple[str, str]]], stamp: int, value: float) -> bytes:
    """Label sets written as given (unsorted, repeated or badly named ones too), each with one sample."""
    blocks = [protobuf_label_block(tuple(labels)) + sample_field(stamp, value) for labels in label_sets]
    return rw._SplitWriteRequest(timeseries=blocks).SerializeToString()


@settings(max_examples=1000, deadline=None)
@given(LABEL_SETS, st.data(), TIMESTAMPS, VALUES)
def test_label_sets_seen_first_are_read_exactly_as_protobuf_does(seen, data, stamp, value):
    # new label sets: a first label and the rest of a label set seen before, or anything
    heads_and_tails = st.builds(lambda head, index: [head, *seen[index % len(seen)][1:]], st.sampled_from(PAIR_POOL), st.integers(0, 5))
    new = data.draw(st.lists(st.one_of(heads_and_tails, ANY_LABELS), min_size=1, max_size=6))
    decoder = rw.Decoder(BIG)
    for raw in (request_of(seen, NOW_MS, value), request_of(new, stamp, value), request_of(seen + new, NOW_MS, value)):
        assert outcome(decoder.parse, raw) == outcome(rw.Decoder(BIG, cache_size=0).parse, raw)


@pytest.mark.parametrize(
    "seen, new, error",
    [
        ([("Z", "z"), ("__name__", "up"), ("a", "1")], [("phase", "rtt"), ("__name__", "up"), ("a", "1")], rw.UnsortedLabels),
        ([("Z", "z"), ("__name__", "up")], [("__name__", "probe_success"), ("__name__", "up")], rw.DuplicateLabel),
        ([("__name__", "up"), ("target", "dc")], [("phase", "rtt"), ("target", "dc")], rw.MissingMetricName),
    ],
    ids=["unsorted", "duplicate", "no-name"],
)
def test_a_known_first_label_and_known_tail_that_make_a_bad_label_set_are_refused(seen, new, error):
    decoder = rw.Decoder(BIG)
    decoder.parse(request_of([seen, [("__name__", "probe_success"), ("phase", "rtt")]], NOW_MS, 1.0))
    with pytest.raises(error):
        decoder.parse(request_of([new], NOW_MS, 1.0))


def test_a_known_label_whose_field_runs_past_its_block_is_read_as_protobuf_reads_it():
    decoder = rw.Decoder(BIG)
    decoder.parse(request_of([[("__name__", "up")]], NOW_MS, 1.0))  # known: the label, and the empty tail
    label = rw.Label(name="__name__", value="up").SerializeToString()
    wire = b"\x0a" + bytes([len(label) + 5]) + label + sample_field(NOW_MS, 1.0)  # the length takes 5 sample bytes
    raw = rw._SplitWriteRequest(timeseries=[wire]).SerializeToString()
    assert outcome(decoder.parse, raw) == outcome(rw.Decoder(BIG, cache_size=0).parse, raw)


def test_the_tails_of_first_sight_go_once_a_push_brings_no_new_label_set():
    decoder = rw.Decoder(BIG)
    label_sets = [[("__name__", "a"), ("target", "dc")], [("__name__", "b"), ("target", "dc")]]
    decoder.parse(request_of(label_sets, NOW_MS, 1.0))
    assert decoder._tails  # kept while the agent's series are new
    decoder.parse(request_of(label_sets, NOW_MS + 1, 2.0))
    assert not decoder._tails


def test_a_label_set_made_of_known_parts_is_read_from_them_and_shares_their_pairs():
    decoder = rw.Decoder(BIG)
    decoder.parse(request_of([[("__name__", "a"), ("target", "dc")], [("__name__", "b"), ("target", "x")]], NOW_MS, 1.0))
    [series] = decoder.parse(request_of([[("__name__", "b"), ("target", "dc")]], NOW_MS, 2.0))
    assert series == Series((("__name__", "b"), ("target", "dc")), ((NOW_MS, 2.0),))
    [first] = decoder.parse(request_of([[("__name__", "a"), ("target", "dc")]], NOW_MS, 1.0))
    assert series.labels[1] is first.labels[1]


def protobuf_write_request(series: list[Series]) -> bytes:
    """The reference: prompb's whole schema, every Label, TimeSeries and Sample a protobuf object."""
    request = rw.WriteRequest()
    for labels, samples in series:
        added = request.timeseries.add(labels=[rw.Label(name=n, value=v) for n, v in sorted(labels)])
        for timestamp, value in samples:
            added.samples.add(timestamp=timestamp, value=value)
    return request.SerializeToString()


@settings(max_examples=500, deadline=None)
@given(st.lists(st.builds(Series, st.sampled_from(POOL_LABELS), st.lists(st.tuples(TIMESTAMPS, VALUES), max_size=3).map(tuple)), max_size=4))
def test_the_encoder_writes_exactly_the_bytes_protobuf_writes(series):
    encoder = rw.Encoder()
    assert encoder.write_request(series) == protobuf_write_request(series)
    assert encoder.write_request(series) == protobuf_write_request(series)  # label blocks from the cache
