"""Measured figures of a field-trial run, written as markdown when the testbed is torn down."""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass, field
from pathlib import Path

from tests.field.testbed import TrialParams


@dataclass
class TrialReport:
    params: TrialParams
    sections: dict[str, list[str]] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)

    def add(self, scenario: str, line: str) -> None:
        self.sections.setdefault(scenario, []).append(line)

    def table(self, scenario: str, header: tuple[str, ...], rows: list[tuple]) -> None:
        self.add(scenario, "| " + " | ".join(header) + " |")
        self.add(scenario, "|" + "---|" * len(header))
        for row in rows:
            self.add(scenario, "| " + " | ".join(str(cell) for cell in row) + " |")
        self.add(scenario, "")

    def verdict(self, scenario: str, outcome: str) -> None:
        self.verdicts[scenario] = outcome

    def markdown(self) -> str:
        p = self.params
        lines = [
            "# Field trial report",
            "",
            f"- run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} on {platform.node()} "
            f"({platform.machine()}, Linux {platform.release()})",
            f"- agencies: {p.agencies} ({p.push_agencies} push behind NAT, {p.agencies - p.push_agencies} pull); "
            f"outages {p.outage_seconds:g} s; probe interval {p.probe_interval:g} s; collector TTL {p.ttl_seconds:g} s; "
            f"alert `for:` shortened to {p.alert_for}",
            "",
        ]
        for scenario, body in sorted(self.sections.items()):
            lines += [f"## {scenario}: {self.verdicts.get(scenario, 'FAILED (or stopped early)')}", "", *body, ""]
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown(), encoding="utf-8")
