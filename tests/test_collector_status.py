"""The status page in a real browser (headless Debian chromium): it loads, shows every inventory agency with its
Vietnamese name grouped by district, and marks a silent agent down."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from html.parser import HTMLParser

from foundation import remote_write as rw
from foundation.remote_write import make_series
from tests.support.chromium import dump_dom, screenshot
from tests.test_collector import INVENTORY, TOKENS, now_ms, push, running_collector, wait_until
from tests.test_agent_run import metric_value

AGENCY_NAMES = re.findall(r'name: "([^"]+)"', INVENTORY)


class Cards(HTMLParser):
    """data-agency -> data-status of every card, and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, str] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "data-agency" in attributes:
            self.status[attributes["data-agency"]] = attributes["data-status"]

    def handle_data(self, data):
        self.text.append(data)


def cards_of(dom: str) -> Cards:
    cards = Cards()
    cards.feed(dom)
    return cards


def headline_series(value_ms: float) -> list[rw.Series]:
    stamp = now_ms()
    return [
        make_series("probe_icmp_rtt_avg_seconds", {"target": "data-center"}, [(stamp, value_ms / 1000)]),
        make_series("probe_icmp_packet_loss_ratio", {"target": "data-center"}, [(stamp, 0.02)]),
    ]


@contextlib.contextmanager
def pushing(url: str, agents: list[str]) -> Iterator[list[int]]:
    """The agents push their headline series every 0.5 s until the block ends; yields the statuses received."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while True:
            statuses.extend(push(url, rw.encode(headline_series(12.5)), TOKENS[agent])[0] for agent in agents)
            if stop.wait(0.5):
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(10)


def test_status_page_shows_every_agency_and_marks_a_stopped_agent_down(tmp_path):
    with running_collector(tmp_path / "collector", "defaults: {interval: 1s, ttl: 2s}\n") as collector:
        # both agents push every 0.5 s while the browser starts (seconds on a busy machine: longer than the TTL)
        with pushing(collector.url, ["so-tttt-1", "xa-my-tho-1"]) as statuses:
            live = cards_of(dump_dom(tmp_path / "live", f"{collector.url}/"))
        # xa-my-tho-1 keeps pushing; so-tttt-1 stops (its agent is gone)
        with pushing(collector.url, ["xa-my-tho-1"]) as later_statuses:
            wait_until(lambda: metric_value(collector.metrics(), "netmon_agent_up", agent="so-tttt-1") == 0.0, 5, "so-tttt-1 down")
            later = cards_of(dump_dom(tmp_path / "later", f"{collector.url}/"))
            image = screenshot(tmp_path, f"{collector.url}/")
    assert statuses and later_statuses and set(statuses + later_statuses) == {204}
    assert set(live.status) == {"so-tttt", "xa-my-tho", "ubnd-cai-be", "so-y-te"}
    text = " ".join(live.text)
    assert all(name in text for name in AGENCY_NAMES), text
    assert "12.5 ms" in text and "2.0 %" in text  # headline probe results
    assert (live.status["so-tttt"], live.status["xa-my-tho"]) == ("up", "up")
    assert (live.status["ubnd-cai-be"], live.status["so-y-te"]) == ("down", "down")  # never seen / no agent
    assert (later.status["so-tttt"], later.status["xa-my-tho"]) == ("down", "up")
    assert image.stat().st_size > 10_000 and image.read_bytes().startswith(b"\x89PNG")


def test_status_page_groups_agencies_by_district(tmp_path):
    with running_collector(tmp_path / "collector") as collector:
        dom = dump_dom(tmp_path, f"{collector.url}/")
    districts = re.findall(r"<h2>([^<]+)</h2>", dom)
    assert districts == ["cai-be", "cao-lanh", "tp-my-tho"]
    tp_my_tho = dom.split("<h2>tp-my-tho</h2>")[1]
    assert 'data-agency="so-tttt"' in tp_my_tho and 'data-agency="so-y-te"' in tp_my_tho
    assert "<link" not in dom and "<script" not in dom and "http://" not in dom.replace(collector.url, "")
