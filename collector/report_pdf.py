"""The availability report as a PDF (matplotlib, the optional `report` extra): a summary page, then per service a
chart of outage and unknown minutes per day and the table of agencies, continued on further pages as needed."""

from __future__ import annotations

import io
import logging
import textwrap

from collector.report_model import Availability, Report, ReportError, Service
from collector.report_render import DEFINITION, daily_outage_and_unknown, monitored, percent_text

A4_PORTRAIT = (8.27, 11.69)
ROWS_UNDER_CHART, ROWS_PER_PAGE = 28, 48
TABLE_COLUMNS = ("Cơ quan", "Mã", "Huyện", "Sẵn sàng (%)", "Gián đoạn (phút)", "Không dữ liệu (phút)")
COLUMN_WIDTHS = (0.36, 0.15, 0.11, 0.11, 0.12, 0.15)
# DejaVu Sans ships with matplotlib and covers Vietnamese; TrueType (Type 42) embedding keeps the text extractable.
PDF_STYLE = {"font.family": "DejaVu Sans", "pdf.fonttype": 42, "font.size": 8}


def render_pdf(report: Report) -> bytes:
    try:
        import matplotlib
        from matplotlib.backends.backend_pdf import PdfPages
    except ImportError:
        raise ReportError("the PDF format needs matplotlib: pip install 'egov-netmon[report]'") from None
    # fontTools logs every font subset at INFO, which the CLI's default log level would print.
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    output = io.BytesIO()
    title = f"Báo cáo mức độ sẵn sàng dịch vụ tháng {report.period.month}"
    with matplotlib.rc_context(PDF_STYLE), PdfPages(output, metadata={"Title": title}) as pdf:
        pdf.savefig(summary_page(report, title))
        for service in report.services:
            for page in service_pages(report, service):
                pdf.savefig(page)
    return output.getvalue()


def new_page():
    from matplotlib.figure import Figure

    return Figure(figsize=A4_PORTRAIT)


def summary_page(report: Report, title: str):
    page = new_page()
    period = report.period
    page.text(0.08, 0.94, title, fontsize=14, weight="bold")
    page.text(0.08, 0.91, f"{period.start:%Y-%m-%d %H:%M} – {period.end:%Y-%m-%d %H:%M} (UTC+7), {period.minutes} phút; "
              f"lập lúc {report.generated_at:%Y-%m-%d %H:%M}")
    page.text(0.08, 0.88, "\n".join(textwrap.wrap(DEFINITION, 110)), va="top")
    cells = [summary_cells(service, monitored(report.for_service(service))) for service in report.services]
    axes = page.add_axes((0.08, 0.40, 0.84, 0.38))
    axes.axis("off")
    axes.table(
        cellText=cells, colLabels=("Dịch vụ", "Số cơ quan", "Sẵn sàng (%)", "Gián đoạn (phút)", "Không dữ liệu (phút)"),
        colWidths=(0.40, 0.12, 0.16, 0.16, 0.16), loc="upper center", cellLoc="left",
    )
    return page


def summary_cells(service: Service, rows: list[Availability]) -> list[str]:
    up, known = sum(row.up_minutes for row in rows), sum(row.known_minutes for row in rows)
    province = f"{100.0 * up / known:.4f}" if known else ""
    return [service.name, str(len(rows)), province, str(known - up), str(sum(row.unknown_minutes for row in rows))]


def service_pages(report: Report, service: Service) -> list:
    rows = monitored(report.for_service(service))
    first = new_page()
    first.text(0.08, 0.95, f"{service.name} ({service.id})", fontsize=13, weight="bold")
    chart(first, daily_outage_and_unknown(rows, report.period.days))
    table(first, rows[:ROWS_UNDER_CHART], top=0.62)
    pages = [first]
    for start in range(ROWS_UNDER_CHART, len(rows), ROWS_PER_PAGE):
        page = new_page()
        page.text(0.08, 0.95, f"{service.name} (tiếp)", fontsize=11)
        table(page, rows[start:start + ROWS_PER_PAGE], top=0.92)
        pages.append(page)
    return pages


def chart(page, daily: list[tuple[int, int]]) -> None:
    axes = page.add_axes((0.10, 0.70, 0.84, 0.22))
    days = range(1, len(daily) + 1)
    outage = [minutes for minutes, _ in daily]
    unknown = [minutes for _, minutes in daily]
    axes.bar(days, outage, color="#c62828", label="gián đoạn (outage)")
    axes.bar(days, unknown, bottom=outage, color="#9e9e9e", label="không có dữ liệu (unknown)")
    axes.set_xlabel("ngày")
    axes.set_ylabel("phút")
    axes.set_xlim(0.5, len(daily) + 0.5)
    axes.legend(loc="upper right", fontsize=7)


def table(page, rows: list[Availability], top: float) -> None:
    if not rows:
        page.text(0.08, top, "Không có cơ quan nào có dữ liệu cho dịch vụ này trong tháng.")
        return
    height = top - 0.04
    axes = page.add_axes((0.06, top - height, 0.88, height))
    axes.axis("off")
    cells = [
        [row.agency.name, row.agency.id, row.agency.district, percent_text(row), str(row.outage_minutes), str(row.unknown_minutes)]
        for row in rows
    ]
    rendered = axes.table(cellText=cells, colLabels=TABLE_COLUMNS, colWidths=COLUMN_WIDTHS, loc="upper center", cellLoc="left")
    rendered.auto_set_font_size(False)
    rendered.set_fontsize(7)
