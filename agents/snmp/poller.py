"""One poll of one device: a GET of the scalars, then one multi-column walk per table, tables concurrently.

Which columns a table walk covers depends on the device's caches: `poll` columns always, label and `slow`
columns when their cadence is due, the device rebooted or the row count changed. Rows the label cache has
never seen, or a change in a `refresh_slow_on_change` column (ifOperStatus), add one follow-up walk of
just the missing columns, so no series is ever emitted with stale or missing labels. A `fallback_for` column
(ifInOctets for ifHCInOctets) is walked only while some row lacks its primary column: on the poll that finds
the lack, in one more walk; on later polls, with the others.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agents.snmp import ber
from agents.snmp.device import DeviceState
from agents.snmp.labels import TableCache, Values
from agents.snmp.plan import Column, TablePlan
from agents.snmp.walker import Walker

SYS_UPTIME = ber.encode_oid("1.3.6.1.2.1.1.3.0")
SYS_NAME = ber.encode_oid("1.3.6.1.2.1.1.5.0")


@dataclass(frozen=True, slots=True)
class Cadence:
    label_refresh: float
    slow_refresh: float


@dataclass(slots=True)
class TableData:
    plan: TablePlan
    cache: TableCache
    fresh: dict[str, Values]  # columns walked in this poll, by name
    rows: list[bytes]


@dataclass(slots=True)
class PollData:
    scalars: dict[bytes, ber.Value]
    tables: list[TableData]
    rebooted: bool


async def poll(walker: Walker, device: DeviceState, cadence: Cadence, now: float) -> PollData:
    plan = device.plan
    wanted = [SYS_UPTIME, SYS_NAME, *(scalar.oid for scalar in plan.scalars)]
    wanted += [table.row_count_oid for table in plan.tables if table.row_count_oid is not None]
    scalars = await walker.get(list(dict.fromkeys(wanted)))
    uptime = scalars.get(SYS_UPTIME)
    rebooted = isinstance(uptime, int) and device.uptime.update(uptime, now)
    for table in plan.tables:
        cache = device.tables[table.name]
        if rebooted:
            cache.invalidate()
        if table.row_count_oid is not None:
            cache.note_row_count(scalars.get(table.row_count_oid))
    tables = await asyncio.gather(*(_poll_table(walker, table, device.tables[table.name], cadence, now) for table in plan.tables))
    return PollData(scalars, list(tables), rebooted)


async def _poll_table(walker: Walker, table: TablePlan, cache: TableCache, cadence: Cadence, now: float) -> TableData:
    label_columns, slow_columns = table.group("labels"), table.group("slow")
    labels_due = bool(label_columns) and now - cache.labels_at >= cadence.label_refresh
    slow_due = bool(slow_columns) and now - cache.slow_at >= cadence.slow_refresh
    columns = table.group("poll") + (label_columns if labels_due else ()) + (slow_columns if slow_due else ())
    fresh = await _walk(walker, cache.in_use(columns))
    rows = _rows(table, cache, fresh)
    new_rows = not cache.known_rows.issuperset(rows)
    triggered = cache.triggers_changed(table, fresh)
    follow_up: tuple[Column, ...] = ()
    if label_columns and not labels_due and new_rows:
        labels_due, follow_up = True, follow_up + label_columns
    if slow_columns and not slow_due and (triggered or new_rows):
        slow_due, follow_up = True, follow_up + slow_columns
    if follow_up:
        fresh.update(await _walk(walker, cache.in_use(follow_up)))
    fallbacks = cache.fallbacks_due(table, fresh, rows)
    if fallbacks:  # rows lack a column (no ifXTable, SNMPv1): its fallback joins the walks from this poll on
        fresh.update(await _walk(walker, fallbacks))
    if labels_due:
        cache.store_labels(label_columns, fresh, rows, now)
    if slow_due:
        cache.store_slow(slow_columns, fresh, rows, now)
    return TableData(table, cache, fresh, rows)


async def _walk(walker: Walker, columns: tuple[Column, ...]) -> dict[str, Values]:
    if not columns:
        return {}
    results = await walker.walk([column.prefix for column in columns])
    return {column.name: values for column, values in zip(columns, results)}


def _rows(table: TablePlan, cache: TableCache, fresh: dict[str, Values]) -> list[bytes]:
    """The table's rows now: those of the columns walked every poll (or, without any, of the cached ones)."""
    sources = [fresh[column.name] for column in table.group("poll") if column.name in fresh]
    if not sources:
        sources = [fresh.get(column.name) or cache.values.get(column.name, {}) for column in table.columns
                   if column.type != "lookup"]
    rows: dict[bytes, None] = {}
    for values in sources:
        rows.update(dict.fromkeys(values))
    return list(rows)
