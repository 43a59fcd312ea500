"""Config regexes that run on what the network sends match in linear time (RE2, as blackbox_exporter's Go
regexps): a catastrophic pattern against a hostile page is answered at once, and check-config refuses what RE2
cannot run (backreferences, lookaround), naming the key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agents import linear_regex
from agents.config import ConfigError
from agents.probes.http import HttpFailure, probe
from agents.resources import ProbeResources
from agents.results import ProbeTarget
from tests.support.httpd import HttpServer, Reply
from tests.test_http import http_module

ROOT = Path(__file__).resolve().parent.parent
HOSTILE_PAGE = b"a" * 1_000_000 + b"b"  # `(a+)+$` backtracks exponentially on it in Python's re


@pytest.fixture
def hostile_site():
    with HttpServer() as server:
        server.routes["/"] = Reply(body=HOSTILE_PAGE)
        yield server


async def test_a_catastrophic_forbidden_pattern_on_a_1mb_page_is_judged_in_well_under_a_second(hostile_site):
    module = http_module("fail_if_body_matches_regexp: ['(a+)+$']", timeout="10s")
    started = time.monotonic()
    result = await probe(ProbeTarget("portal", hostile_site.url("/")), module, ProbeResources())
    assert time.monotonic() - started < 1.0
    assert result.success, result.detail  # the page does not end in a's: the forbidden pattern does not match


async def test_a_catastrophic_required_pattern_on_a_1mb_page_reports_the_mismatch_in_well_under_a_second(hostile_site):
    module = http_module("fail_if_body_not_matches_regexp: ['(a+)+$']", timeout="10s")
    started = time.monotonic()
    result = await probe(ProbeTarget("portal", hostile_site.url("/")), module, ProbeResources())
    assert time.monotonic() - started < 1.0
    assert result.failure is HttpFailure.HTTP_BODY_MISMATCH
    assert "does not match '(a+)+$'" in result.detail


def test_probe_once_as_a_new_user_runs_it_finishes_at_once_and_reports_the_mismatch(hostile_site, tmp_path):
    config = tmp_path / "agent.yml"
    config.write_text(textwrap.dedent(f"""\
        agent: {{id: cli, agency: test}}
        modules:
          portal: {{prober: http, timeout: 10s, http: {{fail_if_body_not_matches_regexp: ['(a+)+$']}}}}
        targets:
          - {{name: portal, address: "{hostile_site.url('/')}", module: portal}}
        """))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "agents.cli", "probe", "--config", str(config), "--once"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert time.monotonic() - started < 10  # the interpreter's start included; the match itself takes milliseconds
    assert result.returncode == 1, result.stderr
    assert "http_body_mismatch" in result.stdout


@pytest.mark.parametrize("pattern, reason", [
    (r"(a)\1", "backreference"), (r"(?P<x>a)(?P=x)", "backreference"),
    (r"foo(?=bar)", "lookahead or lookbehind"), (r"(?<!x)y", "lookahead or lookbehind"),
])
def test_check_config_refuses_what_re2_cannot_run_and_names_the_key(pattern, reason):
    with pytest.raises(ConfigError) as error:
        http_module(f"fail_if_body_not_matches_regexp: ['{pattern}']")
    assert "modules.m.http.fail_if_body_not_matches_regexp" in str(error.value)
    assert reason in str(error.value)


def test_check_config_refuses_an_expect_pattern_re2_cannot_run(tmp_path):
    config = tmp_path / "agent.yml"
    config.write_text(textwrap.dedent("""\
        agent: {id: cli, agency: test}
        modules:
          banner: {prober: tcp, tcp: {query_response: [{expect: '^(\\w+) \\1$'}]}}
        """))
    result = subprocess.run([sys.executable, "-m", "agents.cli", "check-config", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert f"{config}:3: modules.banner.tcp" in result.stderr and "expect" in result.stderr and "backreference" in result.stderr


def test_multiline_patterns_anchor_at_every_line_as_python_re_multiline_does():
    assert linear_regex.search(r"^220 mail\.example ESMTP$", "220-first\n220 mail.example ESMTP", multiline=True)
    assert not linear_regex.search(r"^220 mail\.example ESMTP$", "220-first\n220 mail.example ESMTP")


@pytest.mark.parametrize("settings, key", [
    (r"steps: [{name: a, url: /, assert: {body_matches: ['(a)\1']}}]", "steps[0].assert.body_matches"),
    (r"steps: [{name: a, url: /, extract: {v: {regex: 'x(?=y)'}}}]", "steps[0].extract.v"),
])
def test_the_transaction_probers_regexes_are_linear_time_too(settings, key):
    from tests.test_transaction import transaction_module

    with pytest.raises(ConfigError) as error:
        transaction_module(settings)
    assert key in str(error.value) and "which linear-time matching (RE2, as blackbox_exporter) does not support" in str(error.value)


async def test_a_catastrophic_transaction_assertion_on_a_1mb_page_is_judged_at_once(hostile_site):
    from agents.runner import run_probe
    from tests.test_transaction import transaction_module

    module = transaction_module("steps: [{name: portal, url: /, assert: {body_matches: ['(a+)+$']}}]", timeout="10s")
    started = time.monotonic()
    resources = ProbeResources()
    try:
        result = await run_probe(ProbeTarget("journey", hostile_site.url("/")), module, resources)
    finally:
        resources.close()
    assert time.monotonic() - started < 1.0
    assert result.failure is not None and "does not match '(a+)+$'" in result.detail
