"""The availability report as CSV (for Excel) and as one self-contained HTML page with an SVG chart per service."""

from __future__ import annotations

import csv
import io
from html import escape

from collector.report_model import Availability, Report, Service

CSV_COLUMNS = (
    "month", "agency", "name", "district", "level", "service", "service_name",
    "availability_percent", "outage_minutes", "unknown_minutes", "minutes",
)
DEFINITION = (
    "Mỗi phút được tính là hoạt động khi mọi mục tiêu giám sát của dịch vụ tại cơ quan trả lời ít nhất một nửa số lần "
    "kiểm tra trong phút đó; gián đoạn khi không đạt; không có dữ liệu khi không có kết quả kiểm tra nào. "
    "Tỷ lệ sẵn sàng = phút hoạt động / phút có dữ liệu. Tháng tính theo giờ Việt Nam (UTC+7)."
)
CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN = 620, 170, 36


def percent_text(row: Availability) -> str:
    return "" if row.percent is None else f"{row.percent:.4f}"


def render_csv(report: Report) -> bytes:
    """UTF-8 with a byte-order mark: without it Excel on Windows reads the file in the ANSI code page and garbles
    the Vietnamese names; Python reads it back with encoding="utf-8-sig"."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        agency = row.agency
        writer.writerow([
            report.period.month, agency.id, agency.name, agency.district, agency.level, row.service.id,
            row.service.name, percent_text(row), row.outage_minutes, row.unknown_minutes, report.period.minutes,
        ])
    return text.getvalue().encode("utf-8-sig")


def monitored(rows: list[Availability]) -> list[Availability]:
    return [row for row in rows if row.known_minutes]


def daily_outage_and_unknown(rows: list[Availability], days: int) -> list[tuple[int, int]]:
    """Per day, outage and unknown minutes summed over the agencies that monitored the service this month."""
    return [
        (
            sum(row.known_by_day[day] - row.up_by_day[day] for row in rows),
            sum(24 * 60 - row.known_by_day[day] for row in rows),
        )
        for day in range(days)
    ]


def svg_chart(daily: list[tuple[int, int]], title: str) -> str:
    """Stacked bars per day: outage (red) under unknown (grey), scaled to the worst day."""
    peak = max([outage + unknown for outage, unknown in daily] + [1])
    plot_height = CHART_HEIGHT - 2 * CHART_MARGIN
    bar_step = (CHART_WIDTH - 2 * CHART_MARGIN) / max(len(daily), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" font-family="DejaVu Sans, Arial, sans-serif" font-size="10">',
        f'<text x="{CHART_MARGIN}" y="14" font-size="12">{escape(title)}</text>',
        f'<text x="{CHART_MARGIN - 4}" y="{CHART_MARGIN + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{CHART_MARGIN - 4}" y="{CHART_HEIGHT - CHART_MARGIN}" text-anchor="end">0</text>',
    ]
    for day, (outage, unknown) in enumerate(daily):
        x = CHART_MARGIN + day * bar_step
        bottom = CHART_HEIGHT - CHART_MARGIN
        for minutes, colour in ((outage, "#c62828"), (unknown, "#9e9e9e")):
            height = plot_height * minutes / peak
            bottom -= height
            if minutes:
                parts.append(f'<rect x="{x + 1:.1f}" y="{bottom:.1f}" width="{bar_step - 2:.1f}" height="{height:.1f}" fill="{colour}"/>')
        if day % 5 == 0:
            parts.append(f'<text x="{x + bar_step / 2:.1f}" y="{CHART_HEIGHT - CHART_MARGIN + 14}" text-anchor="middle">{day + 1}</text>')
    parts.append(
        f'<text x="{CHART_MARGIN}" y="{CHART_HEIGHT - 6}"><tspan fill="#c62828">■ gián đoạn (outage)</tspan> '
        f'<tspan fill="#757575">■ không có dữ liệu (unknown)</tspan> — phút/ngày</text></svg>'
    )
    return "\n".join(parts)


def service_section(report: Report, service: Service) -> str:
    rows = report.for_service(service)
    watched = monitored(rows)
    chart = svg_chart(daily_outage_and_unknown(watched, report.period.days), f"{service.name}: phút mỗi ngày, {len(watched)} cơ quan")
    body = "\n".join(
        f"<tr><td>{escape(row.agency.name)}</td><td>{escape(row.agency.id)}</td><td>{escape(row.agency.district)}</td>"
        f'<td class="n">{percent_text(row)}</td><td class="n">{row.outage_minutes}</td><td class="n">{row.unknown_minutes}</td></tr>'
        for row in watched
    )
    unwatched = ", ".join(escape(row.agency.name) for row in rows if not row.known_minutes) or "—"
    return (
        f'<section data-service="{escape(service.id)}"><h2>{escape(service.name)} <small>({escape(service.id)})</small></h2>\n'
        f"{chart}\n<table><thead><tr><th>Cơ quan</th><th>Mã</th><th>Huyện</th><th>Sẵn sàng (%)</th>"
        f"<th>Phút gián đoạn</th><th>Phút không có dữ liệu</th></tr></thead><tbody>\n{body}\n</tbody></table>\n"
        f'<p class="note">Không có dữ liệu cả tháng: {unwatched}</p></section>'
    )


def render_html(report: Report) -> bytes:
    period = report.period
    sections = "\n".join(service_section(report, service) for service in report.services)
    title = f"Báo cáo mức độ sẵn sàng dịch vụ tháng {period.month}"
    page = f"""<!DOCTYPE html>
<html lang="vi"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 2em; color: #212121; }}
table {{ border-collapse: collapse; margin: .5em 0; }}
th, td {{ border: 1px solid #bdbdbd; padding: .2em .5em; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.note {{ color: #616161; font-size: .9em; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p>Từ {period.start:%Y-%m-%d %H:%M} đến {period.end:%Y-%m-%d %H:%M} (UTC+7), {period.minutes} phút.
Lập lúc {report.generated_at:%Y-%m-%d %H:%M} (UTC+7).</p>
<p class="note">{escape(DEFINITION)}</p>
{sections}
</body></html>
"""
    return page.encode("utf-8")

