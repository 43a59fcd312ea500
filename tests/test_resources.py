"""ProbeResources: a domain's shared state is made by its own factory on first use, and closed once at shutdown."""

from __future__ import annotations

from agents.resources import BLOCKING_EXECUTOR, ProbeResources, Resource


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def resource(self, name: str, needs: Resource | None = None) -> Resource[str]:
        def create(resources: ProbeResources) -> str:
            if needs is not None:
                resources.get(needs)
            self.events.append(f"make {name}")
            return name

        return Resource(name, create, close=lambda made: self.events.append(f"close {made}"),
                        reload=lambda made: self.events.append(f"reload {made}"))


def test_state_is_made_on_first_use_only_and_then_shared():
    recorder = Recorder()
    engine = recorder.resource("engine")
    resources = ProbeResources()
    assert recorder.events == []
    assert resources.get(engine) == resources.get(engine) == "engine"
    assert recorder.events == ["make engine"]


def test_close_closes_each_made_state_once_before_what_it_was_built_on():
    recorder = Recorder()
    executor = recorder.resource("executor")
    pool = recorder.resource("pool", needs=executor)
    recorder.resource("unused")
    resources = ProbeResources()
    resources.get(pool)
    resources.close()
    resources.close()
    assert recorder.events == ["make executor", "make pool", "close pool", "close executor"]
    assert "make unused" not in recorder.events


def test_a_use_after_close_makes_fresh_state():
    recorder = Recorder()
    engine = recorder.resource("engine")
    resources = ProbeResources()
    resources.get(engine)
    resources.close()
    resources.get(engine)
    assert recorder.events == ["make engine", "close engine", "make engine"]


def test_reload_reaches_only_the_state_made_so_far():
    recorder = Recorder()
    contexts = recorder.resource("contexts")
    recorder.resource("never_used")
    resources = ProbeResources()
    resources.get(contexts)
    resources.reload()
    assert recorder.events == ["make contexts", "reload contexts"]


def test_the_blocking_executor_has_the_configured_number_of_threads_and_shuts_down():
    resources = ProbeResources(max_threads=3)
    executor = resources.get(BLOCKING_EXECUTOR)
    assert executor._max_workers == 3
    resources.close()
    assert executor._shutdown
