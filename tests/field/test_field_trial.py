"""The province field trial (issue 9, scenarios 1-5): real agents in agency namespaces, the collector, Prometheus
and VictoriaMetrics in a data-center namespace, link faults injected on the way. Every scenario asserts on what
Prometheus and VictoriaMetrics hold afterwards. The scenarios share one testbed and run in file order."""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.field.report import TrialReport
from tests.field.testbed import (
    AGENCY_LAN_IP,
    AGENT_PORT,
    COLLECTOR_PORT,
    DISK_FULL_AGENCY,
    IMPAIRMENT_CYCLE,
    QUEUE_TMPFS_SIZE,
    Agency,
    Province,
    agents_up_in_collector,
    http_text,
    wait_until,
)
from tests.support.netns import ns_exec
from tests.test_agent_run import metric_value

pytestmark = [pytest.mark.netns, pytest.mark.field, pytest.mark.timeout(900)]

MIN_ICMP_PACKETS = 1000  # binomial sd at 10% loss is 0.95 points: +-5 points is a > 5 sigma bound
LOSS_TOLERANCE = 0.05
RTT_TOLERANCE_S = 0.002
GAP_FACTOR = 1.5  # consecutive runs of one target further apart than this many intervals: a run is missing
FREE_WHEN_FULL = 32 << 10  # left on the queue's tmpfs: fills in ~20 s at this agent's rate
DELIVERY_TIMEOUT = 90.0  # a drained queue on a loaded 2-core machine (measured 3-15 s)

S1, S2, S3, S4, S5 = (
    "1 healthy baseline", "2 agency link cut", "3 collector SIGKILL", "4 mail server stopped", "5 agent disk full",
)


def now_ms() -> int:
    return int(time.time() * 1000)


def selector(name: str, agency: Agency, target: str | None = None) -> str:
    target_match = f',target="{target}"' if target else ""
    return f'{name}{{agent="{agency.agent}"{target_match}}}'


def samples_of(bed: Province, name: str, agency: Agency, target: str | None, start_ms: int, end_ms: int) -> list[tuple[int, float]]:
    """The agent's samples of one series in VictoriaMetrics between start and end (ms, inclusive)."""
    found = bed.vm_samples(selector(name, agency, target))
    assert len(found) <= 1, f"{name} of {agency.agent}/{target}: {len(found)} series"
    samples = next(iter(found.values()), [])
    return [(ts, value) for ts, value in samples if start_ms <= ts <= end_ms]


def max_gap_ms(timestamps: list[int], start_ms: int, end_ms: int) -> int:
    """Longest stretch of [start, end] without a sample."""
    points = [start_ms, *sorted(timestamps), end_ms]
    return max(b - a for a, b in zip(points, points[1:]))


def wait_for_delivery(bed: Province, agencies: list[Agency], since_ms: int, target: str = "dc-core") -> None:
    """Until every agency's series reached VictoriaMetrics with a probe run that started after since_ms."""

    def delivered() -> bool:
        return all(samples_of(bed, "probe_success", a, target, since_ms, now_ms() + 60_000) for a in agencies)

    wait_until(delivered, DELIVERY_TIMEOUT, f"runs after {since_ms} of {len(agencies)} agencies in VictoriaMetrics", step=1)


def interval_ms(bed: Province) -> int:
    return int(bed.params.probe_interval * 1000)


# --- the testbed's shape ------------------------------------------------------------------------------------------


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def test_push_agencies_sit_behind_nat_and_only_pull_agencies_can_be_reached_from_the_data_center(bed: Province):
    assert all(reachable(a.ip, AGENT_PORT) for a in bed.pull_agencies())
    assert not any(reachable(a.ip, AGENT_PORT) for a in bed.push_agencies())
    # the agents' LAN address is routed nowhere in the WAN: their pushes arrive only through the masquerade
    route = ns_exec(bed.router, ["ip", "route", "get", AGENCY_LAN_IP])
    assert route.returncode != 0 and "unreachable" in route.stderr
    pushers = {a.agent for a in bed.push_agencies()}
    wait_until(lambda: _pushing_from_uplinks(bed) == pushers, 15, "a push connection from every push agency's uplink address")


def _pushing_from_uplinks(bed: Province) -> set[str]:
    peers = _collector_peers(bed)
    return {a.agent for a in bed.push_agencies() if f" {a.ip}:" in peers}


def _collector_peers(bed: Province) -> str:
    """The collector's established connections (`ss`), peers as ADDRESS:PORT."""
    return ns_exec(bed.dc, ["ss", "-Htn", "state", "established", f"( sport = :{COLLECTOR_PORT} )"], check=True).stdout


# --- scenario 1 ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IcmpFigures:
    agency: str
    loss_injected: float
    loss_measured: float
    packets: int
    delay_ms: float
    rtt_median_ms: float
    rtt_mean_ms: float


def icmp_figures(bed: Province, agency: Agency, start_ms: int, end_ms: int) -> IcmpFigures:
    sent = samples_of(bed, "probe_icmp_packets_sent_total", agency, "dc-core", start_ms, end_ms)
    received = samples_of(bed, "probe_icmp_packets_received_total", agency, "dc-core", start_ms, end_ms)
    rtts = [value * 1000 for _, value in samples_of(bed, "probe_icmp_rtt_avg_seconds", agency, "dc-core", start_ms, end_ms)]
    packets = int(sent[-1][1] - sent[0][1]) if sent else 0
    replies = int(received[-1][1] - received[0][1]) if received else 0
    impairment = bed.impairments[agency.id]
    return IcmpFigures(
        agency.id, impairment.loss_percent / 100, 1 - replies / packets if packets else math.nan, packets,
        impairment.delay_ms, statistics.median(rtts) if rtts else math.nan, statistics.fmean(rtts) if rtts else math.nan,
    )


def run_baseline_phase(bed: Province, shift: int) -> list[IcmpFigures]:
    for index, agency in enumerate(bed.agencies):
        loss, delay = IMPAIRMENT_CYCLE[(index + shift) % len(IMPAIRMENT_CYCLE)]
        bed.impair(agency, loss, delay)
    # runs that straddle the change are left out: the window starts one full run later
    start_ms = now_ms() + interval_ms(bed)
    runs = math.ceil(MIN_ICMP_PACKETS / bed.params.icmp_count) + 1
    time.sleep(bed.params.probe_interval * (runs + 2.5))
    end_ms = now_ms()
    wait_for_delivery(bed, bed.agencies, end_ms)
    return [icmp_figures(bed, agency, start_ms, end_ms) for agency in bed.agencies]


def test_1_healthy_baseline_loss_and_rtt_per_agency_match_the_injected_values(bed: Province, report: TrialReport):
    figures = []
    for phase, shift in (("a", 0), ("b", 1)):  # the impairments change during the run
        figures += [(phase, f) for f in run_baseline_phase(bed, shift)]
    bed.clear_impairments()
    report.table(
        S1,
        ("phase", "agency", "loss injected", "loss measured", "echo requests", "delay injected", "RTT median", "RTT mean"),
        [(phase, f.agency, f"{f.loss_injected:.0%}", f"{f.loss_measured:.2%}", f.packets, f"{f.delay_ms:g} ms",
          f"{f.rtt_median_ms:.3f} ms", f"{f.rtt_mean_ms:.3f} ms") for phase, f in figures],
    )
    up = bed.prometheus_query("netmon_agent_up")
    assert sorted(series["metric"]["agent"] for series in up if series["value"][1] == "1") == sorted(a.agent for a in bed.agencies)
    for phase, f in figures:
        assert f.packets >= MIN_ICMP_PACKETS, f"phase {phase} {f.agency}: only {f.packets} echo requests"
        assert abs(f.loss_measured - f.loss_injected) <= LOSS_TOLERANCE, f"phase {phase}: {f}"
        assert abs(f.rtt_median_ms - f.delay_ms) <= RTT_TOLERANCE_S * 1000, f"phase {phase}: {f}"
    report.verdict(S1, "passed")


# --- scenario 2 ---------------------------------------------------------------------------------------------------


def first_down_after(bed: Province, agency: Agency, cut_at: float, timeout: float) -> float:
    """Seconds from the cut until the collector's /metrics says the agent is down (looked at every 0.2 s)."""
    wait_until(lambda: agents_up_in_collector(bed.collector_metrics()).get(agency.agent) == 0.0, timeout,
               f"netmon_agent_up 0 for {agency.agent}", step=0.2)
    return time.time() - cut_at


def firing_agencies(bed: Province, alertname: str, window_s: float, at: float | None = None) -> set[str]:
    query = f'max_over_time(ALERTS{{alertname="{alertname}",alertstate="firing"}}[{max(int(window_s), 1)}s])'
    return {series["metric"]["agency"] for series in bed.prometheus_query(query, at)}


def run_timestamps(bed: Province, agency: Agency, target: str, start_ms: int, end_ms: int) -> list[int]:
    """Start times of the target's probe runs that VictoriaMetrics holds (its probe_success samples)."""
    return [ts for ts, _ in samples_of(bed, "probe_success", agency, target, start_ms, end_ms)]


def min_up_over(bed: Province, agent_matcher: str, seconds: float, at: float) -> dict[str, float]:
    """Lowest netmon_agent_up per agent over the seconds before `at`, as Prometheus holds it."""
    found = bed.prometheus_query(f"min_over_time(netmon_agent_up{{agent{agent_matcher}}}[{int(seconds)}s])", at)
    return {series["metric"]["agent"]: float(series["value"][1]) for series in found}


def test_2_a_cut_agency_goes_down_within_the_ttl_and_its_buffered_samples_arrive_with_original_timestamps(
    bed: Province, report: TrialReport
):
    cut, step = bed.push_agencies()[1], interval_ms(bed)
    others = [agency for agency in bed.agencies if agency != cut]
    window_start_ms, cut_at = now_ms() - 5 * step, time.time()
    with bed.link_cut(cut):
        seconds_to_down = first_down_after(bed, cut, cut_at, bed.params.ttl_seconds + 10)
        time.sleep(max(bed.params.outage_seconds - (time.time() - cut_at), 0))
        restored_at = time.time()
        offline_alerts = firing_agencies(bed, "NetmonAgencyOffline", restored_at - cut_at)
    outage_s, outage_ms = restored_at - cut_at, (int(cut_at * 1000), int(restored_at * 1000))
    wait_for_delivery(bed, bed.agencies, outage_ms[1] + step)
    window = (window_start_ms, outage_ms[1] + step)
    cut_runs = run_timestamps(bed, cut, "dc-core", *window)
    cut_gap = max_gap_ms(cut_runs, *window)
    runs_in_outage = len([ts for ts in cut_runs if outage_ms[0] <= ts <= outage_ms[1]])
    others_gap = {a.id: max_gap_ms(run_timestamps(bed, a, "dc-core", *window), *window) for a in others}
    oldest_unsent = max(v for _, v in samples_of(bed, "netmon_agent_push_oldest_unsent_age_seconds", cut, None, *outage_ms))
    others_min_up = min_up_over(bed, f'!="{cut.agent}"', outage_s, restored_at)
    report.add(S2, f"- cut: {cut.id} ({cut.name}), {outage_s:.1f} s; netmon_agent_up 0 at the collector after "
                   f"{seconds_to_down:.1f} s (TTL {bed.params.ttl_seconds:g} s); NetmonAgencyOffline fired for {sorted(offline_alerts)}")
    report.add(S2, f"- its queue held samples up to {oldest_unsent:.1f} s old (netmon_agent_push_oldest_unsent_age_seconds, "
                   f"pushed after the link returned); probe runs of the outage in VictoriaMetrics: {runs_in_outage} "
                   f"(every {step / 1000:g} s), longest gap {cut_gap / 1000:.1f} s")
    report.add(S2, f"- longest gap of the other {len(others)} agencies: {max(others_gap.values()) / 1000:.1f} s; "
                   f"their min netmon_agent_up over the outage: {min(others_min_up.values()):g}")
    assert seconds_to_down <= bed.params.ttl_seconds + 2 * bed.params.probe_interval
    assert min_up_over(bed, f'="{cut.agent}"', outage_s, restored_at) == {cut.agent: 0.0}
    assert offline_alerts == {cut.id}
    assert cut_gap <= GAP_FACTOR * step
    assert runs_in_outage >= bed.params.outage_seconds / bed.params.probe_interval - 2
    assert oldest_unsent >= bed.params.outage_seconds / 2, "the outage's samples were not held back"
    assert all(gap <= GAP_FACTOR * step for gap in others_gap.values()), others_gap
    assert others_min_up == {a.agent: 1.0 for a in others}
    report.verdict(S2, "passed")


# --- scenario 3 ---------------------------------------------------------------------------------------------------


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of every series of name whose labels include these (exposition text)."""
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def probe_runs(metrics_text: str, target: str) -> int:
    return int(metric_sum(metrics_text, "netmon_agent_probe_runs_total", target=target))


def test_3_collector_sigkill_under_load_loses_no_pushed_sample(bed: Province, report: TrialReport):
    step = interval_ms(bed)
    killed_at = time.time()
    bed.kill_collector()
    time.sleep(bed.params.outage_seconds)
    bed.start_collector()
    back_at = time.time()
    pushers = bed.push_agencies()
    wait_for_delivery(bed, pushers, int(back_at * 1000) + step)
    rows, lost_total, produced_total = [], 0, 0
    counters = [0.0, 0.0, 0.0, 0.0]  # queued, sent, pending, dropped: all push agents together
    for agency in pushers:
        text = bed.agent_metrics(agency)
        for target in ("dc-core", "portal"):
            produced = probe_runs(text, target)
            stored = wait_until(lambda agency=agency, target=target, produced=produced: _stored_at_least(bed, agency, target, produced), DELIVERY_TIMEOUT,
                                f"{produced} runs of {agency.agent}/{target} in VictoriaMetrics", step=1)
            timestamps = run_timestamps(bed, agency, target, 0, now_ms())
            gap = max_gap_ms(timestamps, timestamps[0], timestamps[-1])
            lost_total += max(produced - stored, 0)
            produced_total += produced
            rows.append((agency.id, target, produced, stored, f"{gap / 1000:.1f} s",
                         len([ts for ts in timestamps if killed_at * 1000 <= ts <= back_at * 1000])))
            assert gap <= GAP_FACTOR * step, f"{agency.agent}/{target}: a run is missing ({gap} ms gap)"
        queued, sent = (metric_sum(text, f"netmon_agent_push_samples_{kind}_total") for kind in ("queued", "sent"))
        pending = metric_sum(text, "netmon_agent_push_queue_pending_samples")
        dropped = metric_sum(text, "netmon_agent_push_samples_dropped_total")
        counters = [sum(pair) for pair in zip(counters, (queued, sent, pending, dropped))]
        assert dropped == 0, f"{agency.agent} dropped {dropped} samples"
    report.add(S3, f"- collector SIGKILLed for {back_at - killed_at:.1f} s while {len(bed.agencies)} agents ran; "
                   f"probe runs produced by push agents {produced_total}, in VictoriaMetrics {produced_total - lost_total}, lost {lost_total}")
    report.add(S3, "- push queues of all agents after the restart: samples queued {:.0f}, acknowledged {:.0f}, pending {:.0f}, "
                   "dropped {:.0f}".format(*counters))
    report.table(S3, ("agency", "target", "runs produced", "in VictoriaMetrics", "longest gap", "runs during the outage"), rows)
    report.add(S3, "- pull agents are not scraped while the collector is down: their gap is the outage (no buffer by design)")
    assert lost_total == 0
    report.verdict(S3, "passed")


def _stored_at_least(bed: Province, agency: Agency, target: str, produced: int) -> int:
    stored = len(samples_of(bed, "probe_success", agency, target, 0, now_ms() + 60_000))
    return stored if stored >= produced else 0


# --- scenario 4 ---------------------------------------------------------------------------------------------------


def other_targets(bed: Province, agency: Agency) -> tuple[str, ...]:
    """The agency's targets that do not need the mail service (the SSH check logs in to the mail server's host)."""
    return ("dc-core", "portal", "mail-disk") if agency == bed.agencies[0] else ("dc-core", "portal")


def runs_started_late(bed: Province, seconds: float) -> dict[str, float]:
    """Per agent, probe runs of the last seconds that started more than 1 s after their slot (its lag histogram)."""
    window = f"{int(seconds)}s"
    found = bed.prometheus_query(
        f"increase(netmon_agent_scheduling_lag_seconds_count[{window}])"
        f' - ignoring(le) increase(netmon_agent_scheduling_lag_seconds_bucket{{le="1.0"}}[{window}])'
    )
    return {series["metric"]["agent"]: float(series["value"][1]) for series in found}


def test_4_mail_server_stopped_fires_roundtrip_alerts_for_every_agency_and_other_probes_keep_time(
    bed: Province, report: TrialReport
):
    step = interval_ms(bed)
    stopped_at = time.time()
    bed.stop_mail_server()
    everyone = {agency.id for agency in bed.agencies}
    wait_until(lambda: firing_agencies(bed, "NetmonMailRoundtripFailing", 1) == everyone, 60 + bed.params.outage_seconds,
               "NetmonMailRoundtripFailing firing for every agency", step=1)
    fired_after = time.time() - stopped_at
    time.sleep(max(bed.params.outage_seconds - fired_after, 0))
    end_at = time.time()
    reasons = bed.prometheus_query('probe_failure_info{target="mail-roundtrip"} == 1')
    refused = {s["metric"]["agency"] for s in reasons if s["metric"]["reason"] == "connect_refused"}
    late = runs_started_late(bed, end_at - stopped_at)
    overruns = bed.prometheus_query(
        f'increase(netmon_agent_probe_overruns_total{{target!="mail-roundtrip"}}[{int(end_at - stopped_at)}s]) > 0'
    )
    wait_for_delivery(bed, bed.agencies, int(end_at * 1000))
    window = (int(stopped_at * 1000), int(end_at * 1000))
    gaps, failures = {}, {}
    for agency in bed.agencies:
        for target in other_targets(bed, agency):
            samples = samples_of(bed, "probe_success", agency, target, *window)
            gaps[f"{agency.id}/{target}"] = max_gap_ms([ts for ts, _ in samples], *window)
            failures[f"{agency.id}/{target}"] = sum(1 for _, value in samples if value != 1)
    report.add(S4, f"- NetmonMailRoundtripFailing firing for all {len(everyone)} agencies {fired_after:.1f} s after the stop "
                   f"(`for:` {bed.params.alert_for}); probe_failure_info reason connect_refused for {len(refused)}")
    report.add(S4, f"- other probes over {end_at - stopped_at:.0f} s: longest gap {max(gaps.values()) / 1000:.1f} s, "
                   f"failed runs {sum(failures.values())}, runs started > 1 s late {sum(late.values()):g}, "
                   f"overruns {len(overruns)}")
    assert refused == everyone, reasons
    assert all(gap <= GAP_FACTOR * step for gap in gaps.values()), gaps
    assert sum(failures.values()) == 0, failures
    assert late == {agency.agent: 0.0 for agency in bed.agencies}
    assert overruns == []
    report.verdict(S4, "passed")


# --- scenario 5 ---------------------------------------------------------------------------------------------------


def dropped_disk_full(bed: Province, agency: Agency) -> float:
    return metric_value(bed.agent_metrics(agency), "netmon_agent_push_samples_dropped_total", reason="disk_full") or 0


def fill_leaving(directory: Path, free_bytes: int) -> Path:
    """A file taking all of the file system's free space but free_bytes."""
    stats = os.statvfs(directory)
    filler = directory / "filler"
    with open(filler, "wb") as out:
        out.write(b"\0" * max(stats.f_bavail * stats.f_frsize - free_bytes, 0))
    return filler


def test_5_a_full_queue_disk_drops_the_oldest_samples_with_a_counter_and_pushing_recovers(bed: Province, report: TrialReport):
    agency = bed.agencies[DISK_FULL_AGENCY]
    step = interval_ms(bed)
    with bed.push_blocked(agency):
        blocked_at = time.time()
        filler = fill_leaving(agency.queue, FREE_WHEN_FULL)
        runs_before = probe_runs(bed.agent_metrics(agency), "dc-core")
        wait_until(lambda: dropped_disk_full(bed, agency) > 0, 120, f"{agency.agent} dropping for a full disk", step=1)
        full_at = time.time()
        time.sleep(3 * bed.params.probe_interval)  # it goes on probing with the disk full
        text = bed.agent_metrics(agency)
        runs_while_full = probe_runs(text, "dc-core") - runs_before
        dropped = metric_value(text, "netmon_agent_push_samples_dropped_total", reason="disk_full")
        filler.unlink()
        recovered_at = time.time()
    wait_for_delivery(bed, [agency], int(recovered_at * 1000) + step)
    samples = samples_of(bed, "probe_success", agency, "dc-core", int(blocked_at * 1000), now_ms())
    timestamps = [ts for ts, _ in samples]
    kept_before_recovery = [ts for ts in timestamps if ts <= recovered_at * 1000]
    in_prometheus = bed.prometheus_query(f'netmon_agent_push_samples_dropped_total{{agent="{agency.agent}",reason="disk_full"}}')
    report.add(S5, f"- {agency.id}: queue on a {QUEUE_TMPFS_SIZE} tmpfs filled to {FREE_WHEN_FULL >> 10} KiB free with pushes blocked; "
                   f"first drop after {full_at - blocked_at:.1f} s; {dropped:g} samples dropped (reason disk_full)")
    report.add(S5, f"- probe runs of dc-core while full: {runs_while_full} in {time.time() - blocked_at:.0f} s; "
                   f"after space returned VictoriaMetrics holds {len(kept_before_recovery)} runs from the full period "
                   f"(the newest kept, the oldest dropped) and new runs again")
    assert dropped and dropped > 0
    assert runs_while_full >= (recovered_at - blocked_at) / bed.params.probe_interval - 2
    assert in_prometheus and float(in_prometheus[0]["value"][1]) >= dropped
    newest_before_recovery = max(kept_before_recovery)
    assert newest_before_recovery >= recovered_at * 1000 - 3 * step, "the newest samples of the full period were not kept"
    assert max_gap_ms(timestamps, int(blocked_at * 1000), int(recovered_at * 1000)) > 2 * step, "nothing old was dropped"
    assert max(timestamps) > recovered_at * 1000
    report.verdict(S5, "passed")


# --- secrets ------------------------------------------------------------------------------------------------------


def stored_label_values(url: str) -> str:
    """Every label value a Prometheus-API TSDB holds, joined (label names first)."""
    names = json.loads(http_text(f"{url}/api/v1/labels"))["data"]
    values = [json.loads(http_text(f"{url}/api/v1/label/{urllib.parse.quote(name)}/values"))["data"] for name in names]
    return "\n".join(names + [value for group in values for value in group])


def test_push_tokens_appear_in_no_log_metric_or_stored_label(bed: Province):
    tokens = [path.read_text().strip() for path in (bed.workdir / "tokens").iterdir()]
    assert len(tokens) == len(bed.push_agencies())
    logs = [bed.workdir / "collector.log", *(bed.workdir / "agents").glob("*/agent.log")]
    places = {str(path): path.read_text(errors="replace") for path in logs}
    places["collector /metrics"] = bed.collector_metrics()
    places["collector status page"] = http_text(f"{bed.collector_url}/")
    places["Prometheus labels"] = stored_label_values(bed.prometheus.url)
    places["VictoriaMetrics labels"] = stored_label_values(bed.vm.url)
    leaks = [place for place, text in places.items() if any(token in text for token in tokens)]
    assert leaks == []
