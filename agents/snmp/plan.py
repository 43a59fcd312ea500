"""A device's profiles compiled for polling: encoded OIDs, metric objects, columns grouped by refresh cadence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agents.results import Metric
from agents.snmp.ber import encode_oid
from agents.snmp.schema import IndexSpec, MetricSpec, MetricType, Profile, Refresh


@dataclass(frozen=True, slots=True)
class Column:
    """One walked column: a metric (metric is set) or a lookup label (label is set)."""

    prefix: bytes  # encoded column OID: an instance OID is prefix + encoded index
    name: str
    type: MetricType | Literal["lookup"]
    refresh: Refresh
    metric: Metric | None = None
    enum: dict[int, str] = field(default_factory=dict)
    refresh_slow_on_change: bool = False
    fallback_for: str | None = None  # the column this one stands in for where a row lacks it


@dataclass(frozen=True, slots=True)
class TablePlan:
    name: str
    index: tuple[IndexSpec, ...]
    row_count_oid: bytes | None
    columns: tuple[Column, ...]

    def group(self, refresh: Refresh) -> tuple[Column, ...]:
        return tuple(column for column in self.columns if column.refresh == refresh)


@dataclass(frozen=True, slots=True)
class Scalar:
    oid: bytes
    name: str
    type: MetricType
    metric: Metric
    enum: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    scalars: tuple[Scalar, ...]
    tables: tuple[TablePlan, ...]


def _metric(spec: MetricSpec) -> Metric:
    name = f"{spec.name}_info" if spec.type == "enum_info" else spec.name
    # Raw SNMP counters keep the device's value (snmp_exporter semantics): exposed as read, typed counter.
    if spec.type == "counter":
        return Metric(name, spec.help or f"{spec.name} - {spec.oid}", "counter", cumulative=True)
    return Metric(name, spec.help or f"{spec.name} - {spec.oid}", "gauge")


def _enum(spec: MetricSpec) -> dict[int, str]:
    return {int(key): value for key, value in spec.enum.items()}


def compile_profiles(profiles: tuple[Profile, ...]) -> Plan:
    """One plan for a device: scalars deduplicated by name, tables in profile order."""
    scalars: dict[str, Scalar] = {}
    tables = []
    for profile in profiles:
        for spec in profile.scalars:
            scalars.setdefault(spec.name, Scalar(encode_oid(spec.oid), spec.name, spec.type, _metric(spec), _enum(spec)))
        for table in profile.tables:
            columns = [Column(encode_oid(lookup.oid), lookup.name, "lookup", "labels") for lookup in table.lookups]
            columns += [
                Column(encode_oid(spec.oid), spec.name, spec.type, spec.refresh, _metric(spec), _enum(spec),
                       spec.refresh_slow_on_change, spec.fallback_for)
                for spec in table.metrics
            ]
            row_count = encode_oid(table.row_count_oid) if table.row_count_oid else None
            tables.append(TablePlan(table.name, tuple(table.index), row_count, tuple(columns)))
    return Plan(tuple(scalars.values()), tuple(tables))
