"""SSH checks against a real OpenSSH sshd on loopback: host key policy, key login, timeouts that kill the
remote command, connection reuse, the concurrency cap, and the parsers on real command output."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.config.model import Target
from agents.resources import ProbeResources
from agents.results import ProbeResult
from agents.runner import run_target
from agents.ssh.failures import SshFailure as Failure
from agents.ssh.parsers import ParseError, parse_systemd_unit
from tests.support.mailserver import running_mail_system
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.sshd import TEST_USER, Sshd, fingerprint, make_key, running_sshd

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "korrekt-Pferd-7391"  # of the encrypted client key; must never show up anywhere
PASSPHRASE_ENV = "NETMON_TEST_SSH_PASSPHRASE"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("ssh-keys")
    return {
        "client": make_key(directory / "client"),
        "encrypted": make_key(directory / "encrypted", PASSPHRASE),
        "stranger": make_key(directory / "stranger"),  # never authorized
    }


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]):
    with running_sshd(tmp_path_factory.mktemp("sshd"), [keys["client"], keys["encrypted"]]) as server:
        yield server


@pytest.fixture
async def resources():
    shared = ProbeResources()
    yield shared
    shared.close()


def known_hosts(directory: Path, *lines: str) -> Path:
    path = directory / "known_hosts"
    path.write_text("".join(lines))
    return path


def host(sshd: Sshd, key: Path, known: Path | None = None, **extra) -> dict:
    policy = {"known_hosts": str(known)} if known is not None else {"host_key_fingerprint": sshd.host_key_fingerprint}
    return {"address": sshd.host, "port": sshd.port, "user": sshd.user, "key_file": str(key), **policy, **extra}


def targets(hosts: dict, *checks: dict) -> list[Target]:
    # JSON is YAML: the test builds the config as data and still goes through the real loader
    config = {"agent": {"id": "t", "agency": "test"}, "ssh_hosts": hosts, "ssh_checks": list(checks)}
    return list(parse_config(json.dumps(config), "ssh-test.yml").targets)


def check(name: str = "check", timeout: str = "5s", **body) -> dict:
    return {"name": name, "host": "box", "timeout": timeout, "interval": "1m", **body}


def samples(result: ProbeResult, name: str) -> dict[tuple, float]:
    return {sample.labels: sample.value for sample in result.samples if sample.metric.name == name}


def value(result: ProbeResult, name: str, **labels: str) -> float:
    return samples(result, name)[tuple(sorted(labels.items()))]


async def run_one(resources: ProbeResources, hosts: dict, **body) -> ProbeResult:
    (target,) = targets(hosts, check(**body))
    return await run_target(target, resources)


def process_alive(pid: int) -> bool:
    """A zombie counts as gone: it runs nothing (this container's init may not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- login and host keys ----------------------------------------------------------------------------------------


async def test_key_login_runs_the_command_as_the_unprivileged_user(sshd, keys, resources):
    result = await run_one(
        resources, {"box": host(sshd, keys["client"])}, exec=["id", "-u"], parser="regex", regex=r"^(?P<uid>\d+)$"
    )
    assert result.success, result.detail
    assert value(result, "probe_ssh_regex_value", group="uid") == pwd.getpwnam(TEST_USER).pw_uid != 0
    assert value(result, "probe_ssh_command_exit_status") == 0


async def test_known_hosts_file_with_the_host_key_is_accepted(sshd, keys, resources, tmp_path):
    known = known_hosts(tmp_path, sshd.known_hosts_line())
    result = await run_one(resources, {"box": host(sshd, keys["client"], known)}, exec="true")
    assert result.success, result.detail


async def test_unknown_host_key_is_refused_and_not_added(sshd, keys, resources, tmp_path):
    other_host = f"[{sshd.host}]:{free_port()} {sshd.host_public_key}\n"  # the same key, trusted for another port
    known = known_hosts(tmp_path, other_host)
    logins = sshd.accepted_logins()
    result = await run_one(resources, {"box": host(sshd, keys["client"], known)}, exec="true")
    assert result.failure is Failure.HOST_KEY_UNKNOWN, result.detail
    assert known.read_text() == other_host
    assert sshd.accepted_logins() == logins  # refused before logging in


async def test_pinned_fingerprint_of_another_key_is_refused_as_changed(sshd, keys, resources):
    pinned_elsewhere = fingerprint(Path(f"{keys['stranger']}.pub"))
    result = await run_one(
        resources, {"box": host(sshd, keys["client"], host_key_fingerprint=pinned_elsewhere)}, exec="true"
    )
    assert result.failure is Failure.HOST_KEY_CHANGED, result.detail
    assert pinned_elsewhere in result.detail and sshd.host_key_fingerprint in result.detail


async def test_changed_host_key_is_refused_when_the_server_comes_back_with_a_new_key(keys, resources, tmp_path):
    port = free_port()
    with running_sshd(tmp_path / "before", [keys["client"]], port) as before:
        known = known_hosts(tmp_path, before.known_hosts_line())
        hosts = {"box": host(before, keys["client"], known)}
        first = await run_one(resources, hosts, exec="true")
    with running_sshd(tmp_path / "after", [keys["client"]], port) as after:
        assert after.host_public_key != before.host_public_key
        second = await run_one(resources, hosts, exec="true")
        assert after.accepted_logins() == 0
    assert first.success, first.detail
    assert second.failure is Failure.HOST_KEY_CHANGED, second.detail


async def test_a_key_the_server_does_not_accept_fails_with_auth_failed(sshd, keys, resources):
    result = await run_one(resources, {"box": host(sshd, keys["stranger"])}, exec="true")
    assert result.failure is Failure.AUTH_FAILED, result.detail


async def test_encrypted_key_logs_in_with_the_passphrase_from_the_environment(sshd, keys, resources, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    box = host(sshd, keys["encrypted"], key_passphrase=f"${{{PASSPHRASE_ENV}}}")
    result = await run_one(resources, {"box": box}, exec="true")
    assert result.success, result.detail


async def test_encrypted_key_with_a_wrong_passphrase_fails_with_auth_failed(sshd, keys, resources, tmp_path):
    wrong = tmp_path / "passphrase"
    wrong.write_text("not-the-passphrase\n")
    box = host(sshd, keys["encrypted"], key_passphrase_file=str(wrong))
    result = await run_one(resources, {"box": box}, exec="true")
    assert result.failure is Failure.AUTH_FAILED, result.detail
    assert "wrong passphrase" in result.detail


async def test_a_closed_port_fails_with_connect_refused(sshd, keys, resources):
    box = {**host(sshd, keys["client"]), "port": free_port()}
    result = await run_one(resources, {"box": box}, exec="true")
    assert result.failure is Failure.CONNECT_REFUSED, result.detail


# --- timeouts, reuse, concurrency -------------------------------------------------------------------------------


async def test_a_command_past_its_timeout_fails_with_timeout_and_is_killed_on_the_server(sshd, keys, resources):
    pid_file = sshd.scratch / "pids"
    sleeper = f"sleep 300 & echo $! > {pid_file}; echo $$ >> {pid_file}; wait"  # a child, as real scripts have
    hosts = {"box": host(sshd, keys["client"])}
    started = time.monotonic()
    result = await run_one(resources, hosts, exec=["sh", "-c", sleeper], timeout="1500ms")
    elapsed = time.monotonic() - started
    assert result.failure is Failure.TIMEOUT, result.detail
    assert "timed out running the command" in result.detail
    assert 1.5 <= elapsed < 2.5  # the module timeout, not the runner's hard cap (+1 s) or the sleep
    pids = [int(pid) for pid in pid_file.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(map(process_alive, pids)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(map(process_alive, pids)), "the remote command outlived its check"
    after = await run_one(resources, hosts, exec="true")
    assert after.success, "the connection stays usable after a killed command"


async def test_after_the_server_restarts_the_next_check_logs_in_again(keys, resources, tmp_path):
    port = free_port()
    with running_sshd(tmp_path / "sshd", [keys["client"]], port) as server:
        hosts = {"box": host(server, keys["client"])}
        first = await run_one(resources, hosts, exec="true")
        logins = server.accepted_logins()
    with running_sshd(tmp_path / "sshd", [keys["client"]], port) as restarted:  # same directory: same host key
        second = await run_one(resources, hosts, exec="true")
        assert restarted.accepted_logins() == logins + 1  # the same log file, appended
    assert first.success, first.detail
    assert second.success, second.detail


async def test_checks_of_one_host_share_one_connection(sshd, keys, resources):
    hosts = {"box": host(sshd, keys["client"])}
    logins = sshd.accepted_logins()
    first, second = targets(hosts, check("first", exec="true"), check("second", exec=["echo", "hi"]))
    results = [await run_target(target, resources) for target in (first, second, first, second)]
    assert all(result.success for result in results), [result.detail for result in results]
    assert sshd.accepted_logins() == logins + 1


async def test_no_more_than_max_sessions_commands_run_at_once_on_a_host(sshd, keys, resources):
    hosts = {"box": host(sshd, keys["client"], max_sessions=2)}
    timed = check(exec=["sh", "-c", "date +%s.%N; sleep 0.4; date +%s.%N"], parser="regex",
                  regex=r"^(?P<start>[0-9.]+)\n(?P<end>[0-9.]+)$")
    checks = [dict(timed, name=f"sleeper-{index}") for index in range(4)]
    results = await asyncio.gather(*(run_target(target, resources) for target in targets(hosts, *checks)))
    assert all(result.success for result in results), [result.detail for result in results]
    spans = [(value(r, "probe_ssh_regex_value", group="start"), value(r, "probe_ssh_regex_value", group="end")) for r in results]
    most_at_once = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert most_at_once == 2


async def test_hosts_that_never_answer_do_not_stall_the_checks_of_other_hosts(sshd, keys):
    # Two hung hosts, two checks each, three threads: each host logs in once at a time, so the hung logins hold
    # two threads and the third stays free for the healthy host.
    resources = ProbeResources(max_threads=3)
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)  # the kernel accepts; nobody speaks SSH
    hung_box = {**host(sshd, keys["client"]), "port": silent.getsockname()[1]}
    hosts = {"box": host(sshd, keys["client"]), "hung-a": hung_box, "hung-b": {**hung_box, "user": "root"}}
    hung = [dict(check(f"{name}-{index}", timeout="3s", exec="true"), host=name) for name in ("hung-a", "hung-b") for index in range(2)]
    all_targets = targets(hosts, *hung, check("healthy", exec="true"))
    finished: dict[str, float] = {}

    async def timed(target: Target) -> ProbeResult:
        result = await run_target(target, resources)
        finished[target.name] = time.monotonic()
        return result

    try:
        results = dict(zip((t.name for t in all_targets), await asyncio.gather(*map(timed, all_targets))))
    finally:
        resources.close()
        silent.close()
    assert results["healthy"].success, results["healthy"].detail
    assert all(results[name].failure is Failure.TIMEOUT for name in results if name != "healthy")
    assert finished["healthy"] < min(finished[name] for name in finished if name != "healthy")


# --- parsers on real output -------------------------------------------------------------------------------------


async def test_df_reports_the_root_filesystem_as_statvfs_sees_it(sshd, keys, resources):
    result = await run_one(resources, {"box": host(sshd, keys["client"])}, command="df /")
    stat = os.statvfs("/")
    assert result.success, result.detail
    ((labels, size),) = samples(result, "probe_ssh_filesystem_size_bytes").items()
    assert dict(labels)["mountpoint"] == "/"
    assert abs(size - stat.f_blocks * stat.f_frsize) < 1024
    other_writers_margin = 256 << 20  # other test runs write to this disk meanwhile
    assert abs(value(result, "probe_ssh_filesystem_avail_bytes", **dict(labels)) - stat.f_bavail * stat.f_frsize) < other_writers_margin
    assert abs(value(result, "probe_ssh_filesystem_free_bytes", **dict(labels)) - stat.f_bfree * stat.f_frsize) < other_writers_margin


async def test_df_of_all_filesystems_leaves_out_pseudo_mount_points(sshd, keys, resources):
    result = await run_one(resources, {"box": host(sshd, keys["client"])}, command="df")
    assert result.success, result.detail
    mountpoints = {dict(labels)["mountpoint"] for labels in samples(result, "probe_ssh_filesystem_size_bytes")}
    assert "/" in mountpoints
    assert not [m for m in mountpoints if m == "/dev" or m.startswith(("/dev/", "/proc", "/sys"))]


async def test_exit_code_zero_is_success(sshd, keys, resources):
    result = await run_one(resources, {"box": host(sshd, keys["client"])}, exec="true")
    assert result.success and value(result, "probe_ssh_command_exit_status") == 0


async def test_exit_code_non_zero_fails_with_command_failed_and_the_first_stderr_line(sshd, keys, resources):
    result = await run_one(resources, {"box": host(sshd, keys["client"])}, exec=["sh", "-c", "echo 'disk on fire' >&2; exit 3"])
    assert result.failure is Failure.COMMAND_FAILED
    assert value(result, "probe_ssh_command_exit_status") == 3
    assert result.detail == "exit status 3: disk on fire"


async def test_output_the_regex_does_not_match_fails_with_parse_error(sshd, keys, resources):
    result = await run_one(
        resources, {"box": host(sshd, keys["client"])}, exec=["echo", "no digits"], parser="regex", regex=r"(?P<n>\d+)"
    )
    assert result.failure is Failure.PARSE_ERROR, result.detail


def test_systemd_unit_state_from_systemctl_show_output():
    # this machine runs no systemd: the text is what `systemctl show --property=Id,ActiveState a b` prints
    output = "Id=postfix.service\nActiveState=active\n\nId=dovecot.service\nActiveState=failed\n"
    states = {(dict(s.labels)["unit"], dict(s.labels)["state"]): s.value for s in parse_systemd_unit(output)}
    assert states[("postfix.service", "active")] == 1 and states[("postfix.service", "failed")] == 0
    assert states[("dovecot.service", "failed")] == 1 and states[("dovecot.service", "active")] == 0
    with pytest.raises(ParseError):
        parse_systemd_unit("Failed to connect to bus: No such file or directory\n")


@pytest.fixture(scope="module")
def deferred_mail():
    """Postfix with 3 deferred messages and 1 held one, and the sizes postqueue reports for them."""
    with running_mail_system(defer_delivery=True) as mail:
        host_port = mail.address("smtp").rsplit(":", 1)
        with smtplib.SMTP(host_port[0], int(host_port[1]), timeout=10) as smtp:
            for index in range(4):
                body = f"Subject: queued {index}\n\n" + "x" * (1000 * (index + 1)) + "\n"
                smtp.sendmail("sender@test.local", ["user@test.local"], body)
        listing = wait_for_queue(mail.postfix_config, lambda entries: len(entries) == 4 and all(e["queue_name"] == "deferred" for e in entries))
        held = listing[0]["queue_id"]
        subprocess.run(["postsuper", "-c", str(mail.postfix_config), "-h", held], check=True, capture_output=True, timeout=10)
        listing = wait_for_queue(mail.postfix_config, lambda entries: sum(e["queue_name"] == "hold" for e in entries) == 1)
        yield mail, listing


def wait_for_queue(config: Path, ready, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["postqueue", "-c", str(config), "-j"], check=True, capture_output=True, text=True, timeout=10)
        entries = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        if ready(entries):
            return entries
        if time.monotonic() > deadline:
            raise TimeoutError(f"postfix queue never got ready: {entries}")
        time.sleep(0.2)


def queue_totals(listing: list[dict], queue: str) -> tuple[int, int]:
    entries = [entry for entry in listing if entry["queue_name"] == queue]
    return len(entries), sum(entry["message_size"] for entry in entries)


@pytest.mark.parametrize("command", ["postqueue_json", "mailq"])
async def test_postfix_queue_counts_deferred_and_held_messages(sshd, keys, resources, deferred_mail, command):
    mail, listing = deferred_mail
    # a config directory other than /etc/postfix is honoured for root only (postqueue is set-gid): log in as root
    box = {**host(sshd, keys["client"]), "user": "root"}
    result = await run_one(resources, {"box": box}, command=f"{command} {mail.postfix_config}")
    assert result.success, result.detail
    assert queue_totals(listing, "deferred")[0] == 3 and queue_totals(listing, "hold")[0] == 1
    for queue in ("deferred", "hold"):
        messages, size = queue_totals(listing, queue)
        assert value(result, "probe_ssh_postfix_queue_messages", queue=queue) == messages
        assert value(result, "probe_ssh_postfix_queue_size_bytes", queue=queue) == size
    assert value(result, "probe_ssh_postfix_queue_messages", queue="active") == 0


# --- config -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box, body, message",
    [
        ({}, {"host": "nope", "command": "df"}, "ssh_checks[0].host: unknown ssh host 'nope'"),
        ({}, {"command": "df", "exec": "true"}, "set exactly one of command (a fixed command) and exec"),
        ({}, {"command": "top"}, "ssh_checks[0].command: unknown command 'top'; fixed commands: df [PATH ...], "
                                 "mailq [CONFIG_DIR], postqueue_json [CONFIG_DIR], systemctl_show UNIT ... (or use exec)"),
        ({}, {"command": "df var"}, "ssh_checks[0].command: df [PATH ...]: arguments must be absolute paths"),
        ({}, {"command": "systemctl_show"}, "ssh_checks[0].command: systemctl_show UNIT ...: name at least one unit"),
        ({}, {"command": "df", "labels": {"mountpoint": "x"}}, "label name 'mountpoint' is set by the df check"),
        ({"host_key_fingerprint": None}, {"command": "df"}, "set exactly one of known_hosts and host_key_fingerprint"),
        ({"host_key_fingerprint": "SHA256:short"}, {"command": "df"}, "ssh_hosts.box.host_key_fingerprint: expected"),
    ],
)
def test_config_mistakes_are_reported_with_their_key(box, body, message):
    base = {"address": "127.0.0.1", "user": "u", "key_file": "/k", "host_key_fingerprint": "SHA256:" + "A" * 43}
    box_config = {key: value for key, value in {**base, **box}.items() if value is not None}
    with pytest.raises(ConfigError) as error:
        targets({"box": box_config}, check(**body))
    assert message in str(error.value)


def test_an_ssh_module_is_refused_in_favour_of_ssh_checks():
    with pytest.raises(ConfigError, match="configured in ssh_hosts and ssh_checks"):
        parse_config("agent: {id: t, agency: test}\nmodules:\n  m: {prober: ssh}\n")


def test_the_mail_server_example_passes_check_config():
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", "check-config", "config/examples/mail-server-ssh.yml"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# --- secrets ----------------------------------------------------------------------------------------------------


def test_the_passphrase_and_the_key_never_show_in_output_logs_or_metrics(sshd, keys, tmp_path):
    port = free_port()
    secret_texts = [PASSPHRASE, *keys["encrypted"].read_text().splitlines()[1:-1]]
    hosts = {
        "box": host(sshd, keys["encrypted"], key_passphrase=f"${{{PASSPHRASE_ENV}}}"),
        "stranger": host(sshd, keys["stranger"]),  # a failing check: its logs must not leak either
    }
    config = {
        "agent": {"id": "t", "agency": "test"},
        "listen": f"127.0.0.1:{port}",
        "ssh_hosts": hosts,
        "ssh_checks": [
            check("ok", exec="true", interval="1s", timeout="900ms"),
            dict(check("refused", exec="true", interval="1s", timeout="900ms"), host="stranger"),
        ],
    }
    path = tmp_path / "agent.yml"
    path.write_text(json.dumps(config))
    env = {**os.environ, PASSPHRASE_ENV: PASSPHRASE}
    cli = [sys.executable, "-m", "agents.cli", "--log-level", "debug"]
    outputs = []
    for extra in ([], ["--json"]):
        once = subprocess.run([*cli, "probe", "--config", str(path), "--once", *extra], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert once.returncode == 1 and "auth_failed" in once.stdout, once.stdout + once.stderr
        outputs += [once.stdout, once.stderr]
    log = tmp_path / "agent.log"
    with running([*cli, "run", "--config", str(path)], log_path=str(log), cwd=str(ROOT), env={PASSPHRASE_ENV: PASSPHRASE}) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        metrics = wait_for_metrics(
            port,
            ("probe_failure_info{", 'target="refused"', 'reason="auth_failed"'),
            ("probe_ssh_command_exit_status{", 'target="ok"', 'ssh_host="box"'),
        )
    outputs += [metrics, log.read_text()]
    for text in outputs:
        for secret in secret_texts:
            assert secret not in text


def wait_for_metrics(port: int, *lines_with: tuple[str, ...], timeout: float = 15.0) -> str:
    """/metrics once, for each tuple, some line contains all of its parts."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        if all(any(all(part in line for part in parts) for line in text.splitlines()) for parts in lines_with):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{lines_with} not in /metrics:\n{text}")


def test_postfix_queue_parser_reads_an_empty_json_queue_as_zero_messages():
    from agents.ssh.parsers import parse_postfix_queue

    samples = parse_postfix_queue("")
    assert samples and all(sample.value == 0 for sample in samples)
