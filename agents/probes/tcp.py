"""TCP prober: connect time, optional implicit TLS, expect/send steps, must-be-closed policy."""

from __future__ import annotations

import asyncio
import ssl
import time

import msgspec

from agents import linear_regex
from agents.config.model import ModuleConfig
from agents.probes.base import ProberSpec
from agents.probes.resolve import ResolveError, resolve, split_host_port
from agents.probes.tlsinfo import (
    TLS_CONTEXTS,
    TlsContexts,
    TlsSettings,
    classify_tls_error,
    fetch_chain,
    prepare_tls,
    session_samples,
    version_ok,
)
from agents.resources import ProbeResources
from agents.results import Failure, Metric, ProbeResult, ProbeTarget, Reason, Sample, socket_failure

CONNECT_TIME = Metric("probe_tcp_connect_duration_seconds", "Time taken to establish the TCP connection")
PORT_OPEN = Metric("probe_tcp_port_open", "1 if the TCP port accepted the connection, 0 if refused or filtered")
FAILED_DUE_TO_REGEX = Metric("probe_failed_due_to_regex", "Indicates if probe failed due to regex")
TLS_HANDSHAKE_TIME = Metric("probe_tcp_tls_handshake_duration_seconds", "Time taken by the TLS handshake")


class TcpFailure(Failure):
    PORT_OPEN = Reason("port_open")  # must_be_closed, and the port accepted the connection


class QueryStep(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    expect: str | None = None  # regex; lines are read until one matches (blackbox semantics)
    send: str | None = None  # written with a trailing CRLF unless it already ends in a newline
    starttls: bool = False  # upgrade the connection to TLS at this step


class TcpSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    port: int | None = None  # used when the target address has no ':port'
    tls: bool = False  # implicit TLS right after connect
    tls_config: TlsSettings = TlsSettings()
    query_response: list[QueryStep] = []
    must_be_closed: bool = False  # policy: success only when the port is NOT open

    def validate(self, timeout: float) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError("port: must be between 1 and 65535")
        for index, step in enumerate(self.query_response):
            if step.expect is not None:
                linear_regex.check_patterns(f"query_response: step {index}: expect", [step.expect])

    def check_address(self, address: str) -> None:
        """A target address this module can connect to: `host:port`, `[v6]:port`, or a host when `port` is set."""
        try:
            split_host_port(address, self.port)
        except ValueError as exc:
            raise ValueError(f"{exc}: write host:port ([v6]:port for IPv6) or set the module's tcp.port") from None


async def probe(target: ProbeTarget, module: ModuleConfig[TcpSettings], resources: ProbeResources) -> ProbeResult:
    settings = module.settings
    deadline = time.monotonic() + module.timeout
    try:
        host, port = split_host_port(target.address, settings.port)
        resolved = await resolve(target.ip or host, module.preferred_ip_protocol, module.ip_protocol_fallback, module.timeout)
    except ValueError as exc:
        return ProbeResult.failed(Failure.RESOLVE, str(exc))
    except ResolveError as exc:
        return ProbeResult.failed(exc.failure, exc.detail)
    samples: list[Sample] = resolved.samples()
    server_name = settings.tls_config.server_name or host
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(resolved.ip, port), max(deadline - time.monotonic(), 0.001)
        )
    except asyncio.TimeoutError:
        return _closed_result(settings, samples, Failure.TIMEOUT, f"connect to {resolved.ip}:{port} timed out", "filtered")
    except OSError as exc:
        return _closed_result(settings, samples, socket_failure(exc), f"connect to {resolved.ip}:{port}: {exc.strerror}", "closed")
    samples.append(CONNECT_TIME(time.perf_counter() - started))
    samples.append(PORT_OPEN(1))
    try:
        if settings.must_be_closed:
            return ProbeResult.failed(TcpFailure.PORT_OPEN, f"port {port} is open but must be closed", samples)
        return await asyncio.wait_for(
            _converse(reader, writer, settings, resources.get(TLS_CONTEXTS), server_name, resolved.ip, port, samples, deadline),
            max(deadline - time.monotonic(), 0.001),
        )
    except asyncio.TimeoutError:
        return ProbeResult.failed(Failure.TIMEOUT, "timed out during the conversation", samples)
    except OSError as exc:
        return ProbeResult.failed(socket_failure(exc), f"during the conversation: {exc.strerror or exc}", samples)
    except ValueError:  # StreamReader.readline: no newline within its 64 KiB limit
        return ProbeResult.failed(Failure.PROTOCOL_ERROR, "a line longer than 64 KiB", samples)
    finally:
        writer.transport.abort()


def _closed_result(settings: TcpSettings, samples: list[Sample], failure: Reason, detail: str, state: str) -> ProbeResult:
    samples.append(PORT_OPEN(0))
    if settings.must_be_closed and failure in (Failure.CONNECT_REFUSED, Failure.TIMEOUT):
        return ProbeResult(success=True, detail=f"port is {state}, as the policy requires", samples=samples)
    return ProbeResult.failed(failure, detail, samples)


async def _converse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    settings: TcpSettings,
    contexts: TlsContexts,
    server_name: str,
    ip: str,
    port: int,
    samples: list[Sample],
    deadline: float,
) -> ProbeResult:
    tls_session = None
    if settings.tls:
        failure = await _start_tls(writer, settings, contexts, server_name, ip, port, samples, deadline, implicit=True)
        if failure is not None:
            return failure
        tls_session = writer.get_extra_info("ssl_object")
    for index, step in enumerate(settings.query_response):
        if step.expect is not None:
            matched, line = await _read_until_match(reader, step.expect)
            if not matched:
                samples.append(FAILED_DUE_TO_REGEX(1))
                return ProbeResult.failed(
                    Failure.EXPECT_MISMATCH, f"step {index}: {line[:200]!r} does not match {step.expect!r}", samples
                )
        if step.send is not None:
            text = step.send if step.send.endswith("\n") else step.send.removesuffix("\r") + "\r\n"
            writer.write(text.encode())
            await writer.drain()
        if step.starttls:
            failure = await _start_tls(writer, settings, contexts, server_name, ip, port, samples, deadline, implicit=False)
            if failure is not None:
                return failure
            tls_session = writer.get_extra_info("ssl_object")
    if settings.query_response:
        samples.append(FAILED_DUE_TO_REGEX(0))
    if tls_session is not None and not version_ok(tls_session, settings.tls_config.min_version):
        return ProbeResult.failed(Failure.TLS_VERSION, f"TLS version {tls_session.version()} below minimum", samples)
    return ProbeResult(success=True, samples=samples)


async def _read_until_match(reader: asyncio.StreamReader, pattern: str) -> tuple[bool, bytes]:
    """Read lines until one matches (as blackbox does) or the peer closes; the caller bounds the time."""
    line = b""
    while next_line := await reader.readline():
        line = next_line
        # match the line without its terminator, so `$` works on CRLF protocols
        if linear_regex.search(pattern, line.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")):
            return True, line
    return False, line


async def _start_tls(
    writer: asyncio.StreamWriter,
    settings: TcpSettings,
    contexts: TlsContexts,
    server_name: str,
    ip: str,
    port: int,
    samples: list[Sample],
    deadline: float,
    implicit: bool,
) -> ProbeResult | None:
    started = time.perf_counter()
    try:
        await writer.start_tls(contexts.get(settings.tls_config), server_hostname=server_name)
    except (ssl.SSLError, OSError) as exc:
        samples.append(TLS_HANDSHAKE_TIME(time.perf_counter() - started))
        if isinstance(exc, ssl.SSLCertVerificationError) and implicit:
            # the chain of a server that fails verification still matters (expiry alerts);
            # after STARTTLS the conversation cannot be replayed, so only implicit TLS gets it
            samples += await fetch_chain(ip, port, server_name, settings.tls_config, max(deadline - time.monotonic(), 0.001))
        return ProbeResult.failed(classify_tls_error(exc), f"TLS: {getattr(exc, 'verify_message', None) or exc}", samples)
    samples.append(TLS_HANDSHAKE_TIME(time.perf_counter() - started))
    samples += session_samples(writer.get_extra_info("ssl_object"), verified=not settings.tls_config.insecure_skip_verify)
    return None


def prepare(module: ModuleConfig[TcpSettings], resources: ProbeResources) -> None:
    settings = module.settings
    if settings.tls or any(step.starttls for step in settings.query_response):
        prepare_tls(resources, settings.tls_config)


SPEC = ProberSpec(
    "tcp", TcpSettings, probe, host_of=lambda address: split_host_port(address, 0)[0], failures=TcpFailure, prepare=prepare
)
