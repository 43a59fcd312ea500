"""Turn a check's command output into samples: one parser per kind of output, looked up by name.

A parser is a function of the command's stdout returning samples, or raising ParseError. A parser with options
(regex) is built from them once, at config load. Every parser declares the label names its samples carry, so a
check's own labels cannot collide with them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from agents import linear_regex
from agents.results import Metric, Sample

Parse = Callable[[str], list[Sample]]

POSTFIX_QUEUE_MESSAGES = Metric("probe_ssh_postfix_queue_messages", "Messages in the Postfix queue (label queue)")
POSTFIX_QUEUE_BYTES = Metric("probe_ssh_postfix_queue_size_bytes", "Total size of the messages in the Postfix queue")
FILESYSTEM_SIZE = Metric("probe_ssh_filesystem_size_bytes", "Filesystem size in bytes (df -P on the host)")
FILESYSTEM_FREE = Metric("probe_ssh_filesystem_free_bytes", "Filesystem free space in bytes, reserved blocks included")
FILESYSTEM_AVAIL = Metric("probe_ssh_filesystem_avail_bytes", "Filesystem space available to non-root users in bytes")
SYSTEMD_UNIT_STATE = Metric("probe_ssh_systemd_unit_state", "1 for the unit's current active state (label state), else 0")
REGEX_VALUE = Metric("probe_ssh_regex_value", "The number a named group (label group) of the check's regex matched")

POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
SYSTEMD_STATES = ("active", "activating", "deactivating", "inactive", "failed", "reloading")
# node_exporter's default --collector.filesystem.mount-points-exclude: pseudo and container filesystems
DF_EXCLUDED_MOUNT_POINTS = re.compile(r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)")

_DF_HEADER = re.compile(r"^Filesystem\s+(\d+)-blocks\s", re.IGNORECASE)
# device, blocks, used, available, capacity, mount point (which may contain spaces)
_DF_LINE = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(?:\d+%|-)\s+(/.*)$")
_MAILQ_HEADER = re.compile(r"^-+Queue ID-+\s")  # wider with long queue IDs
# "ID[*!]  SIZE  Arrival Time  sender": * = active queue, ! = hold, none = deferred (or not yet picked up)
_MAILQ_ENTRY = re.compile(r"^([0-9A-Za-z]+)([*!]?)\s+(\d+)\s")
_MAILQ_MARK_QUEUE = {"*": "active", "!": "hold", "": "deferred"}


class ParseError(ValueError):
    """The output is not what the parser understands; the message says where."""


def _queue_samples(messages: dict[str, int], size: dict[str, int]) -> list[Sample]:
    samples = []
    for queue in dict.fromkeys(POSTFIX_QUEUES + tuple(messages)):
        samples.append(POSTFIX_QUEUE_MESSAGES(messages.get(queue, 0), queue=queue))
        samples.append(POSTFIX_QUEUE_BYTES(size.get(queue, 0), queue=queue))
    return samples


def parse_postfix_queue(output: str) -> list[Sample]:
    """Message count and bytes per queue, from `postqueue -j` (JSON lines) or `postqueue -p` / `mailq`."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:  # `postqueue -j` prints nothing at all for an empty queue, the normal state
        return _queue_samples({}, {})
    if lines[0].lstrip().startswith("{"):
        return _parse_postqueue_json(lines)
    return _parse_mailq(lines)


def _parse_postqueue_json(lines: list[str]) -> list[Sample]:
    messages: dict[str, int] = {}
    size: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
            queue, message_size = str(entry["queue_name"]), int(entry["message_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ParseError(f"postqueue -j line {number} is not a queue entry: {exc}") from None
        messages[queue] = messages.get(queue, 0) + 1
        size[queue] = size.get(queue, 0) + message_size
    return _queue_samples(messages, size)


def _parse_mailq(lines: list[str]) -> list[Sample]:
    if len(lines) == 1 and "queue is empty" in lines[0].lower():
        return _queue_samples({}, {})
    if not lines or not _MAILQ_HEADER.match(lines[0]):
        raise ParseError("neither postqueue -j output nor a mailq listing (no '-Queue ID-' header)")
    messages: dict[str, int] = {}
    size: dict[str, int] = {}
    for line in lines[1:]:
        entry = _MAILQ_ENTRY.match(line)
        if entry is not None:
            queue = _MAILQ_MARK_QUEUE[entry.group(2)]
            messages[queue] = messages.get(queue, 0) + 1
            size[queue] = size.get(queue, 0) + int(entry.group(3))
    return _queue_samples(messages, size)


def parse_df(output: str) -> list[Sample]:
    """Size, free and available bytes per filesystem from `df -P`, node_exporter's exclusions applied."""
    lines = output.splitlines()
    header = _DF_HEADER.match(lines[0]) if lines else None
    if header is None:
        raise ParseError("not df -P output (no 'Filesystem  N-blocks' header)")
    block = int(header.group(1))
    samples = []
    for line in lines[1:]:
        fields = _DF_LINE.match(line)
        if fields is None:
            continue  # a filesystem df could not measure prints '-' columns
        device, blocks, used, available, mountpoint = fields.groups()
        if DF_EXCLUDED_MOUNT_POINTS.match(mountpoint):
            continue
        size = int(blocks) * block
        labels = {"device": device, "mountpoint": mountpoint}
        samples += [
            FILESYSTEM_SIZE(size, **labels),
            FILESYSTEM_FREE(size - int(used) * block, **labels),
            FILESYSTEM_AVAIL(int(available) * block, **labels),
        ]
    if not samples:
        raise ParseError("df -P listed no filesystem")
    return samples


def parse_systemd_unit(output: str) -> list[Sample]:
    """The active state of each unit from `systemctl show --property=Id,ActiveState UNIT...`."""
    samples = []
    for block in re.split(r"\n\s*\n", output.strip()):
        properties = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        unit, state = properties.get("Id"), properties.get("ActiveState")
        if not unit or not state:
            raise ParseError(f"systemctl show block without Id and ActiveState: {block[:80]!r}")
        states = SYSTEMD_STATES if state in SYSTEMD_STATES else SYSTEMD_STATES + (state,)  # newer systemd adds states
        samples += [SYSTEMD_UNIT_STATE(1 if state == known else 0, unit=unit, state=known) for known in states]
    return samples


def parse_exit_code(output: str) -> list[Sample]:
    """Nothing to read: the check succeeds when the command exits 0."""
    return []


@dataclass(frozen=True, slots=True)
class RegexParser:
    """The first match of a regex (multi-line mode); each named group's text must be a number."""

    pattern: str

    def __call__(self, output: str) -> list[Sample]:
        match = linear_regex.compile_linear(self.pattern, multiline=True).search(output)
        if match is None:
            raise ParseError(f"the output does not match {self.pattern!r}")
        samples = []
        for group, text in match.groupdict().items():
            try:
                samples.append(REGEX_VALUE(float(text), group=group))
            except (TypeError, ValueError):
                raise ParseError(f"group {group!r} matched {text!r}, which is not a number") from None
        return samples


def _regex_parser(pattern: str | None) -> Parse:
    if pattern is None:
        raise ValueError("the regex parser needs a 'regex' with named groups, e.g. '(?P<load1>[0-9.]+)'")
    compiled = linear_regex.compile_linear(pattern, multiline=True)  # ValueError with the reason
    if not compiled.groupindex:
        raise ValueError("the regex has no named group; name each number to keep, e.g. (?P<load1>[0-9.]+)")
    return RegexParser(pattern)


def _without_options(parse: Parse) -> Callable[[str | None], Parse]:
    def build(pattern: str | None) -> Parse:
        if pattern is not None:
            raise ValueError("only the regex parser takes a 'regex'")
        return parse

    return build


@dataclass(frozen=True, slots=True)
class ParserSpec:
    build: Callable[[str | None], Parse]  # the check's `regex` option -> the parser, or ValueError
    labels: tuple[str, ...]  # label names its samples carry


PARSERS: dict[str, ParserSpec] = {
    "postfix_queue": ParserSpec(_without_options(parse_postfix_queue), ("queue",)),
    "df": ParserSpec(_without_options(parse_df), ("device", "mountpoint")),
    "systemd_unit": ParserSpec(_without_options(parse_systemd_unit), ("unit", "state")),
    "exit_code": ParserSpec(_without_options(parse_exit_code), ()),
    "regex": ParserSpec(_regex_parser, ("group",)),
}
