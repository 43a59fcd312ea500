"""The one interface every prober implements, and the result data it returns.

A prober is an async function ``probe(target, module, ctx) -> ProbeResult``. It never touches
prometheus_client: it returns samples, and the result store, the exposition, the push queue and
``netmon-agent probe --once`` all read the same result objects.
"""

from __future__ import annotations

import enum
import errno
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Literal

if TYPE_CHECKING:
    from agents.config.model import ModuleConfig
    from agents.probes.resources import ProbeResources

MetricKind = Literal["gauge", "counter", "histogram"]


class Failure(str, enum.Enum):
    """Why a probe failed: a bounded set, so it can be a label value."""

    TIMEOUT = "timeout"
    RESOLVE = "resolve_failed"
    NETWORK_UNREACHABLE = "network_unreachable"
    HOST_UNREACHABLE = "host_unreachable"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_FAILED = "connect_failed"
    CONNECTION_RESET = "connection_reset"
    PERMISSION = "permission_denied"
    PACKET_LOSS = "packet_loss"
    TLS_HANDSHAKE = "tls_handshake"
    TLS_VERIFY = "tls_verify"
    TLS_VERSION = "tls_version"
    EXPECT_MISMATCH = "expect_mismatch"
    PORT_OPEN = "port_open"
    DNS_RCODE = "dns_rcode"
    DNS_ANSWER_MISMATCH = "dns_answer_mismatch"
    DNS_NO_ANSWER = "dns_no_answer"
    HTTP_STATUS = "http_status"
    HTTP_BODY_MISMATCH = "http_body_mismatch"
    HTTP_TOO_MANY_REDIRECTS = "http_too_many_redirects"
    HTTP_CONTENT_TOO_OLD = "http_content_too_old"
    PROTOCOL_ERROR = "protocol_error"
    AUTH_FAILED = "auth_failed"
    AUTH_UNSUPPORTED = "auth_unsupported"  # mail: required AUTH mechanism or login not offered
    BAD_BANNER = "bad_banner"  # mail: greeting not 220 / OK / +OK, or not matching the expected regexp
    NO_STARTTLS = "no_starttls"  # mail: STARTTLS / STLS required but not offered
    MAIL_REJECTED = "mail_rejected"  # mail: the SMTP server refused the sender, recipient or message
    NOT_DELIVERED = "not_delivered"  # mail_roundtrip: the message did not reach the mailbox in time
    HOST_KEY_UNKNOWN = "host_key_unknown"  # ssh: the host's key is not in known_hosts (never auto-added)
    HOST_KEY_CHANGED = "host_key_changed"  # ssh: the host's key differs from the known or pinned one
    COMMAND_FAILED = "command_failed"  # ssh: the command exited non-zero (or the server refused to run it)
    PARSE_ERROR = "parse_error"  # ssh: the command's output is not what its parser reads
    SNMP_UNKNOWN_USER = "unknown_user"  # snmp v3: usmStatsUnknownUserNames
    SNMP_NOT_IN_TIME_WINDOW = "not_in_time_window"  # snmp v3: usmStatsNotInTimeWindows persisted
    SNMP_TOO_BIG = "too_big"  # snmp: tooBig even for a one-row request
    SNMP_NO_SUCH_NAME = "no_such_name"  # snmp v1: noSuchName for a requested object
    DECODE_ERROR = "decode_error"  # snmp: a response that is not valid BER/SNMP
    INTERNAL_ERROR = "internal_error"


def socket_failure(exc: OSError) -> Failure:
    """The bounded failure reason of a socket error (connect, send or receive)."""
    code = exc.errno
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return Failure.CONNECT_REFUSED
    if isinstance(exc, ConnectionResetError) or code == errno.ECONNRESET:
        return Failure.CONNECTION_RESET
    if code == errno.ENETUNREACH:
        return Failure.NETWORK_UNREACHABLE
    if code in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
        return Failure.HOST_UNREACHABLE
    if code in (errno.EACCES, errno.EPERM):
        return Failure.PERMISSION
    return Failure.CONNECT_FAILED


@dataclass(frozen=True, slots=True)
class Metric:
    """Name, type and help text of one metric family; declared once per prober module."""

    name: str
    help: str
    kind: MetricKind = "gauge"
    buckets: tuple[float, ...] = ()  # histograms only; upper bounds, +Inf implied
    # counters only: the value is already a running total read from elsewhere (an SNMP device's
    # ifHCInOctets), so it is exposed as read, under its own name, instead of summed per run
    cumulative: bool = False

    @property
    def latest_only(self) -> bool:
        """Exposed as the latest run's value (gauges and cumulative counters), not accumulated."""
        return self.kind == "gauge" or self.cumulative

    def __call__(self, value: float, **labels: str) -> "Sample":
        return Sample(self, float(value), tuple(sorted(labels.items())))

    def observe(self, values: list[float], **labels: str) -> "Sample":
        """A histogram sample: the observations of this run, accumulated by the store."""
        return Sample(self, 0.0, tuple(sorted(labels.items())), tuple(values))


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one metric in one probe run.

    Gauges hold the value now; counters hold the increment of this run; histograms hold this
    run's observations. The store turns increments and observations into running totals.
    """

    metric: Metric
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    observations: tuple[float, ...] = ()


@dataclass(slots=True)
class ProbeResult:
    success: bool
    duration_seconds: float = 0.0
    failure: Failure | None = None
    detail: str = ""  # human-readable, for logs and `probe --once`; never a label
    samples: list[Sample] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    @classmethod
    def failed(cls, failure: Failure, detail: str = "", samples: list[Sample] | None = None) -> "ProbeResult":
        return cls(success=False, failure=failure, detail=detail, samples=samples or [])


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """What to probe: the configured address, and optionally one pre-resolved IP to use."""

    name: str
    address: str
    ip: str | None = None


Prober = Callable[[ProbeTarget, "ModuleConfig", "ProbeResources"], Awaitable[ProbeResult]]


@dataclass(frozen=True, slots=True)
class ProberSpec:
    """One row of the prober table: its settings type and its probe function."""

    name: str
    settings: type
    probe: Prober
    host_of: Callable[[str], str] = field(default=lambda address: address)  # host part of a target address
