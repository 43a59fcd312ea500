"""The fixed commands a check may name, and how a configured command becomes the line sent to the server.

Nothing runs in a shell on our side. The server hands the command line to the login user's shell, so every
argument is quoted for a POSIX shell: what the config says is exactly the argv the remote program gets, with no
expansion, pipes or redirection.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Callable

_UNIT_NAME = re.compile(r"^[A-Za-z0-9@:._\\-]+$")  # systemd unit names, templates and escapes included


@dataclass(frozen=True, slots=True)
class Command:
    """A command line ready to send, the parser its output is made for, and what to run if it is refused."""

    line: str
    parser: str
    fallback: str | None = None  # run when `line` exits non-zero with no output (older software)


def command_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in argv)


def _postqueue(listing: str) -> Callable[[list[str]], list[str]]:
    def build(config_dirs: list[str]) -> list[str]:
        if len(config_dirs) > 1 or any(not path.startswith("/") for path in config_dirs):
            raise ValueError("takes at most one argument, the absolute path of a Postfix config directory")
        return ["postqueue", *(["-c", config_dirs[0]] if config_dirs else []), listing]

    return build


def _df(paths: list[str]) -> list[str]:
    if any(not path.startswith("/") for path in paths):
        raise ValueError("arguments must be absolute paths (the filesystems to report)")
    return ["df", "-P", *(["--", *paths] if paths else [])]


def _systemctl_show(units: list[str]) -> list[str]:
    if not units:
        raise ValueError("name at least one unit, e.g. 'systemctl_show postfix.service'")
    bad = [unit for unit in units if not _UNIT_NAME.match(unit)]
    if bad:
        raise ValueError(f"invalid unit name {bad[0]!r}")
    return ["systemctl", "show", "--property=Id,ActiveState", "--", *units]


@dataclass(frozen=True, slots=True)
class FixedCommand:
    """A command a check may name: how its arguments become an argv, and how the reference documents it."""

    argv: Callable[[list[str]], list[str]]  # arguments from the config -> argv, or ValueError
    parser: str
    usage: str  # the argument form after the name, e.g. "[PATH ...]"
    arguments: str  # what the arguments are
    example: str  # example arguments, to show the command line sent (docs/reference/agent.md)
    fallback: str | None = None  # name of another fixed command, given the same arguments


FIXED_COMMANDS: dict[str, FixedCommand] = {
    "postqueue_json": FixedCommand(
        _postqueue("-j"), "postfix_queue", "[CONFIG_DIR]", "the absolute path of a Postfix config directory "
        "(another instance); none: the default instance", "/etc/postfix-out",
        # Postfix >= 3.1; older ones refuse -j, and the same queue listing comes from `postqueue -p` (mailq)
        fallback="mailq",
    ),
    "mailq": FixedCommand(_postqueue("-p"), "postfix_queue", "[CONFIG_DIR]", "as postqueue_json", ""),
    "df": FixedCommand(_df, "df", "[PATH ...]", "absolute paths: report only their filesystems; none: every one", "/var /"),
    "systemctl_show": FixedCommand(
        _systemctl_show, "systemd_unit", "UNIT ...", "at least one unit name (templates and escapes allowed)",
        "postfix.service dovecot.service",
    ),
}


def fixed_command(text: str) -> Command:
    """'df /var /' -> the command line of a fixed command; ValueError names what is wrong."""
    words = shlex.split(text)  # quotes allow a path with spaces: df "/srv/mail store"
    if not words:
        raise ValueError("the command is empty")
    name, *arguments = words
    fixed = FIXED_COMMANDS.get(name)
    if fixed is None:
        forms = ", ".join(f"{known} {command.usage}" for known, command in sorted(FIXED_COMMANDS.items()))
        raise ValueError(f"unknown command {name!r}; fixed commands: {forms} (or use exec)")
    try:
        line = command_line(fixed.argv(arguments))
    except ValueError as exc:
        raise ValueError(f"{name} {fixed.usage}: {exc}") from None
    fallback = command_line(FIXED_COMMANDS[fixed.fallback].argv(arguments)) if fixed.fallback else None
    return Command(line, fixed.parser, fallback)


def exec_command(configured: str | list[str]) -> Command:
    """A configured command: a list is the argv; a string is split like a POSIX shell would, nothing more."""
    argv = shlex.split(configured) if isinstance(configured, str) else list(configured)
    if not argv or not argv[0]:
        raise ValueError("the command is empty")
    return Command(command_line(argv), "exit_code")
