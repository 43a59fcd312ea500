"""The monthly availability report against a real Prometheus holding a backfilled month (October 2026, UTC+7) of
the recording rule agency_service:probe_success:up1m with known outages and gaps; and the real rule file from raw probe results to the report (last test). The rule's
own cases are promtool unit tests (config/prometheus/rules/tests/availability_test.yml, run by tests/test_rules.py)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Iterator

import bcrypt
import pytest

from collector.report import PROVINCE_TZ, SERVICES, Agency, PrometheusAPI, build_report, month_period
from collector.report_render import CSV_COLUMNS
from tests.support.ports import free_port
from tests.support.procs import running
from tests.support.require import require_binary

ROOT = Path(__file__).resolve().parent.parent
MONTH = "2026-10"
MONTH_START = datetime(2026, 10, 1, tzinfo=PROVINCE_TZ)
MONTH_END = datetime(2026, 11, 1, tzinfo=PROVINCE_TZ)
MONTH_MINUTES = 31 * 24 * 60  # 44640
# Data runs from 4 hours before to 8 hours after the month, so UTC month boundaries would count different minutes.
DATA_START = MONTH_START - timedelta(hours=4)
DATA_END = MONTH_END + timedelta(hours=8)
UP_SERIES = "agency_service:probe_success:up1m"

SO_TTTT = Agency("so-tttt", "Sở Thông tin và Truyền thông", "tp-my-tho", "department")
XA_TAN_MY_CHANH = Agency("xa-tan-my-chanh", "Ủy ban nhân dân xã Tân Mỹ Chánh", "tp-my-tho", "commune")
SO_Y_TE = Agency("so-y-te", "Sở Y tế", "tp-my-tho", "department")  # in the inventory, no service data at all


def local(day: int, hour: int, minute: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=PROVINCE_TZ)


@dataclass(frozen=True)
class InjectedSeries:
    agency: Agency
    service: str
    down: tuple[tuple[datetime, datetime], ...] = ()  # [from, to) local
    missing: tuple[tuple[datetime, datetime], ...] = ()
    offset_seconds: float = 0.0  # where in its minute the rule's evaluation falls


INJECTED = (
    InjectedSeries(SO_TTTT, "network", missing=((local(5, 10), local(5, 12)),)),
    InjectedSeries(SO_TTTT, "mail", down=((local(15, 8), local(15, 9, 30)),), offset_seconds=37.25),
    InjectedSeries(SO_TTTT, "portal", offset_seconds=59.999),
    InjectedSeries(SO_TTTT, "document", down=((local(20, 23, 45), local(21, 0, 15)),), offset_seconds=12.5),
    # Down in the first hour and the last minute of the month, and in the hours around it that belong to
    # September and November in UTC+7 (but to October in UTC).
    InjectedSeries(
        XA_TAN_MY_CHANH, "network",
        down=((DATA_START, local(1, 1)), (local(31, 23, 59), DATA_END)),
    ),
    InjectedSeries(XA_TAN_MY_CHANH, "mail"),
)


def inside(moment: datetime, spans: tuple[tuple[datetime, datetime], ...]) -> bool:
    return any(start <= moment < end for start, end in spans)


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f'{name}="{value}"' for name, value in labels.items())


def openmetrics_lines(series: InjectedSeries) -> Iterator[str]:
    agency = series.agency
    labels = labels_text({"agency": agency.id, "district": agency.district, "level": agency.level, "service": series.service})
    minute = DATA_START
    while minute < DATA_END:
        if not inside(minute, series.missing):
            value = 0 if inside(minute, series.down) else 1
            yield f"{UP_SERIES}{{{labels}}} {value} {minute.timestamp() + series.offset_seconds:.3f}\n"
        minute += timedelta(minutes=1)


def agency_info_lines(agency: Agency) -> Iterator[str]:
    labels = labels_text({"agency": agency.id, "name": agency.name, "district": agency.district, "level": agency.level})
    hour = DATA_START
    while hour < DATA_END:
        yield f"netmon_agency_info{{{labels}}} 1 {hour.timestamp():.3f}\n"
        hour += timedelta(hours=1)


def month_openmetrics() -> Iterator[str]:
    yield f"# TYPE {UP_SERIES} gauge\n"
    for series in INJECTED:
        yield from openmetrics_lines(series)
    yield "# TYPE netmon_agency_info gauge\n"
    for agency in (SO_TTTT, XA_TAN_MY_CHANH, SO_Y_TE):
        yield from agency_info_lines(agency)


def backfill(lines: Iterable[str], directory: Path) -> Path:
    """A TSDB data directory holding `lines` (OpenMetrics without the final # EOF)."""
    openmetrics, data = directory / "backfill.om", directory / "data"
    with openmetrics.open("w", encoding="utf-8") as out:
        out.writelines(lines)
        out.write("# EOF\n")
    # One block for the whole month: with the default 2h blocks promtool re-reads the file ~380 times (minutes).
    result = subprocess.run(
        [require_binary("promtool", "prometheus"), "tsdb", "create-blocks-from", "openmetrics",
         "--max-block-duration=1458h", str(openmetrics), str(data)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return data


@contextmanager
def prometheus_serving(data: Path, directory: Path, basic_auth: tuple[str, str] | None = None) -> Iterator[str]:
    """Prometheus on an existing data directory; retention long enough to keep last month's backfill."""
    config = directory / "prometheus.yml"
    config.write_text("global: {}\n", encoding="utf-8")
    port = free_port()
    argv = [
        require_binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}",
    ]
    if basic_auth:
        user, password = basic_auth
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (directory / "web.yml").write_text(f"basic_auth_users:\n  {user}: '{hashed}'\n", encoding="utf-8")
        argv.append(f"--web.config.file={directory / 'web.yml'}")
    with running(argv, log_path=str(directory / "prometheus.log")):
        wait_ready(f"http://127.0.0.1:{port}/-/ready", basic_auth)
        yield f"http://127.0.0.1:{port}"


def wait_ready(url: str, basic_auth: tuple[str, str] | None, timeout: float = 30.0) -> None:
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode()} if basic_auth else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@contextmanager
def prometheus_on_backfilled_month(directory: Path) -> Iterator[str]:
    with prometheus_serving(backfill(month_openmetrics(), directory), directory) as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prometheus_on_backfilled_month(tmp_path_factory.mktemp("report-prometheus")) as url:
        yield url


def run_report(prometheus_url: str, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "collector.cli", "report", "--prometheus", prometheus_url, *args]
    return subprocess.run(argv, capture_output=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def csv_rows(prometheus: str) -> dict[tuple[str, str], dict[str, str]]:
    result = run_report(prometheus, "--month", MONTH, "--format", "csv")
    assert result.returncode == 0, result.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(result.stdout.decode("utf-8-sig"))))
    return {(row["agency"], row["service"]): row for row in rows}


def expected_percent(outage_minutes: int, known_minutes: int = MONTH_MINUTES) -> str:
    return f"{100 * (known_minutes - outage_minutes) / known_minutes:.4f}"


def test_mail_down_for_90_minutes_is_99_7984_percent_available(csv_rows) -> None:
    row = csv_rows[(SO_TTTT.id, "mail")]
    assert (row["availability_percent"], row["outage_minutes"], row["unknown_minutes"]) == ("99.7984", "90", "0")
    assert expected_percent(90) == "99.7984"


def test_a_service_up_all_month_is_100_percent_available(csv_rows) -> None:
    row = csv_rows[(SO_TTTT.id, "portal")]
    assert (row["availability_percent"], row["outage_minutes"], row["unknown_minutes"]) == ("100.0000", "0", "0")


def test_minutes_without_data_are_unknown_not_outage_and_not_counted_as_up(csv_rows) -> None:
    row = csv_rows[(SO_TTTT.id, "network")]
    assert (row["availability_percent"], row["outage_minutes"], row["unknown_minutes"]) == ("100.0000", "0", "120")


def test_the_month_runs_from_local_midnight_to_local_midnight_in_utc_plus_7(csv_rows) -> None:
    """Down the first 60 minutes and the last minute of October in UTC+7, and in the hours around the month."""
    row = csv_rows[(XA_TAN_MY_CHANH.id, "network")]
    assert (row["outage_minutes"], row["unknown_minutes"]) == ("61", "0")
    assert row["availability_percent"] == expected_percent(61) == "99.8634"


def test_an_agency_without_any_data_has_every_minute_unknown_and_no_percentage(csv_rows) -> None:
    rows = [csv_rows[(SO_Y_TE.id, service.id)] for service in SERVICES]
    assert {(r["availability_percent"], r["outage_minutes"], r["unknown_minutes"]) for r in rows} == {("", "0", str(MONTH_MINUTES))}


def test_csv_has_one_row_per_agency_and_service_with_the_vietnamese_names(csv_rows) -> None:
    assert len(csv_rows) == 3 * len(SERVICES)
    row = csv_rows[(XA_TAN_MY_CHANH.id, "mail")]
    assert tuple(row) == CSV_COLUMNS
    assert row == {
        "month": MONTH, "agency": XA_TAN_MY_CHANH.id, "name": "Ủy ban nhân dân xã Tân Mỹ Chánh", "district": "tp-my-tho",
        "level": "commune", "service": "mail", "service_name": "Thư điện tử công vụ", "availability_percent": "100.0000",
        "outage_minutes": "0", "unknown_minutes": "0", "minutes": str(MONTH_MINUTES),
    }


def test_csv_starts_with_a_utf8_byte_order_mark_for_excel(prometheus: str) -> None:
    result = run_report(prometheus, "--month", MONTH)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b"\xef\xbb\xbfmonth,agency,name,")


def test_outage_minutes_count_on_the_local_day_they_happened(prometheus: str) -> None:
    """The document outage runs 23:45–00:15 across the night of 20 to 21 October (UTC+7)."""
    report = build_report(PrometheusAPI(prometheus, 30), month_period(MONTH, datetime.now(PROVINCE_TZ)), datetime.now(PROVINCE_TZ))
    [row] = [r for r in report.rows if (r.agency.id, r.service.id) == (SO_TTTT.id, "document")]
    outage_by_day = {day + 1: known - up for day, (up, known) in enumerate(zip(row.up_by_day, row.known_by_day)) if known - up}
    assert outage_by_day == {20: 15, 21: 15}


def test_html_is_one_self_contained_page_with_the_vietnamese_names_and_a_chart_per_service(prometheus: str, tmp_path: Path) -> None:
    output = tmp_path / "report.html"
    result = run_report(prometheus, "--month", MONTH, "--format", "html", "--output", str(output))
    assert result.returncode == 0, result.stderr.decode()
    page = output.read_text(encoding="utf-8")
    assert SO_TTTT.name in page and XA_TAN_MY_CHANH.name in page
    assert page.count("<svg") == len(SERVICES) and page.count('<section data-service="') == len(SERVICES)
    assert "99.7984" in page
    assert not any(marker in page for marker in ("src=", "href=", "@import", "url("))


def test_pdf_has_a_summary_page_and_a_page_per_service_with_vietnamese_text(prometheus: str, tmp_path: Path) -> None:
    output = tmp_path / "report.pdf"
    result = run_report(prometheus, "--month", MONTH, "--format", "pdf", "--output", str(output))
    assert result.returncode == 0, result.stderr.decode()
    assert output.read_bytes().startswith(b"%PDF-")
    info = subprocess.run([require_binary("pdfinfo", "poppler-utils"), str(output)], capture_output=True, text=True, timeout=30)
    assert re.search(r"^Pages:\s+5$", info.stdout, flags=re.MULTILINE), info.stdout + info.stderr
    text = subprocess.run([require_binary("pdftotext", "poppler-utils"), str(output), "-"], capture_output=True, text=True, timeout=30).stdout
    assert SO_TTTT.name in text and "Ủy ban nhân dân xã Tân Mỹ Chánh" in text and "Liên thông văn bản" in text
    assert "99.7984" in text


def test_pdf_without_matplotlib_fails_with_how_to_install_it(prometheus: str, tmp_path: Path) -> None:
    blocked = "import sys; sys.modules['matplotlib'] = None; from collector.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", blocked, "report", "--prometheus", prometheus, "--month", MONTH, "--format", "pdf",
            "--output", str(tmp_path / "report.pdf")]
    result = subprocess.run(argv, capture_output=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "report: the PDF format needs matplotlib: pip install 'egov-netmon[report]'"
    assert not (tmp_path / "report.pdf").exists()


def test_a_month_without_any_rule_sample_warns_that_the_rule_may_be_missing(prometheus: str) -> None:
    result = run_report(prometheus, "--month", "2026-08")
    assert result.returncode == 0
    assert result.stdout.decode("utf-8-sig").splitlines() == [",".join(CSV_COLUMNS)]
    assert result.stderr.decode().strip() == (
        f"report: warning: no {UP_SERIES} samples in 2026-08: is availability.yml loaded?"
    )


def test_basic_auth_reaches_prometheus_and_the_password_shows_nowhere(tmp_path: Path) -> None:
    password = "report-password-7f3a9c"
    (tmp_path / "password").write_text(password + "\n", encoding="utf-8")
    (tmp_path / "wrong").write_text("not-the-password\n", encoding="utf-8")
    mail = InjectedSeries(SO_TTTT, "mail", down=((local(15, 8), local(15, 9, 30)),))
    lines = [f"# TYPE {UP_SERIES} gauge\n", *openmetrics_lines(mail)]
    with prometheus_serving(backfill(lines, tmp_path), tmp_path, ("report", password)) as url:
        authorized = run_report(url, "--month", MONTH, "--basic-auth-user", "report", "--basic-auth-password-file", str(tmp_path / "password"))
        refused = run_report(url, "--month", MONTH, "--basic-auth-user", "report", "--basic-auth-password-file", str(tmp_path / "wrong"))
        anonymous = run_report(url, "--month", MONTH)
    assert authorized.returncode == 0, authorized.stderr.decode()
    assert ",mail,Thư điện tử công vụ,99.7984,90,0,44640" in authorized.stdout.decode("utf-8-sig")
    for result in (refused, anonymous):
        assert result.returncode == 1
        assert result.stderr.decode().strip() == "report: Prometheus answered 401 to /api/v1/status/buildinfo: Unauthorized"
    encoded = base64.b64encode(f"report:{password}".encode()).decode()
    outputs = [part.decode("utf-8", "replace") for result in (authorized, refused, anonymous) for part in (result.stdout, result.stderr)]
    assert not [text for text in outputs if password in text or encoded in text]


def test_credentials_in_the_prometheus_url_are_refused_without_echoing_them() -> None:
    result = run_report("http://report:s3cret-in-url@127.0.0.1:9/", "--month", MONTH)
    assert result.returncode == 1
    assert "s3cret-in-url" not in result.stderr.decode()
    assert result.stderr.decode().strip() == (
        "report: --prometheus: no credentials in the URL; use --basic-auth-user and --basic-auth-password-file"
    )


def test_an_unfinished_month_is_refused(prometheus: str) -> None:
    result = run_report(prometheus, "--month", "2999-01")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "report: 2999-01 is not over yet: it ends 2999-02-01 00:00:00+07:00"


def test_an_unreachable_prometheus_is_reported_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_report(url, "--month", MONTH)
    assert result.returncode == 1
    assert result.stderr.decode().startswith(f"report: cannot query Prometheus at {url}: ")
    assert result.stdout == b""


# --- the recording rule of config/prometheus/rules/availability.yml, from raw probe results to the report

RULES = ROOT / "config" / "prometheus" / "rules" / "availability.yml"
PROBES_FROM, PROBES_TO = local(10, 7, month=9), local(10, 12, month=9)
RULE_FROM, RULE_TO = local(10, 8, month=9), local(10, 11, month=9)
SMTP_DOWN = (local(10, 8, 30, month=9), local(10, 9, month=9))


PROBE_STEP = timedelta(seconds=15)
MAIL_TARGETS = (
    ({"target": "mail-smtps", "module": "smtps", "service": "mail"}, (SMTP_DOWN,)),
    ({"target": "mail-imaps", "module": "imaps", "service": "mail"}, ()),
)
OTHER_TARGETS = (
    ({"target": "cong-tinh", "module": "http_2xx", "service": "portal"}, ()),
    ({"target": "localhost", "module": "icmp"}, ((PROBES_FROM, PROBES_TO),)),
)


def probe_times() -> Iterator[datetime]:
    moment = PROBES_FROM
    while moment < PROBES_TO:
        yield moment
        moment += PROBE_STEP


def probe_results() -> Iterator[str]:
    """probe_success as Prometheus scrapes it from the collector every 15 s: two mail targets (SMTP failing for
    30 minutes), a portal, and a target without a service."""
    yield "# TYPE probe_success gauge\n"
    identity = {"agency": SO_TTTT.id, "agent": "so-tttt-1", "district": SO_TTTT.district, "level": SO_TTTT.level}
    for labels, down in MAIL_TARGETS + OTHER_TARGETS:
        for moment in probe_times():
            yield f"probe_success{{{labels_text({**identity, **labels})}}} {0 if inside(moment, down) else 1} {moment.timestamp():.3f}\n"


def mail_minute_is_up(evaluated_at: datetime) -> bool:
    """docs/report.md's definition applied to the injected results: every mail target succeeded in at least half
    of its probes in the minute up to the evaluation (both ends included, as Prometheus 2 does)."""
    window = [moment for moment in probe_times() if evaluated_at - timedelta(minutes=1) <= moment <= evaluated_at]
    return all(sum(not inside(moment, down) for moment in window) >= len(window) / 2 for _, down in MAIL_TARGETS)


def rule_evaluation_times(prometheus_url: str) -> list[datetime]:
    """Prometheus (and promtool) evaluate a group at a fixed offset in the minute, hashed from its name and file."""
    [series] = query(prometheus_url, f'{UP_SERIES}{{service="mail"}}[6h]', PROBES_TO + timedelta(hours=1))
    return [datetime.fromtimestamp(float(at), PROVINCE_TZ) for at, _ in series["values"]]


def query(prometheus_url: str, expr: str, at: datetime) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "time": f"{at.timestamp():.3f}"})
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/query?{params}", timeout=10) as reply:
        return json.load(reply)["data"]["result"]


def test_the_recording_rule_turns_probe_results_into_the_reported_minutes(tmp_path: Path) -> None:
    """Raw results → the real rule file evaluated by promtool against Prometheus → a second Prometheus → report."""
    rule_blocks = tmp_path / "rule-data"
    with prometheus_serving(backfill(probe_results(), tmp_path), tmp_path) as raw:
        evaluated = subprocess.run(
            [require_binary("promtool", "prometheus"), "tsdb", "create-blocks-from", "rules", "--quiet",
             f"--start={RULE_FROM.timestamp():.0f}", f"--end={RULE_TO.timestamp():.0f}", f"--url={raw}",
             f"--output-dir={rule_blocks}", str(RULES)],
            capture_output=True, text=True, timeout=120,
        )
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    (tmp_path / "rules").mkdir()
    with prometheus_serving(rule_blocks, tmp_path / "rules") as recorded:
        evaluations = rule_evaluation_times(recorded)
        result = run_report(recorded, "--month", "2026-09")
    assert result.returncode == 0, result.stderr.decode()
    rows = {(row["agency"], row["service"]): row for row in csv.DictReader(io.StringIO(result.stdout.decode("utf-8-sig")))}
    assert set(rows) == {(SO_TTTT.id, service.id) for service in SERVICES}
    mail, portal = rows[(SO_TTTT.id, "mail")], rows[(SO_TTTT.id, "portal")]
    september_minutes = 30 * 24 * 60
    assert len(evaluations) == 180  # one a minute over the 3 hours
    down = sum(not mail_minute_is_up(at) for at in evaluations)
    assert down in (29, 30, 31)  # the 30-minute outage, give or take the minute windows cut at its edges
    assert (mail["outage_minutes"], mail["unknown_minutes"]) == (str(down), str(september_minutes - 180))
    assert mail["availability_percent"] == f"{100 * (180 - down) / 180:.4f}"
    assert (portal["availability_percent"], portal["outage_minutes"], portal["unknown_minutes"]) == ("100.0000", "0", str(september_minutes - 180))
    assert rows[(SO_TTTT.id, "network")]["unknown_minutes"] == str(september_minutes)
