"""The Prometheus text exposition format (0.0.4): the one place label values, HELP text and sample values are
escaped and formatted, for the agent's /metrics and the collector's.

`render_families` writes prometheus_client families (self-metrics, host collectors) with the same bytes as
prometheus_client's `generate_latest`, without its per-sample name validation and escaping-scheme dispatch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# prometheus_client's OpenMetrics families in the 0.0.4 text format: (name suffix, type written)
_TEXT_TYPES = {
    "counter": ("_total", "counter"),
    "info": ("_info", "gauge"),
    "stateset": ("", "gauge"),
    "gaugehistogram": ("", "histogram"),
    "unknown": ("", "untyped"),
}
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")  # samples written as gauges of their own after the family


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def format_value(value: float) -> str:
    """As Go (and prometheus_client) write it: from 1e6 on, with an exponent (1.234567e+06)."""
    text = repr(float(value))
    if value < 1e6:
        return "-Inf" if text == "-inf" else text
    if text == "inf" or text == "nan":
        return "+Inf" if text == "inf" else "NaN"
    dot = text.find(".")
    if dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def label_pairs(labels: Iterable[tuple[str, str]]) -> str:
    """`a="1",b="2"`: the inside of a series' braces."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)


def family_header(name: str, help_text: str, kind: str) -> str:
    return f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {kind}\n"


def sample_line(name: str, labels: Mapping[str, str], value: float, timestamp: float | None = None) -> str:
    """One series, labels in name order (as prometheus_client writes them)."""
    label_text = f"{{{label_pairs(sorted(labels.items()))}}}" if labels else ""
    stamp = "" if timestamp is None else f" {int(float(timestamp) * 1000):d}"
    return f"{name}{label_text} {format_value(value)}{stamp}\n"


def render_families(families: Iterable[Any]) -> Iterator[str]:
    """prometheus_client families (`name`, `type`, `documentation`, `samples`), one string per family."""
    for family in families:
        suffix, kind = _TEXT_TYPES.get(family.type, ("", family.type))
        lines = [family_header(family.name + suffix, family.documentation, kind)]
        openmetrics_only: dict[str, list[str]] = {}
        for sample in family.samples:
            line = sample_line(sample.name, sample.labels, sample.value, sample.timestamp)
            extra = sample.name[len(family.name):] if sample.name.startswith(family.name) else ""
            if extra in _OPENMETRICS_ONLY:
                openmetrics_only.setdefault(extra, []).append(line)
            else:
                lines.append(line)
        for extra, more in sorted(openmetrics_only.items()):
            lines.append(family_header(family.name + extra, family.documentation, "gauge"))
            lines += more
        yield "".join(lines)
