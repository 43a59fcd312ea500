"""The benchmarks' idle-machine guard: a ratio is printed only when the load stayed at or below 1.0."""

from __future__ import annotations

from tests.bench import idle


def test_ratio_is_reported_when_the_machine_stayed_idle():
    assert idle.ratio_line("agent / fping", 0.634, 0.42, 0.87) == "agent / fping: 0.63x"


def test_ratio_is_refused_when_busy_at_the_start():
    line = idle.ratio_line("agent / fping", 0.634, 1.37, 0.2)
    assert line == "agent / fping: machine not idle: load 1.37 > 1.0, ratio not reported"


def test_ratio_is_refused_when_the_load_rose_during_the_run():
    assert idle.refusal(0.3, 1.52) == "machine not idle: load 1.52 > 1.0, ratio not reported"


def test_a_load_of_exactly_one_is_still_idle():
    assert idle.refusal(1.0, 1.0) is None


def test_start_prints_the_load_and_cpu_count_and_returns_the_one_minute_load(capsys):
    load = idle.start()
    printed = capsys.readouterr().out
    assert printed.startswith(f"load average at start: {load:.2f} ")
    assert "CPUs)" in printed
    assert load >= 0.0
