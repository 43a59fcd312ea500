"""Transaction prober against real applications: Django's admin (session login, CSRF), a JSON API, a spyne SOAP
service; and against the test HTTP server where what a run sends must be seen exactly (cookies, variables and
secrets never cross runs or targets)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.config.model import ModuleConfig
from agents.probes.bodyquery import Document, find
from agents.probes.transaction import TransactionFailure as Failure
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from agents.runner import run_probe
from agents.worker import WORKER_PROCESS, WorkerDied
from tests.support.certs import make_ca, make_leaf
from tests.support.django_site import running_portal
from tests.support.httpd import HttpServer, Reply
from tests.support.ports import free_port
from tests.support.procs import wait_for_port
from tests.support.require import require_binary
from tests.support.soap_service import NAMESPACE, running_soap_service
from tests.test_agent_run import http_get, metric_value
from tests.test_collector_agents import start_agent
from tests.test_scheduler import run_scheduler

ROOT = Path(__file__).resolve().parent.parent
AGENT = "agent: {id: test-agent, agency: so-test}\n"
PASSWORD = "Mật-khẩu-giám-sát-7d1f"  # the monitoring account's; must never show in a result, a page or a log

PORTAL_JOURNEY = """\
secrets: {password: "${PORTAL_PASSWORD}"}
variables: {user: netmon}
steps:
  - name: login_page
    url: /admin/login/
    extract:
      csrf: {css: "input[name=csrfmiddlewaretoken]", attribute: value}
  - name: login
    method: POST
    url: /admin/login/?next=/admin/
    form: {csrfmiddlewaretoken: "{{ csrf }}", username: "{{ user }}", password: "{{ secrets.password }}", next: /admin/}
    assert:
      body_matches: ["Site administration"]
      values: [{css: ".errornote", absent: true}]
  - name: search
    url: /admin/auth/user/
    params: {q: "{{ user }}"}
    assert:
      values: [{css: "#result_list th.field-username a", equals: "{{ user }}"}]
    extract:
      csrf: {css: "#logout-form input[name=csrfmiddlewaretoken]", attribute: value}
  - name: logout
    method: POST
    url: /admin/logout/
    form: {csrfmiddlewaretoken: "{{ csrf }}"}
    assert:
      body_matches: ["Logged out"]
  - name: after_logout
    url: /admin/
    assert:
      values: [{css: "#login-form", attribute: action, matches: "^/admin/login/"}]
"""

JSON_JOURNEY = """\
steps:
  - name: create
    method: POST
    url: /api/groups/
    json: {name: "giam-sat-{{ run_id }}"}
    assert:
      status: [201]
      values: [{json_path: "$.name", equals: "giam-sat-{{ run_id }}"}]
    extract: {id: {json_path: "$.id"}}
  - name: read
    url: /api/groups/{{ id }}/
    assert:
      values:
        - {json_path: "$.id", matches: "^[0-9]+$"}
        - {json_path: "$.name", equals: "giam-sat-{{ run_id }}"}
        - {json_path: "$.permissions", equals: 0}
        - {header: Content-Type, matches: "^application/json"}
  - name: delete
    method: DELETE
    url: /api/groups/{{ id }}/
    assert: {status: [204]}
"""

SOAP_STATUS = f"""\
namespaces: {{v: "{NAMESPACE}"}}
steps:
  - name: status
    method: POST
    url: /
    soap: {{action: GetStatus}}
    body: |
      <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:v="{NAMESPACE}">
        <soapenv:Body><v:GetStatus/></soapenv:Body>
      </soapenv:Envelope>
    assert:
      values: [{{xpath: "//v:GetStatusResult/v:status", equals: OK}}]
    extract: {{pending: {{xpath: "//v:GetStatusResult/v:pending"}}}}
  - name: send
    method: POST
    url: /
    soap: {{action: SendDocument}}
    body: |
      <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:v="{NAMESPACE}">
        <soapenv:Body><v:SendDocument><v:code>{{{{ pending }}}}</v:code></v:SendDocument></soapenv:Body>
      </soapenv:Envelope>
"""


def module_yaml(settings: str, timeout: str = "5s", name: str = "m") -> str:
    body = textwrap.indent(textwrap.dedent(settings).strip(), " " * 6)
    return f"  {name}:\n    prober: transaction\n    timeout: {timeout}\n    transaction:\n{body}\n"


def transaction_module(settings: str, timeout: str = "5s") -> ModuleConfig:
    return parse_config(AGENT + "modules:\n" + module_yaml(settings, timeout), "test.yml").modules["m"]


async def run(url: str, settings: str | ModuleConfig, timeout: str = "5s", resources: ProbeResources | None = None) -> ProbeResult:
    module = settings if isinstance(settings, ModuleConfig) else transaction_module(settings, timeout)
    return await run_probe(ProbeTarget("journey", url), module, resources or ProbeResources())


def value(result: ProbeResult, name: str, **labels: str) -> float:
    found = [s.value for s in result.samples if s.metric.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def step_values(result: ProbeResult, name: str) -> dict[str, float]:
    return {dict(s.labels)["step"]: s.value for s in result.samples if s.metric.name == name}


def failed_step(result: ProbeResult) -> tuple[str | None, float]:
    [sample] = [s for s in result.samples if s.metric.name == "probe_transaction_failed_step"]
    return dict(sample.labels).get("step"), sample.value


def everything_shown(result: ProbeResult) -> str:
    """What a result can put in front of a person: detail and every sample's labels."""
    return result.detail + json.dumps([s.labels for s in result.samples], ensure_ascii=False)


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_portal(tmp_path_factory.mktemp("portal"), PASSWORD) as url:
        yield url


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PORTAL_PASSWORD", PASSWORD)
    return PASSWORD


@pytest.fixture(scope="module")
def soap_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_soap_service(tmp_path_factory.mktemp("soap")) as url:
        yield url


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as started:
        yield started


# --- the public-services portal: Django's admin ------------------------------------------------------------------


async def test_portal_journey_logs_in_searches_and_logs_out(portal: str, password: str) -> None:
    result = await run(portal + "/", PORTAL_JOURNEY)
    assert result.success, result.detail
    assert value(result, "probe_transaction_steps") == 5
    assert failed_step(result) == (None, 0)
    steps = ["login_page", "login", "search", "logout", "after_logout"]
    assert step_values(result, "probe_transaction_step_success") == dict.fromkeys(steps, 1)
    assert step_values(result, "probe_transaction_step_status_code") == dict.fromkeys(steps, 200)
    # the login POST was answered 302 to /admin/, and after logging out /admin/ sends back to the login form
    assert step_values(result, "probe_transaction_step_redirects") == {**dict.fromkeys(steps, 0), "login": 1, "after_logout": 1}
    durations = step_values(result, "probe_transaction_step_duration_seconds")
    assert all(0 < seconds < 5 for seconds in durations.values())
    assert sum(durations.values()) <= value(result, "probe_duration_seconds")
    assert value(result, "probe_transaction_step_http_duration_seconds", step="search", phase="processing") > 0
    assert value(result, "probe_transaction_step_http_duration_seconds", step="search", phase="tls") == 0


async def test_a_wrong_password_fails_at_the_login_step_with_assertion_failed(portal: str, monkeypatch) -> None:
    monkeypatch.setenv("PORTAL_PASSWORD", "not-the-password")
    result = await run(portal + "/", PORTAL_JOURNEY)
    assert result.failure is Failure.ASSERTION_FAILED
    assert result.detail.startswith("step 2/5 'login' (POST /admin/login/?next=/admin/): body does not match 'Site administration'")
    assert failed_step(result) == ("login", 2)
    assert step_values(result, "probe_transaction_step_success") == {"login_page": 1, "login": 0}  # the rest did not run
    assert step_values(result, "probe_transaction_step_status_code")["login"] == 200  # the form came back
    assert "not-the-password" not in everything_shown(result)


async def test_a_login_form_without_its_csrf_token_fails_with_extract_failed_at_that_step(portal: str, password: str) -> None:
    journey = PORTAL_JOURNEY.replace("url: /admin/login/\n", "url: /maintenance/login/\n", 1)
    result = await run(portal + "/", journey)
    assert result.failure is Failure.EXTRACT_FAILED
    assert result.detail == (
        "step 1/5 'login_page' (GET /maintenance/login/): variable csrf: css 'input[name=csrfmiddlewaretoken]' @value found nothing"
    )
    assert failed_step(result) == ("login_page", 1)


async def test_a_slow_step_times_out_naming_it_while_other_targets_keep_their_schedule(portal: str, password: str) -> None:
    slow_journey = PORTAL_JOURNEY.replace("url: /admin/auth/user/\n", "url: /slow/\n    timeout: 1s\n").replace(
        'params: {q: "{{ user }}"}', 'params: {seconds: 3}'
    )
    port = int(portal.rsplit(":", 1)[1])
    fast = "".join(
        f'  - {{name: fast-{i}, address: "127.0.0.1:{port}", module: tcp_connect, interval: 500ms}}\n' for i in range(5)
    )
    config = parse_config(
        AGENT + "modules:\n" + module_yaml(slow_journey, timeout="2s", name="journey") + "  tcp_connect: {prober: tcp, timeout: 400ms}\n"
        + f'targets:\n  - {{name: portal-journey, address: "{portal}/", module: journey, interval: 2s}}\n' + fast,
        "sched.yml",
    )
    started = time.monotonic()
    registry, store = await run_scheduler(config, 4.5)
    elapsed = time.monotonic() - started
    latest = store.get("portal-journey").latest
    assert latest is not None and latest.failure is Failure.TIMEOUT
    assert latest.detail.startswith("step 3/5 'search' (GET /slow/): timed out in the processing phase after the step timeout 1s")
    assert failed_step(latest) == ("search", 3)
    assert 1.0 <= value(latest, "probe_transaction_step_duration_seconds", step="search") < 1.5
    for i in range(5):
        runs = registry.get_sample_value("netmon_agent_probe_runs_total", {"target": f"fast-{i}", "module": "tcp_connect", "result": "success"})
        assert runs is not None and runs >= int(elapsed / 0.5) - 1, (i, runs)
    late = registry.get_sample_value("netmon_agent_scheduling_lag_seconds_count") - registry.get_sample_value(
        "netmon_agent_scheduling_lag_seconds_bucket", {"le": "0.1"}
    )
    assert late == 0


async def test_the_module_timeout_names_the_step_it_cut(portal: str, password: str) -> None:
    journey = PORTAL_JOURNEY.replace("url: /admin/auth/user/\n", "url: /slow/\n").replace('params: {q: "{{ user }}"}', "params: {seconds: 3}")
    result = await run(portal + "/", journey, timeout="1500ms")
    assert result.failure is Failure.TIMEOUT
    assert result.detail.startswith("step 3/5 'search' (GET /slow/): timed out in the processing phase")
    assert failed_step(result) == ("search", 3)


async def test_a_json_api_journey_creates_reads_and_deletes_with_the_returned_id(portal: str) -> None:
    first = await run(portal + "/", JSON_JOURNEY)
    second = await run(portal + "/", JSON_JOURNEY)
    assert first.success, first.detail
    assert second.success, second.detail  # a new record each run (run_id), read back by its own id
    assert step_values(first, "probe_transaction_step_status_code") == {"create": 201, "read": 200, "delete": 204}


async def test_a_json_path_value_that_differs_fails_the_step_with_what_was_found(portal: str) -> None:
    journey = JSON_JOURNEY.replace('{json_path: "$.permissions", equals: 0}', '{json_path: "$.permissions", equals: 5}')
    result = await run(portal + "/", journey)
    assert result.failure is Failure.ASSERTION_FAILED
    assert result.detail.endswith("'read' (GET /api/groups/{{ id }}/): json_path '$.permissions' is '0', wanted '5'")


# --- the document interconnection: a SOAP service -----------------------------------------------------------------


async def test_a_soap_status_call_succeeds_on_its_xpath_and_a_fault_fails_with_its_faultstring(soap_url: str) -> None:
    result = await run(soap_url, SOAP_STATUS)
    assert result.failure is Failure.SOAP_FAULT
    assert result.detail == "step 2/2 'send' (POST /): SOAP Fault soap11env:Server.Database: database unavailable"
    assert step_values(result, "probe_transaction_step_success") == {"status": 1, "send": 0}
    assert step_values(result, "probe_transaction_step_status_code") == {"status": 200, "send": 500}


async def test_a_soap_status_call_alone_succeeds(soap_url: str) -> None:
    only_status = SOAP_STATUS.split("  - name: send")[0]
    result = await run(soap_url, only_status)
    assert result.success, result.detail


async def test_a_soap_status_other_than_expected_fails_its_xpath_assertion(soap_url: str) -> None:
    result = await run(soap_url, SOAP_STATUS.split("  - name: send")[0].replace("equals: OK", "equals: DEGRADED"))
    assert result.failure is Failure.ASSERTION_FAILED
    assert result.detail.endswith("xpath '//v:GetStatusResult/v:status' is 'OK', wanted 'DEGRADED'")


async def test_a_soap_step_sends_its_action_and_xml_escapes_variables(server: HttpServer) -> None:
    server.routes["/ws"] = Reply(body=b"<ok/>", headers=(("Content-Type", "text/xml"),))
    result = await run(server.url("/ws"), """\
        variables: {title: "Q&A <2026>"}
        steps:
          - {name: call, method: POST, url: "", soap: {action: "urn:Check"}, body: "<t>{{ title }}</t>"}
        """)
    assert result.success, result.detail
    seen = server.requests[0]
    assert seen.headers["soapaction"] == '"urn:Check"'
    assert seen.headers["content-type"] == "text/xml; charset=utf-8"
    assert seen.body == b"<t>Q&amp;A &lt;2026&gt;</t>"


# --- nothing crosses runs or targets ---------------------------------------------------------------------------------

TOKEN_JOURNEY = """\
steps:
  - name: start
    url: start
    extract: {token: {regex: "token=(\\\\w+)"}}
  - name: next
    url: next
    headers: {X-Token: "{{ token }}"}
"""


async def test_cookies_and_variables_of_a_run_never_reach_the_next_run(server: HttpServer) -> None:
    module, resources = transaction_module(TOKEN_JOURNEY), ProbeResources()
    server.routes["/start"] = Reply(body=b"token=first", headers=(("Set-Cookie", "session=one; Path=/"),))
    server.routes["/next"] = Reply()
    assert (await run(server.url("/"), module, resources=resources)).success
    server.routes["/start"] = Reply(body=b"token=second")  # no cookie this time
    assert (await run(server.url("/"), module, resources=resources)).success
    start_1, next_1, start_2, next_2 = server.requests
    assert "cookie" not in start_1.headers and next_1.headers["cookie"] == "session=one"
    assert next_1.headers["x-token"] == "first"
    assert "cookie" not in start_2.headers and "cookie" not in next_2.headers
    assert next_2.headers["x-token"] == "second"


async def test_two_targets_running_at_once_keep_their_own_cookies_and_variables(server: HttpServer) -> None:
    module, resources = transaction_module(TOKEN_JOURNEY), ProbeResources()
    for site in ("a", "b"):
        server.routes[f"/{site}/start"] = Reply(body=f"token={site}token".encode(), headers=(("Set-Cookie", f"{site}=1; Path=/"),))
        server.routes[f"/{site}/next"] = Reply()
    results = await asyncio.gather(*(run(server.url(f"/{site}/"), module, resources=resources) for site in ("a", "b")))
    assert all(result.success for result in results)
    sent = {request.path: request.headers for request in server.requests if request.path.endswith("/next")}
    assert (sent["/a/next"]["cookie"], sent["/a/next"]["x-token"]) == ("a=1", "atoken")
    assert (sent["/b/next"]["cookie"], sent["/b/next"]["x-token"]) == ("b=1", "btoken")


async def test_each_module_sends_only_its_own_secret_and_no_result_shows_one(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("API_KEY_A", "key-of-module-a-1234")
    (tmp_path / "key-b").write_text("key-of-module-b-5678\n", encoding="utf-8")
    server.routes["/echo"] = Reply(body=b'{"key": "key-of-module-a-1234"}', headers=(("Content-Type", "application/json"),))
    step = ('steps: [{name: call, url: "echo?k={{ secrets.key }}", headers: {Authorization: "Bearer {{ secrets.key }}"}, '
            'assert: {values: [{json_path: "$.key", equals: nothing}]}}]')
    config = parse_config(AGENT + "modules:\n" + module_yaml('secrets: {key: "${API_KEY_A}"}\n' + step, name="a")
                          + module_yaml(f'secret_files: {{key: "{tmp_path / "key-b"}"}}\n' + step, name="b"))
    results = [await run(server.url("/"), config.modules[name]) for name in ("a", "b")]
    assert [request.headers["authorization"] for request in server.requests] == ["Bearer key-of-module-a-1234", "Bearer key-of-module-b-5678"]
    assert [request.path for request in server.requests] == ["/echo?k=key-of-module-a-1234", "/echo?k=key-of-module-b-5678"]
    assert all(result.failure is Failure.ASSERTION_FAILED for result in results)
    assert results[0].detail.endswith("json_path '$.key' is '<redacted>', wanted 'nothing'")  # the server echoed it
    assert "key-of-module-a" not in everything_shown(results[0])
    assert "key-of-module-b" not in everything_shown(results[1])


# --- TLS and redirects, per step --------------------------------------------------------------------------------------


async def test_an_untrusted_certificate_fails_its_step_with_tls_verify_and_still_reports_its_expiry(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    with HttpServer(tls=make_leaf(tmp_path / "leaf", ca, "portal", names=("127.0.0.1",))) as tls_server:
        tls_server.routes["/"] = Reply()
        steps = f'steps: [{{name: home, url: "/"}}, {{name: secure, url: "{tls_server.url("/")}"}}, {{name: again, url: "{tls_server.url("/")}"}}]'
        with HttpServer() as plain:
            plain.routes["/"] = Reply()
            untrusted = await run(plain.url("/"), steps)
            trusted = await run(plain.url("/"), f"tls_config: {{ca_file: '{ca.cert}'}}\n{steps}")
    assert untrusted.failure is Failure.TLS_VERIFY
    assert untrusted.detail.startswith("step 2/3 'secure'")
    assert value(untrusted, "probe_ssl_earliest_cert_expiry", step="secure") > time.time()
    assert trusted.success, trusted.detail
    assert value(trusted, "probe_tls_certificate_verified", step="secure") == 1
    assert step_values(trusted, "probe_tls_certificate_verified") == {"secure": 1}  # once per host: not for `again`
    assert value(trusted, "probe_transaction_step_http_duration_seconds", step="secure", phase="tls") > 0


async def test_redirects_are_followed_within_their_bound(server: HttpServer) -> None:
    server.routes["/loop"] = Reply(302, headers=(("Location", "/loop"),))
    result = await run(server.url("/"), "max_redirects: 3\nsteps: [{name: loop, url: /loop}]")
    assert result.failure is Failure.HTTP_TOO_MANY_REDIRECTS
    assert result.detail.startswith("step 1/1 'loop' (GET /loop): more than 3 redirects")
    unfollowed = await run(server.url("/"), "steps: [{name: loop, url: /loop, follow_redirects: false, assert: {status: [302]}}]")
    assert unfollowed.success, unfollowed.detail


async def test_checks_over_a_large_body_run_off_the_event_loop_and_see_every_row(server: HttpServer) -> None:
    rows = "".join(f"<tr><td class='thu-tuc'>Thủ tục số {i}</td><td><a href='/t/{i}'>xem</a></td></tr>" for i in range(20000))
    page = f"<html><body><table id='ket-qua'>{rows}</table></body></html>".encode()
    server.routes["/tra-cuu"] = Reply(body=page, headers=(("Content-Type", "text/html; charset=utf-8"),))
    started = time.perf_counter()
    assert len(list(find("css", "#ket-qua td.thu-tuc", Document([], page, True), {}))) == 20000
    inline = time.perf_counter() - started  # what the check would block the event loop for
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.002)
            gaps.append(time.perf_counter() - last)
            last = time.perf_counter()

    ticking = asyncio.create_task(ticker())
    resources = ProbeResources()
    try:
        result = await run(server.url("/"), """\
            max_body_bytes: 3000000
            steps: [{name: search, url: /tra-cuu, assert: {values: [{css: "#ket-qua td.thu-tuc", equals: Thủ tục số 19999}]}}]
            """, resources=resources)
        ticking.cancel()
        assert result.success, result.detail
        assert inline > 0.05 and max(gaps) < inline / 2, (inline, max(gaps))
        worker = resources.get(WORKER_PROCESS).pid
        assert worker is not None and psutil.Process(worker).cmdline()[1:] == ["-m", "agents.worker"]
    finally:
        resources.close()
    await ended(worker)


async def test_a_small_body_is_judged_in_a_thread_and_a_dead_worker_process_is_replaced(server: HttpServer) -> None:
    server.routes["/small"] = Reply(body=b"<p id='ok'>xong</p>", headers=(("Content-Type", "text/html"),))
    server.routes["/big"] = Reply(body=b"<p>" + b"x" * 400_000 + b"</p>", headers=(("Content-Type", "text/html"),))
    resources = ProbeResources()
    worker = resources.get(WORKER_PROCESS)
    try:
        result = await run(server.url("/"), """\
            steps:
            - {name: small, url: /small, assert: {values: [{css: '#ok', equals: xong}]}}
            - {name: big, url: /big, assert: {body_matches: ['x{1000}</p>$']}}
            """, resources=resources)
        assert result.success, result.detail
        assert worker.pid is None  # a small body, or a large one read only by regexes: no tree, no process
        with pytest.raises(ValueError, match="invalid literal"):
            await worker.call(int, "mười")  # the function's exception, raised here; the worker lives on
        first = worker.pid
        assert first is not None and await worker.call(len, b"abc") == 3 and worker.pid == first
        with pytest.raises(WorkerDied):
            await worker.call(os._exit, 9)  # dies while working: the caller is told
        assert await worker.call(len, b"abcd") == 4  # the next call starts another process
        second = worker.pid
        assert second is not None and second != first
        os.kill(second, signal.SIGKILL)  # dies while idle: the next call does not fail, it gets a new process
        await ended(second)
        assert await worker.call(len, b"ab") == 2
        third = worker.pid
        assert third is not None and third not in (first, second)
    finally:
        resources.close()
    await ended(third)  # closing the resources ends the worker


async def ended(pid: int) -> None:
    """Wait until the process has exited and the event loop has seen it (it reaps it)."""
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not psutil.pid_exists(pid)
    await asyncio.sleep(0.05)  # the loop closes the process's pipes


# --- the config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("steps: []", "modules.m.transaction.steps: a transaction needs at least one step"),
        ('steps: [{name: a, url: "/x/{{ id }}"}]',
         "modules.m.transaction.steps[0].url: {{ id }} is not defined before this step (defined: run_id, unix_time)"),
        ('steps: [{name: a, url: /, headers: {X: "{{ token }}"}, extract: {token: {header: X-Token}}}]',
         "modules.m.transaction.steps[0].headers.X: {{ token }} is not defined before this step"),
        ("steps: [{name: a, url: /}, {name: a, url: /}]", "steps[1].name: 'a' is already the name of an earlier step"),
        ('steps: [{name: a, url: /, extract: {v: {xpath: "//a["}}}]', "steps[0].extract.v: invalid XPath '//a['"),
        ('steps: [{name: a, url: /, extract: {v: {xpath: "//p:a"}}}]', "Undefined namespace prefix"),
        ('steps: [{name: a, url: /, extract: {v: {json_path: "$.a["}}}]', "steps[0].extract.v: invalid JSON path '$.a['"),
        ('steps: [{name: a, url: /, extract: {v: {css: "input[["}}}]', "steps[0].extract.v: invalid CSS selector"),
        ("steps: [{name: a, url: /, extract: {v: {css: a, regex: b}}}]", "give exactly one of regex, json_path, xpath, css, header"),
        ("steps: [{name: a, url: /, form: {a: b}, body: c}]", "steps[0].body: use only one of form, json and body"),
        ("steps: [{name: a, url: /, soap: {action: x}}]", "steps[0].soap: a SOAP step needs its envelope in body"),
        ("steps: [{name: a, url: /, headers: {Cookie: a=b}}]", "steps[0].headers: Cookie is set by the prober"),
        ("steps: [{name: a, url: /, timeout: 10s}]", "steps[0].timeout: must be greater than 0 and at most the module timeout (5s)"),
        ("steps: [{name: a, url: 'ftp://x/'}]", "steps[0].url: 'ftp://x/' is not a valid URL"),
        ("secrets: {password: hunter2}\nsteps: [{name: a, url: /}]", "secrets are accepted only by reference"),
        ("steps: [{name: a, url: /, assert: {values: [{css: a, equals: x, absent: true}]}}]",
         "steps[0].assert.values[0]: use only one of equals, matches and absent"),
    ],
)
def test_config_errors_name_the_step_and_key(settings: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        transaction_module(settings)
    assert message in str(error.value)


def documented_examples() -> list[str]:
    text = (ROOT / "docs" / "transactions.md").read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("example", documented_examples(), ids=lambda example: example.split("\n")[0].strip()[:30])
def test_every_documented_example_is_a_valid_config(example: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_PASSWORD", "x" * 12)
    monkeypatch.setenv("LGSP_API_KEY", "y" * 12)
    example = example.replace("/etc/netmon/ca-tinh.pem", str(make_ca(tmp_path).cert))
    if example.startswith("modules:"):
        config = parse_config(AGENT + example, "transactions.md")
    else:  # a part of a module's settings
        config = parse_config(AGENT + "modules:\n" + module_yaml(example), "transactions.md")
    assert {module.prober for module in config.modules.values()} == {"transaction"}


def test_a_config_error_in_a_step_points_at_the_line_of_its_key() -> None:
    text = AGENT + "modules:\n" + module_yaml('steps:\n  - {name: a, url: /}\n  - name: b\n    url: "/x/{{ id }}"')
    with pytest.raises(ConfigError) as error:
        parse_config(text, "agent.yml")
    line = next(number for number, row in enumerate(text.splitlines(), start=1) if "/x/{{ id }}" in row)
    assert str(error.value).startswith(f"agent.yml:{line}: modules.m.transaction.steps[1].url: {{{{ id }}}} is not defined")


# --- probe --once, the status page and /metrics -----------------------------------------------------------------


def agent_yaml(port: int, portal: str) -> str:
    return (
        f"agent: {{id: so-test-1, agency: so-test}}\nlisten: 127.0.0.1:{port}\nmodules:\n" + module_yaml(PORTAL_JOURNEY, name="dvc_journey")
        + f'targets:\n  - {{name: dvc-portal, address: "{portal}/", module: dvc_journey, interval: 5s}}\n'
    )


def test_probe_once_prints_each_step_and_never_the_password(portal: str, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "agent.yml"
    config.write_text(agent_yaml(free_port(), portal), encoding="utf-8")
    monkeypatch.setenv("PORTAL_PASSWORD", PASSWORD[::-1])  # a wrong one: the run stops at the login step
    argv = [sys.executable, "-m", "agents.cli", "probe", "--config", str(config), "--once"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert "FAIL assertion_failed" in lines[1] and "step 2/5 'login'" in lines[1]
    steps = lines[lines.index("dvc-portal:") + 1:]
    assert steps[0].split() == ["#", "STEP", "RESULT", "STATUS", "TIME", "RESOLVE", "CONNECT", "TLS", "PROCESSING", "TRANSFER"]
    assert steps[1].split()[:4] == ["1", "login_page", "ok", "200"]
    assert steps[2].split()[:5] == ["2", "login", "FAIL", "assertion_failed", "200"]
    assert [line.split()[1:] for line in steps[3:]] == [["search", "not", "run"], ["logout", "not", "run"], ["after_logout", "not", "run"]]
    assert PASSWORD[::-1] not in done.stdout + done.stderr


def test_the_status_page_and_metrics_name_the_failed_step_and_never_the_password(portal: str, tmp_path: Path, monkeypatch) -> None:
    port = free_port()
    monkeypatch.setenv("PORTAL_PASSWORD", PASSWORD[::-1])
    context, log = start_agent(tmp_path / "agent", agent_yaml(port, portal))
    with context as agent:
        wait_for_port("127.0.0.1", port, proc=agent)
        deadline = time.monotonic() + 20
        while metric_value(http_get(f"http://127.0.0.1:{port}/metrics")[1], "probe_transaction_failed_step") is None:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        _, page = http_get(f"http://127.0.0.1:{port}/")
    assert metric_value(metrics, "probe_transaction_failed_step", target="dvc-portal", step="login") == 2
    assert metric_value(metrics, "probe_failure_info", target="dvc-portal", reason="assertion_failed") == 1
    assert metric_value(metrics, "probe_transaction_step_success", target="dvc-portal", step="login_page") == 1
    assert "FAIL (assertion_failed)" in page and "step 2/5 &#x27;login&#x27;" in page
    checked = subprocess.run([require_binary("promtool", "prometheus"), "check", "metrics"], input=metrics.encode(),
                             capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    for shown in (metrics, page, log.read_text(encoding="utf-8")):
        assert PASSWORD[::-1] not in shown
