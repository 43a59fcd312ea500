"""One province testbed per test module. The CI variant is small; the hand-run full variant
(`python -m tests.field.run`) sets the environment variables below."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.field.report import TrialReport
from tests.field.testbed import Province, TrialParams, field_testbed

AGENCIES_ENV = "NETMON_FIELD_AGENCIES"
OUTAGE_ENV = "NETMON_FIELD_OUTAGE"
REPORT_ENV = "NETMON_FIELD_REPORT"


def trial_params() -> TrialParams:
    defaults = TrialParams()
    return TrialParams(
        agencies=int(os.environ.get(AGENCIES_ENV, defaults.agencies)),
        outage_seconds=float(os.environ.get(OUTAGE_ENV, defaults.outage_seconds)),
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Iterator[TrialReport]:
    trial = TrialReport(trial_params())
    yield trial
    trial.write(tmp_path_factory.mktemp("report") / "field-trial.md")
    if os.environ.get(REPORT_ENV):
        trial.write(Path(os.environ[REPORT_ENV]))


@pytest.fixture(scope="module")
def bed(tmp_path_factory, report: TrialReport) -> Iterator[Province]:
    with field_testbed(report.params, tmp_path_factory.mktemp("province")) as testbed:
        yield testbed
