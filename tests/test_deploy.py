"""The services as an agency machine gets them: deploy/install.sh into a staging root (a real venv, the `netmon`
user in the root's own passwd), both systemd units checked by `systemd-analyze verify` and its offline security
review, and the installed agent running as that unprivileged user in a network namespace: ICMP through a datagram
socket once install.sh's ping_group_range applies, through a raw socket with CAP_NET_RAW only, and
permission_denied with neither.

PID 1 here is not systemd, so nothing is started through systemctl: the agent runs under setpriv with the
identity, capability bounding set and no_new_privs the unit gives it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from agents.catalog import parse_config
from agents.cli import unsupported_here
from agents.results import Failure
from tests.support.netns import REPO_ROOT, NetnsPair, netns_pair, ns_exec, ns_popen
from tests.support.ports import free_port
from tests.support.procs import stop
from tests.support.require import require_binary, require_root

INSTALL = REPO_ROOT / "deploy" / "install.sh"
UNITS = ("netmon-agent.service", "netmon-collector.service")
INSTALL_TIMEOUT = 300.0
# Debian's Python, as on an agency machine: the netmon user must be able to run the venv's interpreter, and a
# Python under /root (pyenv, the test's own venv) is out of its reach.
SYSTEM_PYTHON = "/usr/bin/python3"
AGENT_START_TIMEOUT = 20.0
# The units' exposure as `systemd-analyze security` scores it (0 = fully confined, 10 = unconfined); both score
# 2.0 or lower now. A unit that loses some of its hardening goes over this and fails the test.
MAX_EXPOSURE = 2.5
# the unit's CapabilityBoundingSet/AmbientCapabilities and NoNewPrivileges, as setpriv arguments
NO_CAPABILITIES = ("--bounding-set", "-all")
RAW_ICMP_CAPABILITY = ("--bounding-set", "-all,+net_raw", "--inh-caps", "+net_raw", "--ambient-caps", "+net_raw")


@dataclass(frozen=True)
class StagedRoot:
    path: Path
    uid: int
    gid: int
    install_output: str  # what install.sh printed, agent then collector
    collector_tokens: tuple[str, ...]
    wheel: Path

    @property
    def agent(self) -> Path:
        return self.path / "opt/netmon/venv/bin/netmon-agent"


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [str(INSTALL), "--root", str(root), "--python", SYSTEM_PYTHON, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)


def system_python_has_venv() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-m", "ensurepip", "--version"], capture_output=True).returncode == 0


def build_wheel(directory: Path) -> Path:
    """The package as a wheel: installing the same wheel again is a no-op for pip, where a checkout is rebuilt."""
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(directory), str(REPO_ROOT)]
    subprocess.run(argv, check=True, capture_output=True, timeout=INSTALL_TIMEOUT)
    (wheel,) = directory.glob("egov_netmon-*.whl")
    return wheel


def seed_debian_root(root: Path) -> None:
    """What install.sh finds on a Debian machine: the user databases, systemd's own units, /bin/kill.

    passwd and group are the machine's, so the new user's ids are free here too; the shadow files start empty
    (no password hash of this machine leaves /etc)."""
    (root / "etc").mkdir()
    for database in ("passwd", "group"):
        shutil.copy2(f"/etc/{database}", root / "etc" / database)
    for database in ("shadow", "gshadow"):
        (root / "etc" / database).touch(mode=0o640)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir()
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")


def passwd_entry(root: Path, name: str) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"no user {name} in {root}/etc/passwd")


def collector_env(example: Path) -> tuple[str, tuple[str, ...]]:
    """collector.env for the example config: a random token for every ${NAME} it references."""
    names = sorted(set(re.findall(r"\$\{([A-Z0-9_]+)\}", example.read_text())))
    tokens = tuple(f"tok-{secrets.token_hex(12)}" for _ in names)
    return "".join(f"{name}={token}\n" for name, token in zip(names, tokens)), tokens


@pytest.fixture(scope="module")
def staged() -> Iterator[StagedRoot]:
    require_root("install.sh chowns to the netmon user; network namespaces")
    for binary, package in (("systemd-analyze", "systemd"), ("setpriv", "util-linux"), ("useradd", "passwd")):
        require_binary(binary, package)
    assert system_python_has_venv(), f"{SYSTEM_PYTHON} with venv is needed: apt-get install python3-venv"
    # mkdtemp, not tmp_path: the netmon user must traverse the root to run the venv and read its config
    root = Path(tempfile.mkdtemp(prefix="netmon-root-"))
    root.chmod(0o755)
    wheel_dir = Path(tempfile.mkdtemp(prefix="netmon-wheel-"))
    try:
        seed_debian_root(root)
        wheel = build_wheel(wheel_dir)
        agent = run_install(root, "--from", str(wheel))
        assert agent.returncode == 0, agent.stdout + agent.stderr
        env_text, tokens = collector_env(REPO_ROOT / "config/collector.example.yml")
        refused = run_install(root, "--collector", "--from", str(wheel))  # the example names tokens not set yet
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "is not set" in refused.stderr and "the config is invalid" in refused.stderr
        (root / "etc/netmon-collector/collector.env").write_text(env_text)
        collector = run_install(root, "--collector", "--from", str(wheel))
        assert collector.returncode == 0, collector.stdout + collector.stderr
        _, _, uid, gid, *_ = passwd_entry(root, "netmon")
        output = "".join(done.stdout + done.stderr for done in (agent, refused, collector))
        yield StagedRoot(root, int(uid), int(gid), output, tokens, wheel)
    finally:
        shutil.rmtree(root)
        shutil.rmtree(wheel_dir)


# --- install.sh ---------------------------------------------------------------------------------------------


def test_install_creates_a_system_user_without_login(staged: StagedRoot) -> None:
    name, _, uid, _, _, home, shell = passwd_entry(staged.path, "netmon")
    assert int(uid) < 1000 and (home, shell) == ("/nonexistent", "/usr/sbin/nologin")
    assert re.search(rf"^netmon:[^:]*:{staged.gid}:", (staged.path / "etc/group").read_text(), re.M)


@pytest.mark.parametrize(
    "path, mode, owner_is_netmon",
    [
        ("etc/netmon", 0o750, False),
        ("etc/netmon/agent.yml", 0o640, False),
        ("etc/netmon/agent.env", 0o640, False),
        ("var/lib/netmon-agent", 0o750, True),
        ("etc/netmon-collector/collector.yml", 0o640, False),
        ("var/lib/netmon-collector", 0o750, True),
    ],
)
def test_install_gives_config_to_root_and_state_to_netmon(
    staged: StagedRoot, path: str, mode: int, owner_is_netmon: bool
) -> None:
    info = (staged.path / path).stat()
    assert stat.S_IMODE(info.st_mode) == mode
    assert (info.st_uid, info.st_gid) == ((staged.uid if owner_is_netmon else 0), staged.gid)


def test_install_checks_the_config_with_the_installed_package(staged: StagedRoot) -> None:
    assert f"{staged.path}/etc/netmon/agent.yml: OK" in staged.install_output
    assert f"{staged.path}/etc/netmon-collector/collector.yml: OK" in staged.install_output
    version = subprocess.run([str(staged.agent), "--version"], capture_output=True, text=True, timeout=30)
    assert version.stdout.startswith("netmon-agent ")


def test_install_widens_ping_group_range_to_the_netmon_group(staged: StagedRoot) -> None:
    text = (staged.path / "etc/sysctl.d/60-netmon-ping-group.conf").read_text()
    low, high = map(int, re.search(r"^net\.ipv4\.ping_group_range = (\d+) (\d+)$", text, re.M).groups())
    assert low <= staged.gid <= high


def test_install_never_prints_the_tokens_it_checked(staged: StagedRoot) -> None:
    leaked = [token for token in staged.collector_tokens if token in staged.install_output]
    assert staged.collector_tokens and not leaked


def test_install_again_keeps_the_edited_config_and_adds_the_raw_icmp_dropin(staged: StagedRoot) -> None:
    config = staged.path / "etc/netmon/agent.yml"
    edited = config.read_text() + "# edited by the agency's sysadmin\n"
    config.write_text(edited)
    again = run_install(staged.path, "--raw-icmp", "--from", str(staged.wheel))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "user netmon exists" in again.stdout and "keeping /etc/netmon/agent.yml" in again.stdout
    assert config.read_text() == edited
    dropin = staged.path / "etc/systemd/system/netmon-agent.service.d/raw-icmp.conf"
    assert "AmbientCapabilities=CAP_NET_RAW" in dropin.read_text()


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_size) for p in root.rglob("*")}


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    require_root("install.sh reads the user databases")
    (tmp_path / "etc").mkdir()
    shutil.copy2("/etc/passwd", tmp_path / "etc/passwd")
    shutil.copy2("/etc/group", tmp_path / "etc/group")
    before = tree(tmp_path)
    done = run_install(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path) == before
    commands = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    expected = ["useradd --prefix", "-m venv", "/bin/pip install", "netmon-agent.service", "netmon-agent check-config"]
    for fragment in expected:
        assert any(fragment in command for command in commands), (fragment, commands)


# --- systemd units ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(staged: StagedRoot, unit: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={staged.path}", "--man=no", unit],
        capture_output=True, text=True, timeout=60,
    )
    # verify exits 0 on unknown keys and bad values too: it only warns, so any output is a failure
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_broken_unit(staged: StagedRoot) -> None:
    """The verify test above can fail: a misspelt key and a missing binary are reported."""
    broken = (REPO_ROOT / "deploy/systemd/netmon-agent.service").read_text()
    broken = broken.replace("ProtectSystem=strict", "ProtectSytem=strict")
    broken = broken.replace("netmon-agent run", "netmon-agnt run")
    (staged.path / "etc/systemd/system/netmon-broken.service").write_text(broken)
    try:
        done = subprocess.run(
            ["systemd-analyze", "verify", f"--root={staged.path}", "--man=no", "netmon-broken.service"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        (staged.path / "etc/systemd/system/netmon-broken.service").unlink()
    assert "Unknown key 'ProtectSytem'" in done.stderr
    assert "netmon-agnt is not executable" in done.stderr and done.returncode != 0


def unit_setting(unit: str, key: str) -> str:
    text = (REPO_ROOT / "deploy/systemd" / unit).read_text()
    return re.search(rf"^{key}=(.*)$", text, re.M).group(1)


@pytest.mark.parametrize(
    "unit, document, key",
    [
        ("netmon-agent.service", "docs/push.md", "directory"),  # push.queue.directory
        ("netmon-agent.service", "docs/fleet.md", "cache_file"),
        ("netmon-collector.service", "config/collector.example.yml", "directory"),  # remote_write[].queue
    ],
)
def test_documented_state_paths_lie_in_the_units_state_directory(unit: str, document: str, key: str) -> None:
    """ProtectSystem=strict leaves only the StateDirectory writable: a queue or cache elsewhere would fail."""
    state = f"/var/lib/{unit_setting(unit, 'StateDirectory')}/"
    paths = re.findall(rf"^\s*{key}: (/\S+)", (REPO_ROOT / document).read_text(), re.M)
    assert paths and all(path.startswith(state) for path in paths), (state, paths)


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_stays_low_in_systemd_analyze_security(staged: StagedRoot, unit: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={staged.path}", f"--threshold={MAX_EXPOSURE * 10:g}", unit],
        capture_output=True, text=True, timeout=60,
    )
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout).group(1))
    assert score <= MAX_EXPOSURE and done.returncode == 0, done.stdout[-2000:]


# --- the installed agent as the netmon user -----------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    require_root("network namespaces")
    with netns_pair("nmd") as created:
        yield created


def agent_config(root: Path, listen_port: int, server_ip: str, push_port: int) -> str:
    return f"""\
agent: {{id: deploy-test, agency: so-tttt, name: "Sở Thông tin và Truyền thông"}}
listen: 127.0.0.1:{listen_port}
defaults: {{interval: 1s, timeout: 900ms}}
modules:
  ping:
    prober: icmp
    timeout: 900ms
    preferred_ip_protocol: ip4
    icmp: {{count: 2, packet_interval: 100ms}}
targets:
  - {{name: server, address: "{server_ip}", module: ping}}
push:
  url: http://127.0.0.1:{push_port}/api/v1/write
  bearer_token: ${{NETMON_PUSH_TOKEN}}
  interval: 100ms
  queue: {{directory: {root}/var/lib/netmon-agent/queue}}
"""


def ns_http_get(staged: StagedRoot, ns: str, url: str) -> str:
    fetch = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())"
    done = ns_exec(ns, [str(staged.path / "opt/netmon/venv/bin/python"), "-c", fetch, url], timeout=10)
    return done.stdout if done.returncode == 0 else ""


def series_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


@dataclass(frozen=True)
class AgentRun:
    metrics: str
    status_page: str
    log: str  # everything the agent wrote until it was stopped
    push_token: str
    exit_code: int  # after SIGTERM, systemd's stop


@contextmanager
def installed_agent(
    staged: StagedRoot, pair: NetnsPair, capabilities: Sequence[str], logged: str = ""
) -> Iterator[AgentRun]:
    """The installed agent as netmon, in the client namespace, until its first probe of the server is exposed
    (and `logged` is in its log)."""
    port, token = free_port(), f"push-{secrets.token_hex(12)}"
    config = staged.path / "etc/netmon/agent.yml"  # root:netmon 0640 from install.sh, read as netmon
    config.write_text(agent_config(staged.path, port, pair.server_ip, free_port()))
    argv = [
        "setpriv", "--reuid", str(staged.uid), "--regid", str(staged.gid), "--clear-groups", "--no-new-privs",
        *capabilities, str(staged.agent), "--log-format", "json", "run", "--config", str(config),
    ]  # fmt: skip
    log_path = staged.path / "agent.log"
    with open(log_path, "wb") as log:
        env = {"PATH": "/usr/bin:/bin", "NETMON_PUSH_TOKEN": token}
        agent = ns_popen(pair.client, argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        metrics = wait_for_probe(staged, pair.client, port, agent)
        wait_for_log(log_path, logged)
        status_page = ns_http_get(staged, pair.client, f"http://127.0.0.1:{port}/")
        stop(agent)
        yield AgentRun(metrics, status_page, log_path.read_text(), token, agent.returncode)
    finally:
        stop(agent)
        log_path.unlink()


def wait_for_log(path: Path, fragment: str) -> None:
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while fragment not in path.read_text():
        assert time.monotonic() < deadline, f"{fragment!r} not logged after {AGENT_START_TIMEOUT}s"
        time.sleep(0.1)


def wait_for_probe(staged: StagedRoot, ns: str, port: int, agent: subprocess.Popen) -> str:
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while time.monotonic() < deadline:
        assert agent.poll() is None, f"the agent exited with {agent.returncode}"
        text = ns_http_get(staged, ns, f"http://127.0.0.1:{port}/metrics")
        if series_value(text, "probe_success", target="server") is not None:
            return text
        time.sleep(0.2)
    raise AssertionError(f"no probe_success for the server after {AGENT_START_TIMEOUT}s")


def test_installed_agent_as_netmon_pings_through_datagram_socket_with_installed_ping_group_range(
    staged: StagedRoot, pair: NetnsPair
) -> None:
    sysctl_file = staged.path / "etc/sysctl.d/60-netmon-ping-group.conf"
    ns_exec(pair.client, ["sysctl", "-q", "-p", str(sysctl_file)], check=True)
    with installed_agent(staged, pair, NO_CAPABILITIES) as run:
        assert series_value(run.metrics, "probe_success", target="server") == 1
        assert series_value(run.metrics, "probe_icmp_packets_received_total", target="server") >= 2
        assert "(datagram socket)" in run.status_page
    queue = staged.path / "var/lib/netmon-agent/queue"
    assert {path.stat().st_uid for path in queue.iterdir()} == {staged.uid}  # the state dir is the agent's to write


def test_installed_agent_as_netmon_pings_through_raw_socket_with_cap_net_raw_only(
    staged: StagedRoot, pair: NetnsPair
) -> None:
    range_in_namespace = ns_exec(pair.client, ["sysctl", "-n", "net.ipv4.ping_group_range"], check=True).stdout.split()
    assert range_in_namespace == ["1", "0"]  # a new namespace allows datagram ICMP to nobody
    with installed_agent(staged, pair, RAW_ICMP_CAPABILITY) as run:
        assert series_value(run.metrics, "probe_success", target="server") == 1
        assert series_value(run.metrics, "probe_icmp_packets_received_total", target="server") >= 2
        assert "(raw socket)" in run.status_page


def test_installed_agent_as_netmon_without_either_reports_permission_denied(
    staged: StagedRoot, pair: NetnsPair
) -> None:
    with installed_agent(staged, pair, NO_CAPABILITIES) as run:
        assert series_value(run.metrics, "probe_success", target="server") == 0
        assert series_value(run.metrics, "probe_failure_info", target="server", reason=Failure.PERMISSION.value) == 1
        assert "ping_group_range" in run.status_page and "CAP_NET_RAW" in run.status_page


def test_installed_agent_logs_json_lines_without_its_push_token(staged: StagedRoot, pair: NetnsPair) -> None:
    with installed_agent(staged, pair, NO_CAPABILITIES, logged='"msg": "push: ') as run:
        entries = [json.loads(line) for line in run.log.splitlines()]
    assert entries and all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in entries)
    messages = [entry["msg"] for entry in entries]
    assert any(message.startswith("agent deploy-test") for message in messages)
    assert any(e["logger"] == "agents.push" and e["level"] == "warning" for e in entries)  # it did try to send
    assert run.push_token not in run.log + run.metrics + run.status_page


def test_installed_agent_stops_cleanly_on_sigterm(staged: StagedRoot, pair: NetnsPair) -> None:
    with installed_agent(staged, pair, NO_CAPABILITIES) as run:
        pass
    assert run.exit_code == 0  # a clean stop, so Restart=on-failure leaves it stopped
    assert json.loads(run.log.splitlines()[-1])["msg"] == "agent stopping"


# --- Windows (docs/windows.md): what cannot work there is refused at load, by key ---------------------------


def test_on_windows_icmp_modules_and_push_are_config_errors_naming_their_keys(tmp_path: Path) -> None:
    text = (REPO_ROOT / "config/agent.example.yml").read_text(encoding="utf-8")
    text += f"push: {{url: 'http://127.0.0.1:9/api/v1/write', queue: {{directory: {tmp_path}/queue}}}}\n"
    config = parse_config(text, "agent.yml")
    problems = unsupported_here(config, platform="win32")
    assert [problem.split(":")[0] for problem in problems] == ["modules.icmp.prober", "push"]
    assert unsupported_here(config, platform="linux") == []
