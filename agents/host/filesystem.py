"""filesystem: size, free and available bytes, inodes and read-only state per mount (node_exporter's
filesystem collector), with its default exclusions of pseudo filesystems.

statfs runs under a StallGuard: a hung NFS or FUSE mount costs one bounded wait, then is reported
with node_filesystem_device_error 1 and skipped until its statfs returns.
"""

from __future__ import annotations

import os
import re
import select
from typing import TYPE_CHECKING, Iterator, NamedTuple

import psutil

from agents.host.base import IS_LINUX, CollectorSpec, Desc, Reading, excluded, exclusion, read_file
from agents.host.stall import StallGuard

if TYPE_CHECKING:
    from agents.host.config import HostConfig, HostFilesystem

# node_exporter 1.5+ defaults (upstream; Debian's package also excludes /run, /mnt and /media)
DEFAULT_MOUNT_POINTS_EXCLUDE = r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
DEFAULT_FS_TYPES_EXCLUDE = (
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|"
    r"overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$"
)
MOUNTS_PATH = "/proc/self/mounts"  # the mounts this process sees, so statfs reaches the same ones

LABELS = ("device", "mountpoint", "fstype")
SIZE = Desc("node_filesystem_size_bytes", "Filesystem size in bytes.", labels=LABELS)
FREE = Desc("node_filesystem_free_bytes", "Filesystem free space in bytes.", labels=LABELS)
AVAIL = Desc("node_filesystem_avail_bytes", "Filesystem space available to non-root users in bytes.", labels=LABELS)
FILES = Desc("node_filesystem_files", "Filesystem total file nodes.", labels=LABELS)
FILES_FREE = Desc("node_filesystem_files_free", "Filesystem total free file nodes.", labels=LABELS)
READONLY = Desc("node_filesystem_readonly", "Filesystem read-only status.", labels=LABELS)
DEVICE_ERROR = Desc(
    "node_filesystem_device_error", "Whether an error occurred while getting statistics for the given device.", labels=LABELS
)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class Mount(NamedTuple):
    device: str
    mountpoint: str
    fstype: str
    readonly: bool

    @property
    def labels(self) -> tuple[str, str, str]:
        return self.device, self.mountpoint, self.fstype


class Usage(NamedTuple):
    size: float
    free: float
    avail: float
    files: float | None  # None where the platform has no inode counts (Windows)
    files_free: float | None


def _unescape(field: str) -> str:
    """fstab(5) octal escapes (a space is \\040 in /proc/mounts)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field) if "\\" in field else field


def linux_mounts(path: str = MOUNTS_PATH) -> list[Mount]:
    return parse_mounts(read_file(path))


def parse_mounts(table: bytes) -> list[Mount]:
    mounts = []
    for line in table.decode("utf-8", "surrogateescape").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            mounts.append(Mount(parts[0], _unescape(parts[1]), parts[2], "ro" in parts[3].split(",")))
    return mounts


class MountTable:
    """/proc/self/mounts, read again only when the kernel says the mount table changed: an open mounts file polls
    with POLLPRI after a mount or unmount in its namespace (proc(5)), so an unchanged table costs one poll(2),
    not the kernel writing out every mount and this process parsing it."""

    def __init__(self, path: str = MOUNTS_PATH) -> None:
        self._path = path
        self._fd: int | None = None
        self._poll = select.poll()
        self._mounts: list[Mount] = []

    def mounts(self) -> list[Mount]:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            self._poll.register(self._fd, select.POLLPRI)
        elif not self._poll.poll(0):
            return self._mounts
        os.lseek(self._fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._fd, 65536):
            chunks.append(chunk)
        self._mounts = parse_mounts(b"".join(chunks))
        return self._mounts

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def portable_mounts() -> list[Mount]:
    return [
        Mount(part.device, part.mountpoint, part.fstype, "ro" in part.opts.split(","))
        for part in psutil.disk_partitions(all=True)
    ]


def statvfs_usage(mountpoint: str) -> Usage:
    st = os.statvfs(mountpoint)  # type: ignore[attr-defined]
    # node_exporter multiplies by f_bsize (Go's Statfs_t.Bsize), not f_frsize; they agree on Linux filesystems
    return Usage(st.f_blocks * st.f_bsize, st.f_bfree * st.f_bsize, st.f_bavail * st.f_bsize, st.f_files, st.f_ffree)


def psutil_usage(mountpoint: str) -> Usage:
    usage = psutil.disk_usage(mountpoint)
    return Usage(usage.total, usage.free, usage.free, None, None)  # Windows reports one free figure


class FilesystemCollector:
    def __init__(self, settings: "HostFilesystem") -> None:
        self._exclude_mountpoints = exclusion(settings.mount_points_exclude, DEFAULT_MOUNT_POINTS_EXCLUDE)
        self._exclude_fstypes = exclusion(settings.fs_types_exclude, DEFAULT_FS_TYPES_EXCLUDE)
        self._list_mounts = MountTable().mounts if IS_LINUX else portable_mounts
        self._listed: list[Mount] | None = None
        self._selected: list[Mount] = []
        self._mountpoints: list[str] = []
        self._statfs: StallGuard[str, Usage] = StallGuard(
            statvfs_usage if hasattr(os, "statvfs") else psutil_usage, float(settings.mount_timeout), "statfs of"
        )

    def mounts(self) -> list[Mount]:
        """Mounts not excluded, each (device, mountpoint, fstype) once; chosen again when the table changed."""
        listed = self._list_mounts()
        if listed is self._listed:
            return self._selected
        selected: dict[tuple[str, str, str], Mount] = {}
        for mount in listed:
            if excluded(self._exclude_mountpoints, mount.mountpoint) or excluded(self._exclude_fstypes, mount.fstype):
                continue
            selected.setdefault(mount.labels, mount)
        self._listed, self._selected = listed, list(selected.values())
        self._mountpoints = list(dict.fromkeys(mount.mountpoint for mount in self._selected))
        return self._selected

    def collect(self) -> Iterator[Reading]:
        mounts = self.mounts()
        usages, stuck = self._statfs.run(self._mountpoints)
        for mount in mounts:
            usage = usages.get(mount.mountpoint)
            if usage is None and mount.mountpoint not in stuck:
                continue  # not reached in this pass: a mount before it just got stuck
            labels = mount.labels
            yield READONLY(mount.readonly, *labels)
            if not isinstance(usage, Usage):
                yield DEVICE_ERROR(1, *labels)
                continue
            yield DEVICE_ERROR(0, *labels)
            yield SIZE(usage.size, *labels)
            yield FREE(usage.free, *labels)
            yield AVAIL(usage.avail, *labels)
            if usage.files is not None and usage.files_free is not None:
                yield FILES(usage.files, *labels)
                yield FILES_FREE(usage.files_free, *labels)


def build(host: "HostConfig") -> FilesystemCollector:
    return FilesystemCollector(host.filesystem)


SPEC = CollectorSpec("filesystem", build)
