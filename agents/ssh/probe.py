"""SSH prober: run one command on a server without an agent and read its output with a parser.

Targets come from `ssh_checks` (this domain's section, expanded in agents/ssh/targets.py); the connection to
each host is shared through the SSH_POOL resource. Success: the command ran, exited 0 and its output parsed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from agents.config.model import ModuleConfig
from agents.probes.base import ProberSpec
from agents.resources import BLOCKING_EXECUTOR, ProbeResources, Resource
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Sample
from agents.ssh.config import SshCheck
from agents.ssh.failures import SshFailure
from agents.ssh.parsers import ParseError
from agents.ssh.targets import SECTION

if TYPE_CHECKING:
    from agents.ssh.pool import CommandOutput, SshPool

EXIT_STATUS = Metric("probe_ssh_command_exit_status", "Exit status of the check's command (-1: killed by a signal)")
COMMAND_DURATION = Metric("probe_ssh_command_duration_seconds", "Time from opening the session to the command's end")


class NotAModule(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """`prober: ssh` under modules: refused, because an SSH check names its host (see ssh_checks)."""

    def validate(self, timeout: float) -> None:
        raise ValueError("ssh checks are configured in ssh_hosts and ssh_checks (see docs/ssh.md), not as modules")


def _open_pool(resources: ProbeResources) -> SshPool:
    from agents.ssh.pool import SshPool  # paramiko (~20 MB) only in agents that run SSH checks

    return SshPool(resources.get(BLOCKING_EXECUTOR))


# One SSH connection per host, reused across checks; its blocking steps run in the blocking executor
SSH_POOL: Resource[SshPool] = Resource("ssh_pool", _open_pool, close=lambda pool: pool.close())


async def probe(target: ProbeTarget, module: ModuleConfig[SshCheck], resources: ProbeResources) -> ProbeResult:
    from agents.ssh.pool import SshError  # paramiko (~20 MB) only in agents that run SSH checks

    check = module.settings
    deadline = time.monotonic() + module.timeout
    pool = resources.get(SSH_POOL)
    try:
        output = await pool.run(check.host, check.command, deadline)
        if check.fallback_command is not None and output.exit_status != 0 and not output.stdout.strip():
            output = await pool.run(check.host, check.fallback_command, deadline)
    except SshError as exc:
        limit = f" (timeout {module.timeout:g}s)" if exc.failure is Failure.TIMEOUT else ""
        return ProbeResult.failed(exc.failure, exc.detail + limit)
    samples: list[Sample] = [EXIT_STATUS(output.exit_status), COMMAND_DURATION(output.seconds)]
    try:
        samples += check.parse(output.stdout)
    except ParseError as exc:
        if output.exit_status == 0:
            return ProbeResult.failed(SshFailure.PARSE_ERROR, f"{check.parser}: {exc}", samples)
    if output.exit_status != 0:
        return ProbeResult.failed(SshFailure.COMMAND_FAILED, _exit_detail(output), samples)
    return ProbeResult(success=True, samples=samples)


def _exit_detail(output: CommandOutput) -> str:
    said = next((line.strip() for line in output.stderr.splitlines() if line.strip()), "")
    status = "no exit status (killed by a signal?)" if output.exit_status < 0 else f"exit status {output.exit_status}"
    return f"{status}: {said[:200]}" if said else status


def prepare(module: ModuleConfig[SshCheck], resources: ProbeResources) -> None:
    resources.get(SSH_POOL)  # imports paramiko


SPEC = ProberSpec("ssh", NotAModule, probe, failures=SshFailure, section=SECTION, prepare=prepare)
