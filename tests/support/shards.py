"""Sharded collectors for the tests and the national simulation: an inventory of push agents with one bearer
token each (from the environment), split by `netmon-collector shard`, each shard run as its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import yaml

from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Inventory:
    path: Path
    env: dict[str, str]  # the agents' tokens, as the ${ENV} references of the inventory name them
    tokens: dict[str, str]  # agent id -> token
    agency_of: dict[str, str]  # agent id -> agency id


def agent_id(agency: str) -> str:
    return f"{agency}-1"


def write_inventory(
    path: Path, agencies: Sequence[tuple[str, str]], extra: str = "", interval: str = "15s", ttl: str | None = None,
) -> Inventory:
    """One push agent per (agency id, district); `extra` is appended YAML (remote_write, defaults, ...)."""
    env, tokens, agency_of = {}, {}, {}
    lines = [f"defaults: {{interval: {interval}{f', ttl: {ttl}' if ttl else ''}}}", "agencies:"]
    lines += [f"  - {{id: {agency}, name: 'Cơ quan {agency}', district: {district}, level: commune}}" for agency, district in agencies]
    lines.append("agents:")
    for number, (agency, _) in enumerate(agencies):
        agent, variable = agent_id(agency), f"SHARD_TEST_TOKEN_{number}"
        env[variable] = tokens[agent] = f"shard-token-{number}-{agency}"
        agency_of[agent] = agency
        lines.append(f"  - {{id: {agent}, agency: {agency}, mode: push, bearer_token: '${{{variable}}}'}}")
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return Inventory(path, env, tokens, agency_of)


@dataclass(frozen=True)
class ShardPlan:
    directory: Path
    names: list[str]
    urls: dict[str, str]  # shard name -> base URL
    agents: dict[str, str]  # agent id -> shard name

    def config(self, name: str) -> Path:
        return self.directory / f"{name}.yml"


def shard_inventory(inventory: Inventory, out: Path, count: int, by: str = "hash") -> ShardPlan:
    """Run `netmon-collector shard` (a real process) with one free loopback port per shard."""
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(count)]
    argv = [sys.executable, "-m", "collector.cli", "shard", "--inventory", str(inventory.path), "--shards", str(count),
            "--by", by, "--out", str(out), *[arg for url in urls for arg in ("--url", url)]]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **inventory.env}, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"netmon-collector shard failed ({result.returncode}): {result.stderr[-2000:]}")
    shard_map = yaml.safe_load((out / "shards.yml").read_text(encoding="utf-8"))
    names = [one["name"] for one in shard_map["shards"]]
    return ShardPlan(
        out, names, {one["name"]: one["url"] for one in shard_map["shards"]},
        {agent: one["name"] for one in shard_map["shards"] for agent in one["agents"]},
    )


def collector_argv(config: Path, log_level: str = "info") -> list[str]:
    return [sys.executable, "-m", "collector.cli", "--log-level", log_level, "run", "--config", str(config)]


@contextmanager
def running_shard(plan: ShardPlan, name: str, env: dict[str, str], log_level: str = "info") -> Iterator[subprocess.Popen]:
    port = int(plan.urls[name].rsplit(":", 1)[1])
    log = plan.directory / f"{name}.log"
    with running(collector_argv(plan.config(name), log_level), log_path=str(log), env=env, cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, timeout=120, proc=proc)
        yield proc


@contextmanager
def running_shards(plan: ShardPlan, env: dict[str, str], log_level: str = "info") -> Iterator[dict[str, subprocess.Popen]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(running_shard(plan, name, env, log_level)) for name in plan.names}
