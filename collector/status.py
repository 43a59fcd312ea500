"""The status page at `/`: agencies grouped by district, up/down, last seen, headline probe results.

Plain HTML with inline CSS: the provincial network is closed, so nothing is loaded from elsewhere. Each agency
card carries `data-agency` and `data-status` (up, down, partial) for scripts and tests.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

from collector.config_model import Agency, CollectorConfig
from collector.fleet import FetchLog, under_management
from collector.store import AgentState, SeriesStore

HEADLINES = {  # metric -> how agents' series of it combine into one figure (worst case)
    "probe_icmp_rtt_avg_seconds": "rtt",
    "probe_icmp_packet_loss_ratio": "loss",
    "probe_mail_roundtrip_last_delivery_duration_seconds": "mail",
}
LEVELS = {"province": "Tỉnh", "department": "Sở, ngành", "district": "Huyện", "commune": "Xã"}

CSS = """
body{font-family:system-ui,"Noto Sans","DejaVu Sans",sans-serif;margin:1rem;background:#f6f7f9;color:#222}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr));gap:.5rem}
.card{background:#fff;border-left:.4rem solid #999;padding:.4rem .6rem;border-radius:.2rem}
.card.up{border-color:#2a8f3c}.card.down{border-color:#c62828;background:#fff3f3}.card.partial{border-color:#e0a800}
.name{font-weight:600}.meta{font-size:.8rem;color:#555}.state{font-weight:600}
.up .state{color:#2a8f3c}.down .state{color:#c62828}.partial .state{color:#a07800}
table{font-size:.8rem;border-collapse:collapse}td{padding:0 .4rem 0 0}
"""


@dataclass(frozen=True, slots=True)
class Headline:
    rtt: float | None
    loss: float | None
    mail: float | None


def headline(states: list[AgentState]) -> Headline:
    worst: dict[str, float] = {}
    for state in states:
        for entry in state.series.values():
            key = HEADLINES.get(entry.name)
            if key is not None:
                worst[key] = max(worst.get(key, entry.value), entry.value)
    return Headline(worst.get("rtt"), worst.get("loss"), worst.get("mail"))


def _ago(now: float, then: float) -> str:
    if then <= 0:
        return "chưa từng"  # never
    seconds = max(now - then, 0)
    if seconds < 120:
        return f"{seconds:.0f} giây trước"
    if seconds < 7200:
        return f"{seconds / 60:.0f} phút trước"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(then))


def _figure(label: str, value: float | None, unit: str) -> str:
    if value is None:
        return ""
    shown = f"{value * 1000:.1f} ms" if unit == "s" else f"{value * 100:.1f} %"
    return f"<tr><td>{label}</td><td>{shown}</td></tr>"


def _fleet_lines(config: CollectorConfig, states: list[AgentState], fetches: FetchLog | None, now: float) -> str:
    """Per agent: version, served vs applied config hash, last fetch (data-config: current, stale or never)."""
    if fetches is None:
        return ""
    lines = []
    for state in states:
        served = config.fleet.configs.get(state.agent.id)
        record = fetches.get(state.agent.id)
        if served is None or not under_management(served, record):
            continue
        status = "never" if not record.time else ("current" if record.applied_hash == served.hash else "stale")
        words = {"never": "chưa lấy cấu hình", "current": "cấu hình mới nhất", "stale": "cấu hình cũ"}[status]
        lines.append(
            f'<div class="meta" data-agent="{html.escape(state.agent.id)}" data-config="{status}">'
            f"{html.escape(state.agent.id)}: {words} · phục vụ {served.hash} / đang chạy {html.escape(record.applied_hash or '—')}"
            f" · phiên bản {html.escape(record.version or '—')} · lấy lúc {_ago(now, record.time)}</div>"
        )
    return "".join(lines)


def _card(agency: Agency, states: list[AgentState], now: float, fleet: str = "") -> str:
    ups = [state.is_up(now) for state in states]
    status = "up" if ups and all(ups) else ("partial" if any(ups) else "down")
    words = {"up": "Hoạt động", "partial": "Một phần", "down": "Mất liên lạc"}[status]
    last_seen = max((state.last_seen for state in states), default=0.0)
    figures = headline([state for state in states if state.is_up(now)])
    agents = ", ".join(f"{html.escape(s.agent.id)} ({'lên' if s.is_up(now) else 'xuống'})" for s in states) or "không có agent"
    return (
        f'<div class="card {status}" data-agency="{html.escape(agency.id)}" data-status="{status}">'
        f'<div class="name">{html.escape(agency.name)}</div>'
        f'<div class="meta">{html.escape(agency.id)} · {LEVELS[agency.level]}</div>'
        f'<div><span class="state">{words}</span> · lần cuối: {_ago(now, last_seen)}</div>'
        f"<table>{_figure('RTT tới TTDL', figures.rtt, 's')}{_figure('Mất gói', figures.loss, 'ratio')}"
        f"{_figure('Thư vòng', figures.mail, 's')}</table>"
        f'<div class="meta">{agents}</div>{fleet}</div>'
    )


def render_status(config: CollectorConfig, store: SeriesStore, now: float | None = None, fetches: FetchLog | None = None) -> str:
    now = time.time() if now is None else now
    by_agency: dict[str, list[AgentState]] = {agency.id: [] for agency in config.agencies}
    for state in store.states.values():
        by_agency[state.agent.agency.id].append(state)
    districts: dict[str, list[Agency]] = {}
    for agency in config.agencies:
        districts.setdefault(agency.district, []).append(agency)
    sections = []
    for district in sorted(districts):
        cards = "".join(
            _card(agency, by_agency[agency.id], now, _fleet_lines(config, by_agency[agency.id], fetches, now))
            for agency in districts[district]
        )
        sections.append(f'<section><h2>{html.escape(district)}</h2><div class="grid">{cards}</div></section>')
    up_count = sum(1 for state in store.states.values() if state.is_up(now))
    return (
        '<!doctype html><html lang="vi"><head><meta charset="utf-8"><title>netmon-collector</title>'
        f'<meta name="viewport" content="width=device-width"><style>{CSS}</style></head><body>'
        f"<h1>Giám sát mạng — {len(config.agencies)} cơ quan, {up_count}/{len(store.states)} agent hoạt động</h1>"
        f'<p class="meta">Cập nhật {time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))} · '
        f'<a href="/metrics">/metrics</a></p>{"".join(sections)}</body></html>'
    )
