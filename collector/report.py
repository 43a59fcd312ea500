"""Monthly availability report: per agency and service, how many of the month's minutes the service was up, down
(outage) or unknown (no data), counted by Prometheus from the recording rule agency_service:probe_success:up1m
(config/prometheus/rules/availability.yml). Definitions: docs/report.md."""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from collector.report_model import SERVICES, Agency, Availability, Period, Report, ReportError, Service
from foundation.config.types import Secret, SecretFile

UP_MINUTES_SERIES = "agency_service:probe_success:up1m"
AGENCY_INFO_SERIES = "netmon_agency_info"
# Việt Nam has kept UTC+7 without daylight saving since 1975: a fixed offset is exact and needs no tz database.
PROVINCE_TZ = timezone(timedelta(hours=7), "UTC+07:00")
DAY_SECONDS = 86_400
MS = 1000
FORMATS = ("csv", "html", "pdf")


def month_period(month: str, now: datetime) -> Period:
    """The calendar month in the province's time zone; only finished months, so every minute had its chance."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if not match or not 1 <= int(match[2]) <= 12:
        raise ReportError(f"--month: expected YYYY-MM, got {month!r}")
    year, number = int(match[1]), int(match[2])
    start = datetime(year, number, 1, tzinfo=PROVINCE_TZ)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=PROVINCE_TZ)
    if end > now:
        raise ReportError(f"{month} is not over yet: it ends {end.isoformat(sep=' ')}")
    return Period(month, start, end)


class PrometheusAPI:
    """The few read calls of Prometheus' HTTP API the report needs, each bounded by `timeout`."""

    def __init__(self, url: str, timeout: float, basic_auth: tuple[str, Secret] | None = None) -> None:
        self.url = checked_url(url)
        self.timeout = timeout
        self.headers = {"Authorization": basic_authorization(*basic_auth)} if basic_auth else {}

    def get(self, path: str, params: dict[str, str] | None = None) -> dict:
        address = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(urllib.request.Request(address, headers=self.headers), timeout=self.timeout) as reply:
                answer = json.load(reply)
        except urllib.error.HTTPError as exc:
            raise ReportError(f"Prometheus answered {exc.code} to {path}: {_error_text(exc)}") from None
        except (OSError, ValueError) as exc:
            raise ReportError(f"cannot query Prometheus at {self.url}: {exc}") from None
        if answer.get("status") != "success":
            raise ReportError(f"Prometheus refused {path}: {answer.get('error', answer)}")
        return answer["data"]

    def major_version(self) -> int:
        version = self.get("/api/v1/status/buildinfo")["version"]
        return int(version.split(".")[0])

    def query(self, expr: str, at_ms: int) -> list[dict]:
        return self.get("/api/v1/query", {"query": expr, "time": _seconds(at_ms)})["result"]

    def query_range(self, expr: str, start_ms: int, end_ms: int, step_seconds: int) -> list[dict]:
        params = {"query": expr, "start": _seconds(start_ms), "end": _seconds(end_ms), "step": str(step_seconds)}
        return self.get("/api/v1/query_range", params)["result"]


def checked_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # Said without echoing the URL: it holds a password.
        raise ReportError("--prometheus: no credentials in the URL; use --basic-auth-user and --basic-auth-password-file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReportError(f"--prometheus: expected http(s)://HOST:PORT[/PATH], got {url!r}")
    return url.rstrip("/")


def basic_authorization(user: str, password: Secret) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password.reveal()}".encode("utf-8")).decode("ascii")


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read().decode("utf-8"))["error"]
    except (ValueError, KeyError, OSError):
        return exc.reason


def epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * MS)


def _seconds(ms: int) -> str:
    return f"{ms // MS}.{ms % MS:03d}"


def window_ms(span_ms: int, prometheus_major: int) -> int:
    """Range-selector width whose window, evaluated at the span's last millisecond, holds exactly the span.
    Prometheus 2 includes both ends of a range, Prometheus 3 only the newer one."""
    return span_ms - 1 if prometheus_major < 3 else span_ms


def fetch_minutes_by_day(api: PrometheusAPI, period: Period, major: int, counting: str) -> dict[tuple[str, str], list[int]]:
    """{(agency, service): [minutes of each local day]} where `counting` is sum_over_time (up minutes) or
    count_over_time (minutes with data) of the rule's 0/1 samples, one per minute."""
    day_ms = DAY_SECONDS * MS
    expr = f"sum by (agency, service) ({counting}({UP_MINUTES_SERIES}[{window_ms(day_ms, major)}ms]))"
    first_day_end = epoch_ms(period.start) + day_ms - 1
    series = api.query_range(expr, first_day_end, epoch_ms(period.end) - 1, DAY_SECONDS)
    minutes: dict[tuple[str, str], list[int]] = {}
    for one in series:
        by_day = minutes.setdefault((one["metric"].get("agency", ""), one["metric"].get("service", "")), [0] * period.days)
        for at, value in one["values"]:
            by_day[round((float(at) * MS - first_day_end) / day_ms)] = int(float(value))
    return minutes


def fetch_agencies(api: PrometheusAPI, period: Period, major: int) -> dict[str, Agency]:
    """Agencies of netmon_agency_info seen during the month; after a rename, the alphabetically last name."""
    month_ms = epoch_ms(period.end) - epoch_ms(period.start)
    expr = f"last_over_time({AGENCY_INFO_SERIES}[{window_ms(month_ms, major)}ms])"
    labels = sorted((series["metric"] for series in api.query(expr, epoch_ms(period.end) - 1)), key=lambda m: m.get("name", ""))
    return {
        m["agency"]: Agency(m["agency"], m.get("name") or m["agency"], m.get("district", ""), m.get("level", ""))
        for m in labels
        if "agency" in m
    }


def check_one_sample_per_minute(known: dict[tuple[str, str], list[int]]) -> None:
    for (agency, service), by_day in known.items():
        if max(by_day) > 24 * 60:
            raise ReportError(
                f"{agency}/{service}: {max(by_day)} samples of {UP_MINUTES_SERIES} in one day, more than one per "
                "minute: the rule group netmon-availability-minutes must keep `interval: 1m` (or Prometheus HA "
                "pairs must be deduplicated)"
            )


def build_report(api: PrometheusAPI, period: Period, generated_at: datetime) -> Report:
    major = api.major_version()
    up = fetch_minutes_by_day(api, period, major, "sum_over_time")
    known = fetch_minutes_by_day(api, period, major, "count_over_time")
    check_one_sample_per_minute(known)
    agencies = fetch_agencies(api, period, major)
    for agency_id, _ in known:
        agencies.setdefault(agency_id, Agency(agency_id, agency_id, "", ""))
    services = list(SERVICES) + [Service(name, name) for name in sorted({s for _, s in known} - {s.id for s in SERVICES})]
    no_data = [0] * period.days
    rows = tuple(
        Availability(agency, service, tuple(up.get(key, no_data)), tuple(known.get(key, no_data)))
        for agency in sorted(agencies.values(), key=lambda a: (a.district, a.id))
        for service in services
        for key in [(agency.id, service.id)]
    )
    return Report(period, rows, generated_at)


def render(report: Report, fmt: str) -> bytes:
    if fmt == "csv":
        from collector.report_render import render_csv

        return render_csv(report)
    if fmt == "html":
        from collector.report_render import render_html

        return render_html(report)
    from collector.report_pdf import render_pdf

    return render_pdf(report)


def add_report_command(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="monthly availability per agency and service from Prometheus (docs/report.md)"
    )
    report.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    report.add_argument("--month", required=True, help="YYYY-MM, a finished month in the province's time zone (UTC+7)")
    report.add_argument("--format", default="csv", choices=FORMATS)
    report.add_argument("--output", help="file to write (default: standard output)")
    report.add_argument("--timeout", type=float, default=60.0, help="seconds for each Prometheus query (default 60)")
    report.add_argument("--basic-auth-user", help="user for Prometheus' basic_auth_users (web.config.file)")
    report.add_argument("--basic-auth-password-file", type=_secret_file, help="file holding that user's password")


def _secret_file(path: str) -> Secret:
    try:
        return SecretFile.parse(path)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _basic_auth(args: argparse.Namespace) -> tuple[str, Secret] | None:
    if (args.basic_auth_user is None) != (args.basic_auth_password_file is None):
        raise ReportError("--basic-auth-user and --basic-auth-password-file go together")
    return (args.basic_auth_user, args.basic_auth_password_file) if args.basic_auth_user is not None else None


def run_report_command(args: argparse.Namespace) -> int:
    """Exit 0 with the report written, 1 with the reason on stderr."""
    try:
        now = datetime.now(PROVINCE_TZ)
        api = PrometheusAPI(args.prometheus, args.timeout, _basic_auth(args))
        report = build_report(api, month_period(args.month, now), now)
        content = render(report, args.format)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    if not any(row.known_minutes for row in report.rows):
        print(f"report: warning: no {UP_MINUTES_SERIES} samples in {args.month}: is availability.yml loaded?", file=sys.stderr)
    if args.output:
        Path(args.output).write_bytes(content)
    else:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
    return 0
