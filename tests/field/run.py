"""Run the province field trial by hand, full size, and write its report:

    python -m tests.field.run --agencies 20 --outage 120 --report field-trial-report.md

Scenarios 1-5 (tests/field/test_field_trial.py) run at the given size; scenarios 6-7 (tests/field/test_load_abuse.py,
when present) run their full variant (NETMON_FIELD_FULL=1) unless --skip-load. Needs root, as CI."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

import pytest

from tests.field.conftest import AGENCIES_ENV, OUTAGE_ENV, REPORT_ENV

HERE = Path(__file__).resolve().parent
LOAD_TESTS = HERE / "test_load_abuse.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.field.run", description="The province field trial at full size, with a markdown report (needs root)."
    )
    parser.add_argument("--agencies", type=int, default=20, help="agency namespaces, each with an agent (default 20)")
    parser.add_argument("--outage", type=float, default=120.0, help="seconds of each outage (default 120)")
    parser.add_argument("--report", type=Path, default=Path(f"field-trial-report-{dt.date.today()}.md"),
                        help="markdown report of scenarios 1-5 (default field-trial-report-DATE.md)")
    parser.add_argument("--skip-load", action="store_true", help="leave out scenarios 6-7 (test_load_abuse.py)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = args.report.resolve()
    os.environ.update({
        AGENCIES_ENV: str(args.agencies), OUTAGE_ENV: f"{args.outage:g}", REPORT_ENV: str(report),
        "NETMON_FIELD_FULL": "1",
    })
    files = [str(HERE / "test_field_trial.py")]
    if LOAD_TESTS.exists() and not args.skip_load:
        files.append(str(LOAD_TESTS))
    code = pytest.main(["-p", "no:cacheprovider", "-v", "-o", "timeout=0", *files])
    print(f"report of scenarios 1-5: {report}", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
