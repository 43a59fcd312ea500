"""What a monthly availability report holds (collector/report.py computes it, report_render.py and report_pdf.py
write it): the period, the services and agencies, and per agency and service the minutes up and with data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class ReportError(Exception):
    """A report that cannot be made; the message is for the operator."""


@dataclass(frozen=True)
class Service:
    id: str  # the `service` label of the targets
    name: str  # Vietnamese, for the report


SERVICES = (
    Service("network", "Mạng truyền số liệu chuyên dùng"),
    Service("mail", "Thư điện tử công vụ"),
    Service("portal", "Cổng/Trang thông tin điện tử"),
    Service("document", "Liên thông văn bản"),
)


@dataclass(frozen=True)
class Agency:
    id: str
    name: str
    district: str
    level: str


@dataclass(frozen=True)
class Period:
    month: str  # YYYY-MM
    start: datetime  # local midnight of the 1st
    end: datetime  # local midnight of the next month's 1st

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def minutes(self) -> int:
        return self.days * 24 * 60


@dataclass(frozen=True)
class Availability:
    agency: Agency
    service: Service
    up_by_day: tuple[int, ...]
    known_by_day: tuple[int, ...]  # minutes with a sample, up or down

    @property
    def up_minutes(self) -> int:
        return sum(self.up_by_day)

    @property
    def known_minutes(self) -> int:
        return sum(self.known_by_day)

    @property
    def outage_minutes(self) -> int:
        return self.known_minutes - self.up_minutes

    @property
    def unknown_minutes(self) -> int:
        return len(self.known_by_day) * 24 * 60 - self.known_minutes

    @property
    def percent(self) -> float | None:
        """Up minutes among the minutes with data; None when the service had no data all month."""
        return 100.0 * self.up_minutes / self.known_minutes if self.known_minutes else None


@dataclass(frozen=True)
class Report:
    period: Period
    rows: tuple[Availability, ...]  # by agency (district, id), then service in SERVICES order
    generated_at: datetime

    def for_service(self, service: Service) -> list[Availability]:
        return [row for row in self.rows if row.service == service]

    @property
    def services(self) -> list[Service]:
        return list(dict.fromkeys(row.service for row in self.rows))
