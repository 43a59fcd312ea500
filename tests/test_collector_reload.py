"""SIGHUP reloads a running collector's config (`python -m collector.cli run`): agents added and removed, tokens
rotated, without a restart; the removed agents' series leave /metrics and end with stale markers on remote_write
out; an invalid config is refused and the old one keeps running."""

from __future__ import annotations

import math
import signal

from foundation import remote_write as rw
from tests.support.httpd import HttpServer, Reply
from tests.test_agent_run import metric_value
from tests.test_collector import INVENTORY, TOKENS, RunningCollector, collector_config, probe_series, push, running_collector, wait_until

NEW_AGENT_TOKEN = "tok-y-te-1-5d81"
WITHOUT_XA_MY_THO = INVENTORY.replace('  - {id: xa-my-tho-1, agency: xa-my-tho, mode: push, bearer_token: "${NETMON_TEST_TOKEN_XA_MY_THO_1}"}\n', "")
WITH_Y_TE = WITHOUT_XA_MY_THO + "  - {id: y-te-1, agency: so-y-te, mode: push, bearer_token_file: Y_TE_TOKEN_FILE}\n"


def reload_stamp(collector: RunningCollector) -> float:
    return metric_value(collector.metrics(), "netmon_collector_config_last_reload_success_timestamp_seconds") or 0.0


def sighup_and_wait(collector: RunningCollector) -> None:
    """SIGHUP the collector and wait until it has loaded its config file again."""
    before = reload_stamp(collector)
    collector.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reload_stamp(collector) > before, 10, "the reload", step=0.05)


def test_a_reload_adds_an_agent_and_removes_one_whose_series_end(tmp_path):
    token_file = tmp_path / "y-te-1.token"
    token_file.write_text(NEW_AGENT_TOKEN + "\n", encoding="utf-8")
    with HttpServer(routes={"/api/v1/write": Reply(204, b"")}) as tsdb:
        forward = f"remote_write:\n  - url: {tsdb.url('/api/v1/write')}\n    queue: {{directory: {tmp_path / 'queue'}}}\n    interval: 200ms\n"
        with running_collector(tmp_path, forward) as collector:
            assert push(collector.url, rw.encode([probe_series(target="leaving")]), TOKENS["xa-my-tho-1"])[0] == 204
            assert push(collector.url, rw.encode([probe_series(target="staying")]), TOKENS["so-tttt-1"])[0] == 204
            collector_config(tmp_path, collector.port, forward, WITH_Y_TE.replace("Y_TE_TOKEN_FILE", str(token_file)))
            sighup_and_wait(collector)
            text = collector.metrics()
            removed_push = push(collector.url, rw.encode([probe_series(target="leaving")]), TOKENS["xa-my-tho-1"])[0]
            added_push = push(collector.url, rw.encode([probe_series(target="arriving")]), NEW_AGENT_TOKEN)[0]
            after_push = collector.metrics()
            wait_until(lambda: any(stale_marked(request.body, "leaving") for request in tsdb.requests), 10, "the stale marker")
    assert 'target="leaving"' not in text and 'target="staying"' in text
    assert metric_value(text, "netmon_agent_up", agent="xa-my-tho-1") is None
    assert metric_value(text, "netmon_agent_up", agent="y-te-1") == 0.0  # in the inventory, never seen yet
    assert (removed_push, added_push) == (401, 204)
    assert 'probe_success{agency="so-y-te",agent="y-te-1",district="tp-my-tho",level="department",module="icmp",target="arriving"} 1.0' in after_push
    assert metric_value(after_push, "netmon_collector_config_last_reload_successful") == 1.0


def stale_marked(body: bytes, target: str) -> bool:
    return any(
        dict(series.labels).get("target") == target and any(rw.is_stale_marker(value) for _, value in series.samples)
        for series in rw.decode(body, 1 << 24)
    )


def test_a_reload_rotates_a_token_from_its_file_and_the_agent_keeps_its_series(tmp_path):
    rotated = "tok-cai-be-1-rotated-60aa"
    with running_collector(tmp_path) as collector:
        assert push(collector.url, rw.encode([probe_series(target="before-rotation")]), TOKENS["cai-be-1"])[0] == 204
        (tmp_path / "cai-be-1.token").write_text(rotated + "\n", encoding="utf-8")
        sighup_and_wait(collector)
        old_token = push(collector.url, rw.encode([probe_series(target="old-token")]), TOKENS["cai-be-1"])[0]
        new_token = push(collector.url, rw.encode([probe_series(target="new-token")]), rotated)[0]
        text = collector.metrics()
        log = collector.log.read_text(encoding="utf-8")
    assert (old_token, new_token) == (401, 204)
    assert 'target="before-rotation"' in text and 'target="new-token"' in text and 'target="old-token"' not in text
    assert rotated not in log + text and TOKENS["cai-be-1"] not in log + text


def test_an_invalid_config_on_reload_is_refused_and_the_old_one_keeps_running(tmp_path):
    with running_collector(tmp_path) as collector:
        loaded_at = reload_stamp(collector)
        broken = INVENTORY.replace("agency: xa-my-tho,", "agency: xa-nowhere,")
        collector_config(tmp_path, collector.port, "", broken)
        collector.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: metric_value(collector.metrics(), "netmon_collector_config_last_reload_successful") == 0.0, 10, "the failed reload")
        still_served = push(collector.url, rw.encode([probe_series(target="after-failed-reload")]), TOKENS["xa-my-tho-1"])[0]
        text = collector.metrics()
        log = collector.log.read_text(encoding="utf-8")
    assert still_served == 204
    assert reload_stamp_of(text) == loaded_at
    assert "config reload failed, keeping the previous config" in log and "agents[1].agency: unknown agency 'xa-nowhere'" in log


def reload_stamp_of(text: str) -> float:
    value = metric_value(text, "netmon_collector_config_last_reload_success_timestamp_seconds")
    assert value is not None and not math.isnan(value)
    return value


def test_a_reload_that_moves_an_agent_to_another_agency_relabels_its_series(tmp_path):
    moved = INVENTORY.replace("{id: so-tttt-1, agency: so-tttt,", "{id: so-tttt-1, agency: so-y-te,")
    with running_collector(tmp_path) as collector:
        assert push(collector.url, rw.encode([probe_series(target="moving")]), TOKENS["so-tttt-1"])[0] == 204
        collector_config(tmp_path, collector.port, "", moved)
        sighup_and_wait(collector)
        gone = collector.metrics()
        assert push(collector.url, rw.encode([probe_series(target="moving")]), TOKENS["so-tttt-1"])[0] == 204
        text = collector.metrics()
    assert 'target="moving"' not in gone  # its old identity ended with the reload
    assert [line for line in text.splitlines() if 'target="moving"' in line] == [
        'probe_success{agency="so-y-te",agent="so-tttt-1",district="tp-my-tho",level="department",module="icmp",target="moving"} 1.0'
    ]
