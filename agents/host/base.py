"""The one interface every host collector implements, and the readings it returns.

A host collector is node_exporter's `Collector`: a small object whose `collect()` reads the machine
now and returns readings of node_exporter-named metrics. Readings are plain data: only
`agents.host.collector` turns them into prometheus_client families. Unlike probe samples, a
counter reading is the kernel's running total, not an increment.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Literal, NamedTuple, Protocol

if TYPE_CHECKING:
    from agents.host.config import HostConfig

IS_LINUX = sys.platform.startswith("linux")


def read_file(path: str) -> bytes:
    """All of a small /proc or /sys file: open, read to the end, close, and no file object."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_all(fd)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    data = os.pread(fd, 65536, 0)
    while data:  # a /proc file of many records comes a page at a time; only an empty read is the end
        more = os.pread(fd, 65536, len(data))
        if not more:
            break
        data += more
    return data


class KeptFile:
    """A /proc or /sys file opened once and read again from its start every scrape: the kernel makes its text anew
    on a read at offset 0, so a scrape costs a pread or two per file, not open + reads + close. A file whose object
    went away (a removed network device: ENODEV) is opened again by its path, once, before the error is raised."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> bytes:
        if self._fd is not None:
            try:
                return _read_all(self._fd)
            except OSError:
                self.close()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return _read_all(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def exclusion(pattern: str | None, default: str | None) -> re.Pattern[str] | None:
    """A configured exclusion regex: None means the collector's default, "" means exclude nothing."""
    chosen = default if pattern is None else pattern
    return re.compile(chosen) if chosen else None


def excluded(exclude: re.Pattern[str] | None, name: str) -> bool:
    return exclude is not None and exclude.search(name) is not None


@dataclass(frozen=True, slots=True)
class Desc:
    """Name, help, type and label names of one metric family, declared once per collector."""

    name: str
    help: str
    kind: Literal["gauge", "counter"] = "gauge"
    labels: tuple[str, ...] = ()

    def __call__(self, value: float, *label_values: str) -> "Reading":
        return Reading(self, label_values, float(value))


class Reading(NamedTuple):  # a tuple, not a frozen dataclass: ~200 are made per scrape, twice as fast
    desc: Desc
    label_values: tuple[str, ...]  # in the order of desc.labels
    value: float


class Collector(Protocol):
    def collect(self) -> Iterable[Reading]: ...


@dataclass(frozen=True, slots=True)
class CollectorSpec:
    """One row of the collector table, like node_exporter's registerCollector(name, default, factory)."""

    name: str
    build: Callable[["HostConfig"], Collector]
    enabled_by_default: bool = True
    # False where this platform (or psutil build) lacks the data; the collector is then never built
    available: Callable[[], bool] = field(default=lambda: True)
