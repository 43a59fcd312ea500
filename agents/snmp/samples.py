"""Turn a poll's values into samples, the way snmp_exporter shapes them.

Numbers keep the device's value (a counter is its raw reading, exact below 2^53); `string` values become a
label of the metric's own name on a series of value 1 (sysName{sysName="core-1"} 1); `enum_info` becomes
NAME_info{NAME="enum name"} 1. Every table series carries the row's index and lookup labels.
"""

from __future__ import annotations

from agents.results import Metric, Sample
from agents.snmp import ber
from agents.snmp.labels import Labels, label_text
from agents.snmp.plan import Column, Plan, Scalar
from agents.snmp.poller import PollData, TableData


def data_samples(plan: Plan, data: PollData) -> list[Sample]:
    samples: list[Sample] = []
    for scalar in plan.scalars:
        value = data.scalars.get(scalar.oid)
        if value is not None:
            sample = _sample(scalar, value, ())
            if sample is not None:
                samples.append(sample)
    for table in data.tables:
        samples += _table_samples(table)
    return samples


def _table_samples(table: TableData) -> list[Sample]:
    columns = [column for column in table.plan.columns if column.metric is not None]
    sources = [(column, table.fresh[column.name] if column.name in table.fresh else table.cache.values.get(column.name, {}))
               for column in columns]
    samples: list[Sample] = []
    append = samples.append
    for row in table.rows:
        labels = table.cache.row_labels(table.plan, row)
        if labels is None:
            continue
        for column, values in sources:
            value = values.get(row)
            if value is None:
                continue
            if column.type in ("counter", "gauge") and isinstance(value, int):
                append(Sample(column.metric, float(value), labels))  # type: ignore[arg-type]
            else:
                sample = _sample(column, value, labels)
                if sample is not None:
                    append(sample)
    return samples


def _sample(spec: Column | Scalar, value: ber.Value, labels: Labels) -> Sample | None:
    metric: Metric = spec.metric  # type: ignore[assignment]
    if spec.type in ("counter", "gauge"):
        return Sample(metric, float(value), labels) if isinstance(value, int) else None
    if spec.type == "enum_info":
        text = spec.enum.get(value, label_text(value)) if isinstance(value, int) else label_text(value)
    else:
        text = label_text(value)
    return Sample(metric, 1.0, tuple(sorted(labels + ((spec.name, text),))))
