"""remote_write bodies (foundation/remote_write.py): whatever an agent pushes, decoding raises only
RemoteWriteError, and the decoder's fast path (a cached label block and one Sample of a fixed shape, read in
place) reads exactly what protobuf reads with prompb's whole schema. tests/test_remote_write.py checks the same
with hypothesis's shapes; here the fuzzer's coverage finds its own."""

from __future__ import annotations

import struct

import cramjam

from foundation import remote_write as rw
from foundation.remote_write import Series

BIG = 1 << 26
POOL_LABELS = [
    (("__name__", "probe_success"), ("target", "dc")),
    (("__name__", "probe_duration_seconds"), ("phase", "rtt"), ("target", "Trạm y tế")),
    (("__name__", "up"),),
]


def full_schema_decode(raw: bytes) -> list[Series]:
    """The reference: prompb's whole schema through protobuf, labels checked the same way."""
    from google.protobuf.message import DecodeError

    try:
        request = rw.WriteRequest.FromString(raw)
    except DecodeError as exc:
        raise rw.BadProtobuf(str(exc)) from None
    out = []
    for timeseries in request.timeseries:
        labels = tuple((label.name, label.value) for label in timeseries.labels)
        rw.check_labels(labels)
        out.append(Series(labels, tuple((sample.timestamp, sample.value) for sample in timeseries.samples)))
    return out


def outcome(decode, raw: bytes):
    """What a decoder makes of raw: its series (values by bit pattern, so NaNs compare), or its error's class."""
    try:
        series = decode(raw)
    except rw.RemoteWriteError as exc:
        return type(exc)
    return [(labels, tuple((ts, struct.pack("<d", value)) for ts, value in samples)) for labels, samples in series]


def warm_decoder() -> rw.Decoder:
    decoder = rw.Decoder(BIG)
    decoder.parse(rw.Encoder(cache_size=0).write_request([Series(labels, ((1, 1.0),)) for labels in POOL_LABELS]))
    return decoder


def check(data: bytes) -> None:
    if data[:1] == b"\x00":  # a snappy body as pushed: garbage or not, only our errors
        try:
            rw.decode(data[1:], 1 << 16)
        except rw.RemoteWriteError:
            pass
        return
    raw = data[1:]
    with_fast_path = outcome(warm_decoder().parse, raw)
    assert with_fast_path == outcome(rw.Decoder(BIG, cache_size=0).parse, raw), "fast path and protobuf-only path differ"
    reference = outcome(full_schema_decode, raw)
    if isinstance(reference, list) or isinstance(with_fast_path, list):
        assert with_fast_path == reference, f"decoder read {with_fast_path!r}, prompb's schema {reference!r}"


def seeds() -> list[bytes]:
    series = [Series(labels, ((1_764_000_000_000 + n, float(n)),)) for n, labels in enumerate(POOL_LABELS)]
    raw = rw.Encoder(cache_size=0).write_request(series + [Series(POOL_LABELS[0], ((5, 0.0), (6, rw.STALE_NAN)))])
    return [b"\x01" + raw, b"\x00" + bytes(cramjam.snappy.compress_raw(raw)), b"\x01" + raw[: len(raw) // 2]]
