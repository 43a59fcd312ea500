"""HTTP prober against real local HTTP/HTTPS servers: status, phases, redirects, body and TLS checks."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import gzip
import socket
import ssl
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from agents.catalog import parse_config
from agents.config import ConfigError
from agents.config.model import ModuleConfig
from agents.probes.http import PHASES, USER_AGENT, probe
from agents.probes.http import HttpFailure as Failure
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from tests.support.certs import CertFiles, make_ca, make_leaf, make_self_signed
from tests.support.httpd import HttpServer, Reply, raw_server
from tests.support.ports import free_port


def http_module(settings: str = "", timeout: str = "3s") -> ModuleConfig:
    body = textwrap.indent(textwrap.dedent(settings).strip(), " " * 6) or "      {}"
    config = f"""\
agent: {{id: test-agent, agency: so-test}}
modules:
  m:
    prober: http
    timeout: {timeout}
    http:
{body}
"""
    return parse_config(config, "test.yml").modules["m"]


async def run(url: str, settings: str = "", timeout: str = "3s", ip: str | None = None) -> ProbeResult:
    return await probe(ProbeTarget("web", url, ip), http_module(settings, timeout), ProbeResources())


def value(result: ProbeResult, name: str, **labels: str) -> float:
    found = [s.value for s in result.samples if s.metric.name == name and dict(s.labels) == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {[s.metric.name for s in result.samples]}"
    return found[0]


def phases(result: ProbeResult) -> dict[str, float]:
    return {phase: value(result, "probe_http_duration_seconds", phase=phase) for phase in PHASES}


def http_date(moment: dt.datetime) -> str:
    return email.utils.format_datetime(moment, usegmt=True)


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer() as started:
        yield started


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def leaf(tmp_path_factory: pytest.TempPathFactory, ca: CertFiles) -> CertFiles:
    return make_leaf(tmp_path_factory.mktemp("leaf"), ca, "server", names=("localhost", "egov.test", "127.0.0.1"))


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory, ca: CertFiles) -> CertFiles:
    now = dt.datetime.now(dt.timezone.utc)
    return make_leaf(
        tmp_path_factory.mktemp("expired"), ca, "expired",
        valid_from=now - dt.timedelta(days=60), valid_until=now - dt.timedelta(days=2),
    )


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_self_signed(tmp_path_factory.mktemp("selfsigned"))


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe_socket:
            probe_socket.bind(("::1", 0))
        return True
    except OSError:
        return False


# --- status and phases --------------------------------------------------------------------------


async def test_200_succeeds_with_status_version_lengths_and_every_phase(server: HttpServer) -> None:
    server.routes["/"] = Reply(body=b"hello world")
    result = await run(server.url("/"))
    assert result.success, result.detail
    assert value(result, "probe_http_status_code") == 200
    assert value(result, "probe_http_version") == 1.1
    assert value(result, "probe_http_content_length") == 11
    assert value(result, "probe_http_uncompressed_body_length") == 11
    assert value(result, "probe_http_redirects") == 0
    assert value(result, "probe_http_ssl") == 0
    assert value(result, "probe_failed_due_to_regex") == 0
    assert value(result, "probe_ip_protocol") == 4
    timings = phases(result)
    assert timings["tls"] == 0
    assert all(seconds >= 0 for seconds in timings.values())
    assert 0 < timings["connect"] < 0.5 and 0 < timings["processing"] < 0.5


async def test_phases_put_server_think_time_in_processing_and_slow_body_in_transfer(server: HttpServer) -> None:
    server.routes["/slow"] = Reply(chunks=(b"a", b"b", b"c"), delay=0.3, chunk_delay=0.1)
    started = time.perf_counter()
    result = await run(server.url("/slow"))
    elapsed = time.perf_counter() - started
    assert result.success, result.detail
    timings = phases(result)
    assert 0.3 <= timings["processing"] < 0.5
    assert 0.2 <= timings["transfer"] < 0.5  # three chunks 0.1 s apart, the first right after the head
    assert timings["connect"] < timings["processing"]
    assert sum(timings.values()) <= elapsed


async def test_request_carries_host_user_agent_identity_encoding_and_connection_close(server: HttpServer) -> None:
    result = await run(server.url("/missing?x=1"), "valid_status_codes: [404]")
    assert result.success, result.detail
    seen = server.requests[0]
    assert (seen.method, seen.path) == ("GET", "/missing?x=1")
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["user-agent"] == USER_AGENT
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["connection"] == "close"


async def test_non_2xx_status_fails_with_http_status(server: HttpServer) -> None:
    server.routes["/down"] = Reply(503, b"maintenance")
    result = await run(server.url("/down"))
    assert result.failure is Failure.HTTP_STATUS
    assert value(result, "probe_http_status_code") == 503


async def test_valid_status_codes_replace_the_2xx_default(server: HttpServer) -> None:
    server.routes["/gone"] = Reply(410)
    server.routes["/ok"] = Reply(200)
    assert (await run(server.url("/gone"), "valid_status_codes: [410]")).success
    result = await run(server.url("/ok"), "valid_status_codes: [410]")
    assert result.failure is Failure.HTTP_STATUS


async def test_method_body_and_custom_headers_are_sent(server: HttpServer) -> None:
    result = await run(
        server.url("/api"),
        """
        method: POST
        body: '{"ping": 1}'
        headers: {Content-Type: application/json, X-Agency: so-tttt}
        valid_status_codes: [404]
        """,
    )
    assert result.success, result.detail
    seen = server.requests[0]
    assert (seen.method, seen.body) == ("POST", b'{"ping": 1}')
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-agency"] == "so-tttt"


async def test_valid_http_versions_fail_a_response_in_another_version(server: HttpServer) -> None:
    result = await run(server.url("/"), "valid_http_versions: [HTTP/1.0]\nvalid_status_codes: [404]")
    assert result.failure is Failure.EXPECT_MISMATCH
    assert "HTTP/1.1" in result.detail


async def test_fail_if_not_ssl_fails_a_plain_http_response(server: HttpServer) -> None:
    result = await run(server.url("/"), "fail_if_not_ssl: true\nvalid_status_codes: [404]")
    assert result.failure is Failure.EXPECT_MISMATCH


# --- redirects ----------------------------------------------------------------------------------


def redirect_chain(server: HttpServer, hops: int, delay: float = 0.0) -> None:
    for hop in range(hops):
        target = f"/hop{hop + 1}" if hop + 1 < hops else "/final"
        # alternate relative and absolute Locations, both must be followed
        location = target if hop % 2 == 0 else server.url(target)
        server.routes[f"/hop{hop}"] = Reply(302, b"moved", (("Location", location),), delay=delay)
    server.routes["/final"] = Reply(200, b"arrived", delay=delay)


async def test_redirect_chain_of_three_is_followed_counted_and_its_phases_summed(server: HttpServer) -> None:
    redirect_chain(server, 3, delay=0.1)
    result = await run(server.url("/hop0"))
    assert result.success, result.detail
    assert value(result, "probe_http_redirects") == 3
    assert value(result, "probe_http_status_code") == 200
    assert [r.path for r in server.requests] == ["/hop0", "/hop1", "/hop2", "/final"]
    assert phases(result)["processing"] >= 0.4  # four requests, 0.1 s think time each


async def test_redirect_chain_longer_than_max_redirects_fails(server: HttpServer) -> None:
    redirect_chain(server, 3)
    result = await run(server.url("/hop0"), "max_redirects: 2")
    assert result.failure is Failure.HTTP_TOO_MANY_REDIRECTS
    assert value(result, "probe_http_redirects") == 3
    assert [r.path for r in server.requests] == ["/hop0", "/hop1", "/hop2"]


async def test_no_follow_redirects_judges_the_redirect_itself(server: HttpServer) -> None:
    redirect_chain(server, 1)
    failed = await run(server.url("/hop0"), "no_follow_redirects: true")
    assert failed.failure is Failure.HTTP_STATUS
    assert value(failed, "probe_http_status_code") == 302
    assert value(failed, "probe_http_redirects") == 1
    accepted = await run(server.url("/hop0"), "no_follow_redirects: true\nvalid_status_codes: [302]")
    assert accepted.success, accepted.detail
    assert [r.path for r in server.requests] == ["/hop0", "/hop0"]


async def test_303_after_post_is_followed_with_a_get_without_body(server: HttpServer) -> None:
    server.routes["/form"] = Reply(303, b"", (("Location", "/thanks"),))
    server.routes["/thanks"] = Reply(200, b"thanks")
    result = await run(server.url("/form"), "method: POST\nbody: name=x")
    assert result.success, result.detail
    assert [(r.method, r.body) for r in server.requests] == [("POST", b"name=x"), ("GET", b"")]


# --- body ---------------------------------------------------------------------------------------


async def test_body_not_matching_the_required_regex_fails_with_the_regex_flag(server: HttpServer) -> None:
    server.routes["/"] = Reply(body="Cổng dịch vụ công — bảo trì".encode())
    result = await run(server.url("/"), "fail_if_body_not_matches_regexp: ['Dịch vụ công trực tuyến']")
    assert result.failure is Failure.HTTP_BODY_MISMATCH
    assert value(result, "probe_failed_due_to_regex") == 1


async def test_body_matching_the_required_regex_succeeds(server: HttpServer) -> None:
    server.routes["/"] = Reply(body="<title>Dịch vụ công trực tuyến</title>".encode())
    result = await run(server.url("/"), "fail_if_body_not_matches_regexp: ['Dịch vụ công trực tuyến']")
    assert result.success, result.detail
    assert value(result, "probe_failed_due_to_regex") == 0


async def test_body_matching_a_forbidden_regex_fails(server: HttpServer) -> None:
    server.routes["/"] = Reply(body=b"Fatal error: database connection failed")
    result = await run(server.url("/"), "fail_if_body_matches_regexp: ['(?i)database .* failed']")
    assert result.failure is Failure.HTTP_BODY_MISMATCH
    assert value(result, "probe_failed_due_to_regex") == 1


async def test_chunked_body_is_reassembled_across_chunk_boundaries(server: HttpServer) -> None:
    server.routes["/chunked"] = Reply(chunks=(b"<html>hello ", b"wor", b"ld</html>"))
    result = await run(server.url("/chunked"), "fail_if_body_not_matches_regexp: ['hello world']")
    assert result.success, result.detail
    assert value(result, "probe_http_uncompressed_body_length") == len(b"<html>hello world</html>")
    assert value(result, "probe_http_content_length") == -1


async def test_gzip_compression_is_requested_and_the_body_decoded(server: HttpServer) -> None:
    page = b"<p>trang chu</p>" * 100
    server.routes["/"] = Reply(body=gzip.compress(page), headers=(("Content-Encoding", "gzip"),))
    result = await run(server.url("/"), "compression: gzip\nfail_if_body_not_matches_regexp: ['trang chu']")
    assert result.success, result.detail
    assert server.requests[0].headers["accept-encoding"] == "gzip"
    assert value(result, "probe_http_uncompressed_body_length") == len(page)
    assert value(result, "probe_http_content_length") == len(gzip.compress(page))


async def test_body_over_body_size_limit_fails(server: HttpServer) -> None:
    server.routes["/big"] = Reply(body=b"x" * 5000)
    result = await run(server.url("/big"), "body_size_limit: 1000")
    assert result.failure is Failure.PROTOCOL_ERROR
    assert "body_size_limit" in result.detail


# --- Last-Modified and content age ----------------------------------------------------------------


async def test_last_modified_is_reported_and_fresh_content_passes_max_content_age(server: HttpServer) -> None:
    modified = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=2)
    server.routes["/"] = Reply(headers=(("Last-Modified", http_date(modified)),))
    result = await run(server.url("/"), "max_content_age: 3h")
    assert result.success, result.detail
    assert value(result, "probe_http_last_modified_timestamp_seconds") == modified.timestamp()
    assert 7195 <= value(result, "probe_http_content_age_seconds") <= 7205


async def test_content_older_than_max_content_age_fails(server: HttpServer) -> None:
    modified = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    server.routes["/"] = Reply(headers=(("Last-Modified", http_date(modified)),))
    result = await run(server.url("/"), "max_content_age: 1h")
    assert result.failure is Failure.HTTP_CONTENT_TOO_OLD
    assert value(result, "probe_http_content_age_seconds") > 3600


async def test_max_content_age_fails_when_the_server_sends_no_last_modified(server: HttpServer) -> None:
    server.routes["/"] = Reply()
    result = await run(server.url("/"), "max_content_age: 1h")
    assert result.failure is Failure.HTTP_CONTENT_TOO_OLD
    assert "Last-Modified" in result.detail


# --- TLS ----------------------------------------------------------------------------------------


async def test_https_with_a_ca_file_reports_version_cipher_and_expiry(ca: CertFiles, leaf: CertFiles) -> None:
    with HttpServer(tls=leaf) as server:
        server.routes["/"] = Reply()
        result = await run(server.url("/", host="localhost"), f"tls_config: {{ca_file: {ca.cert}}}")
    assert result.success, result.detail
    assert value(result, "probe_http_ssl") == 1
    assert value(result, "probe_tls_version_info", version="TLS 1.3") == 1
    cipher = [dict(s.labels)["cipher"] for s in result.samples if s.metric.name == "probe_tls_cipher_info"]
    assert cipher == ["TLS_AES_256_GCM_SHA384"]
    assert value(result, "probe_ssl_earliest_cert_expiry") == leaf.not_after.timestamp()  # the leaf expires first
    assert value(result, "probe_ssl_leaf_cert_expiry_timestamp_seconds") == leaf.not_after.timestamp()
    assert value(result, "probe_tls_certificate_verified") == 1
    assert phases(result)["tls"] > 0
    assert server.server_names == ["localhost"]


async def test_self_signed_cert_fails_tls_verify_but_still_reports_expiry(self_signed: CertFiles) -> None:
    with HttpServer(tls=self_signed) as server:
        result = await run(server.url("/", host="localhost"))
    assert result.failure is Failure.TLS_VERIFY
    assert value(result, "probe_ssl_earliest_cert_expiry") == self_signed.not_after.timestamp()
    assert value(result, "probe_http_status_code") == 0
    assert server.requests == []


async def test_expired_cert_fails_tls_verify_and_reports_the_past_expiry(ca: CertFiles, expired: CertFiles) -> None:
    with HttpServer(tls=expired) as server:
        result = await run(server.url("/", host="localhost"), f"tls_config: {{ca_file: {ca.cert}}}")
    assert result.failure is Failure.TLS_VERIFY
    assert "expired" in result.detail
    assert value(result, "probe_ssl_leaf_cert_expiry_timestamp_seconds") == expired.not_after.timestamp()
    assert value(result, "probe_ssl_earliest_cert_expiry") < time.time()


async def test_insecure_skip_verify_accepts_a_self_signed_cert(self_signed: CertFiles) -> None:
    with HttpServer(tls=self_signed) as server:
        server.routes["/"] = Reply()
        result = await run(server.url("/", host="localhost"), "tls_config: {insecure_skip_verify: true}")
    assert result.success, result.detail
    assert value(result, "probe_tls_certificate_verified") == 0
    assert value(result, "probe_ssl_earliest_cert_expiry") == self_signed.not_after.timestamp()


async def test_tls_below_min_version_fails_with_tls_version_and_reports_the_version(
    ca: CertFiles, leaf: CertFiles
) -> None:
    with HttpServer(tls=leaf, tls_maximum=ssl.TLSVersion.TLSv1_2) as server:
        server.routes["/"] = Reply()
        result = await run(server.url("/", host="localhost"), f"tls_config: {{ca_file: {ca.cert}, min_version: TLS13}}")
    assert result.failure is Failure.TLS_VERSION
    assert value(result, "probe_tls_version_info", version="TLS 1.2") == 1
    assert server.requests == []


async def test_fail_if_ssl_fails_an_https_response(ca: CertFiles, leaf: CertFiles) -> None:
    with HttpServer(tls=leaf) as server:
        server.routes["/"] = Reply()
        result = await run(server.url("/", host="localhost"), f"fail_if_ssl: true\ntls_config: {{ca_file: {ca.cert}}}")
    assert result.failure is Failure.EXPECT_MISMATCH


async def test_target_ip_is_dialed_while_host_and_sni_come_from_the_url(ca: CertFiles, leaf: CertFiles) -> None:
    with HttpServer(tls=leaf) as server:
        server.routes["/"] = Reply()
        # egov.test resolves nowhere: only target.ip makes the connection possible
        result = await run(server.url("/", host="egov.test"), f"tls_config: {{ca_file: {ca.cert}}}", ip="127.0.0.1")
    assert result.success, result.detail
    assert server.server_names == ["egov.test"]
    assert server.requests[0].headers["host"] == f"egov.test:{server.port}"
    assert phases(result)["resolve"] < 0.01


# --- misbehaving servers and the deadline --------------------------------------------------------


async def test_server_that_accepts_but_never_answers_is_bounded_by_the_timeout() -> None:
    async with raw_server(None) as port:
        started = time.monotonic()
        result = await run(f"http://127.0.0.1:{port}/", timeout="1s")
        elapsed = time.monotonic() - started
    assert result.failure is Failure.TIMEOUT
    assert "processing" in result.detail
    assert 0.95 < elapsed < 1.5
    assert phases(result)["connect"] > 0
    assert phases(result)["processing"] == 0  # cut off by the deadline, so not counted


async def test_garbage_instead_of_a_status_line_fails_with_protocol_error() -> None:
    async with raw_server(b"SSH-2.0-OpenSSH_9.2\r\n\x00\xff garbage\r\n\r\n") as port:
        result = await run(f"http://127.0.0.1:{port}/")
    assert result.failure is Failure.PROTOCOL_ERROR
    assert "status line" in result.detail


async def test_malformed_header_line_fails_with_protocol_error() -> None:
    async with raw_server(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n") as port:
        result = await run(f"http://127.0.0.1:{port}/")
    assert result.failure is Failure.PROTOCOL_ERROR


async def test_invalid_chunk_size_fails_with_protocol_error() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    async with raw_server(reply) as port:
        result = await run(f"http://127.0.0.1:{port}/")
    assert result.failure is Failure.PROTOCOL_ERROR
    assert "chunk" in result.detail


async def test_body_cut_short_of_content_length_fails_with_protocol_error() -> None:
    async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this") as port:
        result = await run(f"http://127.0.0.1:{port}/")
    assert result.failure is Failure.PROTOCOL_ERROR


async def test_body_without_length_is_read_until_the_server_closes() -> None:
    async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close") as port:
        result = await run(f"http://127.0.0.1:{port}/")
    assert result.success, result.detail
    assert value(result, "probe_http_uncompressed_body_length") == len(b"until close")
    assert value(result, "probe_http_version") == 1.1


async def test_closed_port_fails_with_connect_refused() -> None:
    result = await run(f"http://127.0.0.1:{free_port()}/")
    assert result.failure is Failure.CONNECT_REFUSED
    assert value(result, "probe_http_status_code") == 0


# --- credentials --------------------------------------------------------------------------------


async def test_basic_auth_password_from_an_env_secret_is_sent(server: HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTAL_PASSWORD", "mật-khẩu:42")
    server.routes["/"] = Reply()
    result = await run(server.url("/"), "basic_auth: {username: giamsat, password: '${PORTAL_PASSWORD}'}")
    assert result.success, result.detail
    expected = base64.b64encode("giamsat:mật-khẩu:42".encode()).decode()
    assert server.requests[0].headers["authorization"] == f"Basic {expected}"


async def test_bearer_token_from_a_file_is_sent(server: HttpServer, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-123\n")
    server.routes["/"] = Reply()
    result = await run(server.url("/"), f"bearer_token_file: {tmp_path / 'token'}")
    assert result.success, result.detail
    assert server.requests[0].headers["authorization"] == "Bearer tok-123"


def test_literal_basic_auth_password_is_rejected_at_load() -> None:
    with pytest.raises(ConfigError) as error:
        http_module("basic_auth: {username: u, password: hunter2}")
    assert "modules.m.http.basic_auth.password" in str(error.value)


def test_invalid_body_regex_is_rejected_at_load() -> None:
    with pytest.raises(ConfigError) as error:
        http_module("fail_if_body_matches_regexp: ['(unclosed']")
    assert "modules.m.http.fail_if_body_matches_regexp" in str(error.value)


# --- IPv6 ---------------------------------------------------------------------------------------


async def test_ipv6_literal_url_is_probed_over_ipv6() -> None:
    if not ipv6_loopback_works():  # a missing peer fails, as everywhere in the suite (tests/support/require.py)
        pytest.fail("no IPv6 loopback (::1): enable IPv6 on lo (sysctl net.ipv6.conf.lo.disable_ipv6=0)")
    with HttpServer(host="::1") as server:
        server.routes["/"] = Reply()
        result = await run(server.url("/"))
    assert result.success, result.detail
    assert value(result, "probe_ip_protocol") == 6
    assert server.requests[0].headers["host"] == f"[::1]:{server.port}"
