"""Expand `snmp_devices` (+ `snmp_auths`, `snmp_profiles`) into targets of the `snmp` prober, with file:line:key errors."""

from __future__ import annotations

from typing import Any, Callable, Protocol

from agents.config.model import ModuleConfig, RawAgentConfig, Target
from foundation.config.base import check_interval
from foundation.config.yamlpos import Path
from agents.probes.snmp import SnmpSettings
from agents.snmp.schema import Profile, SnmpAuth, SnmpDevice, conflicting_names, load_builtin_profiles

MODULE_NAME = "snmp"  # the `module` label of every device's series
KEEP_LAST_GOOD_INTERVALS = 3


class Context(Protocol):
    def error(self, path: Path, message: str) -> Exception: ...

    def convert(self, data: Any, type_: Any, path: Path) -> Any: ...


CheckLabels = Callable[[Context, dict[str, str], Path], None]


def build_snmp_targets(ctx: Context, raw: RawAgentConfig, check_labels: CheckLabels) -> list[Target]:
    if raw.snmp_max_concurrent_polls < 1:
        raise ctx.error(("snmp_max_concurrent_polls",), "must be at least 1")
    auths = _auths(ctx, raw.snmp_auths)
    profiles = _profiles(ctx, raw.snmp_profiles)
    seen = {target.name: f"targets[{index}]" for index, target in enumerate(raw.targets)}
    seen.update({check.name: f"ssh_checks[{index}]" for index, check in enumerate(raw.ssh_checks)})
    targets = []
    for index, device in enumerate(raw.snmp_devices):
        path: Path = ("snmp_devices", index)
        if device.name in seen:
            raise ctx.error(path + ("name",), f"duplicate target name {device.name!r} (first defined in {seen[device.name]})")
        seen[device.name] = f"snmp_devices[{index}]"
        target = _target(ctx, path, device, auths, profiles, raw, check_labels)
        if device.enabled:
            targets.append(target)
    return targets


def _auths(ctx: Context, raw: dict[str, dict[str, Any]]) -> dict[str, SnmpAuth]:
    auths: dict[str, SnmpAuth] = {}
    for name, body in raw.items():
        auth = auths[name] = ctx.convert(body, SnmpAuth, ("snmp_auths", name))
        _check(ctx, ("snmp_auths", name), auth.check)
    return auths


def _profiles(ctx: Context, custom: dict[str, dict[str, Any]]) -> dict[str, Profile]:
    profiles = load_builtin_profiles()
    for name, body in custom.items():
        if name in profiles:
            raise ctx.error(("snmp_profiles", name), f"{name!r} is a built-in profile; give yours another name")
        profile = ctx.convert(body, Profile, ("snmp_profiles", name))
        _check(ctx, ("snmp_profiles", name), profile.check)
        profiles[name] = profile
    return profiles


def _check(ctx: Context, path: Path, check: Callable[[], None]) -> None:
    try:
        check()
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise ctx.error(path + _key_path(key), message) from None


def _key_path(key: str) -> Path:
    """'tables[0].metrics[2].oid' -> ('tables', 0, 'metrics', 2, 'oid')."""
    parts: list[str | int] = []
    for part in key.replace("]", "").split("."):
        name, _, index = part.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index))
    return tuple(parts)


def _target(ctx: Context, path: Path, device: SnmpDevice, auths: dict[str, SnmpAuth], profiles: dict[str, Profile],
            raw: RawAgentConfig, check_labels: CheckLabels) -> Target:
    auth = auths.get(device.auth)
    if auth is None:
        raise ctx.error(path + ("auth",), f"unknown auth {device.auth!r}; snmp_auths: {', '.join(sorted(auths)) or 'none defined'}")
    for number, name in enumerate(device.profiles):
        if name not in profiles:
            raise ctx.error(path + ("profiles", number), f"unknown profile {name!r}; profiles: {', '.join(sorted(profiles))}")
    chosen = {name: profiles[name] for name in dict.fromkeys(device.profiles)}
    conflict = conflicting_names(chosen)
    if conflict:
        raise ctx.error(path + ("profiles",), conflict)
    check_labels(ctx, device.labels, path + ("labels",))
    interval = float(device.interval if device.interval is not None else raw.defaults.interval)
    timeout = float(device.timeout if device.timeout is not None else raw.defaults.timeout)
    check_interval(ctx, interval, timeout, "this device", (path + ("interval",), path + ("timeout",), path + ("timeout",)))
    _check(ctx, path, lambda: device.check(interval))
    request_timeout = device.request_timeout_within(timeout)
    if request_timeout > timeout:
        raise ctx.error(path + ("request_timeout",), f"longer than the poll's timeout {timeout:g}s")
    keep = device.keep_last_good if device.keep_last_good is not None else KEEP_LAST_GOOD_INTERVALS * interval
    settings = SnmpSettings(
        auth=auth,
        profiles=tuple(chosen.values()),
        request_timeout=request_timeout,
        retries=device.retries,
        max_repetitions=device.max_repetitions,
        label_refresh=float(device.label_refresh),
        slow_refresh=float(device.slow_refresh),
        keep_last_good=float(keep),
        max_concurrent_polls=raw.snmp_max_concurrent_polls,
    )
    module = ModuleConfig(MODULE_NAME, "snmp", timeout, device.preferred_ip_protocol, True, settings)
    host = f"[{device.address}]" if ":" in device.address else device.address
    labels = {**raw.agent.labels, **device.labels}
    return Target(device.name, f"{host}:{device.port}", module, interval, tuple(sorted(labels.items())), False)
