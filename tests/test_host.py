"""Host metrics carry node_exporter's names, labels and values: checked against Debian's
prometheus-node-exporter running beside the agent on the same machine, and against a real hung
(FUSE) mount in a private mount namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.host import COLLECTORS
from agents.host.base import CollectorSpec
from agents.host.collector import HostCollector
from agents.host.config import host_config
from agents.host.cpu import CpuCollector, LinuxCpuCollector
from agents.host.diskstats import DEFAULT_DEVICE_EXCLUDE, DiskstatsCollector, LinuxDiskstatsCollector
from agents.host.filesystem import (
    DEFAULT_FS_TYPES_EXCLUDE,
    DEFAULT_MOUNT_POINTS_EXCLUDE,
    MountTable,
    linux_mounts,
    portable_mounts,
    psutil_usage,
    statvfs_usage,
)
from agents.host.meminfo import LinuxMeminfoCollector, PortableMeminfoCollector
from agents.host.netclass import PortableNetclassCollector
from agents.host.netdev import LinuxNetdevCollector, NetdevCollector
from agents.host.stat import LinuxStatCollector, StatCollector
from foundation.textformat import render_families
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_binary, require_root

ROOT = Path(__file__).resolve().parent.parent

# What docs/host.md promises, by collector; every one must exist in node_exporter with the same labels.
CLAIMED = [
    "node_cpu_seconds_total", "node_cpu_guest_seconds_total",
    "node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes", "node_memory_MemFree_bytes",
    "node_memory_Buffers_bytes", "node_memory_Cached_bytes", "node_memory_SReclaimable_bytes",
    "node_memory_SwapTotal_bytes", "node_memory_SwapFree_bytes",
    "node_filesystem_size_bytes", "node_filesystem_free_bytes", "node_filesystem_avail_bytes",
    "node_filesystem_files", "node_filesystem_files_free", "node_filesystem_readonly", "node_filesystem_device_error",
    *(f"node_network_{way}_{stat}_total" for way in ("receive", "transmit") for stat in ("bytes", "packets", "errs", "drop")),
    "node_network_up", "node_network_mtu_bytes",
    "node_load1", "node_load5", "node_load15",
    "node_boot_time_seconds", "node_context_switches_total", "node_intr_total",
    "node_time_seconds", "node_time_zone_offset_seconds", "node_uname_info",
    "node_disk_read_bytes_total", "node_disk_written_bytes_total", "node_disk_io_time_seconds_total",
    "node_disk_reads_completed_total", "node_disk_writes_completed_total",
    "node_disk_read_time_seconds_total", "node_disk_write_time_seconds_total",
    "node_disk_reads_merged_total", "node_disk_writes_merged_total",
    "node_scrape_collector_duration_seconds", "node_scrape_collector_success",
]
# node_exporter restricted to our collectors, with our exclusion defaults (Debian patches some of its own)
NODE_EXPORTER_FLAGS = [
    "--collector.disable-defaults",
    *(f"--collector.{name}" for name in COLLECTORS),
    f"--collector.filesystem.mount-points-exclude={DEFAULT_MOUNT_POINTS_EXCLUDE}",
    f"--collector.filesystem.fs-types-exclude={DEFAULT_FS_TYPES_EXCLUDE}",
    f"--collector.diskstats.device-exclude={DEFAULT_DEVICE_EXCLUDE}",
    "--collector.netdev.device-exclude=",
]
CPU_TICK_SLACK = 0.5  # /proc/stat idle and iowait may step back a little on tickless kernels
SET_RETRIES = 3  # other tests add and remove links and mounts; a set comparison retries on a fresh pair

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Series, dict[str, str]]:
    """Every sample by (name, labels), and each sample name's family type."""
    series: Series = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
            types[sample.name] = family.type
    return series, types


def label_names(series: Series, name: str) -> set[frozenset[str]]:
    return {frozenset(key for key, _ in labels) for sample, labels in series if sample == name}


def values(series: Series, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (sample, labels), value in series.items() if sample == name}


def only(series: Series, name: str) -> float:
    (value,) = values(series, name).values()
    return value


def get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8")


def scrape(port: int) -> tuple[Series, dict[str, str]]:
    return parse(get(f"http://127.0.0.1:{port}/metrics"))


def agent_config(port: int, host: str = "{enabled: true}") -> str:
    return f"agent: {{id: host-test, agency: test}}\nlisten: 127.0.0.1:{port}\nhost: {host}\n"


@pytest.fixture(scope="module")
def node_exporter() -> Iterator[int]:
    binary = require_binary("prometheus-node-exporter")
    port = free_port()
    with running([binary, f"--web.listen-address=127.0.0.1:{port}", *NODE_EXPORTER_FLAGS]) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[int]:
    port = free_port()
    config = tmp_path_factory.mktemp("host-agent") / "agent.yml"
    config.write_text(agent_config(port), encoding="utf-8")
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    with running(argv, log_path=str(config.with_suffix(".log")), cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port


def test_every_claimed_metric_exists_in_both_with_the_same_labels_and_type(agent, node_exporter):
    ours, our_types = scrape(agent)
    theirs, their_types = scrape(node_exporter)
    for name in CLAIMED:
        assert label_names(ours, name), f"we do not emit {name}"
        assert label_names(ours, name) == label_names(theirs, name), name
        assert our_types[name] == their_types[name], name


def test_every_node_metric_we_emit_is_one_node_exporter_emits(agent, node_exporter):
    ours, _ = scrape(agent)
    theirs, _ = scrape(node_exporter)
    our_names = {name for name, _ in ours if name.startswith("node_")}
    their_names = {name for name, _ in theirs}
    assert our_names - their_names == set()
    for name in our_names:
        assert label_names(ours, name) == label_names(theirs, name), name


def test_fixed_gauges_equal_node_exporter(agent, node_exporter):
    ours, _ = scrape(agent)
    theirs, _ = scrape(node_exporter)
    for name in ("node_memory_MemTotal_bytes", "node_memory_SwapTotal_bytes", "node_boot_time_seconds"):
        assert only(ours, name) == only(theirs, name), name
    for name in ("node_uname_info", "node_time_zone_offset_seconds"):
        assert values(ours, name) == values(theirs, name), name
    for name in ("node_filesystem_size_bytes", "node_filesystem_files", "node_filesystem_readonly", "node_network_mtu_bytes"):
        common = values(ours, name).keys() & values(theirs, name).keys()
        assert common, name
        assert {k: values(ours, name)[k] for k in common} == {k: values(theirs, name)[k] for k in common}, name


def test_same_filesystems_network_devices_and_disks_as_node_exporter(agent, node_exporter):
    by_labels = (
        "node_filesystem_device_error", "node_network_up", "node_network_receive_bytes_total", "node_disk_read_bytes_total"
    )
    for _attempt in range(SET_RETRIES):
        ours, _ = scrape(agent)
        theirs, _ = scrape(node_exporter)
        differing = {name: set(values(ours, name)) ^ set(values(theirs, name)) for name in by_labels}
        if not any(differing.values()):
            break
    assert not any(differing.values()), differing
    for name in ("node_filesystem_device_error", "node_network_up"):
        assert values(ours, name) == values(theirs, name), name
    assert any(("mountpoint", "/") in labels for labels in values(ours, "node_filesystem_size_bytes"))
    assert values(ours, "node_network_up")[frozenset({("device", "lo")})] == 0  # operstate "unknown", as node_exporter


def test_moving_gauges_are_close_to_node_exporter(agent, node_exporter):
    ours, _ = scrape(agent)
    theirs, _ = scrape(node_exporter)
    memory_total = only(ours, "node_memory_MemTotal_bytes")
    for name in ("MemFree", "MemAvailable", "Buffers", "Cached", "SReclaimable", "SwapFree"):
        metric = f"node_memory_{name}_bytes"
        assert abs(only(ours, metric) - only(theirs, metric)) <= 0.02 * memory_total, metric
    sizes = values(ours, "node_filesystem_size_bytes")
    for name in ("node_filesystem_free_bytes", "node_filesystem_avail_bytes"):
        for labels, value in values(ours, name).items():
            if labels in values(theirs, name):
                assert abs(value - values(theirs, name)[labels]) <= 0.01 * sizes[labels], (name, labels)
    assert abs(only(ours, "node_load1") - only(theirs, "node_load1")) <= 1 + 0.5 * only(theirs, "node_load1")
    assert abs(only(ours, "node_time_seconds") - only(theirs, "node_time_seconds")) < 10


def test_counters_lie_between_two_of_our_scrapes_around_node_exporters(agent, node_exporter):
    before, types = scrape(agent)
    theirs, _ = scrape(node_exporter)
    after, _ = scrape(agent)
    counters = [key for key in theirs if key[0].startswith("node_") and types.get(key[0]) == "counter"]
    compared = [key for key in counters if key in before and key in after]
    assert len(compared) >= 20, "too few counters in common"
    for key in compared:
        slack = CPU_TICK_SLACK if key[0] == "node_cpu_seconds_total" else 0.0
        assert before[key] - slack <= theirs[key] <= after[key] + slack, (key, before[key], theirs[key], after[key])


def test_promtool_flags_only_the_camel_case_meminfo_names_node_exporter_uses(agent, node_exporter):
    promtool = require_binary("promtool", "prometheus")
    text = get(f"http://127.0.0.1:{agent}/metrics")
    their_names = {name for name, _ in scrape(node_exporter)[0]}
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    problems = (checked.stdout + checked.stderr).decode().splitlines()
    assert checked.returncode in (0, 3), problems  # 3 = lint findings only, the text parsed
    for problem in problems:
        name, _, complaint = problem.partition(" ")
        assert complaint == "metric names should be written in 'snake_case' not 'camelCase'", problem
        assert name.startswith("node_memory_") and name in their_names, problem


# --- configuration ------------------------------------------------------------------------------


def exposition(host_yaml: str, table: dict[str, CollectorSpec] | None = None) -> Series:
    config = parse_config(agent_config(1, host_yaml))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(lambda: host_config(config), table) if table else HostCollector(lambda: host_config(config)))
    return parse(generate_latest(registry).decode())[0]


def test_host_metrics_are_off_unless_enabled():
    assert exposition("{}") == {}


def test_disabled_collector_emits_nothing_and_others_still_do():
    series = exposition("{enabled: true, collectors: {meminfo: false}}")
    names = {name for name, _ in series}
    assert not any(name.startswith("node_memory_") for name in names)
    assert frozenset({("collector", "meminfo")}) not in values(series, "node_scrape_collector_success")
    assert values(series, "node_scrape_collector_success")[frozenset({("collector", "cpu")})] == 1


def test_mount_point_exclusion_comes_from_config():
    series = exposition("{enabled: true, filesystem: {mount_points_exclude: '^/$'}}")
    mountpoints = {dict(labels)["mountpoint"] for labels in values(series, "node_filesystem_device_error")}
    assert "/" not in mountpoints


def test_empty_exclusion_regex_excludes_nothing():
    series = exposition("{enabled: true, filesystem: {mount_points_exclude: '', fs_types_exclude: ''}}")
    fstypes = {dict(labels)["fstype"] for labels in values(series, "node_filesystem_device_error")}
    assert {"proc", "sysfs"} <= fstypes


def test_unknown_collector_is_a_config_error_at_its_line():
    with pytest.raises(ConfigError) as caught:
        parse_config("agent: {id: a, agency: b}\nhost:\n  enabled: true\n  collectors:\n    cpuu: false\n", "agent.yml")
    assert str(caught.value).startswith("agent.yml:5: host.collectors.cpuu: unknown collector 'cpuu'")


def test_invalid_exclusion_regex_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        parse_config("agent: {id: a, agency: b}\nhost:\n  netdev: {device_exclude: '^(lo'}\n", "agent.yml")
    assert "host.netdev.device_exclude: invalid regular expression" in str(caught.value)


def test_failing_collector_reports_success_zero_and_the_others_still_report(tmp_path):
    broken = CollectorSpec("meminfo", lambda host: LinuxMeminfoCollector(str(tmp_path / "no-such-meminfo")))
    series = exposition("{enabled: true}", {"meminfo": broken, "cpu": COLLECTORS["cpu"]})
    success = values(series, "node_scrape_collector_success")
    assert success == {frozenset({("collector", "meminfo")}): 0, frozenset({("collector", "cpu")}): 1}
    assert values(series, "node_cpu_seconds_total")


def test_collector_not_available_on_this_platform_is_skipped():
    absent = CollectorSpec("loadavg", COLLECTORS["loadavg"].build, available=lambda: False)
    series = exposition("{enabled: true}", {"loadavg": absent, "cpu": COLLECTORS["cpu"]})
    assert "node_load1" not in {name for name, _ in series}
    assert set(values(series, "node_scrape_collector_success")) == {frozenset({("collector", "cpu")})}


def test_reload_with_new_host_settings_applies_on_next_scrape():
    holder = {"config": parse_config(agent_config(1, "{enabled: true}"))}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(lambda: host_config(holder["config"])))
    assert values(parse(generate_latest(registry).decode())[0], "node_load1")
    holder["config"] = parse_config(agent_config(1, "{enabled: true, collectors: {loadavg: false}}"))
    assert not values(parse(generate_latest(registry).decode())[0], "node_load1")


def test_reloads_leave_no_idle_statfs_worker_threads_behind():
    holder = {"config": parse_config(agent_config(1, "{enabled: true}"))}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(lambda: host_config(holder["config"])))
    for timeout in ("200ms", "300ms", "400ms", "500ms"):
        holder["config"] = parse_config(agent_config(1, f"{{enabled: true, filesystem: {{mount_timeout: {timeout}}}}}"))
        generate_latest(registry)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and stall_guard_threads() > 1:
        time.sleep(0.05)
    assert stall_guard_threads() == 1


def stall_guard_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "netmon-host-stall-guard")


def test_portable_code_paths_used_off_linux_give_the_same_figures():
    linux = {reading.desc.name: reading.value for reading in LinuxMeminfoCollector().collect()}
    portable = {reading.desc.name: reading.value for reading in PortableMeminfoCollector().collect()}
    for name in ("node_memory_MemTotal_bytes", "node_memory_SwapTotal_bytes"):
        assert portable[name] == linux[name], name
    assert {"/"} <= {mount.mountpoint for mount in portable_mounts()}
    assert psutil_usage("/").size == statvfs_usage("/").size
    readings = PortableNetclassCollector().collect()
    up = {reading.label_values[0]: reading.value for reading in readings if reading.desc.name == "node_network_up"}
    assert up["lo"] == 1  # psutil's flag is "administratively up"; operstate says "unknown" (documented)



def readings_by_series(collector) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(reading.desc.name, reading.label_values): reading.value for reading in collector.collect()}


@pytest.mark.parametrize("linux, portable", [
    (LinuxCpuCollector(), CpuCollector()),
    (LinuxStatCollector(), StatCollector()),
    (LinuxDiskstatsCollector(None), DiskstatsCollector(None)),
    (LinuxNetdevCollector(None), NetdevCollector(None)),
], ids=["cpu", "stat", "diskstats", "netdev"])
def test_direct_proc_readers_give_psutils_figures(linux, portable):
    """The Linux collectors read /proc themselves; psutil, read just before and just after, brackets every figure."""
    before = readings_by_series(portable)
    ours = readings_by_series(linux)
    after = readings_by_series(portable)
    assert ours.keys() == before.keys() == after.keys()
    for series, value in ours.items():
        assert before[series] <= value <= after[series], (series, before[series], value, after[series])


class Replay:
    """One real pass's readings, given again on every collect, so two writers see the same figures."""

    def __init__(self, readings: list) -> None:
        self.readings = readings

    def collect(self):
        return iter(self.readings)


def test_host_text_is_the_bytes_render_families_writes_for_its_families():
    config = parse_config(agent_config(1, "{enabled: true}"))
    settings = host_config(config)
    replays = {name: Replay(list(spec.build(settings).collect())) for name, spec in COLLECTORS.items()}
    table = {name: CollectorSpec(name, lambda host, replay=replay: replay) for name, replay in replays.items()}
    host = HostCollector(lambda: settings, table)
    ours, theirs = host.render(), "".join(render_families(host.collect()))
    duration = "node_scrape_collector_duration_seconds{"  # the one figure that differs between two passes
    assert [line for line in ours.splitlines() if not line.startswith(duration)] == [
        line for line in theirs.splitlines() if not line.startswith(duration)
    ]
    assert ours.count(duration) == theirs.count(duration) == len(COLLECTORS)


def test_mount_table_is_read_again_only_after_a_mount_or_unmount(tmp_path):
    require_root("mounting a tmpfs")
    table = MountTable()
    first = table.mounts()
    assert first == linux_mounts() and table.mounts() is first  # unchanged: not read again
    subprocess.run(["mount", "-t", "tmpfs", "netmon-test", str(tmp_path)], check=True, timeout=10)
    try:
        assert str(tmp_path) in {mount.mountpoint for mount in table.mounts()}
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True, timeout=10)
    assert str(tmp_path) not in {mount.mountpoint for mount in table.mounts()}


# --- a hung mount ------------------------------------------------------------------------------

# Mounts a FUSE filesystem whose server never answers (this process holds /dev/fuse and never reads it):
# statfs on it blocks in the kernel, like a dead NFS server. Runs under `unshare --mount`, so the mount
# exists only in that private namespace and disappears with the process.
HUNG_MOUNT = """\
import ctypes, os, sys
MS_NOSUID, MS_NODEV = 2, 4
mountpoint = sys.argv[1]
fuse = os.open("/dev/fuse", os.O_RDWR)
options = f"fd={fuse},rootmode=40000,user_id=0,group_id=0".encode()
if ctypes.CDLL(None, use_errno=True).mount(b"netmon-hung", mountpoint.encode(), b"fuse.netmonhung", MS_NOSUID | MS_NODEV, options):
    sys.exit(f"mount failed: {os.strerror(ctypes.get_errno())}")
"""
AGENT_IN_HUNG_NAMESPACE = HUNG_MOUNT + """\
os.set_inheritable(fuse, True)  # the agent inherits the silent server end: the mount stays hung
os.execv(sys.executable, [sys.executable, "-m", "agents.cli", "run", "--config", sys.argv[2]])
"""
GUARD_IN_HUNG_NAMESPACE = HUNG_MOUNT + """\
import json, logging, time
from agents.catalog import parse_config
from agents.host.config import host_config
from agents.host.filesystem import FilesystemCollector
released = []
logging.getLogger("agents.host.stall").addHandler(logging.Handler())
logging.getLogger("agents.host.stall").handlers[0].emit = lambda record: released.append(record.getMessage())
config = parse_config("agent: {id: a, agency: b}\\nhost: {filesystem: {mount_timeout: 300ms}}\\n")
collector = FilesystemCollector(host_config(config).filesystem)
def scrape():
    started = time.monotonic()
    readings = [(r.desc.name, r.label_values[1], r.value) for r in collector.collect()]
    return {"seconds": time.monotonic() - started, "readings": readings}
passes = [scrape(), scrape()]
os.close(fuse)  # the server goes away: the stuck statfs returns ENOTCONN
deadline = time.monotonic() + 10
while not any("returned after being stuck" in message for message in released) and time.monotonic() < deadline:
    time.sleep(0.05)
passes.append(scrape())
print(json.dumps({"passes": passes, "log": released}))
"""


def require_fuse() -> str:
    require_root("mounting a FUSE filesystem in a private mount namespace")
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: this test needs the fuse kernel module", pytrace=False)
    return require_binary("unshare", "util-linux")


def readings_for(scrape: dict, mountpoint: str) -> dict[str, float]:
    return {name: value for name, where, value in scrape["readings"] if where == mountpoint}


def test_hung_mount_costs_one_bounded_wait_then_is_skipped_until_it_returns(tmp_path):
    unshare = require_fuse()
    mountpoint = tmp_path / "hung"
    mountpoint.mkdir()
    argv = [unshare, "--mount", "--propagation", "private", sys.executable, "-c", GUARD_IN_HUNG_NAMESPACE, str(mountpoint)]
    done = subprocess.run(argv, capture_output=True, timeout=60, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr.decode()
    outcome = json.loads(done.stdout)
    first, second, after_release = outcome["passes"]
    assert 0.3 <= first["seconds"] < 0.3 + 5  # waited for the hung statfs, once
    assert readings_for(first, str(mountpoint)) == {"node_filesystem_readonly": 0, "node_filesystem_device_error": 1}
    assert second["seconds"] < 0.3  # skipped, not waited for again
    assert readings_for(second, str(mountpoint))["node_filesystem_device_error"] == 1
    assert readings_for(second, "/")["node_filesystem_size_bytes"] > 0
    assert any("returned after being stuck; collecting it again" in message for message in outcome["log"])
    assert after_release["seconds"] < 0.3  # asked again, and answered (ENOTCONN) at once
    assert readings_for(after_release, str(mountpoint))["node_filesystem_device_error"] == 1


def test_agent_with_a_hung_mount_keeps_serving_metrics(tmp_path):
    unshare = require_fuse()
    mountpoint = tmp_path / "hung"
    mountpoint.mkdir()
    port = free_port()
    config = tmp_path / "agent.yml"
    config.write_text(agent_config(port, "{enabled: true, filesystem: {mount_timeout: 1s}}"), encoding="utf-8")
    argv = [unshare, "--mount", "--propagation", "private", sys.executable, "-c", AGENT_IN_HUNG_NAMESPACE]
    argv += [str(mountpoint), str(config)]
    with running(argv, log_path=str(tmp_path / "agent.log"), cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        for _ in range(3):
            series, _ = scrape(port)
            errors = values(series, "node_filesystem_device_error")
            assert [value for labels, value in errors.items() if ("mountpoint", str(mountpoint)) in labels] == [1]
            assert get(f"http://127.0.0.1:{port}/-/healthy") == "Healthy\n"
        assert "did not return within 1s" in (tmp_path / "agent.log").read_text()
