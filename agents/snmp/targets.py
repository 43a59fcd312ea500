"""Expand `snmp_devices` (+ `snmp_auths`, `snmp_profiles`) into targets of the `snmp` prober, with file:line:key errors."""

from __future__ import annotations

from typing import Any, Callable

from agents.config.model import ModuleConfig, Target
from agents.config.sections import SectionContext, SectionSpec
from agents.snmp.schema import Profile, SnmpAuth, SnmpDevice, SnmpSections, SnmpSettings, conflicting_names, load_builtin_profiles
from foundation.config.base import check_interval
from foundation.config.yamlpos import Path

MODULE_NAME = "snmp"  # the `module` label of every device's series
KEEP_LAST_GOOD_INTERVALS = 3


def build_snmp_targets(keys: SnmpSections, context: SectionContext) -> list[Target]:
    with context.unit():
        if keys.snmp_max_concurrent_polls < 1:
            raise context.error(("snmp_max_concurrent_polls",), "must be at least 1")
    auths = _auths(context, keys.snmp_auths)
    profiles = _profiles(context, keys.snmp_profiles)
    targets = []
    for path, device in context.entries("snmp_devices", keys.snmp_devices):
        with context.unit():
            context.claim_name(device.name, path)
            target = _target(context, path, device, auths, profiles, keys.snmp_max_concurrent_polls)
            if device.enabled and target is not None:
                targets.append(target)
    return targets


SECTION = SectionSpec(SnmpSections, build_snmp_targets)


def _auths(context: SectionContext, raw: dict[str, dict[str, Any]]) -> dict[str, SnmpAuth]:
    auths: dict[str, SnmpAuth] = {}
    for name, body in raw.items():
        with context.unit():
            auth = context.convert(body, SnmpAuth, ("snmp_auths", name))
            _check(context, ("snmp_auths", name), auth.check)
            auths[name] = auth
    return auths


def _profiles(context: SectionContext, custom: dict[str, dict[str, Any]]) -> dict[str, Profile]:
    profiles = load_builtin_profiles()
    for name, body in custom.items():
        with context.unit():
            if name in profiles:
                raise context.error(("snmp_profiles", name), f"{name!r} is a built-in profile; give yours another name")
            profile = context.convert(body, Profile, ("snmp_profiles", name))
            _check(context, ("snmp_profiles", name), profile.check)
            profiles[name] = profile
    return profiles


def _check(context: SectionContext, path: Path, check: Callable[[], None]) -> None:
    try:
        check()
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise context.error(path + _key_path(key), message) from None


def _key_path(key: str) -> Path:
    """'tables[0].metrics[2].oid' -> ('tables', 0, 'metrics', 2, 'oid')."""
    parts: list[str | int] = []
    for part in key.replace("]", "").split("."):
        name, _, index = part.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index))
    return tuple(parts)


def _target(context: SectionContext, path: Path, device: SnmpDevice, auths: dict[str, SnmpAuth], profiles: dict[str, Profile],
            max_concurrent_polls: int) -> Target | None:
    """The device's target, or None when its auth or a profile failed to load (reported there)."""
    if context.failed(("snmp_auths", device.auth)) or any(context.failed(("snmp_profiles", name)) for name in device.profiles):
        return None
    auth = auths.get(device.auth)
    if auth is None:
        raise context.error(path + ("auth",), f"unknown auth {device.auth!r}; snmp_auths: {', '.join(sorted(auths)) or 'none defined'}")
    for number, name in enumerate(device.profiles):
        if name not in profiles:
            raise context.error(path + ("profiles", number), f"unknown profile {name!r}; profiles: {', '.join(sorted(profiles))}")
    chosen = {name: profiles[name] for name in dict.fromkeys(device.profiles)}
    conflict = conflicting_names(chosen)
    if conflict:
        raise context.error(path + ("profiles",), conflict)
    context.check_labels(device.labels, path + ("labels",))
    interval, timeout = context.interval(device.interval), context.timeout(device.timeout)
    check_interval(context.ctx, interval, timeout, "this device", (path + ("interval",), path + ("timeout",), path + ("timeout",)))
    _check(context, path, lambda: device.check(interval))
    request_timeout = device.request_timeout_within(timeout)
    if request_timeout > timeout:
        raise context.error(path + ("request_timeout",), f"longer than the poll's timeout {timeout:g}s")
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
        max_concurrent_polls=max_concurrent_polls,
    )
    module = ModuleConfig(MODULE_NAME, "snmp", timeout, device.preferred_ip_protocol, True, settings)
    host = f"[{device.address}]" if ":" in device.address else device.address
    return context.target(device.name, f"{host}:{device.port}", module, interval, device.labels)
