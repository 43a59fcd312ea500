"""Expand `ssh_hosts` + `ssh_checks` into targets of the `ssh` prober, with file:line:key errors."""

from __future__ import annotations

from agents.config.model import ModuleConfig, Target
from agents.config.sections import SectionContext, SectionSpec
from agents.ssh.commands import Command, exec_command, fixed_command
from agents.ssh.config import SshCheck, SshCheckConfig, SshHost, SshHostConfig, SshSections
from agents.ssh.hostkeys import FINGERPRINT, HostKeyPolicy
from agents.ssh.parsers import PARSERS
from foundation.config.base import check_interval
from foundation.config.yamlpos import Path

HOST_LABEL = "ssh_host"  # every check's series carry the name of its host


def build_ssh_targets(keys: SshSections, context: SectionContext) -> list[Target]:
    hosts: dict[str, SshHost] = {}
    for name, config in keys.ssh_hosts.items():
        with context.unit():
            hosts[name] = _host(context, name, config)
    targets = []
    for path, check in context.entries("ssh_checks", keys.ssh_checks):
        with context.unit():
            if not check.name.strip():
                raise context.error(path + ("name",), "must not be empty")
            context.claim_name(check.name, path)
            target = _target(context, path, check, hosts)
            if check.enabled and target is not None:
                targets.append(target)
    return targets


SECTION = SectionSpec(SshSections, build_ssh_targets)


def _host(context: SectionContext, name: str, config: SshHostConfig) -> SshHost:
    path: Path = ("ssh_hosts", name)
    for key in ("address", "user", "key_file", "known_hosts"):
        if getattr(config, key) is not None and not getattr(config, key).strip():
            raise context.error(path + (key,), "must not be empty")
    if not 0 < config.port < 65536:
        raise context.error(path + ("port",), "must be between 1 and 65535")
    if config.max_sessions < 1:
        raise context.error(path + ("max_sessions",), "must be at least 1")
    if (config.known_hosts is None) == (config.host_key_fingerprint is None):
        raise context.error(path, "set exactly one of known_hosts and host_key_fingerprint: host keys are always checked")
    if config.host_key_fingerprint is not None and not FINGERPRINT.match(config.host_key_fingerprint):
        raise context.error(
            path + ("host_key_fingerprint",),
            "expected 'SHA256:' and 43 base64 characters, as `ssh-keyscan HOST | ssh-keygen -lf -` prints",
        )
    if config.key_passphrase is not None and config.key_passphrase_file is not None:
        raise context.error(path + ("key_passphrase_file",), "set key_passphrase or key_passphrase_file, not both")
    return SshHost(
        name=name,
        address=config.address,
        port=config.port,
        user=config.user,
        key_file=config.key_file,
        key_passphrase=config.key_passphrase or config.key_passphrase_file,
        host_keys=HostKeyPolicy(config.known_hosts, config.host_key_fingerprint),
        max_sessions=config.max_sessions,
    )


def _command(context: SectionContext, path: Path, check: SshCheckConfig) -> Command:
    if (check.command is None) == (check.exec is None):
        raise context.error(path, "set exactly one of command (a fixed command) and exec (a command of your own)")
    key = "command" if check.command is not None else "exec"
    try:
        return fixed_command(check.command) if check.command is not None else exec_command(check.exec or [])
    except ValueError as exc:
        raise context.error(path + (key,), str(exc)) from None


def _target(context: SectionContext, path: Path, check: SshCheckConfig, hosts: dict[str, SshHost]) -> Target | None:
    """The check's target, or None when its host failed to load (reported there)."""
    host = hosts.get(check.host)
    if host is None:
        if context.failed(("ssh_hosts", check.host)):
            return None
        known = ", ".join(sorted(hosts)) or "none defined"
        raise context.error(path + ("host",), f"unknown ssh host {check.host!r}; ssh_hosts: {known}")
    command = _command(context, path, check)
    parser_name = check.parser or command.parser
    spec = PARSERS.get(parser_name)
    if spec is None:
        raise context.error(path + ("parser",), f"unknown parser {parser_name!r}; parsers: {', '.join(sorted(PARSERS))}")
    try:
        parse = spec.build(check.regex)
    except ValueError as exc:
        raise context.error(path + ("regex",), str(exc)) from None
    context.check_labels(check.labels, path + ("labels",))
    for name in check.labels:
        if name == HOST_LABEL or name in spec.labels:
            raise context.error(path + ("labels", name), f"label name {name!r} is set by the {parser_name} check itself")
    interval, timeout = context.interval(check.interval), context.timeout(check.timeout)
    check_interval(context.ctx, interval, timeout, "this check", (path + ("interval",), path + ("timeout",), path + ("timeout",)))
    settings = SshCheck(host, command.line, command.fallback, parser_name, parse)
    module = ModuleConfig(f"ssh_{parser_name}", "ssh", timeout, "ip4", True, settings)
    return context.target(check.name, host.display, module, interval, {**check.labels, HOST_LABEL: host.name})
