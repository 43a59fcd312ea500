"""What a probe returns, at the bottom of the agent: results, samples, metric declarations, failure reasons.

A prober never touches prometheus_client: it returns samples, and the result store, the exposition, the push
queue and ``netmon-agent probe --once`` all read the same result objects. Nothing here imports the rest of the
agent, so config, probers and domains can all stand on it.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import Literal

MetricKind = Literal["gauge", "counter", "histogram"]


class Reason(str):
    """One failure reason: a value of the label `reason`. Declared once, as a class attribute of a `Reasons` set."""

    __slots__ = ()

    @property
    def value(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"Reason({str(self)!r})"


class Reasons:
    """A set of failure reasons. A domain subclasses the set it builds on and adds the reasons it raises, so every
    label value is declared in code and the whole set stays bounded and enumerable (`declared()`)."""

    def __init_subclass__(cls) -> None:
        inherited = {str(reason) for base in cls.__bases__ if issubclass(base, Reasons) for reason in base.declared()}
        for name, value in vars(cls).items():
            if isinstance(value, Reason) and str(value) in inherited:
                raise TypeError(f"{cls.__name__}.{name}: reason {str(value)!r} is already declared by a base set")

    @classmethod
    def declared(cls) -> tuple[Reason, ...]:
        """Every reason of this set and the sets it builds on."""
        found = (value for klass in reversed(cls.__mro__) for value in vars(klass).values() if isinstance(value, Reason))
        return tuple(dict.fromkeys(found))


class Failure(Reasons):
    """The reasons every prober may raise: network, TLS, protocol and the agent's own. Domains add theirs."""

    TIMEOUT = Reason("timeout")  # the probe did not finish within the module's timeout
    RESOLVE = Reason("resolve_failed")  # the target's name did not resolve (in the wanted address family)
    NETWORK_UNREACHABLE = Reason("network_unreachable")  # no route to the target's network (ENETUNREACH)
    HOST_UNREACHABLE = Reason("host_unreachable")  # no answer to ARP on its link, or a router says so (EHOSTUNREACH)
    CONNECT_REFUSED = Reason("connect_refused")  # nothing listens on the port (TCP RST, ICMP port unreachable)
    CONNECT_FAILED = Reason("connect_failed")  # a socket error none of the other reasons names
    CONNECTION_RESET = Reason("connection_reset")  # the peer reset the connection
    PERMISSION = Reason("permission_denied")  # this host refused (EPERM/EACCES): no right to ICMP sockets, a firewall rule
    TLS_HANDSHAKE = Reason("tls_handshake")  # the TLS handshake failed
    TLS_VERIFY = Reason("tls_verify")  # the certificate is not trusted, not for this name, or expired
    TLS_VERSION = Reason("tls_version")  # the server negotiated less than tls_config.min_version
    EXPECT_MISMATCH = Reason("expect_mismatch")  # the answer is not what the module expects (tcp query_response, http)
    PROTOCOL_ERROR = Reason("protocol_error")  # the peer's answer does not follow its protocol
    AUTH_FAILED = Reason("auth_failed")  # the server refused the credentials (or the key could not be read)
    INTERNAL_ERROR = Reason("internal_error")  # a bug in the agent; its log has the traceback


def socket_failure(exc: OSError) -> Reason:
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
    failure: Reason | None = None
    detail: str = ""  # human-readable, for logs and `probe --once`; never a label
    samples: list[Sample] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    @classmethod
    def failed(cls, failure: Reason, detail: str = "", samples: list[Sample] | None = None) -> "ProbeResult":
        return cls(success=False, failure=failure, detail=detail, samples=samples or [])


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """What to probe: the configured address, and optionally one pre-resolved IP to use."""

    name: str
    address: str
    ip: str | None = None
