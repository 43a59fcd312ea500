"""Logs as an operator reads them: one human line per record by default, one JSON object per line with
--log-format json, from the agent and the collector alike, and never a credential: not in logs, /metrics,
`probe --once` output or config errors, even when a push is refused and a probe's login fails.

The agent pushes with a token the collector does not know (refused with 401, logged on both sides) and probes a
web portal with a basic-auth password it refuses; both run at debug level. The redaction filter (foundation/logs.py)
is also driven directly, since the programs never hand it a secret to mask.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from agents.catalog import parse_config
from foundation.logs import MASK, protect_secrets, setup_logging
from tests.support.httpd import HttpServer, Reply
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.test_agent_run import http_get

ROOT = Path(__file__).resolve().parent.parent
JSON_KEYS = {"ts", "level", "logger", "msg"}
TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
WAIT_SECONDS = 20.0


@dataclass(frozen=True)
class Credentials:
    collector_token: str  # the one token the collector knows
    push_token: str  # the agent's, which the collector does not know
    portal_password: str

    def all(self) -> tuple[str, ...]:
        return (self.collector_token, self.push_token, self.portal_password)

    def env(self) -> dict[str, str]:
        return {"NETMON_LOGTEST_COLLECTOR_TOKEN": self.collector_token, "NETMON_LOGTEST_PUSH_TOKEN": self.push_token}


@dataclass(frozen=True)
class Services:
    directory: Path
    credentials: Credentials
    agent_config: Path
    agent_log: str
    collector_log: str
    agent_metrics: str
    collector_metrics: str


def collector_config(port: int) -> str:
    return f"""\
listen: 127.0.0.1:{port}
agencies:
  - {{id: so-tttt, name: "Sở Thông tin và Truyền thông", district: tp-my-tho, level: department}}
agents:
  - {{id: so-tttt-1, agency: so-tttt, mode: push, bearer_token: "${{NETMON_LOGTEST_COLLECTOR_TOKEN}}"}}
"""


def agent_config(directory: Path, port: int, collector_port: int, portal_url: str) -> str:
    return f"""\
agent: {{id: so-tttt-1, agency: so-tttt}}
listen: 127.0.0.1:{port}
defaults: {{interval: 1s, timeout: 900ms}}
modules:
  portal_login:
    prober: http
    http:
      basic_auth: {{username: canbo, password_file: {directory}/portal.pass}}
targets:
  - {{name: portal, address: "{portal_url}", module: portal_login}}
push:
  url: http://127.0.0.1:{collector_port}/api/v1/write
  bearer_token: ${{NETMON_LOGTEST_PUSH_TOKEN}}
  interval: 200ms
  queue: {{directory: {directory}/queue}}
"""


def cli_argv(program: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"{program}.cli", "--log-level", "debug", "--log-format", "json", *args]


def wait_for_text(path: Path, fragment: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while fragment not in path.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, f"{fragment!r} not in {path} after {WAIT_SECONDS}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def portal() -> Iterator[HttpServer]:
    """A web portal that refuses every login."""
    with HttpServer(routes={"/portal": Reply(status=401, body=b"login failed")}) as server:
        yield server


@pytest.fixture(scope="module")
def services(tmp_path_factory, portal: HttpServer) -> Iterator[Services]:
    directory = tmp_path_factory.mktemp("logs")
    credentials = Credentials(*(f"secret-{secrets.token_hex(10)}" for _ in range(3)))
    (directory / "portal.pass").write_text(credentials.portal_password + "\n")
    collector_port, agent_port = free_port(), free_port()
    (directory / "collector.yml").write_text(collector_config(collector_port), encoding="utf-8")
    collector_log, agent_log = directory / "collector.log", directory / "agent.log"
    agent_yml = directory / "agent.yml"
    good_config = agent_config(directory, agent_port, collector_port, portal.url("/portal"))
    agent_yml.write_text(good_config, encoding="utf-8")
    collector_argv = cli_argv("collector", "run", "--config", str(directory / "collector.yml"))
    with running(collector_argv, str(collector_log), env=credentials.env(), cwd=ROOT) as collector:
        wait_for_port("127.0.0.1", collector_port, proc=collector)
        agent_argv = cli_argv("agents", "run", "--config", str(agent_yml))
        with running(agent_argv, str(agent_log), env=credentials.env(), cwd=ROOT) as agent:
            wait_for_port("127.0.0.1", agent_port, proc=agent)
            wait_for_text(agent_log, "401")  # the collector answered the push with 401
            wait_for_text(collector_log, "refused")
            agent_yml.write_text(good_config + "bogus_key: 1\n", encoding="utf-8")
            agent.send_signal(signal.SIGHUP)
            wait_for_text(agent_log, "config reload failed")
            _, agent_metrics = http_get(f"http://127.0.0.1:{agent_port}/metrics")
            _, collector_metrics = http_get(f"http://127.0.0.1:{collector_port}/metrics")
    agent_yml.write_text(good_config, encoding="utf-8")
    yield Services(
        directory, credentials, agent_yml, agent_log.read_text(encoding="utf-8"),
        collector_log.read_text(encoding="utf-8"), agent_metrics, collector_metrics,
    )  # fmt: skip


def json_entries(log: str) -> list[dict]:
    entries = [json.loads(line) for line in log.splitlines()]
    assert entries
    return entries


@pytest.mark.parametrize("program", ["agent", "collector"])
def test_json_log_is_one_object_per_line_with_ts_level_logger_msg(services: Services, program: str) -> None:
    entries = json_entries(getattr(services, f"{program}_log"))
    assert all(JSON_KEYS <= entry.keys() and TS_FORMAT.match(entry["ts"]) for entry in entries)
    assert {entry["level"] for entry in entries} >= {"info", "error" if program == "agent" else "warning"}


def test_json_log_says_what_happened_in_its_fields(services: Services) -> None:
    agent = json_entries(services.agent_log)
    refused = [e for e in agent if e["logger"] == "agents.push" and "401" in e["msg"]]
    assert refused and refused[0]["level"] in ("warning", "error")
    reload = [e for e in agent if e["msg"].startswith("config reload failed")]
    assert reload and reload[0]["level"] == "error" and "bogus_key" in reload[0]["msg"]
    collector = json_entries(services.collector_log)
    assert any(e["logger"] == "collector.app" and "refused (401" in e["msg"] for e in collector)


@pytest.mark.parametrize("where", ["agent_log", "collector_log", "agent_metrics", "collector_metrics"])
def test_no_credential_in_logs_or_metrics(services: Services, where: str) -> None:
    text = getattr(services, where)
    assert text and not [secret for secret in services.credentials.all() if secret in text]


@pytest.mark.parametrize("output", ["table", "json"])
def test_no_credential_in_probe_once_output(services: Services, portal: HttpServer, output: str) -> None:
    argv = cli_argv("agents", "probe", "--config", str(services.agent_config), "--once")
    argv += ["--json"] if output == "json" else []
    sent_before = len(portal.requests)
    env = {**os.environ, **services.credentials.env()}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 1 and "portal" in done.stdout  # the portal refused the login: the probe failed
    assert portal.requests[sent_before].headers["authorization"].startswith("Basic ")  # the password was in use
    assert not [secret for secret in services.credentials.all() if secret in done.stdout + done.stderr]


PUSH_WITH_LITERAL_TOKEN = "push: {{url: 'http://127.0.0.1:9/w', bearer_token: {secret}, queue: {{directory: /nonexistent}}}}"
PUSH_WITH_PASSWORD_IN_URL = "push: {{url: 'http://so-tttt-1:{secret}@127.0.0.1:9/w', queue: {{directory: /nonexistent}}}}"


@pytest.mark.parametrize("push", [PUSH_WITH_LITERAL_TOKEN, PUSH_WITH_PASSWORD_IN_URL], ids=["literal", "in_url"])
def test_no_credential_in_config_errors(tmp_path: Path, push: str) -> None:
    secret = f"secret-{secrets.token_hex(10)}"
    config = tmp_path / "agent.yml"
    config.write_text(f"agent: {{id: a, agency: b}}\n{push.format(secret=secret)}\n", encoding="utf-8")
    argv = cli_argv("agents", "check-config", str(config))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and f"{config}:2: push." in done.stderr
    assert secret not in done.stdout + done.stderr


def test_text_log_is_one_human_line_per_record_by_default(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agent.yml"
    config.write_text(f"agent: {{id: text-agent, agency: demo}}\nlisten: 127.0.0.1:{port}\n", encoding="utf-8")
    log = tmp_path / "agent.log"
    with running([sys.executable, "-m", "agents.cli", "run", "--config", str(config)], str(log), cwd=ROOT) as agent:
        wait_for_port("127.0.0.1", port, proc=agent)
        wait_for_text(log, "listening on")
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines
    started = re.compile(r" INFO agents\.app: agent text-agent \(demo\) listening on 127\.0\.0\.1:\d+")
    assert any(started.search(line) for line in lines)


# --- the redaction filter, driven directly --------------------------------------------------------------


@pytest.fixture
def json_stderr(capsys) -> Iterator[Callable[[], list[dict]]]:
    """Set up logging as the CLI does, JSON to the captured stderr (in the test: pytest swaps stderr between
    phases); the function returns the entries written so far. The test's logging is restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def entries() -> list[dict]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    try:
        yield entries
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_redactor_masks_a_config_secret_in_messages_and_tracebacks(json_stderr, monkeypatch) -> None:
    secret = f"secret-{secrets.token_hex(10)}"
    monkeypatch.setenv("NETMON_LOGTEST_SECRET", secret)
    config = parse_config(
        "agent: {id: a, agency: b}\n"
        "push: {url: 'http://127.0.0.1:9/w', bearer_token: '${NETMON_LOGTEST_SECRET}', queue: {directory: /nonexistent}}\n"
    )
    setup_logging("debug", "json")
    protect_secrets(config)
    log = logging.getLogger("tests.redaction")
    log.warning("a careless message with %s in it", secret)
    try:
        raise ConnectionError(f"server said: token {secret} unknown")
    except ConnectionError:
        log.exception("push failed")
    message, failure = json_stderr()
    assert message["msg"] == f"a careless message with {MASK} in it"
    assert f"token {MASK} unknown" in failure["exc"] and secret not in failure["exc"]


@pytest.mark.parametrize(
    "text, masked",
    [
        ("GET http://canbo:hunter2x@portal.example/login", f"GET http://canbo:{MASK}@portal.example/login"),
        ("headers {'Authorization': 'Basic Y2FuYm86aHVudGVy'}", f"headers {{'Authorization': 'Basic {MASK}'}}"),
        ("sent Authorization: Bearer abc.def-123", f"sent Authorization: Bearer {MASK}"),
        ("missing or unknown bearer token", "missing or unknown bearer token"),  # prose stays as it is
    ],
)
def test_redactor_masks_credentials_it_was_never_told_about(json_stderr, text: str, masked: str) -> None:
    setup_logging("debug", "json")
    logging.getLogger("tests.redaction").info(text)
    (entry,) = json_stderr()
    assert entry["msg"] == masked
