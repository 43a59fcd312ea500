"""Queries over one HTTP response: regex, JSON path (RFC 9535), XPath 1.0, CSS selectors, headers; SOAP faults.

A building block of the transaction prober (agents/probes/transaction.py). python-jsonpath, lxml and cssselect are
imported on first use, so an agent without a transaction module never loads them (tests/test_footprint.py).
Parsing is CPU work on bodies up to a MiB: the prober runs `Document` queries off the event loop (a large body in
its worker process).

Every query gives its values lazily, as strings in document order: the prober keeps the first as a variable, or
compares them (`equals`, `matches`) until one passes, so memory stays small whatever the body. JSON values that are not strings are given as JSON (`7`, `true`, `{"a":1}`); an
element found by XPath or CSS gives its text with white space collapsed, or one attribute's value.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterator, Literal

from agents import linear_regex

QueryKind = Literal["regex", "json_path", "xpath", "css", "header"]
SOAP_11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_12 = "http://www.w3.org/2003/05/soap-envelope"
_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)


class QueryError(Exception):
    """The query cannot run on this response: the body is not JSON, not XML, or the expression fails on it."""


# --- checking expressions at load ----------------------------------------------------------------------------------


def check_expression(kind: QueryKind, expression: str, namespaces: dict[str, str]) -> None:
    """ValueError with a one-line message when the expression cannot be compiled (or names an unknown prefix)."""
    if kind == "header":
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", expression):
            raise ValueError(f"{expression!r} is not a header name")
        return
    if kind == "regex":
        linear_regex.compile_linear(expression)  # ValueError naming what RE2 cannot run (docs/configuration.md#regexes)
        return
    what, compile_, errors = _compiler(kind, namespaces)
    try:
        compile_(expression)
    except errors as exc:
        raise ValueError(f"invalid {what} {expression!r}: {str(exc).splitlines()[0]}") from None


def _compiler(kind: QueryKind, namespaces: dict[str, str]) -> tuple[str, Callable[[str], Any], type[Exception]]:
    """What the expression is called, what compiles it, and what that raises when it cannot."""
    if kind == "json_path":
        from jsonpath import JSONPathError

        return "JSON path", _json_path_environment().compile, JSONPathError
    if kind == "xpath":
        from lxml import etree

        # evaluated once on an empty document: an undefined prefix shows only then
        return "XPath", lambda text: etree.XPath(text, namespaces=namespaces)(etree.fromstring(b"<empty/>")), etree.XPathError
    from cssselect import HTMLTranslator, SelectorError

    return "CSS selector", HTMLTranslator().css_to_xpath, SelectorError


def preload(kinds: set[QueryKind]) -> None:
    """Import the libraries these queries need now (at config load), so a first run's step times hold no imports."""
    if "json_path" in kinds:
        import jsonpath  # noqa: F401
    if kinds & {"xpath", "css"}:
        import lxml.etree  # noqa: F401
    if "css" in kinds:
        import cssselect  # noqa: F401


def _json_path_environment() -> Any:
    from jsonpath import JSONPathEnvironment

    return JSONPathEnvironment(strict=True)  # RFC 9535 as written, no extensions


# --- one response ---------------------------------------------------------------------------------------------------


class Document:
    """One response as queries see it: its headers and the kept start of its body, parsed on first use."""

    def __init__(self, headers: list[tuple[str, str]], body: bytes, complete: bool) -> None:
        self.headers = headers  # names in lower case
        self.body = body
        self.complete = complete  # False: only the first len(body) bytes were kept
        self.content_type = next((value for name, value in headers if name == "content-type"), "").lower()
        self._text: str | None = None
        self._json: Any = None
        self._json_error: str | None = None
        self._tree: Any = None

    @property
    def is_xml(self) -> bool:
        if self.content_type:
            return "xml" in self.content_type.split(";")[0]
        return self.body.lstrip()[:5] == b"<?xml"

    def charset(self) -> str:
        found = _CHARSET.search(self.content_type) or (None if self.is_xml else _META_CHARSET.search(self.body[:4096]))
        name = found.group(1) if found else "utf-8"
        name = name.decode("ascii") if isinstance(name, bytes) else name
        try:
            "".encode(name)
        except LookupError:
            return "utf-8"
        return name

    def text(self) -> str:
        if self._text is None:
            self._text = self.body.decode(self.charset(), "replace")
        return self._text

    def json(self) -> Any:
        if self._json is None and self._json_error is None:
            try:
                self._json = json.loads(self.body)
            except ValueError as exc:
                self._json_error = f"the body is not JSON ({exc}){self._cut()}"
        if self._json_error is not None:
            raise QueryError(self._json_error)
        return self._json

    def tree(self) -> Any:
        """The parsed body: XML when the response says so (Content-Type, or a declaration), HTML otherwise."""
        if self._tree is None:
            self._tree = self._parse()
        return self._tree

    def _parse(self) -> Any:
        from lxml import etree

        if self.is_xml:
            # no entity expansion, no DTD, no network: a hostile document cannot read files or explode in memory
            parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False)
            try:
                root = etree.fromstring(self.body, parser)
            except etree.XMLSyntaxError as exc:
                raise QueryError(f"the body is not well-formed XML ({exc}){self._cut()}") from None
        else:
            root = etree.fromstring(self.body or b"<html/>", etree.HTMLParser(encoding=self.charset(), no_network=True))
        if root is None:
            raise QueryError(f"the body has no document{self._cut()}")
        return root

    def _cut(self) -> str:
        return "" if self.complete else f" (only its first {len(self.body)} bytes are kept)"


# --- running a query ------------------------------------------------------------------------------------------------


def find(
    kind: QueryKind, expression: str, document: Document, namespaces: dict[str, str], attribute: str | None = None
) -> Iterator[str]:
    """The values a query finds, in document order, made as they are read; QueryError (at once) when it cannot run."""
    if kind == "header":
        return (value for name, value in document.headers if name == expression.lower())
    if kind == "regex":
        compiled = linear_regex.compile_linear(expression)
        return (match.group(1) if compiled.groups else match.group(0) for match in compiled.finditer(document.text()))
    if kind == "json_path":
        data = document.json()
        return (_json_text(match) for match in _json_path_environment().finditer(expression, data))
    return _tree_values(kind, expression, document, namespaces, attribute)


def _json_text(match: Any) -> str:
    value = match.obj
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _tree_values(
    kind: QueryKind, expression: str, document: Document, namespaces: dict[str, str], attribute: str | None
) -> Iterator[str]:
    from lxml import etree

    root = document.tree()
    if kind == "css":
        from cssselect import GenericTranslator, HTMLTranslator

        translator = GenericTranslator() if document.is_xml else HTMLTranslator()
        expression = translator.css_to_xpath(expression)
    try:
        found = root.xpath(expression, namespaces=namespaces)
    except etree.XPathError as exc:
        raise QueryError(f"{kind} {expression!r} fails on this document: {exc}") from None
    if not isinstance(found, list):  # a number, a string or a boolean: string(), count(), a comparison
        return iter([_scalar_text(found)])
    return (value for value in (_node_text(node, attribute) for node in found) if value is not None)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _node_text(node: Any, attribute: str | None) -> str | None:
    if isinstance(node, str):  # attribute values and text nodes
        return str(node)
    if attribute is not None:
        value = node.get(attribute)
        return None if value is None else str(value)
    return " ".join("".join(node.itertext()).split())


# --- SOAP -----------------------------------------------------------------------------------------------------------


def soap_fault(document: Document) -> str | None:
    """`code: reason` of a SOAP 1.1 or 1.2 Fault in the body, or None (no fault, or not an envelope at all)."""
    try:
        root = document.tree()
    except QueryError:
        return None
    for envelope in (SOAP_11, SOAP_12):
        fault = root.find(f"{{{envelope}}}Body/{{{envelope}}}Fault")
        if fault is None:
            continue
        if envelope == SOAP_11:  # faultcode and faultstring are unqualified, though some servers qualify them
            code, reason = _child_text(fault, "faultcode"), _child_text(fault, "faultstring")
        else:
            code = _child_text(fault, "Code", "Value")
            reason = _child_text(fault, "Reason", "Text")
        return f"{code or '?'}: {reason or '(no reason given)'}"
    return None


def _child_text(element: Any, *path: str) -> str:
    steps = "/".join(f"*[local-name()='{name}']" for name in path)
    found = element.xpath(f"string({steps})")
    return " ".join(str(found).split())
