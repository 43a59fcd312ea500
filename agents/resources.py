"""State that outlives one probe run (the ICMP engine, SSH connections, SNMP device caches, TLS contexts...).

A domain declares each kind of state it keeps as a `Resource` with a factory; `ProbeResources` makes it on
first use and closes it once at shutdown, so it knows no engine by name and a new stateful prober adds none here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


def _nothing(state: Any) -> None:
    pass


@dataclass(frozen=True, eq=False)
class Resource(Generic[T]):
    """One kind of shared state: how to make it, and what to do with it at a config reload and at shutdown."""

    name: str
    create: Callable[["ProbeResources"], T]  # may `get` the resources it builds on (the SSH pool: the executor)
    close: Callable[[T], None] = _nothing
    reload: Callable[[T], None] = _nothing  # files it read may have changed (CA bundles, client certificates)


class ProbeResources:
    """The registry of shared state for one agent process (or one `probe --once`)."""

    def __init__(self, max_threads: int = 8) -> None:
        self.max_threads = max_threads
        self._made: dict[Resource[Any], Any] = {}  # in order of making: what one builds on is made before it

    def get(self, resource: Resource[T]) -> T:
        if resource not in self._made:
            made = resource.create(self)
            self._made[resource] = made
        return self._made[resource]

    def reload(self) -> None:
        for resource, made in self._made.items():
            resource.reload(made)

    def close(self) -> None:
        """Close in reverse order of making, so each closes before what it builds on (SSH before the executor:
        closing its connections wakes the threads blocked on them). A later `get` makes a fresh one."""
        made, self._made = self._made, {}
        for resource, state in reversed(made.items()):
            resource.close(state)


def _blocking_executor(resources: ProbeResources) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(resources.max_threads, thread_name_prefix="netmon-blocking")


# Bounded pool for blocking libraries (paramiko, slow psutil calls)
BLOCKING_EXECUTOR: Resource[ThreadPoolExecutor] = Resource(
    "blocking_executor", _blocking_executor, close=lambda pool: pool.shutdown(wait=False, cancel_futures=True)
)
