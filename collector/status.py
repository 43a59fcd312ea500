"""The status page at `/`, for the operator on call: what is down first, then what is degraded, then the rest.

Agencies are sorted by state (down: no agent reporting; partial: some; up: all), and within each state grouped
by district (its display name and order from `districts:`). The header counts agencies in each state. Times are shown in
the province's time zone (`status_page.timezone`, named on the page); "last seen" is relative while recent. The
page reloads itself every `status_page.refresh` and says when it was made. Vietnamese by default, English with
`?lang=en` (or `status_page.language: en`).

Plain HTML with inline CSS and no script: the provincial network is closed, so nothing is loaded from elsewhere.
A down or degraded agency's card also shows the paths its live agents trace (the `path` prober's hops: TTL,
address, loss, average RTT), the fault hop marked with its address: whom to call.

Each agency card carries `data-agency`, `data-status` (up, partial, down) and `data-district`, the header
`data-down`, `data-partial`, `data-up`, for scripts and tests.
"""

from __future__ import annotations

import html
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, tzinfo
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from collector.config_model import Agency, CollectorConfig
from collector.fleet import FetchLog, under_management
from collector.paths import AgentPath, agency_paths
from collector.store import AgentState, SeriesStore, format_timestamp

HEADLINES = {  # metric -> how agents' series of it combine into one figure (worst case)
    "probe_icmp_rtt_avg_seconds": "rtt",
    "probe_icmp_packet_loss_ratio": "loss",
    "probe_mail_roundtrip_last_delivery_duration_seconds": "mail",
}
STATES = ("down", "partial", "up")  # the order of the page

WORDS = {
    "vi": {
        "title": "Giám sát mạng các cơ quan",
        "state.down": "Mất kết nối", "state.partial": "Gián đoạn một phần", "state.up": "Bình thường",
        "section.down": "Mất kết nối", "section.partial": "Gián đoạn một phần", "section.up": "Hoạt động bình thường",
        "count.down": "{n} mất kết nối", "count.partial": "{n} gián đoạn một phần", "count.up": "{n} bình thường",
        "agencies": "{n} cơ quan", "of_total": "trên tổng số {n} cơ quan",
        "agent.up": "đang hoạt động", "agent.down": "mất kết nối", "agent.never": "chưa kết nối lần nào",
        "no_agent": "chưa có agent nào", "last_data": "dữ liệu gần nhất {when}", "no_data": "chưa từng nhận được dữ liệu", "never": "chưa bao giờ",
        "seconds_ago": "{n} giây trước", "minutes_ago": "{n} phút trước", "at": "lúc {time}",
        "updated": "Cập nhật lúc {time} (giờ {zone})", "refresh": "trang tự làm mới sau mỗi {n} giây",
        "other_language": "English", "other_code": "en",
        "rtt": "Độ trễ tới TTDL", "loss": "Tỷ lệ mất gói", "mail": "Thời gian chuyển thư",
        "config.never": "chưa tải cấu hình", "config.current": "đang chạy cấu hình mới nhất", "config.stale": "đang chạy cấu hình cũ",
        "config.detail": "bản cấp {served} / bản đang chạy {applied} · phiên bản agent {version} · tải {when}",
        "clock": "Đồng hồ của agent {agent} có thể bị sai: {n} mẫu bị loại vì dấu thời gian ngoài giới hạn (ví dụ: {example})",
        "path.to": "Đường đi tới {target}", "path.from": "từ {agent}",
        "path.fault": "Sự cố từ chặng {ttl}: {address}", "path.here": "sự cố từ chặng này",
        "path.unreached": "không tới được đích", "path.clean": "tới đích, không có chặng lỗi",
        "path.address": "Địa chỉ", "path.loss": "Mất gói", "path.rtt": "Độ trễ TB", "path.more": "và {n} đường đi khác",
        "level.province": "Tỉnh", "level.department": "Sở, ban, ngành", "level.district": "Cấp huyện", "level.commune": "Cấp xã",
    },
    "en": {
        "title": "Agency network monitoring",
        "state.down": "Down", "state.partial": "Degraded", "state.up": "Up",
        "section.down": "Down", "section.partial": "Degraded", "section.up": "Up",
        "count.down": "{n} down", "count.partial": "{n} degraded", "count.up": "{n} up",
        "agencies": "{n} agencies", "of_total": "of {n} agencies",
        "agent.up": "up", "agent.down": "down", "agent.never": "never seen",
        "no_agent": "no agent", "last_data": "last data {when}", "no_data": "never heard from", "never": "never",
        "seconds_ago": "{n} s ago", "minutes_ago": "{n} min ago", "at": "at {time}",
        "updated": "Updated {time} ({zone})", "refresh": "reloads every {n} s",
        "other_language": "Tiếng Việt", "other_code": "vi",
        "rtt": "RTT to data center", "loss": "Packet loss", "mail": "Mail round trip",
        "config.never": "config never fetched", "config.current": "config current", "config.stale": "config stale",
        "config.detail": "served {served} / running {applied} · agent version {version} · fetched {when}",
        "clock": "Agent {agent}'s clock looks wrong: {n} samples dropped for timestamps out of bounds (e.g. {example})",
        "path.to": "Path to {target}", "path.from": "from {agent}",
        "path.fault": "Fault from hop {ttl}: {address}", "path.here": "the fault starts at this hop",
        "path.unreached": "destination not reached", "path.clean": "reached, no fault hop",
        "path.address": "Address", "path.loss": "Loss", "path.rtt": "Avg RTT", "path.more": "and {n} more paths",
        "level.province": "Province", "level.department": "Department", "level.district": "District", "level.commune": "Commune",
    },
}
DATE_FORMATS = {"vi": ("%H:%M:%S %d/%m/%Y", "%H:%M %d/%m/%Y"), "en": ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")}

CSS = """
body{font-family:system-ui,"Noto Sans","DejaVu Sans",sans-serif;margin:1rem;background:#f6f7f9;color:#222}
h1{font-size:1.3rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin:1.2rem 0 .3rem;padding:.2rem .5rem;border-radius:.2rem}
h3{font-size:.95rem;margin:.7rem 0 .3rem;color:#444}
h2.down{background:#c62828;color:#fff}h2.partial{background:#e0a800;color:#222}h2.up{background:#2a8f3c;color:#fff}
.summary{font-size:1.05rem;margin:.3rem 0}.summary b{padding:.1rem .5rem;border-radius:.2rem;margin-right:.3rem}
.summary .down{background:#c62828;color:#fff}.summary .partial{background:#e0a800}.summary .up{background:#2a8f3c;color:#fff}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(17rem,1fr));gap:.5rem}
.grid.up{grid-template-columns:repeat(auto-fill,minmax(14rem,1fr));gap:.3rem}
.card{background:#fff;border-left:.4rem solid #999;padding:.4rem .6rem;border-radius:.2rem;overflow-wrap:anywhere}
.card.up{border-color:#2a8f3c;padding:.25rem .5rem;font-size:.9rem}
.card.down{border-color:#c62828;background:#fdecea}.card.partial{border-color:#e0a800;background:#fff8e1}
.name{font-weight:600}.meta{font-size:.8rem;color:#555}.state{font-weight:600}
.up .state{color:#2a8f3c}.down .state{color:#b71c1c}.partial .state{color:#8a6500}
.agent-down{color:#b71c1c}.clock{font-size:.8rem;color:#8a6500}.districts{margin:.2rem 0 .4rem;font-weight:600;color:#444}
table{font-size:.8rem;border-collapse:collapse}td{padding:0 .4rem 0 0}
.path{margin-top:.35rem;font-size:.8rem}.path th{text-align:left;font-weight:600;color:#555;padding:0 .4rem 0 0}
.path td,.path th{white-space:nowrap;overflow-wrap:normal}.path td.address{white-space:normal;overflow-wrap:anywhere}
.path tr.fault td{background:#c62828;color:#fff;font-weight:700}.fault-line{font-weight:700;color:#b71c1c}
"""


@dataclass(frozen=True, slots=True)
class Headline:
    rtt: float | None
    loss: float | None
    mail: float | None


@dataclass(frozen=True, slots=True)
class Page:
    """What every part of one rendering needs: the words of its language and the clock it shows."""

    words: dict[str, str]
    language: str
    zone: tzinfo
    zone_name: str
    now: float

    def word(self, key: str, **values: object) -> str:
        return self.words[key].format(**values)

    def clock(self, moment: float, with_seconds: bool = True) -> str:
        return datetime.fromtimestamp(moment, self.zone).strftime(DATE_FORMATS[self.language][0 if with_seconds else 1])

    def stamp(self, timestamp_ms: int) -> str:
        """A sample's timestamp, whatever it is (the year 1970 or 30000)."""
        try:
            return self.clock(timestamp_ms / 1000)
        except (OverflowError, ValueError, OSError):
            return format_timestamp(timestamp_ms)

    def ago(self, then: float) -> str:
        """Relative while recent, else the time in the province's zone."""
        if then <= 0:
            return self.word("never")
        seconds = max(self.now - then, 0)
        if seconds < 120:
            return self.word("seconds_ago", n=f"{seconds:.0f}")
        if seconds < 7200:
            return self.word("minutes_ago", n=f"{seconds / 60:.0f}")
        return self.word("at", time=self.clock(then, with_seconds=False))


def headline(states: list[AgentState]) -> Headline:
    """The worst value of each headline metric among the agents' series (NaN, no measurement, is left out)."""
    worst: dict[str, float] = {}
    for state in states:
        for entry in state.series.values():
            key = HEADLINES.get(entry.name)
            if key is not None and entry.value == entry.value:
                worst[key] = max(worst.get(key, entry.value), entry.value)
    return Headline(worst.get("rtt"), worst.get("loss"), worst.get("mail"))


def agency_state(states: list[AgentState], now: float) -> str:
    ups = [state.is_up(now) for state in states]
    return "up" if ups and all(ups) else ("partial" if any(ups) else "down")


def collation_key(text: str) -> tuple[str, str]:
    """Vietnamese names in alphabetical order: letters first without their marks (Cái Bè before Châu Thành), đ after d."""
    base = "".join(c for c in unicodedata.normalize("NFD", text.casefold().replace("đ", "d\uffff")) if not unicodedata.combining(c))
    return base, text


def _number(page: Page, value: float | None, unit: str) -> str:
    """Seconds as ms, a ratio as %, "—" for none."""
    if value is None:
        return "—"
    shown = f"{value * 1000:.1f} ms" if unit == "s" else f"{value * 100:.1f} %"
    return shown.replace(".", ",") if page.language == "vi" else shown  # 12,5 ms: the Vietnamese decimal comma


def _figure(page: Page, key: str, value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"<tr><td>{page.word(key)}</td><td>{_number(page, value, unit)}</td></tr>"


def _path_table(page: Page, path: AgentPath) -> str:
    """One path target's hops; the fault hop's row in red, its address in the line above the table."""
    fault = path.fault_ttl
    if fault:
        address = path.fault_address or next((hop.address for hop in path.hops if hop.ttl == fault), "") or "—"
        verdict = f'<div class="fault-line" data-fault-hop="{fault}">{html.escape(page.word("path.fault", ttl=fault, address=address))}</div>'
    else:
        verdict = f'<div class="meta">{page.word("path.unreached" if path.reached is False else "path.clean")}</div>'
    rows = []
    for hop in path.hops:
        shown = "—" if hop.silent or not hop.address else hop.address
        marked = f' class="fault" title="{page.word("path.here")}"' if hop.ttl == fault else ""
        rows.append(
            f'<tr data-ttl="{hop.ttl}"{marked}><td>{"⚠ " if marked else ""}{hop.ttl}</td><td class="address">{html.escape(shown)}</td>'
            f"<td>{_number(page, None if hop.silent else hop.loss, 'ratio')}</td><td>{_number(page, hop.rtt_avg, 's')}</td></tr>"
        )
    title = f"{html.escape(page.word('path.to', target=path.target))} · {html.escape(page.word('path.from', agent=path.agent))}"
    return (
        f'<div class="path" data-path-target="{html.escape(path.target)}" data-agent="{html.escape(path.agent)}" '
        f'data-fault-hop="{fault}"><div class="name">{title}</div>{verdict}'
        f'<table><tr><th>TTL</th><th>{page.word("path.address")}</th><th>{page.word("path.loss")}</th>'
        f'<th>{page.word("path.rtt")}</th></tr>{"".join(rows)}</table></div>'
    )


def _path_block(page: Page, states: list[AgentState]) -> str:
    """The paths the agency's live agents trace, the faulty ones first, a few at most."""
    paths, more = agency_paths(state for state in states if state.is_up(page.now))
    more_line = f'<div class="meta">{page.word("path.more", n=more)}</div>' if more else ""
    return "".join(_path_table(page, path) for path in paths) + more_line


def _fleet_lines(page: Page, config: CollectorConfig, states: list[AgentState], fetches: FetchLog | None) -> str:
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
        detail = page.word(
            "config.detail", served=served.hash, applied=html.escape(record.applied_hash or "—"),
            version=html.escape(record.version or "—"), when=page.ago(record.time),
        )
        lines.append(
            f'<div class="meta" data-agent="{html.escape(state.agent.id)}" data-config="{status}">'
            f"{html.escape(state.agent.id)}: {page.word('config.' + status)} · {detail}</div>"
        )
    return "".join(lines)


def _agents_line(page: Page, states: list[AgentState]) -> str:
    if not states:
        return f'<div class="meta">{page.word("no_agent")}</div>'
    parts = []
    for state in states:
        if state.is_up(page.now):
            parts.append(f"{html.escape(state.agent.id)}: {page.word('agent.up')}")
        elif state.last_seen <= 0:
            parts.append(f'<span class="agent-down">{html.escape(state.agent.id)}: {page.word("agent.never")}</span>')
        else:
            parts.append(f'<span class="agent-down">{html.escape(state.agent.id)}: {page.word("agent.down")} ({page.ago(state.last_seen)})</span>')
    return f'<div class="meta">{" · ".join(parts)}</div>'


def _clock_notes(page: Page, states: list[AgentState]) -> str:
    """An agent whose last push had samples dropped for their timestamps: its clock is likely wrong."""
    notes = []
    for state in states:
        dropped = state.out_of_bounds
        if dropped is not None and state.is_up(page.now):
            text = page.word("clock", agent=state.agent.id, n=dropped.too_old + dropped.too_new, example=page.stamp(dropped.example_ms))
            notes.append(f'<div class="clock" data-clock="{html.escape(state.agent.id)}">{html.escape(text)}</div>')
    return "".join(notes)


def _card(page: Page, agency: Agency, status: str, states: list[AgentState], extra: str, district: str = "") -> str:
    """district: its display name, on cards shown without a district heading."""
    last_seen = max((state.last_seen for state in states), default=0.0)
    figures = headline([state for state in states if state.is_up(page.now)])
    where = f"{html.escape(district)} · " if district else ""
    seen = page.word("last_data", when=page.ago(last_seen)) if last_seen > 0 else page.word("no_data")
    return (
        f'<div class="card {status}" data-agency="{html.escape(agency.id)}" data-status="{status}" data-district="{html.escape(agency.district)}">'
        f'<div class="name">{html.escape(agency.name)}</div>'
        f'<div class="meta">{where}{page.word("level." + agency.level)} · {html.escape(agency.id)}</div>'
        f'<div><span class="state">{page.word("state." + status)}</span> · {seen}</div>'
        f"<table>{_figure(page, 'rtt', figures.rtt, 's')}{_figure(page, 'loss', figures.loss, 'ratio')}"
        f"{_figure(page, 'mail', figures.mail, 's')}</table>"
        f"{_agents_line(page, states) if status != 'up' else ''}{extra}</div>"
    )


def _by_district(config: CollectorConfig, status: str, agencies: list[Agency]) -> list[tuple[str, list[Agency]]]:
    """Districts in the order of `districts:` (those not listed after them, by id), except that among down and
    degraded agencies the district with the most comes first (a district whose link is down is one block at the
    top); agencies in alphabetical order."""
    listed = {district: position for position, district in enumerate(config.district_names)}
    districts: dict[str, list[Agency]] = {}
    for agency in agencies:
        districts.setdefault(agency.district, []).append(agency)
    most_first = status != "up"
    order = sorted(districts, key=lambda d: (-len(districts[d]) * most_first, listed.get(d, len(listed)), collation_key(d)))
    return [(district, sorted(districts[district], key=lambda agency: collation_key(agency.name))) for district in order]


def _section(page: Page, config: CollectorConfig, status: str, agencies: list[Agency], by_agency: dict[str, list[AgentState]],
             fetches: FetchLog | None) -> str:
    """One state's agencies by district. The few down or degraded ones share one grid, each card naming its
    district, under a line counting them per district; the many up ones are grouped under district headings."""
    names = config.district_names
    groups = _by_district(config, status, agencies)

    def card(agency: Agency, district_shown: str = "") -> str:
        states = by_agency[agency.id]
        extra = _fleet_lines(page, config, states, fetches) + _clock_notes(page, states)
        if status != "up":
            extra = _path_block(page, states) + extra
        return _card(page, agency, status, states, extra, district_shown)

    title = f"{page.word('section.' + status)} — {page.word('agencies', n=len(agencies))}"
    if status == "up":
        body = "".join(
            f'<h3 data-district="{html.escape(district)}">{html.escape(names.get(district, district))} ({len(members)})</h3>'
            f'<div class="grid up">{"".join(card(agency) for agency in members)}</div>'
            for district, members in groups
        )
    else:
        tally = " · ".join(
            f'<span data-district="{html.escape(district)}">{html.escape(names.get(district, district))} ({len(members)})</span>'
            for district, members in groups
        )
        cards = "".join(card(agency, names.get(district, district)) for district, members in groups for agency in members)
        body = f'<p class="districts">{tally}</p><div class="grid {status}">{cards}</div>'
    return f'<section class="{status}" data-status="{status}"><h2 class="{status}">{title}</h2>{body}</section>'


def page_language(config: CollectorConfig, requested: str | None) -> str:
    return requested if requested in WORDS else config.status_page.language


def _zone_label(zone: tzinfo, name: str, now: float) -> str:
    offset = datetime.fromtimestamp(now, zone).strftime("%z")  # +0700
    return f"{name}, UTC{offset[:3]}:{offset[3:]}"


def render_status(
    config: CollectorConfig, store: SeriesStore, now: float | None = None, fetches: FetchLog | None = None,
    language: str | None = None,
) -> str:
    """The page; `language` as the reader asked (?lang=), else the configured one."""
    now = time.time() if now is None else now
    language = page_language(config, language)
    zone_name = config.status_page.timezone
    zone = ZoneInfo(zone_name)
    page = Page(WORDS[language], language, zone, _zone_label(zone, zone_name, now), now)
    by_agency: dict[str, list[AgentState]] = {agency.id: [] for agency in config.agencies}
    for state in store.states.values():
        by_agency[state.agent.agency.id].append(state)
    by_state: dict[str, list[Agency]] = {status: [] for status in STATES}
    for agency in config.agencies:
        by_state[agency_state(by_agency[agency.id], now)].append(agency)
    sections = "".join(_section(page, config, status, by_state[status], by_agency, fetches) for status in STATES if by_state[status])
    return _document(page, config, by_state, sections, language)


def _document(page: Page, config: CollectorConfig, by_state: dict[str, list[Agency]], sections: str, language: str) -> str:
    counts = {status: len(agencies) for status, agencies in by_state.items()}
    summary = " ".join(f'<b class="{status}">{page.word("count." + status, n=counts[status])}</b>' for status in STATES)
    refresh = int(config.status_page.refresh)
    # the reload keeps the language the reader chose
    query = f"?{urlencode({'lang': language})}" if language != config.status_page.language else ""
    other = page.word("other_code")
    other_query = f"?{urlencode({'lang': other})}"
    return (
        f'<!doctype html><html lang="{language}"><head><meta charset="utf-8"><title>netmon-collector</title>'
        f'<meta http-equiv="refresh" content="{refresh}; url=/{query}">'
        f'<meta name="viewport" content="width=device-width"><style>{CSS}</style></head><body>'
        f"<h1>{page.word('title')}</h1>"
        f'<p class="summary" data-down="{counts["down"]}" data-partial="{counts["partial"]}" data-up="{counts["up"]}" '
        f'data-agencies="{len(config.agencies)}">{summary} {page.word("of_total", n=len(config.agencies))}</p>'
        f'<p class="meta" data-updated="{page.now:.3f}">{page.word("updated", time=page.clock(page.now), zone=page.zone_name)} · '
        f'{page.word("refresh", n=refresh)} · <a href="/{other_query}">{page.word("other_language")}</a> · '
        f'<a href="/metrics">/metrics</a></p>{sections}</body></html>'
    )
