"""Agent push: probe results remote-written through the durable queue, with the retry policy of remote_write, over
TLS with a bearer token, and without losing a sample across a receiver outage and a SIGKILL of the agent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from foundation import remote_write as rw
from foundation.httpclient import Endpoint, HttpClient
from foundation.queue import DurableQueue, QueueLimits
from foundation.sender import RemoteWriteSender, SendPolicy
from tests.support.certs import make_ca, make_leaf
from tests.support.httpd import HttpServer, Reply
from tests.support.ports import free_port
from tests.support.procs import running, stop, wait_for_port
from tests.support.require import require_binary
from tests.support.tsdb import running_prometheus, stored_samples
from tests.test_agent_run import http_get, metric_value

ROOT = Path(__file__).resolve().parent.parent
WRITE_PATH = "/api/v1/write"
TOKEN = "s3cr3t-push-token-4b1d"
FAST_RETRIES = SendPolicy(interval=0.1, batch_max_samples=1000, min_backoff=0.05, max_backoff=0.2)


def agent_config(port: int, url: str, queue: Path, push_extra: str = "") -> str:
    return f"""\
agent:
  id: push-agent
  agency: so-tttt
  labels: {{district: tp-my-tho}}
listen: 127.0.0.1:{port}
defaults: {{interval: 1s, timeout: 500ms}}
modules:
  tcp_connect: {{prober: tcp}}
targets:
  - {{name: self-port, address: "127.0.0.1:{port}", module: tcp_connect, labels: {{role: "máy chủ"}}}}
  - {{name: refused, address: "127.0.0.1:{free_port()}", module: tcp_connect}}
push:
  url: {url}
  interval: 1s
  min_backoff: 200ms
  max_backoff: 1s
  queue: {{directory: {queue}, fsync_interval: 200ms}}
{push_extra}"""


def start_agent(config: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def queued_samples(directory: Path) -> set[tuple]:
    """(labels, timestamp ms, value) of every sample waiting in a queue nobody holds."""
    queue = DurableQueue(directory)
    try:
        batch = queue.peek(10**9, 1 << 30)
    finally:
        queue.close()
    if batch is None:
        return set()
    return {(s.labels, ts, value) for body in batch.payloads for s in rw.decode(body, 1 << 26) for ts, value in s.samples}


def as_samples(stored: dict[tuple, list[tuple[int, float]]]) -> set[tuple]:
    return {(labels, ts, value) for labels, samples in stored.items() for ts, value in samples}


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_every_sample_reaches_prometheus_with_its_timestamp_across_an_outage_and_a_sigkill(tmp_path):
    prometheus_port, agent_port = free_port(), free_port()
    queue_dir = tmp_path / "queue"
    config = tmp_path / "agent.yml"
    config.write_text(agent_config(agent_port, f"http://127.0.0.1:{prometheus_port}{WRITE_PATH}", queue_dir), encoding="utf-8")
    success = '{__name__="probe_success"}'
    with running_prometheus(tmp_path / "prometheus", port=prometheus_port) as prometheus:
        first = start_agent(config, tmp_path / "agent.log")
        try:
            wait_until(lambda: len(stored_samples(prometheus, success)) == 2, 20, "the first pushes")
        except BaseException:
            stop(first)
            raise
    time.sleep(3)  # the receiver is down; the agent keeps probing into its queue
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at_ms = time.time() * 1000
    queued = queued_samples(queue_dir)
    assert {ts for _, ts, _ in queued if ts > killed_at_ms - 4000}, "the outage's samples are not in the queue"
    second = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for_port("127.0.0.1", agent_port, proc=second)
        time.sleep(2)  # still down: the restarted agent queues behind what the killed one left
        with running_prometheus(tmp_path / "prometheus", port=prometheus_port) as prometheus:
            wait_until(
                lambda: metric_value(http_get(f"http://127.0.0.1:{agent_port}/metrics")[1], "netmon_agent_push_queue_pending_samples") == 0
                and queued <= as_samples(stored_samples(prometheus, '{__name__=~"probe_.+"}')),
                30, "the queue to drain into prometheus",
            )
            stored = stored_samples(prometheus, success)
            text = http_get(f"http://127.0.0.1:{agent_port}/metrics")[1]
    finally:
        stop(second)
    for labels, samples in stored.items():
        before_kill = [ts for ts, _ in samples if ts < killed_at_ms]
        slots = round((before_kill[-1] - before_kill[0]) / 1000) + 1
        assert len(before_kill) == slots, f"{dict(labels)['target']}: {slots} probe runs, {len(before_kill)} samples stored"
        assert before_kill[-1] > killed_at_ms - 1500  # right up to the kill
        after_restart = [ts for ts, _ in samples if ts > killed_at_ms]
        assert len(after_restart) >= 2  # queued during the second outage, then sent
    assert metric_value(text, "netmon_agent_push_samples_dropped_total", reason="rejected") == 0


@pytest.fixture
def tls_receiver(tmp_path):
    ca = make_ca(tmp_path / "pki")
    with HttpServer(tls=make_leaf(tmp_path / "pki", ca, "collector"), routes={WRITE_PATH: Reply(204, b"")}) as server:
        yield server, ca


def test_agent_pushes_over_tls_with_its_bearer_token_and_the_remote_write_headers(tmp_path, tls_receiver):
    receiver, ca = tls_receiver
    agent_port = free_port()
    (tmp_path / "token").write_text(TOKEN + "\n")
    tls = f"  bearer_token_file: {tmp_path / 'token'}\n  tls: {{ca_file: {ca.cert}}}\n"
    config = tmp_path / "agent.yml"
    config.write_text(agent_config(agent_port, receiver.url(WRITE_PATH, host="localhost"), tmp_path / "queue", tls), encoding="utf-8")
    with running([sys.executable, "-m", "agents.cli", "run", "--config", str(config)], log_path=str(tmp_path / "agent.log"), cwd=ROOT) as agent:
        wait_for_port("127.0.0.1", agent_port, proc=agent)
        wait_until(lambda: len(receiver.requests) >= 2, 15, "two pushes")
        metrics = http_get(f"http://127.0.0.1:{agent_port}/metrics")[1]
    request = receiver.requests[0]
    assert request.path == WRITE_PATH
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-encoding"] == "snappy"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-prometheus-remote-write-version"] == "0.1.0"
    assert receiver.server_names[0] == "localhost"
    series = rw.decode(request.body, 1 << 26)
    assert any(dict(s.labels).get("target") == "self-port" and dict(s.labels)["role"] == "máy chủ" for s in series)
    assert all(abs(ts - time.time() * 1000) < 60_000 for s in series for ts, _ in s.samples)
    assert metric_value(metrics, "netmon_agent_push_samples_sent_total") > 0
    assert TOKEN not in metrics
    assert TOKEN not in (tmp_path / "agent.log").read_text()


def test_pushed_series_are_the_series_of_the_metrics_page(tmp_path, tls_receiver):
    receiver, ca = tls_receiver
    agent_port = free_port()
    config = tmp_path / "agent.yml"
    tls = f"  tls: {{ca_file: {ca.cert}}}\n"
    config.write_text(agent_config(agent_port, receiver.url(WRITE_PATH, host="localhost"), tmp_path / "queue", tls), encoding="utf-8")
    with running([sys.executable, "-m", "agents.cli", "run", "--config", str(config)], log_path=str(tmp_path / "agent.log"), cwd=ROOT) as agent:
        wait_for_port("127.0.0.1", agent_port, proc=agent)
        wait_until(lambda: len(receiver.requests) >= 2, 15, "two pushes")
        metrics = http_get(f"http://127.0.0.1:{agent_port}/metrics")[1]
    pushed = {s.labels for r in list(receiver.requests) for s in rw.decode(r.body, 1 << 26)}
    pushed_for_target = {labels for labels in pushed if ("target", "refused") in labels}
    exposed = set()
    for line in metrics.splitlines():
        if 'target="refused"' in line and line.startswith("probe_"):
            name, _, rest = line.partition("{")
            pairs = [pair.split("=", 1) for pair in rest.rsplit("}", 1)[0].split('",')]
            exposed.add(tuple(sorted([("__name__", name)] + [(k, v.strip('"')) for k, v in pairs])))
    assert pushed_for_target == exposed
    assert len(exposed) >= 4


def test_agent_push_metrics_pass_promtool(tmp_path, tls_receiver):
    promtool = require_binary("promtool", "prometheus")
    receiver, ca = tls_receiver
    agent_port = free_port()
    config = tmp_path / "agent.yml"
    config.write_text(
        agent_config(agent_port, receiver.url(WRITE_PATH, host="localhost"), tmp_path / "queue", f"  tls: {{ca_file: {ca.cert}}}\n"),
        encoding="utf-8",
    )
    with running([sys.executable, "-m", "agents.cli", "run", "--config", str(config)], log_path=str(tmp_path / "agent.log"), cwd=ROOT) as agent:
        wait_for_port("127.0.0.1", agent_port, proc=agent)
        wait_until(lambda: len(receiver.requests) >= 1, 15, "a push")
        metrics = http_get(f"http://127.0.0.1:{agent_port}/metrics")[1]
    for name in ("samples_queued_total", "samples_sent_total", "queue_bytes", "oldest_unsent_age_seconds", "last_success_timestamp_seconds"):
        assert metric_value(metrics, f"netmon_agent_push_{name}") is not None, name
    assert metric_value(metrics, "netmon_agent_push_samples_dropped_total", reason="queue_full") == 0
    checked = subprocess.run([promtool, "check", "metrics"], input=metrics.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_reload_moves_pushing_to_the_new_receiver(tmp_path):
    agent_port = free_port()
    config = tmp_path / "agent.yml"
    with HttpServer(routes={WRITE_PATH: Reply(204, b"")}) as old, HttpServer(routes={WRITE_PATH: Reply(204, b"")}) as new:
        config.write_text(agent_config(agent_port, old.url(WRITE_PATH), tmp_path / "queue"), encoding="utf-8")
        with running([sys.executable, "-m", "agents.cli", "run", "--config", str(config)], log_path=str(tmp_path / "agent.log"), cwd=ROOT) as agent:
            wait_for_port("127.0.0.1", agent_port, proc=agent)
            wait_until(lambda: len(old.requests) >= 1, 15, "a push to the first receiver")
            config.write_text(agent_config(agent_port, new.url(WRITE_PATH), tmp_path / "queue"), encoding="utf-8")
            os.kill(agent.pid, signal.SIGHUP)
            wait_until(lambda: len(new.requests) >= 2, 15, "pushes to the second receiver")
            pushed_to_old = len(old.requests)
            time.sleep(1.5)
            metrics = http_get(f"http://127.0.0.1:{agent_port}/metrics")[1]
        assert len(old.requests) == pushed_to_old
    assert metric_value(metrics, "netmon_agent_config_last_reload_successful") == 1
    assert metric_value(metrics, "netmon_agent_push_samples_sent_total") > 0


@pytest.mark.parametrize(
    "push, where, message",
    [
        ("{url: 'http://c:9856/api/v1/write', bearer_token: " + TOKEN + ", queue: {directory: /q}}", "push.bearer_token",
         "secrets are accepted only by reference"),
        ("{url: 'ftp://c/x', queue: {directory: /q}}", "push.url", "expected http(s)://"),
        ("{url: 'https://u:" + TOKEN + "@c/x', queue: {directory: /q}}", "push.url", "no credentials in the URL"),
        ("{url: 'http://c/x', tls: {insecure_skip_verify: true}, queue: {directory: /q}}", "push.tls", "need an https:// url"),
        ("{url: 'http://c/x', queue: {directory: /q, max_bytes: 1000}}", "push.queue.max_bytes", "at least 1048576"),
        ("{url: 'http://c/x', min_backoff: 5s, max_backoff: 1s, queue: {directory: /q}}", "push.max_backoff", "min_backoff"),
        ("{url: 'http://c/x'}", "push", "missing required key 'queue'"),
    ],
    ids=["literal-token", "scheme", "userinfo", "tls-on-http", "tiny-queue", "backoff-order", "no-queue"],
)
def test_push_config_errors_name_the_key_and_never_the_secret(push, where, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(f"agent: {{id: a, agency: b}}\npush: {push}\n", "agent.yml")
    assert f"agent.yml:2: {where}: " in str(raised.value)
    assert message in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_push_config_takes_the_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("NETMON_PUSH_TOKEN", TOKEN)
    config = parse_config(
        "agent: {id: a, agency: b}\npush: {url: 'https://c:9856/api/v1/write', bearer_token: '${NETMON_PUSH_TOKEN}', "
        "queue: {directory: /q, max_age: 2h}}\n"
    )
    assert config.push is not None
    assert config.push.bearer_token.reveal() == TOKEN
    assert config.push.queue.max_age == 7200
    assert TOKEN not in repr(config.push)


# --- the sender's retry policy, against a real HTTP server


def queue_with_samples(directory: Path, count: int) -> DurableQueue:
    queue = DurableQueue(directory, QueueLimits(max_bytes=1 << 20, segment_bytes=64 << 10))
    for number in range(count):
        queue.append(rw.encode([rw.make_series("netmon_test_total", {"n": str(number)}, [(number, 1.0)])]), 1)
    return queue


async def send_while(queue: DurableQueue, url: str, until, timeout: float = 10.0, linger: float = 0.0) -> RemoteWriteSender:
    """Run a sender until `until(sender)` holds (or fail after timeout), and `linger` seconds more."""
    io = ThreadPoolExecutor(1)
    sender = RemoteWriteSender(queue, HttpClient(Endpoint.from_url(url, timeout=5)), FAST_RETRIES, io)
    task = asyncio.create_task(sender.run())
    try:
        async with asyncio.timeout(timeout):
            while not until(sender):
                await asyncio.sleep(0.02)
        await asyncio.sleep(linger)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sender.client.close()
        io.shutdown(wait=True)
    return sender


async def test_server_errors_are_retried_until_the_batch_is_delivered(tmp_path):
    queue = queue_with_samples(tmp_path, 5)
    with HttpServer(routes={WRITE_PATH: Reply(503, b"overloaded")}) as receiver:

        def recovered(sender: RemoteWriteSender) -> bool:
            if len(receiver.requests) >= 3:
                receiver.routes[WRITE_PATH] = Reply(204, b"")
            return sender.stats.sent_items == 5

        sender = await send_while(queue, receiver.url(WRITE_PATH), recovered)
    assert sender.stats.requests["server_error"] >= 3
    assert queue.pending_items() == 0
    assert rw.decode(receiver.requests[-1].body, 1 << 20) == rw.decode(receiver.requests[0].body, 1 << 20)
    queue.close()


async def test_429_is_retried_after_the_time_retry_after_asks(tmp_path):
    queue = queue_with_samples(tmp_path, 3)
    seen: list[float] = []
    with HttpServer(routes={WRITE_PATH: Reply(429, b"slow down", headers=(("Retry-After", "2"),))}) as receiver:

        def delivered(sender: RemoteWriteSender) -> bool:
            if len(receiver.requests) > len(seen):
                seen.append(time.monotonic())
                receiver.routes[WRITE_PATH] = Reply(204, b"")
            return sender.stats.sent_items == 3

        sender = await send_while(queue, receiver.url(WRITE_PATH), delivered)
    assert sender.stats.requests["throttled"] == 1
    assert seen[1] - seen[0] >= 1.9  # not the 50 ms backoff
    queue.close()


async def test_a_refused_credential_keeps_the_batch_queued_until_the_token_is_fixed(tmp_path):
    """Token rotation reaches collector and agent at different moments: nothing pushed in between is lost."""
    queue = queue_with_samples(tmp_path, 6)
    with HttpServer(routes={WRITE_PATH: Reply(401, b"missing or unknown bearer token")}) as receiver:

        def rotated(sender: RemoteWriteSender) -> bool:
            if len(receiver.requests) >= 3:
                receiver.routes[WRITE_PATH] = Reply(204, b"")
            return sender.stats.sent_items == 6

        sender = await send_while(queue, receiver.url(WRITE_PATH), rotated)
    assert sender.stats.requests["unauthorized"] >= 3
    assert sender.stats.dropped_items.get("rejected", 0) == 0
    assert queue.pending_items() == 0
    queue.close()


async def test_other_4xx_drop_the_batch_without_retrying_and_count_it(tmp_path):
    queue = queue_with_samples(tmp_path, 4)
    with HttpServer(routes={WRITE_PATH: Reply(400, b"out of order sample")}) as receiver:
        sender = await send_while(
            queue, receiver.url(WRITE_PATH), lambda s: s.stats.dropped_items.get("rejected") == 4, linger=0.5
        )  # half a second is ten backoffs: no retry may come
    assert len(receiver.requests) == 1
    assert sender.stats.requests == {"rejected": 1}
    assert queue.pending_items() == 0
    queue.close()


def test_agent_and_host_metrics_are_pushed_too(tmp_path):
    """An agent behind NAT is seen only through its pushes: its self-metrics and host metrics travel with them."""
    agent_port = free_port()
    with running_prometheus(tmp_path / "prom") as prometheus:
        config = tmp_path / "agent.yml"
        extra = "  self_metrics_interval: 1s\nhost: {enabled: true}\n"
        config.write_text(agent_config(agent_port, prometheus.url + WRITE_PATH, tmp_path / "queue", extra), encoding="utf-8")
        with running([sys.executable, "-m", "agents.cli", "run", "--config", str(config)], log_path=str(tmp_path / "agent.log"), cwd=ROOT) as agent:
            wait_for_port("127.0.0.1", agent_port, proc=agent)
            wait_until(lambda: stored_samples(prometheus, "node_load1") and stored_samples(prometheus, "netmon_agent_info"),
                       30, "host and self metrics in Prometheus")
        info = stored_samples(prometheus, "netmon_agent_info")
        runs = stored_samples(prometheus, "netmon_agent_probe_runs_total")
    assert any(dict(labels).get("agency") == "so-tttt" for labels in info)
    assert any(dict(labels).get("target") == "self-port" for labels in runs)
