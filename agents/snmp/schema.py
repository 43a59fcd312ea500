"""The SNMP config sections (snmp_auths, snmp_devices, snmp_profiles: the SNMP domain's top-level keys) as typed
structs, checked at load, and the settings one device is polled with.

Profiles are YAML of numeric OIDs with names and types. A profile has `scalars` (fetched with one GET per poll) and `tables` (each walked with one multi-column
GETBULK walk). Table columns are either `lookups` (label columns such as ifName: cached, and re-walked on
their own slower cadence) or `metrics`. A metric's `refresh` says how often its column is walked: every
`poll`, on the `slow` cadence (unless a `refresh_slow_on_change` column changed, the device rebooted or the
row count changed), or together with the `labels`.

Built-in profiles ship as package data (agents/snmp/profiles/*.yml); no MIB is loaded at run time.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any, Literal

import msgspec

from agents.snmp.ber import encode_oid
from foundation.config.types import Duration, Secret, SecretFile, SecretRef

MetricType = Literal["counter", "gauge", "string", "enum_info"]
Refresh = Literal["poll", "slow", "labels"]
IndexType = Literal["integer", "ipv4", "oid"]

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_OID = re.compile(r"^\.?\d+(\.\d+)+$")
BUILTIN_DIRECTORY = "profiles"  # inside the agents.snmp package


class _Spec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Unknown keys are errors; values never change after load."""


# --- credentials and devices ---------------------------------------------------------------------------------

# snmp_exporter's spellings, and net-snmp's (with hyphens). AES192/AES256 extend the key as net-snmp and
# snmp_exporter do (Blumenthal draft); AES192C/AES256C as Cisco does (Reeder draft).
AuthProtocol = Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512", "SHA-224", "SHA-256", "SHA-384", "SHA-512"]
PrivProtocol = Literal["DES", "AES", "AES192", "AES256", "AES192C", "AES256C", "AES-192", "AES-256", "AES-192-C", "AES-256-C"]
SecurityLevel = Literal["noAuthNoPriv", "authNoPriv", "authPriv"]
MIN_PASSPHRASE = 8  # RFC 3414 11.2: shorter passphrases are refused by agents
# Spellings of the version users write: YAML gives `1` and `"1"` different types, and snmp_exporter's configs
# say `2` for v2c. After load every one is 1, "2c" or 3.
Version = Literal[1, 2, 3, "1", "2", "2c", "3"]
_CANONICAL_VERSION = {"1": 1, 2: "2c", "2": "2c", "3": 3}


class SnmpAuth(_Spec, kw_only=True):
    """One entry of `snmp_auths`: a v1/v2c community or a v3 USM user. Secrets only by reference."""

    version: Version = "2c"  # quoted or not; `2` is v2c, as snmp_exporter writes it
    community: SecretRef | None = None
    community_file: SecretFile | None = None
    username: str | None = None
    security_level: SecurityLevel = "authPriv"
    auth_protocol: AuthProtocol = "SHA"
    auth_password: SecretRef | None = None
    auth_password_file: SecretFile | None = None
    priv_protocol: PrivProtocol = "AES"
    priv_password: SecretRef | None = None
    priv_password_file: SecretFile | None = None
    context_name: str = ""

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "version", _CANONICAL_VERSION.get(self.version, self.version))

    @property
    def community_secret(self) -> Secret | None:
        return self.community or self.community_file

    @property
    def auth_secret(self) -> Secret | None:
        return self.auth_password or self.auth_password_file

    @property
    def priv_secret(self) -> Secret | None:
        return self.priv_password or self.priv_password_file

    def check(self) -> None:
        """Raise ValueError('key: message') for the first problem."""
        if self.version != 3:
            _one_of(self.community, self.community_file, "community", "a v1/v2c auth needs")
            return
        if not self.username:
            raise ValueError("username: a v3 auth needs a username")
        if self.security_level != "noAuthNoPriv":
            _passphrase(self.auth_password, self.auth_password_file, "auth_password")
        if self.security_level == "authPriv":
            _passphrase(self.priv_password, self.priv_password_file, "priv_password")


def _one_of(inline: object, file: object, key: str, who: str) -> None:
    if (inline is None) == (file is None):
        raise ValueError(f"{key}: {who} exactly one of '{key}' (as ${{ENV}}) or '{key}_file'")


def _passphrase(inline, file, key: str) -> None:
    _one_of(inline, file, key, "this security level needs")
    if len((inline or file).reveal()) < MIN_PASSPHRASE:
        raise ValueError(f"{key}: a USM passphrase must be at least {MIN_PASSPHRASE} characters")


DEFAULT_REQUEST_TIMEOUT = 2.0


class SnmpDevice(_Spec, kw_only=True):
    """One entry of `snmp_devices`: polled as a target of prober `snmp` on its own interval."""

    name: str
    address: str  # host name or IP, without the port
    port: int = 161
    auth: str  # a key of snmp_auths
    profiles: list[str] = msgspec.field(default_factory=lambda: ["if_mib", "system"])
    interval: Duration | None = None
    timeout: Duration | None = None  # the whole poll; defaults.timeout when not set
    request_timeout: Duration | None = None  # one request PDU, retried `retries` times; default below
    retries: int = 2
    max_repetitions: int = 25  # GETBULK rows per request; halved after a timeout or tooBig, and remembered
    label_refresh: Duration = Duration(1800)  # lookups (ifName, ifAlias...) are re-walked this often
    slow_refresh: Duration = Duration(300)  # `refresh: slow` columns (ifHighSpeed, ifAdminStatus...)
    keep_last_good: Duration | None = None  # failed polls serve the last good data this long; default 3 intervals
    labels: dict[str, str] = {}
    enabled: bool = True
    preferred_ip_protocol: Literal["ip4", "ip6"] = "ip4"

    def request_timeout_within(self, timeout: float) -> float:
        """The set request timeout, or one that lets every retry of a request fit the poll's timeout."""
        if self.request_timeout is not None:
            return float(self.request_timeout)
        return min(DEFAULT_REQUEST_TIMEOUT, timeout / (self.retries + 1))

    def check(self, interval: float) -> None:
        if not self.name.strip():
            raise ValueError("name: must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError("port: must be between 1 and 65535")
        if not self.profiles:
            raise ValueError("profiles: name at least one profile")
        if self.retries < 0:
            raise ValueError("retries: must not be negative")
        if not 1 <= self.max_repetitions <= 1000:
            raise ValueError("max_repetitions: must be between 1 and 1000")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError("request_timeout: must be greater than 0")
        for key in ("label_refresh", "slow_refresh"):
            if getattr(self, key) < interval:
                raise ValueError(f"{key}: must not be shorter than the interval ({interval:g}s)")


class SnmpSections(_Spec, kw_only=True):
    """The top-level keys the SNMP domain owns (registered by agents/snmp/probe.py's SPEC)."""

    # snmp_auths and snmp_profiles are decoded entry by entry (agents/snmp/targets.py) so errors keep their key
    snmp_auths: dict[str, dict[str, Any]] = {}  # v1/v2c communities and v3 users, secrets by reference (docs/snmp.md)
    snmp_profiles: dict[str, dict[str, Any]] = {}  # custom numeric-OID profiles, next to the built-in ones
    snmp_devices: list[SnmpDevice] = []  # expanded into targets of the snmp prober (agents/snmp/targets.py)
    snmp_max_concurrent_polls: int = 32


# --- profiles --------------------------------------------------------------------------------------------------


class MetricSpec(_Spec, kw_only=True):
    name: str
    oid: str
    type: MetricType = "gauge"
    help: str = ""
    refresh: Refresh = "poll"
    refresh_slow_on_change: bool = False  # a change in this column re-walks the table's slow columns at once
    enum: dict[str, str] = {}  # value -> name, for enum_info (keys are integers written as YAML keys)
    fallback_for: str | None = None  # walked only while a row of the table lacks this metric (ifInOctets for ifHCInOctets)


class IndexSpec(_Spec, kw_only=True):
    name: str
    type: IndexType = "integer"


class LookupSpec(_Spec, kw_only=True):
    name: str
    oid: str


class TableSpec(_Spec, kw_only=True):
    name: str
    index: list[IndexSpec]
    row_count_oid: str | None = None  # a scalar holding the row count (ifNumber): a change re-walks the labels
    lookups: list[LookupSpec] = []
    metrics: list[MetricSpec]


class Profile(_Spec, kw_only=True):
    scalars: list[MetricSpec] = []
    tables: list[TableSpec] = []

    def check(self) -> None:
        """Raise ValueError('key.path: message') for the first problem."""
        for number, scalar in enumerate(self.scalars):
            _check_metric(scalar, f"scalars[{number}]")
            if scalar.refresh != "poll" or scalar.refresh_slow_on_change:
                raise ValueError(f"scalars[{number}].refresh: scalars are fetched on every poll")
        for number, table in enumerate(self.tables):
            _check_table(table, f"tables[{number}]")


def _check_name(name: str, where: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{where}: invalid name {name!r}: use letters, digits and '_', not starting with a digit")


def _check_oid(oid: str, where: str) -> None:
    if not _OID.match(oid):
        raise ValueError(f"{where}: {oid!r} is not a numeric OID like 1.3.6.1.2.1.1.3.0")
    try:
        encode_oid(oid)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _check_metric(metric: MetricSpec, where: str) -> None:
    _check_name(metric.name, f"{where}.name")
    _check_oid(metric.oid, f"{where}.oid")
    for key in metric.enum:
        if not re.match(r"^-?\d+$", key):
            raise ValueError(f"{where}.enum: key {key!r} is not an integer")
    if metric.type == "enum_info" and not metric.enum:
        raise ValueError(f"{where}.enum: an enum_info metric needs its enum values")


def _check_table(table: TableSpec, where: str) -> None:
    _check_name(table.name, f"{where}.name")
    if not table.index:
        raise ValueError(f"{where}.index: a table needs at least one index")
    if table.row_count_oid is not None:
        _check_oid(table.row_count_oid, f"{where}.row_count_oid")
    label_names = set()
    for number, index in enumerate(table.index):
        _check_name(index.name, f"{where}.index[{number}].name")
        if index.type == "oid" and number != len(table.index) - 1:
            raise ValueError(f"{where}.index[{number}].type: an 'oid' index takes the rest of the OID, so it must be last")
        label_names.add(index.name)
    for number, lookup in enumerate(table.lookups):
        _check_name(lookup.name, f"{where}.lookups[{number}].name")
        _check_oid(lookup.oid, f"{where}.lookups[{number}].oid")
        if lookup.name in label_names:
            raise ValueError(f"{where}.lookups[{number}].name: label {lookup.name!r} is defined twice")
        label_names.add(lookup.name)
    if not table.metrics:
        raise ValueError(f"{where}.metrics: a table needs at least one metric")
    for number, metric in enumerate(table.metrics):
        _check_metric(metric, f"{where}.metrics[{number}]")
        if metric.type in ("string", "enum_info") and metric.name in label_names:
            raise ValueError(f"{where}.metrics[{number}].name: {metric.name!r} is already a label of this table")
        if metric.fallback_for is not None:
            _check_fallback(table, metric, f"{where}.metrics[{number}].fallback_for")


def _check_fallback(table: TableSpec, metric: MetricSpec, where: str) -> None:
    primary = next((other for other in table.metrics if other.name == metric.fallback_for), None)
    if primary is None or primary is metric:
        raise ValueError(f"{where}: {metric.fallback_for!r} is not another metric of this table")
    if primary.fallback_for is not None:
        raise ValueError(f"{where}: {primary.name!r} is itself a fallback")
    if primary.refresh != metric.refresh:
        raise ValueError(f"{where}: a fallback is walked on the cadence of {primary.name!r} (refresh: {primary.refresh})")


class SnmpSettings(_Spec, kw_only=True):
    """One device's poll settings, built by the config loader from `snmp_devices` (see docs/snmp.md)."""

    auth: SnmpAuth | None = None
    profiles: tuple[Profile, ...] = ()
    request_timeout: float = 2.0
    retries: int = 2
    max_repetitions: int = 25
    label_refresh: float = 1800.0
    slow_refresh: float = 300.0
    keep_last_good: float = 0.0
    max_concurrent_polls: int = 32

    def validate(self, timeout: float) -> None:
        raise ValueError("SNMP devices are configured under `snmp_devices` (with `snmp_auths`), not as modules")


def load_builtin_profiles() -> dict[str, Profile]:
    """The profiles shipped in agents/snmp/profiles/*.yml, by file stem (a fresh dict the caller may extend)."""
    return dict(_builtin_profiles())


@functools.cache  # package data never changes in a running process; the collector checks ~210 agent configs per load
def _builtin_profiles() -> tuple[tuple[str, Profile], ...]:
    from foundation.config.yamlpos import load_yaml  # same YAML reading as the config (string keys)

    profiles = []
    for entry in (resources.files("agents.snmp") / BUILTIN_DIRECTORY).iterdir():
        if entry.name.endswith(".yml"):
            data = load_yaml(entry.read_text(encoding="utf-8")).data
            profile = msgspec.convert(data, Profile)
            profile.check()
            profiles.append((entry.name.removesuffix(".yml"), profile))
    return tuple(sorted(profiles))


def conflicting_names(profiles: dict[str, Profile]) -> str | None:
    """A message if two of these profiles define one metric name with different OIDs or types."""
    seen: dict[str, tuple[str, str, str]] = {}
    for profile_name, profile in profiles.items():
        specs = list(profile.scalars) + [spec for table in profile.tables for spec in table.metrics]
        for spec in specs:
            first = seen.setdefault(spec.name, (profile_name, spec.oid, spec.type))
            if first[1:] != (spec.oid, spec.type):
                return f"metric {spec.name!r} of profile {profile_name!r} differs from the one of profile {first[0]!r}"
    return None
