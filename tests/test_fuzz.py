"""The fuzz targets of tests/fuzz in the test command: every input that ever found a bug is replayed (with the
fix, each passes its target's contract), every seed passes, and each target runs a short, fixed number of
coverage-guided executions under atheris (the long runs are in docs/fuzzing.md)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from tests.fuzz import run

REGRESSIONS = Path(__file__).resolve().parent / "fuzz" / "regressions"
CI_RUNS = {"config": 400, "imap": 1500, "http_response": 2000}  # the slower targets; the others run DEFAULT_RUNS
DEFAULT_RUNS = 4000


def regression_inputs() -> list[tuple[str, Path]]:
    return [(directory.name, path) for directory in sorted(REGRESSIONS.iterdir()) for path in sorted(directory.iterdir())]


@pytest.mark.parametrize("target, path", regression_inputs(), ids=lambda value: getattr(value, "name", value))
def test_every_input_that_found_a_bug_now_meets_its_targets_contract(target, path):
    importlib.import_module(f"tests.fuzz.fuzz_{target}").check(path.read_bytes())


@pytest.mark.parametrize("target", run.TARGETS)
def test_every_seed_meets_its_targets_contract(target):
    module = importlib.import_module(f"tests.fuzz.fuzz_{target}")
    for seed in module.seeds():
        module.check(seed)


@pytest.mark.parametrize("target", run.TARGETS)
def test_a_short_coverage_guided_run_finds_nothing(target, tmp_path):
    args = argparse.Namespace(runs=CI_RUNS.get(target, DEFAULT_RUNS), time=None, input_timeout=5, rss_mb=1024, seed=1,
                              corpus=str(tmp_path))  # from the seeds alone: the same run on every machine
    result = run.fuzz(target, args)
    assert result.ok, f"{target}: findings {result.findings}\n" + "\n".join(result.output.splitlines()[-40:])
    assert result.executions >= args.runs
