"""Real time-series databases for the tests: Prometheus (server, remote_write receiver, or agent mode) and
VictoriaMetrics, each on a free loopback port with its data in a directory of the test, stopped by PID."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tests.support.ports import free_port
from tests.support.procs import running
from tests.support.require import require_binary


@dataclass(frozen=True)
class Peer:
    url: str
    port: int
    log: Path


def wait_http_ok(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@contextmanager
def running_prometheus(directory: Path, port: int | None = None, config: str = "global: {}\n", agent_mode: bool = False) -> Iterator[Peer]:
    """Prometheus with its remote_write receiver on; storage in `directory` (reuse it to restart with the same data)."""
    binary = require_binary("prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "prometheus.yml"
    config_file.write_text(config, encoding="utf-8")
    port = port or free_port()
    storage = ["--storage.agent.path" if agent_mode else "--storage.tsdb.path", str(directory / "data")]
    argv = [binary, f"--config.file={config_file}", f"{storage[0]}={storage[1]}", f"--web.listen-address=127.0.0.1:{port}"]
    argv += ["--enable-feature=agent"] if agent_mode else ["--web.enable-remote-write-receiver"]
    log = directory / "prometheus.log"
    with running(argv, log_path=str(log)) as proc:
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/-/ready")
        except TimeoutError:
            raise AssertionError(f"prometheus did not start (exit {proc.poll()}):\n{log.read_text()[-2000:]}") from None
        yield Peer(f"http://127.0.0.1:{port}", port, log)


@contextmanager
def running_victoria_metrics(directory: Path, port: int | None = None, extra_args: Sequence[str] = ()) -> Iterator[Peer]:
    binary = require_binary("victoria-metrics")
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={directory / 'vm-data'}",
        "-retentionPeriod=1d", "-search.latencyOffset=0s", *extra_args,
    ]
    log = directory / "victoria-metrics.log"
    with running(argv, log_path=str(log)):
        wait_http_ok(f"http://127.0.0.1:{port}/health")
        yield Peer(f"http://127.0.0.1:{port}", port, log)


def query_prometheus(peer: Peer, query: str, at: float | None = None) -> list[dict]:
    params = {"query": query, **({"time": f"{at:.3f}"} if at is not None else {})}
    with urllib.request.urlopen(f"{peer.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as reply:
        answer = json.load(reply)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def stored_samples(peer: Peer, selector: str, window: str = "10m") -> dict[tuple, list[tuple[int, float]]]:
    """Raw samples by label set: {(sorted labels): [(timestamp ms, value)]}."""
    out = {}
    for series in query_prometheus(peer, f"{selector}[{window}]"):
        key = tuple(sorted(series["metric"].items()))
        out[key] = [(round(float(t) * 1000), float(v)) for t, v in series["values"]]
    return out


INFINITE_VALUE = re.compile(r"(?<=[\[,])([+-])Inf(?=[,\]])")  # VictoriaMetrics exports ±Inf values as bare +Inf/-Inf, not JSON


def victoria_metrics_export(peer: Peer, selector: str) -> dict[tuple, list[tuple[int, float]]]:
    """Every raw sample VictoriaMetrics holds for selector (after a flush), by sorted label set."""
    urllib.request.urlopen(f"{peer.url}/internal/force_flush", timeout=10).read()
    query = urllib.parse.urlencode({"match[]": selector})
    with urllib.request.urlopen(f"{peer.url}/api/v1/export?{query}", timeout=30) as reply:
        lines = reply.read().decode("utf-8").splitlines()
    out: dict[tuple, list[tuple[int, float]]] = {}
    for line in lines:
        series = json.loads(INFINITE_VALUE.sub(lambda sign: "Infinity" if sign[1] == "+" else "-Infinity", line))
        key = tuple(sorted(series["metric"].items()))
        out.setdefault(key, []).extend(zip(series["timestamps"], series["values"]))
    return {key: sorted(samples) for key, samples in out.items()}
