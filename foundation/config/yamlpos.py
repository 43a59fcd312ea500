"""Load YAML into plain data while remembering the line of every key and value.

PyYAML's constructors lose positions; we compose the node tree and build the data ourselves, so a
validation error at key path ('targets', 3, 'interval') can name the line it came from. Duplicate
keys, which PyYAML silently collapses, are rejected here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


class YamlError(Exception):
    def __init__(self, message: str, line: int, path: Path = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.path = path


@dataclass
class PositionedData:
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of the deepest known prefix of path (a missing key points at its parent)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1


def load_yaml(text: str) -> PositionedData:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        result = PositionedData(None)
        if node is not None:
            result.data = _build(node, (), loader, result.lines)
        return result
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlError(f"YAML syntax error: {exc.problem or exc}{_hint(text, mark)}", line) from None
    finally:
        loader.dispose()


def _hint(text: str, mark: yaml.Mark | None) -> str:
    """What to do when the error is at the `{` of an unquoted `${VAR}`: inside `{ }` or `[ ]` YAML reads that `{`
    as the start of a mapping, so a secret reference there must be quoted."""
    if mark is None or text[max(mark.index - 1, 0) : mark.index + 1] != "${":
        return ""
    reference = re.match(r"\$\{[^}\s,\]]*\}?", text[mark.index - 1 :])
    quoted = reference.group(0) if reference else "${VAR}"
    return f"; a reference inside {{ }} or [ ] must be quoted: '{quoted}'"


def _build(node: yaml.Node, path: Path, loader: yaml.SafeLoader, lines: dict[Path, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise YamlError("mapping keys must be plain scalars", key_node.start_mark.line + 1, path)
            key = str(key) if not isinstance(key, str) else key
            if key in mapping:
                raise YamlError(f"duplicate key {key!r}", key_node.start_mark.line + 1, path + (key,))
            lines[path + (key,)] = key_node.start_mark.line + 1  # errors point at the key, not its block
            mapping[key] = _build(value_node, path + (key,), loader, lines)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (index,), loader, lines) for index, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
