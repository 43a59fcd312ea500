"""Regular expressions from the config that run on what the network sends (HTTP bodies and headers, TCP
`expect`, DNS answers, mail banners, SSH command output): compiled with RE2, which matches in time linear in the
text, as blackbox_exporter's Go regexps do. Python's backtracking `re` can take exponential time on a hostile
page — `(a+)+$` against 1 MB of `a`s ending in `b` held the event loop for more than 30 s; RE2 answers in
milliseconds. RE2 has no backreferences and no lookaround: check-config refuses such patterns by key.

google-re2 is imported on the first pattern (about 3 MB), so an agent whose modules have none never loads it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

_LOOKAROUND = re.compile(r"\(\?<?[=!]")
_BACKREFERENCE = re.compile(r"\\[1-9]|\(\?P=|\\g<")


@functools.cache
def _options() -> Any:
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    return options


@functools.lru_cache(maxsize=512)
def compile_linear(pattern: str, multiline: bool = False) -> Any:
    """The RE2 program of a pattern (`multiline`: ^ and $ at every line, as re.MULTILINE); ValueError with a
    reason a person can act on when RE2 cannot run it."""
    import re2

    try:
        return re2.compile(f"(?m){pattern}" if multiline else pattern, _options())
    except re2.error as exc:
        raise ValueError(_reason(pattern, exc)) from None


def _reason(pattern: str, exc: Exception) -> str:
    detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
    if _BACKREFERENCE.search(pattern):
        return f"{pattern!r} uses a backreference, which linear-time matching (RE2, as blackbox_exporter) does not support"
    if _LOOKAROUND.search(pattern):
        return f"{pattern!r} uses lookahead or lookbehind, which linear-time matching (RE2, as blackbox_exporter) does not support"
    return f"invalid regex {pattern!r}: {detail}"


def check_patterns(key: str, patterns: list[str] | tuple[str, ...], multiline: bool = False) -> None:
    """For settings' validate(): ValueError('key: reason') for the first pattern RE2 cannot run."""
    for pattern in patterns:
        try:
            compile_linear(pattern, multiline)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None


def search(pattern: str, text: str, multiline: bool = False) -> bool:
    """Whether the pattern matches anywhere in the text (re.search's meaning), in linear time."""
    return compile_linear(pattern, multiline).search(text) is not None
