"""Results become Prometheus series: counters and histograms accumulate across runs; labels are merged."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from agents.catalog import parse_config
from agents.exposition import FamiliesCollector, ResultCollector, result_families
from agents.results import Metric, ProbeResult
from agents.store import ResultStore

SENT = Metric("probe_test_packets_sent_total", "Packets sent", "counter")
RTT = Metric("probe_test_rtt_seconds", "RTT", "histogram", buckets=(0.01, 0.1))
LOSS = Metric("probe_test_loss_ratio", "Loss")

CONFIG = parse_config(
    """\
agent: {id: a, agency: b, labels: {district: cai-be}}
modules: {tcp: {prober: tcp}}
targets:
  - {name: t1, address: "127.0.0.1:1", module: tcp, labels: {site: "Ủy ban"}}
""",
    "x.yml",
)


def exposed(store: ResultStore) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResultCollector(store))
    return registry


def run(sent: int, rtts: list[float], loss: float) -> ProbeResult:
    return ProbeResult(True, samples=[SENT(sent), RTT.observe(rtts), LOSS(loss)])


def test_counters_and_histograms_accumulate_while_gauges_take_the_latest():
    store = ResultStore()
    target = CONFIG.targets[0]
    store.record(target, run(5, [0.005, 0.05], 0.2))
    store.record(target, run(5, [0.5], 0.0))
    registry = exposed(store)
    labels = {"target": "t1", "module": "tcp", "district": "cai-be", "site": "Ủy ban"}
    assert registry.get_sample_value("probe_test_packets_sent_total", labels) == 10
    assert registry.get_sample_value("probe_test_loss_ratio", labels) == 0.0
    assert registry.get_sample_value("probe_test_rtt_seconds_bucket", {**labels, "le": "0.01"}) == 1
    assert registry.get_sample_value("probe_test_rtt_seconds_bucket", {**labels, "le": "0.1"}) == 2
    assert registry.get_sample_value("probe_test_rtt_seconds_bucket", {**labels, "le": "+Inf"}) == 3
    assert registry.get_sample_value("probe_test_rtt_seconds_count", labels) == 3
    assert abs(registry.get_sample_value("probe_test_rtt_seconds_sum", labels) - 0.555) < 1e-9


def test_text_exposition_is_utf8_with_one_type_line_per_family():
    store = ResultStore()
    store.record(CONFIG.targets[0], run(5, [0.005], 0.0))
    text = generate_latest(exposed(store)).decode("utf-8")
    assert 'site="Ủy ban"' in text
    assert len([l for l in text.splitlines() if l.startswith("# TYPE probe_test_packets_sent")]) == 1
    assert text.count("# TYPE probe_test_rtt_seconds histogram") == 1


def test_single_result_has_no_target_labels():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(result_families(run(5, [0.005], 0.4))))
    assert registry.get_sample_value("probe_test_loss_ratio", {}) == 0.4
    assert registry.get_sample_value("probe_test_packets_sent_total", {}) == 5
    assert registry.get_sample_value("probe_test_rtt_seconds_count", {}) == 1


def test_text_rendering_equals_the_collector_families_push_uses():
    from prometheus_client.parser import text_string_to_metric_families

    from agents.exposition import render_text

    store = ResultStore()
    target = CONFIG.targets[0]
    store.record(target, run(5, [0.005, 0.05], 0.2))
    store.record(target, ProbeResult(True, samples=[SENT(5), RTT.observe([0.5]), LOSS(float("nan"))]))
    text = render_text(store.states())
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    expected = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in ResultCollector(store).collect()
        for s in family.samples
    }
    assert parsed.keys() == expected.keys()
    for key, value in expected.items():
        assert parsed[key] == value or (value != value and parsed[key] != parsed[key]), key
    assert 'site="Ủy ban"' in text


def test_text_rendering_escapes_label_values():
    from agents.exposition import render_text

    config = parse_config(
        'agent: {id: a, agency: b}\nmodules: {tcp: {prober: tcp}}\n'
        'targets:\n  - {name: t, address: "127.0.0.1:1", module: tcp, labels: {note: "a \\"quoted\\" \\\\ back\\nline"}}\n',
        "x.yml",
    )
    store = ResultStore()
    store.record(config.targets[0], run(1, [], 0.0))
    text = render_text(store.states())
    assert 'note="a \\"quoted\\" \\\\ back\\nline"' in text


def test_cumulative_counters_are_exposed_as_read_under_their_own_name():
    from agents.exposition import render_text

    octets = Metric("ifHCInOctets", "octets in", "counter", cumulative=True)
    store = ResultStore()
    store.record(CONFIG.targets[0], ProbeResult(True, samples=[octets(1000, ifIndex="1")]))
    store.record(CONFIG.targets[0], ProbeResult(True, samples=[octets(1500, ifIndex="1")]))
    text = render_text(store.states())
    assert "# TYPE ifHCInOctets gauge" in text  # see _family_header: parsers rename untotalled counters
    assert [l for l in text.splitlines() if l.startswith("ifHCInOctets{")][0].endswith(" 1500.0")


def _ordered_series(text: str) -> list[tuple[str, tuple, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def test_families_seen_in_different_orders_are_written_once_each_in_first_seen_order():
    from agents.exposition import render_text

    config = parse_config(
        "agent: {id: a, agency: b}\nmodules: {tcp: {prober: tcp}}\ntargets:\n"
        '  - {name: t1, address: "127.0.0.1:1", module: tcp}\n  - {name: t2, address: "127.0.0.1:2", module: tcp}\n',
        "x.yml",
    )
    store = ResultStore()
    store.record(config.targets[0], ProbeResult(True, samples=[LOSS(0.1), RTT.observe([0.05], phase="a"), SENT(1)]))
    store.record(config.targets[1], ProbeResult(True, samples=[SENT(2), RTT.observe([0.5], phase="b"), LOSS(0.2, le="x")]))
    text = render_text(store.states())
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert types == ["probe_test_loss_ratio", "probe_test_packets_sent_total", "probe_test_rtt_seconds"]
    expected = [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in ResultCollector(store).collect()
        for s in family.samples
    ]
    assert _ordered_series(text) == expected


def test_a_result_recorded_while_a_scrape_streams_leaves_each_histogram_whole():
    from agents.exposition import render_chunks

    config = parse_config(
        "agent: {id: a, agency: b}\nmodules: {tcp: {prober: tcp}}\ntargets:\n"
        + "".join(f'  - {{name: t{n}, address: "127.0.0.1:{n + 1}", module: tcp}}\n' for n in range(30)),
        "x.yml",
    )
    store = ResultStore()
    for target in config.targets:
        store.record(target, run(1, [0.05], 0.0))
    chunks = render_chunks(store.states(), lines_per_chunk=10)
    text = next(chunks)
    for target in config.targets:  # a counter and histogram series new to the store, mid-scrape
        store.record(target, ProbeResult(True, samples=[SENT(1, path="b"), RTT.observe([0.005, 0.5], path="b")]))
    text += "".join(chunks)
    series = {(name, labels): value for name, labels, value in _ordered_series(text)}
    for target in config.targets:
        labels = (("module", "tcp"), ("target", target.name))
        count = series[("probe_test_rtt_seconds_count", labels)]
        assert series[("probe_test_rtt_seconds_bucket", tuple(sorted(labels + (("le", "+Inf"),))))] == count
