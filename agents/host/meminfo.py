"""meminfo: node_memory_* (node_exporter's meminfo collector).

On Linux every /proc/meminfo field is exposed under node_exporter's name, read from the file itself:
psutil's `cached` adds SReclaimable to Cached, which would count reclaimable slab twice in the
dashboards' "used = total - free - buffers - cached - SReclaimable". Elsewhere psutil's portable
figures fill the fields it has.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterator

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, KeptFile, Reading

if TYPE_CHECKING:
    from agents.host.config import HostConfig

MEMINFO_PATH = "/proc/meminfo"
_PARENS = re.compile(r"\((.*)\)")
_FIELD = re.compile(rb"^([^:\s]+):[ \t]+(\d+)( kB)?$", re.MULTILINE)  # "Active(anon):  123 kB", "HugePages_Total:  0"


def field_name(key: str, has_unit: bool) -> str:
    """node_exporter's naming: `Active(anon)` -> `Active_anon`; fields in kB get `_bytes`."""
    name = _PARENS.sub(r"_\1", key)
    return f"{name}_bytes" if has_unit else name


class LinuxMeminfoCollector:
    def __init__(self, path: str = MEMINFO_PATH) -> None:
        self._file = KeptFile(path)
        self._descs: dict[bytes, tuple[Desc, float]] = {}  # raw line key -> (desc, multiplier)

    def _desc(self, key: bytes, has_unit: bool) -> tuple[Desc, float]:
        known = self._descs.get(key)
        if known is None:
            name = field_name(key.decode(), has_unit)
            desc = Desc(f"node_memory_{name}", f"Memory information field {name}.")
            known = self._descs[key] = (desc, 1024.0 if has_unit else 1.0)
        return known

    def collect(self) -> Iterator[Reading]:
        for key, value, unit in _FIELD.findall(self._file.read()):
            desc, multiplier = self._descs.get(key) or self._desc(key, bool(unit))  # the unit is always kB
            yield Reading(desc, (), int(value) * multiplier)


def _portable(name: str) -> Desc:
    return Desc(f"node_memory_{name}_bytes", f"Memory information field {name}_bytes.")


# psutil attribute -> meminfo field, for virtual_memory() and swap_memory(); absent attributes are skipped
VIRTUAL_FIELDS = {
    "total": _portable("MemTotal"),
    "available": _portable("MemAvailable"),
    "free": _portable("MemFree"),
    "buffers": _portable("Buffers"),
    "cached": _portable("Cached"),  # where psutil has it (not Windows); on Linux it would include SReclaimable
}
SWAP_FIELDS = {"total": _portable("SwapTotal"), "free": _portable("SwapFree")}


class PortableMeminfoCollector:
    def collect(self) -> Iterator[Reading]:
        for reading, fields in ((psutil.virtual_memory(), VIRTUAL_FIELDS), (psutil.swap_memory(), SWAP_FIELDS)):
            for attribute, desc in fields.items():
                value = getattr(reading, attribute, None)
                if value is not None:
                    yield desc(value)


def build(host: "HostConfig") -> LinuxMeminfoCollector | PortableMeminfoCollector:
    return LinuxMeminfoCollector() if IS_LINUX else PortableMeminfoCollector()


SPEC = CollectorSpec("meminfo", build)
