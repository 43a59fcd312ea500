"""The Prometheus text exposition format (0.0.4): the one place label values, HELP text and sample values are
escaped and formatted, for the agent's /metrics and the collector's."""

from __future__ import annotations

import math
from collections.abc import Iterable


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def format_value(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    return "NaN" if value != value else ("+Inf" if value > 0 else "-Inf")


def label_pairs(labels: Iterable[tuple[str, str]]) -> str:
    """`a="1",b="2"`: the inside of a series' braces."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)


def family_header(name: str, help_text: str, kind: str) -> str:
    return f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {kind}\n"
