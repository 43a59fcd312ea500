"""Transaction prober: ordered HTTP steps, as a citizen or a connected system goes through a service.

Open the login page, keep its CSRF token, log in, search a procedure, check it is listed, log out; or POST a SOAP
envelope to the document interconnection axis and read its status. Each step is one request (and its redirects)
through the http prober's own client, so its phases and TLS facts are measured the same way. A run keeps one
cookie jar and one set of variables, made new for every run and never shared with another target: a run starts
logged out, like a new visitor. The first step that fails ends the run; its name and number are in the result.

Zabbix web scenarios and Grafana's MultiHTTP checks are the models: steps with variables extracted by regex, JSON
path, XPath or CSS selector; assertions on status, body, values and headers; per-step times. Secrets come only
from the environment or files (`secrets`, `secret_files`) and never appear in a result's detail.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets as random_tokens
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal
from urllib.parse import urlencode, urljoin
from xml.sax.saxutils import escape as xml_escape

import msgspec

from agents import linear_regex
from agents.config.model import ModuleConfig
from agents.probes import http
from agents.probes.base import ProberSpec
from agents.probes.bodyquery import Document, QueryError, QueryKind, check_expression, find, preload, soap_fault
from agents.probes.tlsinfo import TLS_CONTEXTS, TlsSettings
from agents.resources import BLOCKING_EXECUTOR, ProbeResources
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Reason, Sample
from agents.worker import WORKER_PROCESS, WorkerDied
from foundation.config.base import Strict
from foundation.config.types import Duration, SecretFile, SecretRef
from foundation.logs import SecretRedactor

STEPS = Metric("probe_transaction_steps", "Number of steps of the transaction")
FAILED_STEP = Metric(
    "probe_transaction_failed_step", "Number (from 1) of the step that failed, named by label step; 0 when every step passed"
)
STEP_SUCCESS = Metric("probe_transaction_step_success", "Whether the step passed; steps after a failed one do not run")
STEP_DURATION = Metric("probe_transaction_step_duration_seconds", "Duration of the step: its request, redirects and checks")
STEP_HTTP_DURATION = Metric(
    "probe_transaction_step_http_duration_seconds", "Duration of the step's HTTP request by phase, summed over its redirects"
)
STEP_STATUS = Metric("probe_transaction_step_status_code", "HTTP status code of the step's final response (0: none)")
STEP_BODY = Metric("probe_transaction_step_body_bytes", "Length of the step's final response body, uncompressed")
STEP_REDIRECTS = Metric("probe_transaction_step_redirects", "Redirects the step followed")


class TransactionFailure(Failure):
    HTTP_STATUS = http.HttpFailure.HTTP_STATUS  # the final status is not one of valid_status_codes (http) or assert.status
    HTTP_TOO_MANY_REDIRECTS = http.HttpFailure.HTTP_TOO_MANY_REDIRECTS  # more redirects than max_redirects
    ASSERTION_FAILED = Reason("assertion_failed")  # a body regex, a value or max_duration of the step's `assert`
    EXTRACT_FAILED = Reason("extract_failed")  # a variable the step extracts is not in its response
    SOAP_FAULT = Reason("soap_fault")  # a SOAP step's response is a SOAP Fault


DEFAULT_BODY_BYTES = 1024 * 1024
# A body this long that becomes a tree or JSON objects is judged in the worker process (agents/worker.py), a shorter
# one, or one read only by regexes (one string, no objects per element), in a thread of the blocking pool.
OUT_OF_PROCESS_BYTES = 256 * 1024
BUILTINS = ("run_id", "unix_time")  # variables every run has: a random id (unique records), the time
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_UNSAFE_TEXT = re.compile(r"[\r\n\x00]")
_STEP_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
QUERY_KINDS: tuple[QueryKind, ...] = ("regex", "json_path", "xpath", "css", "header")
Scalar = str | int | float | bool


# --- settings --------------------------------------------------------------------------------------------------------


class Soap(Strict):
    action: str = ""  # SOAPAction (1.1) or the action parameter of the Content-Type (1.2)
    version: Literal["1.1", "1.2"] = "1.1"  # SOAP 1.1 (text/xml, SOAPAction) or 1.2 (application/soap+xml)


class Query(Strict):
    """Exactly one of regex, json_path, xpath, css, header."""

    regex: str | None = None  # over the body: group 1 if the regex has groups, else the whole match
    json_path: str | None = None  # RFC 9535, e.g. $.data.id
    xpath: str | None = None  # XPath 1.0 over the XML or HTML body; prefixes from the module's `namespaces`
    css: str | None = None  # CSS selector over the HTML body, e.g. input[name=csrfmiddlewaretoken]
    header: str | None = None  # a response header's value
    attribute: str | None = None  # with css or xpath: this attribute of the elements found, instead of their text

    @property
    def kind(self) -> QueryKind:
        return next(kind for kind in QUERY_KINDS if getattr(self, kind) is not None)

    @property
    def expression(self) -> str:
        return getattr(self, self.kind)

    def describe(self) -> str:
        return f"{self.kind} {self.expression!r}" + (f" @{self.attribute}" if self.attribute else "")

    def validate(self, namespaces: dict[str, str]) -> None:
        given = [kind for kind in QUERY_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(QUERY_KINDS)}" + (f" (got {', '.join(given)})" if given else ""))
        if self.attribute is not None and self.kind not in ("css", "xpath"):
            raise ValueError("attribute: only with css or xpath")
        check_expression(self.kind, self.expression, namespaces)


class Check(Query):
    """A query and what its values must be: `equals` or `matches` (any value found), `absent`, or else present."""

    equals: Scalar | None = None  # compared as text: 7 and "7" are the same; may hold {{ variables }}
    matches: str | None = None  # a regex searched in each value
    absent: bool = False  # the query must find nothing

    def validate(self, namespaces: dict[str, str]) -> None:
        super().validate(namespaces)
        if sum([self.equals is not None, self.matches is not None, self.absent]) > 1:
            raise ValueError("use only one of equals, matches and absent")
        if self.matches is not None:
            check_expression("regex", self.matches, {})


class Assertions(Strict):
    status: list[int] = []  # the final status must be one of these; empty: any 2xx
    body_matches: list[str] = []  # regexes that must all match the body
    body_not_matches: list[str] = []  # regexes none of which may match
    values: list[Check] = []  # JSON path, XPath, CSS and header checks
    max_duration: Duration | None = None  # the step's request (with redirects) must take at most this long


class Step(Strict):
    name: str  # the step label of its series, and what a failure names: login, search...
    url: str  # absolute, or relative to the target's address; may hold {{ variables }}
    method: str = "GET"
    params: dict[str, Scalar] = {}  # query parameters added to the URL, values percent-encoded
    headers: dict[str, str] = {}  # added to the module's headers; values may hold {{ variables }}
    form: dict[str, Scalar] | None = None  # an application/x-www-form-urlencoded body
    json: Any = None  # a JSON body (any YAML value); its strings may hold {{ variables }}
    body: str | None = None  # a raw body (a SOAP envelope, XML); set Content-Type in headers unless soap is set
    soap: Soap | None = None  # a SOAP call: Content-Type and SOAPAction set, {{ variables }} XML-escaped, Fault fails
    timeout: Duration | None = None  # of this step alone; the module timeout bounds the whole transaction
    follow_redirects: bool = True  # false: a 3xx is the step's response (assert status: [302])
    extract: dict[str, Query] = {}  # variables for the later steps, each the first value its query finds
    # what the response must be, checked in order; the key is `assert` (a Python keyword, hence the field's name)
    checks: Assertions = msgspec.field(default_factory=Assertions, name="assert")

    def templates(self) -> list[tuple[str, str]]:
        """(key, text) of every string of this step that may hold {{ variables }}."""
        found = [("url", self.url)]
        found += [(f"params.{key}", value) for key, value in self.params.items() if isinstance(value, str)]
        found += [(f"headers.{key}", value) for key, value in self.headers.items()]
        found += [(f"form.{key}", value) for key, value in (self.form or {}).items() if isinstance(value, str)]
        found += [("json", text) for text in _strings(self.json)]
        found += [("body", self.body)] if self.body is not None else []
        found += [(f"assert.values[{index}].equals", check.equals) for index, check in enumerate(self.checks.values)
                  if isinstance(check.equals, str)]
        return found

    def query_kinds(self) -> set[QueryKind]:
        kinds = {query.kind for query in [*self.extract.values(), *self.checks.values]}
        return kinds | ({"xpath"} if self.soap is not None else set())


class TransactionSettings(Strict):
    steps: list[Step] = []  # in order; the first failing step ends the run
    variables: dict[str, str] = {}  # constants for {{ name }}: a user name, a procedure code to search for
    secrets: dict[str, SecretRef] = {}  # {{ secrets.name }}: `${ENV_VAR}` only
    secret_files: dict[str, SecretFile] = {}  # {{ secrets.name }} read from a file
    headers: dict[str, str] = {}  # sent with every step (a step's own headers win)
    namespaces: dict[str, str] = {}  # XPath prefixes, e.g. {soap: "http://schemas.xmlsoap.org/soap/envelope/"}
    max_redirects: int = 10  # per step
    max_body_bytes: int = DEFAULT_BODY_BYTES  # of each response, kept for assertions and extraction
    compression: Literal["", "identity", "gzip", "deflate"] = ""  # ask for it and decode it
    tls_config: TlsSettings = TlsSettings()

    def validate(self, timeout: float) -> None:
        if not self.steps:
            raise ValueError("steps: a transaction needs at least one step")
        if self.max_redirects < 0:
            raise ValueError("max_redirects: must not be negative")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes: must be a positive number of bytes")
        known = self._constants()
        _check_headers("headers", self.headers)
        for key, text in self.headers.items():
            _check_template(f"headers.{key}", text, known)
        names: set[str] = set()
        for index, step in enumerate(self.steps):
            try:
                _check_step(step, timeout, self.namespaces, known)
            except ValueError as exc:
                raise ValueError(f"steps[{index}].{exc}") from None
            if step.name in names:
                raise ValueError(f"steps[{index}].name: {step.name!r} is already the name of an earlier step")
            names.add(step.name)
            known |= set(step.extract)
        preload({kind for step in self.steps for kind in step.query_kinds()})

    def _constants(self) -> set[str]:
        for key in ("variables", "secrets", "secret_files"):
            for name in getattr(self, key):
                if not _NAME.fullmatch(name):
                    raise ValueError(f"{key}: {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
                if key == "variables" and name in BUILTINS:
                    raise ValueError(f"variables: {name!r} is a built-in variable")
        both = set(self.secrets) & set(self.secret_files)
        if both:
            raise ValueError(f"secret_files: {sorted(both)[0]!r} is also in secrets")
        return {*self.variables, *BUILTINS, *(f"secrets.{name}" for name in [*self.secrets, *self.secret_files])}


def _check_step(step: Step, timeout: float, namespaces: dict[str, str], known: set[str]) -> None:
    if not _STEP_NAME.fullmatch(step.name):
        raise ValueError("name: 1 to 64 characters, no control characters")
    if not _TOKEN.match(step.method):
        raise ValueError(f"method: {step.method!r} is not an HTTP method token")
    if sum(body is not None for body in (step.form, step.json, step.body)) > 1:
        raise ValueError("body: use only one of form, json and body")
    if step.soap is not None and step.body is None:
        raise ValueError("soap: a SOAP step needs its envelope in body")
    _check_headers("headers", step.headers)
    for key, text in step.templates():
        _check_template(key, text, known)
    _check_url(step.url)
    if step.timeout is not None and not 0 < step.timeout <= timeout:
        raise ValueError(f"timeout: must be greater than 0 and at most the module timeout ({timeout:g}s)")
    for name, query in step.extract.items():
        if not _NAME.fullmatch(name) or name in BUILTINS:
            raise ValueError(f"extract: {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*, not {', '.join(BUILTINS)})")
        _prefixed(f"extract.{name}", query.validate, namespaces)
    _check_assertions(step.checks, namespaces)


def _check_assertions(checks: Assertions, namespaces: dict[str, str]) -> None:
    for code in checks.status:
        if not 100 <= code <= 599:
            raise ValueError(f"assert.status: {code} is not an HTTP status code")
    for key in ("body_matches", "body_not_matches"):
        for pattern in getattr(checks, key):
            _prefixed(f"assert.{key}", check_expression, "regex", pattern, {})
    for index, check in enumerate(checks.values):
        _prefixed(f"assert.values[{index}]", check.validate, namespaces)
    if checks.max_duration is not None and checks.max_duration <= 0:
        raise ValueError("assert.max_duration: must be greater than 0")


def _prefixed(key: str, check: Any, *args: Any) -> None:
    try:
        check(*args)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _check_headers(key: str, headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ValueError(f"{key}: {name!r} is not a valid header name")
        if _UNSAFE_TEXT.search(value):
            raise ValueError(f"{key}: the value of {name} must not contain CR, LF or NUL")
        if name.lower() in ("content-length", "transfer-encoding", "cookie", "host"):
            raise ValueError(f"{key}: {name} is set by the prober (cookies come from the run's own jar)")


def _check_template(key: str, text: str, known: set[str]) -> None:
    for name in _PLACEHOLDER.findall(text):
        if name not in known:
            defined = ", ".join(sorted(known)) or "none"
            raise ValueError(f"{key}: {{{{ {name} }}}} is not defined before this step (defined: {defined})")


def _check_url(template: str) -> None:
    """The URL with every placeholder filled must be an http(s) URL, or a path relative to the target's."""
    filled = _PLACEHOLDER.sub("x", template)
    try:
        http.parse_url(urljoin("http://target.invalid/", filled))
    except ValueError as exc:
        raise ValueError(f"url: {template!r} is not a valid URL: {exc}") from None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


# --- one run ---------------------------------------------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(self, failure: Reason, detail: str) -> None:
        super().__init__(detail)
        self.failure, self.detail = failure, detail


@dataclass(slots=True)
class _StepRecord:
    step: Step
    number: int  # from 1
    run: http.Run = field(default_factory=http.Run)
    duration: float = 0.0
    passed: bool = False
    tls_first: bool = False  # the first step of the run on its TLS host: its certificate facts are reported


class _RunCookies:
    """One run's cookies with a browser's rules (domain, path, expiry, Secure): the standard library's CookieJar.

    Made new for every run, so no session, CSRF cookie or login survives into the next run or another target."""

    def __init__(self) -> None:
        from http.cookiejar import CookieJar  # imported on use: the agent without transactions never loads it

        self._jar = CookieJar()

    def header(self, url: http.Url) -> str | None:
        request = _request_for(url)
        self._jar.add_cookie_header(request)
        return request.get_header("Cookie")

    def keep(self, url: http.Url, response: http.Response) -> None:
        self._jar.extract_cookies(_ResponseHeaders(response), _request_for(url))  # type: ignore[arg-type]


def _request_for(url: http.Url) -> Any:
    from urllib.request import Request

    return Request(url.text)


class _ResponseHeaders:
    """What CookieJar reads of a response (urllib's `info().get_all`)."""

    def __init__(self, response: http.Response) -> None:
        self._response = response

    def info(self) -> "_ResponseHeaders":
        return self

    def get_all(self, name: str, default: Any = None) -> Any:
        return self._response.values(name.lower()) or default


class _Journey:
    """The state of one run: variables, cookies, the address of each host, and what each step did."""

    def __init__(self, target: ProbeTarget, module: ModuleConfig[TransactionSettings], resources: ProbeResources) -> None:
        self.target, self.module, self.settings = target, module, module.settings
        self.resources = resources
        self.deadline = time.monotonic() + module.timeout
        self.jar = _RunCookies()
        self.values = self._first_values()
        self.addresses: dict[str, str] = {}  # host -> the IP its first request used: one backend per run
        self.records: list[_StepRecord] = []
        self.tls_hosts: set[tuple[str, int]] = set()
        self.redactor = SecretRedactor()
        self.redactor.protect(value for key, value in self.values.items() if key.startswith("secrets."))

    def _first_values(self) -> dict[str, str]:
        values = dict(self.settings.variables)
        values.update({f"secrets.{name}": secret.reveal() for name, secret in self.settings.secrets.items()})
        values.update({f"secrets.{name}": secret.reveal() for name, secret in self.settings.secret_files.items()})
        values.update(run_id=random_tokens.token_hex(8), unix_time=str(int(time.time())))
        return values

    async def run(self) -> None:
        for number, step in enumerate(self.settings.steps, start=1):
            record = _StepRecord(step, number)
            self.records.append(record)
            started = time.perf_counter()
            try:
                await self._run_step(record, started)
            finally:
                record.duration = time.perf_counter() - started
            record.passed = True

    async def _run_step(self, record: _StepRecord, started: float) -> None:
        step = record.step
        try:
            async with asyncio.timeout(step.timeout):
                await self._exchange(record)
        except http.HopFailure as exc:
            raise _StepFailed(exc.failure, exc.detail) from None
        except TimeoutError:
            if step.timeout is None:  # not this step's own deadline
                raise
            phase = http.current_phase(record.run)
            raise _StepFailed(Failure.TIMEOUT, f"timed out in the {phase} phase after the step timeout {step.timeout:g}s") from None
        elapsed = time.perf_counter() - started
        failure, extracted = await self._judge(record, elapsed)
        if failure is not None:
            raise _StepFailed(*failure)
        self.values.update(extracted)

    # the request

    async def _exchange(self, record: _StepRecord) -> None:
        step = record.step
        url = self._url(step)
        method, body, headers = step.method, self._body(step), self._headers(step)
        step_timeout = step.timeout if step.timeout is not None else self.module.timeout
        pinned = self.addresses.get(url.host) or (self.target.ip if url.host == self._target_url().host else None)
        chain = http.Chain(
            url, pinned, min(self.deadline, time.monotonic() + step_timeout), self.resources.get(TLS_CONTEXTS),
            jar=self.jar, body_kept=self.settings.max_body_bytes,
        )
        settings = http.HttpSettings(
            method=method, headers=headers, tls_config=self.settings.tls_config, compression=self.settings.compression,
            no_follow_redirects=not step.follow_redirects, max_redirects=self.settings.max_redirects,
        )
        try:
            await http.follow(url, method, body, chain, self.module, settings, record.run)
        finally:
            if chain.ip is not None:
                self.addresses.setdefault(url.host, chain.ip)
            if record.run.tls_samples and (url.host, url.port) not in self.tls_hosts:
                self.tls_hosts.add((url.host, url.port))
                record.tls_first = True

    def _target_url(self) -> http.Url:
        return http.parse_url(self.target.address)

    def _render(self, text: str, escape: Any = None) -> str:
        def value(match: re.Match[str]) -> str:
            found = self.values[match.group(1)]
            return escape(found) if escape is not None else found

        return _PLACEHOLDER.sub(value, text)

    def _url(self, step: Step) -> http.Url:
        text = urljoin(self._target_url().text, self._render(step.url))
        if step.params:
            query = urlencode([(key, self._render(_text(value))) for key, value in step.params.items()])
            text += ("&" if "?" in text else "?") + query
        try:
            return http.parse_url(text)
        except ValueError as exc:
            raise _StepFailed(TransactionFailure.EXTRACT_FAILED, f"the URL made from variables is not valid: {exc}") from None

    def _headers(self, step: Step) -> dict[str, str]:
        headers = {name.lower(): (name, value) for name, value in self._default_headers(step).items()}
        for source in (self.settings.headers, step.headers):
            headers.update({name.lower(): (name, self._render(value)) for name, value in source.items()})
        for name, value in headers.values():
            if _UNSAFE_TEXT.search(value):
                raise _StepFailed(TransactionFailure.EXTRACT_FAILED, f"header {name}: a variable put CR, LF or NUL in its value")
        return dict(headers.values())

    @staticmethod
    def _default_headers(step: Step) -> dict[str, str]:
        if step.form is not None:
            return {"Content-Type": "application/x-www-form-urlencoded"}
        if step.json is not None:
            return {"Content-Type": "application/json"}
        if step.soap is not None and step.soap.version == "1.2":
            action = f'; action="{step.soap.action}"' if step.soap.action else ""
            return {"Content-Type": f"application/soap+xml; charset=utf-8{action}"}
        if step.soap is not None:
            return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{step.soap.action}"'}
        return {}

    def _body(self, step: Step) -> str | None:
        if step.form is not None:
            return urlencode([(key, self._render(_text(value))) for key, value in step.form.items()])
        if step.json is not None:
            return json.dumps(self._render_json(step.json), ensure_ascii=False)
        if step.body is not None:
            return self._render(step.body, xml_escape if step.soap is not None else None)
        return None

    def _render_json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._render(value)
        if isinstance(value, dict):
            return {key: self._render_json(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._render_json(item) for item in value]
        return value

    # the response

    async def _judge(self, record: _StepRecord, elapsed: float) -> tuple[tuple[Reason, str] | None, dict[str, str]]:
        run, step = record.run, record.step
        assert run.response is not None and run.body is not None
        document = Document(run.response.headers, bytes(run.body.kept), run.body.length <= len(run.body.kept))
        checks = [msgspec.structs.replace(check, equals=self._render(check.equals)) if isinstance(check.equals, str) else check
                  for check in step.checks.values]
        judge = _Judge(step, checks, run.response.status, document, elapsed, self.settings.namespaces)
        if not judge.reads_body():
            return judge.verdict()
        if len(document.body) < OUT_OF_PROCESS_BYTES or not judge.parses_body():
            return await asyncio.get_running_loop().run_in_executor(self.resources.get(BLOCKING_EXECUTOR), judge.verdict)
        try:
            return await self.resources.get(WORKER_PROCESS).call(judge.verdict)
        except WorkerDied:
            return (TransactionFailure.ASSERTION_FAILED, "the process that checks large bodies ended before it answered"), {}

    # the result

    def result(self, outcome: tuple[Reason, str] | None) -> ProbeResult:
        samples = self.samples(failed=outcome is not None)
        if outcome is None:
            last = self.records[-1].run.response
            detail = f"{len(self.records)} steps passed" + (f", last {last.version} {last.status}" if last else "")
            return ProbeResult(success=True, detail=detail, samples=samples)
        failure, detail = outcome
        record = self.records[-1] if self.records else None
        if record is not None:
            where = f"step {record.number}/{len(self.settings.steps)} {record.step.name!r} ({record.step.method} {record.step.url})"
            detail = f"{where}: {detail}"
        return ProbeResult.failed(failure, self.redactor.redact(detail), samples)

    def samples(self, failed: bool) -> list[Sample]:
        samples = [STEPS(len(self.settings.steps))]
        if failed and self.records:
            samples.append(FAILED_STEP(self.records[-1].number, step=self.records[-1].step.name))
        else:
            samples.append(FAILED_STEP(0))
        if self.records:
            samples += self.records[0].run.resolve_samples
        for record in self.records:
            samples += _step_samples(record)
        return samples


def _step_samples(record: _StepRecord) -> list[Sample]:
    name, run = record.step.name, record.run
    samples = [
        STEP_SUCCESS(1 if record.passed else 0, step=name),
        STEP_DURATION(record.duration, step=name),
        STEP_STATUS(run.response.status if run.response else 0, step=name),
        STEP_BODY(run.body.length if run.body else 0, step=name),
        STEP_REDIRECTS(run.redirects, step=name),
    ]
    samples += [STEP_HTTP_DURATION(seconds, step=name, phase=phase) for phase, seconds in http.phase_totals(run.traces).items()]
    if record.tls_first:
        samples += [Sample(s.metric, s.value, tuple(sorted((*s.labels, ("step", name)))), s.observations) for s in run.tls_samples]
    return samples


class _Judge:
    """A step's assertions and extractions over its response, in order: SOAP Fault, status, body, values,
    duration, then the variables. Pure CPU work on up to max_body_bytes: it runs off the event loop."""

    def __init__(
        self, step: Step, values: list[Check], status: int, document: Document, elapsed: float, namespaces: dict[str, str]
    ) -> None:
        self.step, self.values, self.status, self.document = step, values, status, document
        self.elapsed, self.namespaces = elapsed, namespaces

    def reads_body(self) -> bool:
        checks = self.step.checks
        by_header = all(check.kind == "header" for check in [*self.values, *self.step.extract.values()])
        return bool(self.step.soap or checks.body_matches or checks.body_not_matches or not by_header)

    def parses_body(self) -> bool:
        """Whether the body becomes a tree or JSON: tens of thousands of Python objects for a large one."""
        kinds = {query.kind for query in [*self.values, *self.step.extract.values()]}
        return self.step.soap is not None or bool(kinds & {"xpath", "css", "json_path"})

    def verdict(self) -> tuple[tuple[Reason, str] | None, dict[str, str]]:
        try:
            failure = self._assertions()
            return (failure, {}) if failure is not None else self._extract()
        except QueryError as exc:
            return (TransactionFailure.ASSERTION_FAILED, str(exc)), {}

    def _assertions(self) -> tuple[Reason, str] | None:
        checks = self.step.checks
        if self.step.soap is not None:
            fault = soap_fault(self.document)
            if fault is not None:
                return TransactionFailure.SOAP_FAULT, f"SOAP Fault {fault}"
        valid = self.status in checks.status if checks.status else 200 <= self.status < 300
        if not valid:
            wanted = ", ".join(map(str, checks.status)) or "2xx"
            return TransactionFailure.HTTP_STATUS, f"status {self.status}, wanted {wanted}"
        for pattern in checks.body_matches:
            if not linear_regex.search(pattern, self.document.text()):
                return TransactionFailure.ASSERTION_FAILED, f"body does not match {pattern!r}"
        for pattern in checks.body_not_matches:
            if linear_regex.search(pattern, self.document.text()):
                return TransactionFailure.ASSERTION_FAILED, f"body matches {pattern!r}"
        for check in self.values:
            problem = _check_values(check, find(check.kind, check.expression, self.document, self.namespaces, check.attribute))
            if problem is not None:
                return TransactionFailure.ASSERTION_FAILED, f"{check.describe()} {problem}"
        if checks.max_duration is not None and self.elapsed > checks.max_duration:
            return TransactionFailure.ASSERTION_FAILED, f"took {self.elapsed:.3f}s, more than max_duration {checks.max_duration:g}s"
        return None

    def _extract(self) -> tuple[tuple[Reason, str] | None, dict[str, str]]:
        extracted: dict[str, str] = {}
        for name, query in self.step.extract.items():
            try:
                first = next(find(query.kind, query.expression, self.document, self.namespaces, query.attribute), None)
            except QueryError as exc:
                return (TransactionFailure.EXTRACT_FAILED, f"variable {name}: {exc}"), {}
            if first is None:
                return (TransactionFailure.EXTRACT_FAILED, f"variable {name}: {query.describe()} found nothing"), {}
            extracted[name] = first
        return None, extracted


def _check_values(check: Check, found: Iterator[str]) -> str | None:
    """Why the values found fail the check, or None; reads values only until one passes."""
    wanted = _text(check.equals) if check.equals is not None else None
    seen: list[str] = []
    count = 0
    for value in found:
        if check.absent:
            return f"found {_shown([value], 1)}, wanted nothing"
        if (wanted is None or value == wanted) and (check.matches is None or linear_regex.search(check.matches, value)):
            return None
        count += 1
        if len(seen) < 3:
            seen.append(value)
    if check.absent:
        return None
    if not count:
        return "found nothing"
    want = f"{wanted!r}" if wanted is not None else f"a match of {check.matches!r}"
    return f"is {_shown(seen, count)}, wanted {want}"


def _shown(values: list[str], count: int) -> str:
    shown = ", ".join(repr(value if len(value) <= 60 else value[:57] + "...") for value in values)
    return shown + (f" and {count - len(values)} more" if count > len(values) else "")


# --- the prober ------------------------------------------------------------------------------------------------------


async def probe(target: ProbeTarget, module: ModuleConfig[TransactionSettings], resources: ProbeResources) -> ProbeResult:
    try:
        http.parse_url(target.address)
    except ValueError as exc:
        return ProbeResult.failed(Failure.RESOLVE, f"invalid target URL {target.address!r}: {exc}")
    journey = _Journey(target, module, resources)
    outcome: tuple[Reason, str] | None = None
    try:
        async with asyncio.timeout(module.timeout):
            await journey.run()
    except _StepFailed as exc:
        outcome = (exc.failure, exc.detail)
    except TimeoutError:
        phase = http.current_phase(journey.records[-1].run) if journey.records else "resolve"
        outcome = (Failure.TIMEOUT, f"timed out in the {phase} phase: the transaction took its whole {module.timeout:g}s timeout")
    except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises into the scheduler
        outcome = (Failure.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    return journey.result(outcome)


def step_lines(module: ModuleConfig[TransactionSettings], result: ProbeResult) -> list[str]:
    """The steps of one result as a table, for `netmon-agent probe --once`."""
    by_step: dict[str, dict[str, float]] = {}
    for sample in result.samples:
        labels = dict(sample.labels)
        if "step" in labels and sample.metric is not FAILED_STEP:
            key = f"{sample.metric.name}:{labels.get('phase', '')}"
            by_step.setdefault(labels["step"], {})[key] = sample.value
    failed = next((dict(s.labels).get("step") for s in result.samples if s.metric is FAILED_STEP and s.value), None)
    header = ("#", "STEP", "RESULT", "STATUS", "TIME", *(phase.upper() for phase in http.PHASES))
    rows = [header]
    for number, step in enumerate(module.settings.steps, start=1):
        seen = by_step.get(step.name)
        if seen is None:
            rows.append((str(number), step.name, "not run", "", "", *("" for _ in http.PHASES)))
            continue
        outcome = "ok" if step.name != failed else f"FAIL {result.failure.value if result.failure else ''}"
        phases = (f"{seen.get(f'{STEP_HTTP_DURATION.name}:{phase}', 0) * 1000:.1f}ms" for phase in http.PHASES)
        status = seen.get(f"{STEP_STATUS.name}:", 0)
        rows.append((str(number), step.name, outcome, f"{status:.0f}" if status else "-",
                     f"{seen.get(f'{STEP_DURATION.name}:', 0) * 1000:.1f}ms", *phases))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


SPEC = ProberSpec(
    "transaction", TransactionSettings, probe, host_of=lambda address: http.parse_url(address).host,
    failures=TransactionFailure, result_lines=step_lines,
)
