"""One SSH connection per host, shared by all checks of that host, with a cap on commands run at once.

paramiko blocks, so its blocking steps (handshake, login, opening a session, reading a command's output) run
in the agent's bounded thread pool while the event loop waits with the check's deadline. When the deadline
passes, the loop closes what the thread is blocked on, which wakes the thread at once. The TCP connect runs on
the event loop itself, so a host that is down holds no thread; and one connect per host at a time, so a host
that hangs during the handshake holds at most one thread (plus one per running command, up to max_sessions).

A command still running at its deadline is sent SIGKILL (the RFC 4254 "signal" request, which OpenSSH's sshd
delivers to the command's process group) before its channel is closed: closing the channel alone leaves the
command running on the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from agents.probes.resolve import ResolveError, resolve
from agents.results import Failure, Reason, socket_failure
from agents.ssh.config import SshHost
from agents.ssh.failures import SshFailure
from agents.ssh.hostkeys import HostKeyChanged, HostKeyUnknown
from agents.ssh.sshlib import paramiko

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30  # keeps firewalls' connection state and notices a dead peer between checks
IDLE_CLOSE_SECONDS = 900  # a connection no check used for this long is closed (e.g. its host left the config)
MAX_STDOUT_BYTES = 16 << 20  # a bigger output is a parse error, not an out-of-memory agent
MAX_STDERR_BYTES = 64 << 10  # only its first line is shown; the rest is read and dropped
READ_POLL_SECONDS = 0.2  # how often the reader looks at stderr while stdout is quiet
TRANSPORT_LOG = "agents.ssh.transport"  # paramiko's own messages about our connections

T = TypeVar("T")


class _TransportLogAsDebug(logging.Filter):
    """paramiko logs every aborted or failed handshake as an ERROR with a traceback, each time a check runs;
    the check's result already says what failed, so paramiko's messages are shown with --log-level debug only."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(TRANSPORT_LOG).isEnabledFor(logging.DEBUG)


class SshError(Exception):
    def __init__(self, failure: Reason, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CommandOutput:
    exit_status: int  # -1 when the server sent none (the command died of a signal)
    stdout: str
    stderr: str
    seconds: float  # from opening the session to the end of the output


@dataclass(slots=True)
class _Progress:
    step: str  # what a check was doing when its deadline passed


class _OpenFailed(Exception):
    """The session could not be opened: nothing ran, so the command may be retried on a new connection."""


class _RemoteCommand:
    """One command on one channel, run by a worker thread and abortable from the event loop."""

    def __init__(self, transport: paramiko.Transport, command: str) -> None:
        self._transport = transport
        self._command = command
        self._lock = threading.Lock()
        self._channel: paramiko.Channel | None = None
        self._aborted = False

    def run(self, open_timeout: float) -> CommandOutput:  # worker thread
        started = time.perf_counter()
        try:
            channel = self._transport.open_session(timeout=open_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _OpenFailed(str(exc) or type(exc).__name__) from exc
        with self._lock:
            self._channel = channel
            aborted = self._aborted
        if aborted:
            channel.close()
            raise SshError(Failure.TIMEOUT, "aborted before the command started")
        try:
            channel.exec_command(self._command)
            stdout, stderr = _read_all(channel)
            status = channel.recv_exit_status()
        except BaseException:
            self.abort()  # e.g. too much output: stop the command too
            raise
        channel.close()
        seconds = time.perf_counter() - started
        return CommandOutput(status, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"), seconds)

    def abort(self) -> None:  # event loop
        with self._lock:
            self._aborted = True
            channel = self._channel
        if channel is None or channel.closed:
            return
        try:
            _send_kill(channel)
        except (paramiko.SSHException, EOFError, OSError):
            pass  # the connection is gone, and with it the session
        channel.close()


def _open_error(host: SshHost, exc: _OpenFailed) -> SshError:
    return SshError(Failure.PROTOCOL_ERROR, f"{host.display}: cannot open a session: {exc}")


def _send_kill(channel: paramiko.Channel) -> None:
    # paramiko has no API for the "signal" channel request (RFC 4254 6.9); built like its exec request
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string("KILL")
    channel.transport._send_user_message(message)


def _read_all(channel: paramiko.Channel) -> tuple[bytes, bytes]:
    """stdout and stderr until the command closes them, reading both so neither fills the channel window."""
    channel.settimeout(READ_POLL_SECONDS)
    stdout, stderr = bytearray(), bytearray()
    while True:
        while channel.recv_stderr_ready():
            chunk = channel.recv_stderr(65536)
            stderr += chunk[: max(MAX_STDERR_BYTES - len(stderr), 0)]
        try:
            chunk = channel.recv(65536)
        except socket.timeout:
            continue
        if not chunk:  # end of output, or the channel was closed by an abort
            break
        stdout += chunk
        if len(stdout) > MAX_STDOUT_BYTES:
            raise SshError(SshFailure.PARSE_ERROR, f"the command printed more than {MAX_STDOUT_BYTES >> 20} MiB")
    while chunk := channel.recv_stderr(65536):
        stderr += chunk[: max(MAX_STDERR_BYTES - len(stderr), 0)]
    return bytes(stdout), bytes(stderr)


def _load_key(host: SshHost) -> paramiko.PKey:
    passphrase = host.key_passphrase.reveal().encode() if host.key_passphrase is not None else None
    try:
        return paramiko.PKey.from_path(host.key_file, passphrase)
    except OSError as exc:
        raise SshError(Failure.AUTH_FAILED, f"cannot read key file {host.key_file}: {exc.strerror}") from None
    except TypeError:  # cryptography: the key is encrypted and no passphrase was given
        raise SshError(Failure.AUTH_FAILED, f"key file {host.key_file} is encrypted and no passphrase is set") from None
    except ValueError:  # messages may quote the file; the reason is one of these
        reason = "wrong passphrase or not a private key" if passphrase else "not a private key"
        raise SshError(Failure.AUTH_FAILED, f"cannot load key file {host.key_file}: {reason}") from None
    except (paramiko.SSHException, paramiko.UnknownKeyType):
        raise SshError(Failure.AUTH_FAILED, f"cannot load key file {host.key_file}: unsupported key type") from None


def _log_in(transport: paramiko.Transport, host: SshHost, deadline: float) -> None:  # worker thread
    """Handshake, host key check, public key login; every wait bounded by the deadline."""
    remaining = max(deadline - time.monotonic(), 0.001)
    transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = remaining
    entry = host.known_hosts_entry
    try:
        trusted = host.host_keys.trusted_keys(entry)
        host.host_keys.prefer(transport.get_security_options(), trusted)
        transport.start_client(timeout=remaining)
        host.host_keys.verify(entry, transport.get_remote_server_key(), trusted)
        transport.auth_publickey(host.user, _load_key(host))
    except HostKeyUnknown as exc:
        raise SshError(SshFailure.HOST_KEY_UNKNOWN, str(exc)) from None
    except HostKeyChanged as exc:
        raise SshError(SshFailure.HOST_KEY_CHANGED, str(exc)) from None
    except paramiko.AuthenticationException as exc:
        raise SshError(Failure.AUTH_FAILED, f"{host.display}: {exc}") from None
    except socket.timeout:
        raise SshError(Failure.TIMEOUT, f"{host.display}: the SSH handshake timed out") from None
    except (EOFError, ConnectionResetError):
        raise SshError(Failure.CONNECTION_RESET, f"{host.display} closed the connection during the SSH handshake") from None
    except paramiko.SSHException as exc:
        raise SshError(Failure.PROTOCOL_ERROR, f"{host.display}: {exc}") from None
    except OSError as exc:
        raise SshError(socket_failure(exc), f"{host.display}: {exc.strerror or exc}") from None
    transport.set_keepalive(KEEPALIVE_SECONDS)


InThread = Callable[[Callable[[], T], Callable[[], None]], Awaitable[T]]


class _HostConnection:
    """The one connection to one host, created on demand, replaced when it dies."""

    def __init__(self, host: SshHost) -> None:
        self.host = host
        self.sessions = asyncio.Semaphore(host.max_sessions)
        self.busy = 0
        self.last_used = time.monotonic()
        self._connecting = asyncio.Lock()
        self._transport: paramiko.Transport | None = None

    async def transport(self, in_thread: InThread, deadline: float) -> tuple[paramiko.Transport, bool]:
        """The live connection and True (reused), or a new one and False."""
        async with self._connecting:
            if self._transport is not None and self._transport.is_active():
                return self._transport, True
            self.drop()
            self._transport = await _connect(self.host, in_thread, deadline)
            return self._transport, False

    def drop(self, transport: paramiko.Transport | None = None) -> None:
        """Close the connection (only if it still is `transport`, when given)."""
        if self._transport is not None and transport in (None, self._transport):
            self._transport.close()
            self._transport = None


async def _connect(host: SshHost, in_thread: InThread, deadline: float) -> paramiko.Transport:
    try:
        resolved = await resolve(host.address, timeout=max(deadline - time.monotonic(), 0.001))
    except ResolveError as exc:
        raise SshError(exc.failure, exc.detail) from None
    sock = socket.socket(resolved.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (resolved.ip, host.port))
        sock.setblocking(True)
        transport = paramiko.Transport(sock)
        transport.set_log_channel(TRANSPORT_LOG)
    except OSError as exc:
        sock.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SshError(socket_failure(exc), f"connect to {resolved.ip}:{host.port}: {reason}") from None
    except BaseException:
        sock.close()
        raise

    def close() -> None:
        transport.close()
        sock.close()  # transport.close() does nothing before the handshake thread started

    try:
        await in_thread(lambda: _log_in(transport, host, deadline), close)
    except BaseException:
        close()
        raise
    return transport


class SshPool:
    """Connections by host config; equal host configs (e.g. after a reload) share one."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._connections: dict[SshHost, _HostConnection] = {}
        transport_log = logging.getLogger(TRANSPORT_LOG)
        if not any(isinstance(existing, _TransportLogAsDebug) for existing in transport_log.filters):
            transport_log.addFilter(_TransportLogAsDebug())

    async def run(self, host: SshHost, command: str, deadline: float) -> CommandOutput:
        """Run command on host, finished by deadline (time.monotonic()) or SshError(TIMEOUT)."""
        self._close_idle()
        connection = self._connections.get(host)
        if connection is None:
            connection = self._connections[host] = _HostConnection(host)
        progress = _Progress("waiting for a free session")
        connection.busy += 1
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                async with connection.sessions:
                    return await self._run_command(connection, command, deadline, progress)
        except TimeoutError:
            raise SshError(Failure.TIMEOUT, f"{host.display}: timed out {progress.step}") from None
        finally:
            connection.busy -= 1
            connection.last_used = time.monotonic()

    async def _run_command(
        self, connection: _HostConnection, command: str, deadline: float, progress: _Progress
    ) -> CommandOutput:
        progress.step = "connecting and logging in"
        transport, reused = await connection.transport(self._in_thread, deadline)
        progress.step = "running the command"
        try:
            return await self._attempt(connection, transport, command, deadline)
        except _OpenFailed as exc:
            if not reused or transport.is_active():
                raise _open_error(connection.host, exc) from None
        # the server closed the idle connection (restart, idle timeout): nothing ran, so log in again, once
        log.debug("ssh connection to %s was closed by the server; reconnecting", connection.host.display)
        progress.step = "connecting and logging in"
        transport, _ = await connection.transport(self._in_thread, deadline)
        progress.step = "running the command"
        try:
            return await self._attempt(connection, transport, command, deadline)
        except _OpenFailed as exc:
            raise _open_error(connection.host, exc) from None

    async def _attempt(
        self, connection: _HostConnection, transport: paramiko.Transport, command: str, deadline: float
    ) -> CommandOutput:
        remote = _RemoteCommand(transport, command)
        try:
            return await self._in_thread(lambda: remote.run(max(deadline - time.monotonic(), 0.001)), remote.abort)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            if transport.is_active():
                raise SshError(SshFailure.COMMAND_FAILED, f"{connection.host.display}: the server refused the command: {reason}") from None
            connection.drop(transport)
            raise SshError(Failure.CONNECTION_RESET, f"{connection.host.display}: connection lost: {reason}") from None

    async def _in_thread(self, blocking: Callable[[], T], abort: Callable[[], None]) -> T:
        """blocking() in the thread pool; if the caller gives up, abort() wakes the thread."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, blocking)
        try:
            return await future
        except asyncio.CancelledError:
            abort()
            raise

    def _close_idle(self) -> None:
        now = time.monotonic()
        for host, connection in list(self._connections.items()):
            if connection.busy == 0 and now - connection.last_used > IDLE_CLOSE_SECONDS:
                connection.drop()
                del self._connections[host]

    def close(self) -> None:
        for connection in self._connections.values():
            connection.drop()
        self._connections.clear()
