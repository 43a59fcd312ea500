"""What a table keeps between polls: label columns, slower columns, and when each was last walked.

Label columns (ifName, ifAlias, ifDescr, ifType) change rarely but cost as many varbinds as a counter
column, so they are re-walked on their own slower cadence, at once when the device rebooted or the table's
row count changed, and for rows the cache has never seen. A row's label set is built once per label walk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agents.snmp import ber
from agents.snmp.plan import Column, TablePlan
from agents.snmp.schema import IndexSpec

Labels = tuple[tuple[str, str], ...]
Values = dict[bytes, ber.Value]


@dataclass(slots=True)
class TableCache:
    labels_at: float = -math.inf
    slow_at: float = -math.inf
    row_count: ber.Value = None
    values: dict[str, Values] = field(default_factory=dict)  # last walk of each non-`poll` column, by name
    known_rows: frozenset[bytes] = frozenset()  # rows that existed at the last label or slow walk
    triggers: dict[str, Values] = field(default_factory=dict)  # last values of refresh_slow_on_change columns
    fallbacks: frozenset[str] = frozenset()  # fallback columns in use: some row lacked their primary column
    _row_labels: dict[bytes, Labels | None] = field(default_factory=dict)

    def invalidate(self) -> None:
        """Re-walk labels and slow columns at the next chance (reboot, row count change)."""
        self.labels_at = self.slow_at = -math.inf

    def note_row_count(self, row_count: ber.Value) -> None:
        if row_count is not None and self.row_count is not None and row_count != self.row_count:
            self.invalidate()
        self.row_count = row_count

    def store_labels(self, columns: tuple[Column, ...], walked: dict[str, Values], rows: list[bytes], now: float) -> None:
        self._keep(columns, walked)
        self.known_rows = frozenset(rows)
        self._row_labels.clear()
        self.labels_at = now

    def store_slow(self, columns: tuple[Column, ...], walked: dict[str, Values], rows: list[bytes], now: float) -> None:
        self._keep(columns, walked)
        self.known_rows = frozenset(rows)
        self.slow_at = now

    def _keep(self, columns: tuple[Column, ...], walked: dict[str, Values]) -> None:
        for column in columns:
            if column.name in walked:
                self.values[column.name] = walked[column.name]
            else:  # a fallback not in use: its old values must not be served
                self.values.pop(column.name, None)

    def in_use(self, columns: tuple[Column, ...]) -> tuple[Column, ...]:
        """The columns to walk: fallbacks only while some row lacks their primary column."""
        return tuple(column for column in columns if column.fallback_for is None or column.name in self.fallbacks)

    def fallbacks_due(self, table: TablePlan, walked: dict[str, Values], rows: list[bytes]) -> tuple[Column, ...]:
        """Note which fallbacks the rows need, judged on the primary columns just walked; those still to walk now."""
        using = set(self.fallbacks)
        due = []
        for column in table.columns:
            primary = walked.get(column.fallback_for) if column.fallback_for is not None else None
            if primary is None:
                continue
            if any(row not in primary for row in rows):
                using.add(column.name)
                if column.name not in walked:
                    due.append(column)
            else:
                using.discard(column.name)
        self.fallbacks = frozenset(using)
        return tuple(due)

    def triggers_changed(self, table: TablePlan, walked: dict[str, Values]) -> bool:
        """Whether a refresh_slow_on_change column changed for a known row since the last poll; remembers them."""
        changed = False
        for column in table.columns:
            if column.refresh_slow_on_change and column.name in walked:
                before = self.triggers.get(column.name)
                now_values = walked[column.name]
                if before is not None and any(before.get(row, value) != value for row, value in now_values.items()):
                    changed = True
                self.triggers[column.name] = now_values
        return changed

    def row_labels(self, table: TablePlan, row: bytes) -> Labels | None:
        """Index and lookup labels of a row, sorted; None if the index does not fit the table's index spec."""
        labels = self._row_labels.get(row, False)
        if labels is False:
            labels = self._row_labels[row] = self._build_labels(table, row)
        return labels  # type: ignore[return-value]

    def _build_labels(self, table: TablePlan, row: bytes) -> Labels | None:
        index = index_labels(table.index, row)
        if index is None:
            return None
        lookups = [(column.name, label_text(self.values.get(column.name, {}).get(row, b""))) for column in table.columns
                   if column.type == "lookup"]
        return tuple(sorted(index + lookups))


def index_labels(specs: tuple[IndexSpec, ...], row: bytes) -> list[tuple[str, str]] | None:
    subids = ber.decode_subids(row)
    labels = []
    position = 0
    for spec in specs:
        if spec.type == "integer":
            width = 1
        elif spec.type == "ipv4":
            width = 4
        else:
            width = len(subids) - position
        part = subids[position:position + width]
        if len(part) != width or width == 0:
            return None
        labels.append((spec.name, ".".join(map(str, part))))
        position += width
    return labels if position == len(subids) else None


def label_text(value: ber.Value) -> str:
    """A value as label text: strings as UTF-8 (invalid bytes replaced), numbers and OIDs as written."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
