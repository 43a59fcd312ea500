"""The configs the collector is about to serve, checked by the agent program itself (`netmon-agent check-served`)
in one child process per config load: the collector validates exactly as its agents will, and imports no agent
code (docs/fleet.md).

The child is started before the collector renders the templates and is sent the configs while the collector
writes their YAML, so that its start-up and its checking overlap the collector's own work.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foundation.fleet_protocol import CHECK_SERVED_COMMAND, Rejection, decode_check_results, encode_check_request

# the agent program installed beside this collector: same interpreter, and started in the directory that holds
# the collector package, which `-m` puts first on the path (not the agent package of whatever directory we run in)
AGENT_CHECK_COMMAND: tuple[str, ...] = (sys.executable, "-m", "agents.cli", CHECK_SERVED_COMMAND)
INSTALLED_BESIDE = Path(__file__).resolve().parent.parent
AGENT_CHECK_TIMEOUT = 120.0  # seconds from start to verdicts; 1,000 agents take ~0.5 s (docs/benchmarks.md)
STDERR_EXCERPT = 300  # characters of the agent program's error output quoted in the error


class AgentCheckError(Exception):
    """The agent program could not check the configs; the message says why, for the operator."""


class AgentCheck:
    """One run of the agent program: `submit` the configs, go on, then read the `verdicts`. A context manager: on
    leaving, a program that is still running (the load failed before it was needed) is stopped."""

    def __init__(self) -> None:
        self._command = AGENT_CHECK_COMMAND
        self._deadline = time.monotonic() + AGENT_CHECK_TIMEOUT
        try:
            self._process = subprocess.Popen(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=INSTALLED_BESIDE
            )
        except OSError as exc:
            raise AgentCheckError(f"cannot run {self._shown}: {exc.strerror or exc}") from None
        self._agents: list[str] = []
        self._output: tuple[bytes, bytes] | None = None  # stdout, stderr
        self._failure = "it was sent nothing"  # why there is no output
        self._exchange: threading.Thread | None = None

    def __enter__(self) -> AgentCheck:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process.poll() is None:
            self._process.kill()
        if self._exchange is not None:
            self._exchange.join()
        self._process.wait()

    def submit(self, configs: Mapping[str, Mapping[str, Any]]) -> None:
        """Send agent id -> every top-level section of its config (identity included), in the background."""
        self._agents = list(configs)
        payload = encode_check_request(configs)
        self._exchange = threading.Thread(target=self._communicate, args=(payload,), name="agent-check", daemon=True)
        self._exchange.start()

    def verdicts(self) -> dict[str, Rejection | None]:
        """Agent id -> None if the agent program accepts its config, else why not."""
        assert self._exchange is not None, "submit() first"
        self._exchange.join()
        if self._output is None:
            raise AgentCheckError(f"{self._shown} gave no answer: {self._failure}")
        stdout, stderr = self._output
        if self._process.returncode != 0:
            raise AgentCheckError(f"{self._shown} failed (exit status {self._process.returncode}): {_last_line(stderr)}")
        try:
            results = decode_check_results(stdout)
        except ValueError as exc:
            raise AgentCheckError(f"{self._shown} gave an unreadable answer: {exc}") from None
        unanswered = [agent for agent in self._agents if agent not in results]
        if unanswered:
            raise AgentCheckError(f"{self._shown} gave no verdict for agent {unanswered[0]}")
        return results

    def _communicate(self, payload: bytes) -> None:
        try:
            self._output = self._process.communicate(payload, timeout=max(self._deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired:
            self._failure = f"none within {AGENT_CHECK_TIMEOUT:g} s"
            self._process.kill()
            self._process.communicate()
        except OSError as exc:
            self._failure = f"talking to it failed: {exc.strerror or exc}"
            self._process.kill()

    @property
    def _shown(self) -> str:
        return f"the agent program ({' '.join(self._command)})"


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:STDERR_EXCERPT] if lines else "no error output"
