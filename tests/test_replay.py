"""RestoredGraph.replay(), the hot path of a server, on the CPU with the launch recorded: it
launches on torch's current stream of the graph's own device (or the stream given), restores a
lazy graph first, and a refused launch is a DriverCallError that names the call."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from cuda.bindings import driver

from foundry_trace.errors import DriverCallError
from foundry_trace.restore import restored as restored_module
from foundry_trace.restore.restored import RestoredGraph


def _ready(handle: int) -> Future:
    future: Future = Future()
    future.set_result(handle)
    return future


ENTRY = SimpleNamespace(key="8")


def _step(ready: Callable[[], Future]) -> SimpleNamespace:
    """A step whose request for ENTRY gives what `ready` gives."""
    return SimpleNamespace(request=lambda entry: ready() if entry is ENTRY else None)


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every cuGraphLaunch as (executable, stream); device d's current stream is 1000 + d."""
    recorded: list[tuple[int, int]] = []

    def launch(executable: driver.CUgraphExec, stream: driver.CUstream) -> tuple[driver.CUresult]:
        recorded.append((int(executable), int(stream)))
        return (driver.CUresult.CUDA_SUCCESS,)

    monkeypatch.setattr(restored_module, "driver", SimpleNamespace(cuGraphLaunch=launch, CUstream=driver.CUstream, CUgraphExec=driver.CUgraphExec))
    monkeypatch.setattr(restored_module, "_raw_stream_of", lambda: lambda device: 1000 + device)
    return recorded


def test_a_graph_launches_on_the_current_stream_of_its_own_device(launches: list[tuple[int, int]]) -> None:
    graph = RestoredGraph(ENTRY, {}, _step(lambda: _ready(0x50)), lambda **_: None, device=3)
    graph.replay()
    graph.replay(stream=77)
    assert launches == [(0x50, 1003), (0x50, 77)]


def test_a_lazy_graph_is_restored_once_at_its_first_replay(launches: list[tuple[int, int]]) -> None:
    asked = []
    graph = RestoredGraph(ENTRY, {}, _step(lambda: asked.append(1) or _ready(0x60)), lambda **_: None, device=0)
    assert not graph.ready()
    for _ in range(3):
        graph.replay()
    assert asked == [1] and graph.ready()
    assert launches == [(0x60, 1000)] * 3
    assert graph.executable == 0x60  # the handle, for callers that launch it themselves


def test_a_refused_launch_names_the_call_and_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restored_module, "driver", SimpleNamespace(
        cuGraphLaunch=lambda executable, stream: (driver.CUresult.CUDA_ERROR_INVALID_VALUE,), CUstream=driver.CUstream,
        CUgraphExec=driver.CUgraphExec))
    graph = RestoredGraph(ENTRY, {}, _step(lambda: _ready(0x70)), lambda **_: None, device=0)
    with pytest.raises(DriverCallError, match="cuGraphLaunch failed with CUDA_ERROR_INVALID_VALUE"):
        graph.replay(stream=5)
