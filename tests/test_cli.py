"""The command line a first-day user runs: check-config and probe --once, with their exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agents.catalog import PROBERS
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def write_config(tmp_path: Path, targets: str, modules: str = "  tcp_connect: {prober: tcp, timeout: 1s}\n") -> Path:
    path = tmp_path / "agent.yml"
    path.write_text(f"agent: {{id: cli, agency: test}}\nmodules:\n{modules}targets:\n{targets}", encoding="utf-8")
    return path


def test_check_config_accepts_the_example_config():
    result = cli("check-config", "config/agent.example.yml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_exits_2_with_file_line_and_key(tmp_path):
    path = write_config(tmp_path, "  - {name: a, address: x, module: nope}\n")
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}:5: targets[0].module: unknown module 'nope'" in result.stderr


def test_check_config_prints_every_error_of_the_file_each_on_its_own_line(tmp_path):
    path = write_config(tmp_path, "  - {name: a, address: x, module: nope}\n  - {name: b, address: 'h:1', module: tcp_connect, interval: 5}\n",
                        modules="  tcp_connect: {prober: tcp, timeout: 1s}\n  web: {prober: htp}\n")
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"config error: {path}:4: modules.web.prober: unknown prober 'htp'; known probers: {', '.join(sorted(PROBERS))}",
        f"config error: {path}:6: targets[0].module: unknown module 'nope'; modules: tcp_connect, web",
        f"config error: {path}:7: targets[1].interval: duration must be a string with a unit like '15s' or '2m', got 5",
    ]


def test_probe_once_prints_json_and_exits_0_when_all_succeed(tmp_path):
    with __import__("socket").create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        path = write_config(tmp_path, f'  - {{name: open, address: "127.0.0.1:{port}", module: tcp_connect}}\n')
        result = cli("probe", "--config", str(path), "--once", "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["target"] == "open" and entry["success"] is True and entry["failure"] is None
    names = {s["name"] for s in entry["samples"]}
    assert {"probe_success", "probe_duration_seconds", "probe_tcp_connect_duration_seconds"} <= names


def test_probe_once_exits_1_when_a_probe_fails_and_prints_a_table(tmp_path):
    closed = free_port()
    path = write_config(tmp_path, f'  - {{name: shut, address: "127.0.0.1:{closed}", module: tcp_connect}}\n')
    result = cli("probe", "--config", str(path), "--once")
    assert result.returncode == 1
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:4] == ["TARGET", "MODULE", "ADDRESS", "RESULT"]
    assert "shut" in row and "connect_refused" in row


def test_probe_once_can_select_one_target(tmp_path):
    closed = free_port()
    path = write_config(
        tmp_path,
        f'  - {{name: one, address: "127.0.0.1:{closed}", module: tcp_connect}}\n'
        f'  - {{name: two, address: "127.0.0.1:{closed}", module: tcp_connect}}\n',
    )
    result = cli("probe", "--config", str(path), "--once", "--json", "--target", "two")
    assert [r["target"] for r in json.loads(result.stdout)["results"]] == ["two"]
    assert cli("probe", "--config", str(path), "--once", "--target", "three").returncode == 2


def test_probe_once_exits_2_on_config_error(tmp_path):
    path = write_config(tmp_path, "  - {name: a, address: x, module: tcp_connect, interval: soon}\n")
    result = cli("probe", "--config", str(path), "--once")
    assert result.returncode == 2
    assert "targets[0].interval" in result.stderr


def test_secret_values_never_appear_in_errors_or_output(tmp_path):
    secret = "s3cr3t-Mật-khẩu"
    path = write_config(
        tmp_path,
        "  - {name: a, address: x, module: web, interval: soon}\n",
        modules="  web: {prober: http, http: {basic_auth: {username: u, password: '${WEB_PASS}'}}}\n",
    )
    result = cli("check-config", str(path), env={"WEB_PASS": secret})
    assert result.returncode == 2
    assert secret not in result.stdout + result.stderr


def test_literal_secret_is_rejected(tmp_path):
    path = write_config(
        tmp_path, "", modules="  web: {prober: http, http: {basic_auth: {username: u, password: hunter2}}}\n"
    )
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert "only by reference" in result.stderr
    assert "hunter2" not in result.stderr
