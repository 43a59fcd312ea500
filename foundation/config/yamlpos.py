"""Load YAML into plain data while remembering the line of every key and value.

PyYAML's constructors lose positions; we compose the node tree and build the data ourselves, so a
validation error at key path ('targets', 3, 'interval') can name the line it came from. Duplicate
keys, which PyYAML silently collapses, are rejected here. An alias is built anew each time it is used, so the
values built are counted (a "billion laughs" document of a few hundred bytes would otherwise expand for hours)
and an alias inside the block it names is refused (it would recurse without end).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]
MAX_VALUES = 200_000  # values a config may expand to; a province's largest agent config has a few ten thousand


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
    try:
        loader = yaml.SafeLoader(text)  # raises ReaderError at once for a control character
    except yaml.YAMLError as exc:
        raise YamlError(f"YAML syntax error: {exc}", text.count("\n", 0, getattr(exc, "position", 0)) + 1) from None
    try:
        node = loader.get_single_node()
        result = PositionedData(None)
        if node is not None:
            result.data = _Builder(loader, result.lines).build(node, ())
        return result
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlError(f"YAML syntax error: {exc.problem or exc}{_hint(text, mark)}", line) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"YAML syntax error: {exc}", 1) from None
    except RecursionError:  # PyYAML composes recursively: thousands of nested brackets
        raise YamlError("YAML nested too deeply", 1) from None
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


class _Builder:
    """Plain data from the node tree, with the line of every path, within MAX_VALUES values."""

    def __init__(self, loader: yaml.SafeLoader, lines: dict[Path, int]) -> None:
        self.loader = loader
        self.lines = lines
        self.budget = MAX_VALUES
        self.open: set[int] = set()  # ids of the collections being built: an alias to one of them is a cycle

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        self.budget -= 1
        if self.budget < 0:
            raise YamlError(f"the YAML expands to more than {MAX_VALUES} values (aliases inside aliases?)", node.start_mark.line + 1, path)
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return self.loader.construct_object(node, deep=True)
        if id(node) in self.open:
            raise YamlError("an alias refers to the block that contains it", node.start_mark.line + 1, path)
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, path + (index,)) for index, item in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise YamlError("mapping keys must be plain scalars", key_node.start_mark.line + 1, path)
            key = str(key) if not isinstance(key, str) else key
            if key in mapping:
                raise YamlError(f"duplicate key {key!r}", key_node.start_mark.line + 1, path + (key,))
            self.lines[path + (key,)] = key_node.start_mark.line + 1  # errors point at the key, not its block
            mapping[key] = self.build(value_node, path + (key,))
        return mapping
