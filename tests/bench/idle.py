"""Idle-machine guard for the benchmarks: a ratio against a peer is reported only on an idle machine.

A loaded machine flatters ratios against a C tool (its cost rises with the neighbours' more than ours does), so
every script calls `start()` before measuring (it prints the load average and the CPU count first) and prints
each ratio, last, through `ratio_line()`: above MAX_LOAD (1-minute load at the start, or at the end) the line
says why no ratio is reported, and the raw figures printed before it stay the only result.

    load = idle.start()
    ...                                    # measure, print raw figures
    print(idle.ratio_line("agent / fping, CPU per echo", ours / theirs, load))
"""

from __future__ import annotations

import os

MAX_LOAD = 1.0


def start() -> float:
    """Print the load averages and CPU count; return the 1-minute load, for ratio_line()."""
    one, five, fifteen = os.getloadavg()
    print(f"load average at start: {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)", flush=True)
    return one


def refusal(load_at_start: float, load_at_end: float) -> str | None:
    """Why no ratio may be reported after a run with these 1-minute loads, or None on an idle machine."""
    load = max(load_at_start, load_at_end)
    if load > MAX_LOAD:
        return f"machine not idle: load {load:.2f} > {MAX_LOAD}, ratio not reported"
    return None


def ratio_line(label: str, value: float, load_at_start: float, load_at_end: float | None = None) -> str:
    """`label: 0.63x`, or the refusal when the machine was busy at the start or is now (read now if not given)."""
    end = os.getloadavg()[0] if load_at_end is None else load_at_end
    reason = refusal(load_at_start, end)
    return f"{label}: {reason}" if reason else f"{label}: {value:.2f}x"
