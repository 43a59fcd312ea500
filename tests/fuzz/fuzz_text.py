"""Prometheus text from pull agents (collector/scrape.py: prometheus_client's parser, then our checks): whatever
an agent serves, parsing raises only ValueError (the one error the scrape loop turns into `up` 0), and every
series kept has a valid metric name and valid, sorted, unique label names (NaN and ±Inf are kept, as Prometheus
keeps them)."""

from __future__ import annotations

from collector.scrape import parse_exposition
from foundation.remote_write import METRIC_NAME, check_labels


def check(data: bytes) -> None:
    try:
        series = parse_exposition(data.decode("utf-8"), 1_764_000_000_000)  # the scrape decodes as strictly
    except ValueError:
        return
    for one in series:
        check_labels(one.labels)  # RemoteWriteError (a ValueError) would escape as a finding: it is not caught here
        assert METRIC_NAME.fullmatch(dict(one.labels)["__name__"])
        [(stamp, _)] = one.samples
        assert stamp == 1_764_000_000_000


def seeds() -> list[bytes]:
    return [
        b'# HELP probe_success Whether the probe succeeded\n# TYPE probe_success gauge\n'
        b'probe_success{target="dc",module="icmp"} 1\nprobe_duration_seconds{phase="rtt",target="Tr\xe1\xba\xa1m"} 0.0012\n'
        b'# TYPE h histogram\nh_bucket{le="0.1"} 3\nh_bucket{le="+Inf"} 5\nh_sum 0.7\nh_count 5\n'
        b'# TYPE c counter\nc_total 1e3 1764000000000\nweird{a="\\"q\\\\\\n"} NaN\nx +Inf\n',
        b"# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\n# EOF\n",
    ]
