"""A chunk of graphs that LOAD builds, then instantiates: the state its runners share.

A chunk is run by one or more runner tasks on the pipeline's pool. Each runner takes the next
graph to build until none is left, then the next graph to instantiate, until none is left. An
instantiation starts once every build of the chunk has finished: the driver serialises much of
both kinds of call, and a build beside instantiations runs several times slower than alone. A
chunk costs as many pool tasks as it has runners, not two per graph (queuing a task per build
and per instantiation held LOAD's own thread while no worker ran a driver call:
docs/measurements.md).

Invariant: an instantiation is taken only once every build is taken, so whoever waits for the
builds waits for runners that are running; stop() makes every runner leave at its next take.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError

from foundry_trace.archive.manifest import GraphEntry


class Chunk:
    """Graphs built, then instantiated, by runners that take them in order; `executables` holds
    each graph's future executable (settled by the runner that instantiates it)."""

    def __init__(self, entries: Sequence[GraphEntry]) -> None:
        self.entries = list(entries)
        self.executables = [Future() for _ in self.entries]
        self._changed = threading.Condition()
        self._next_build = 0
        self._next_instantiate = 0
        self._built: dict[int, tuple[int | None, BaseException | None]] = {}
        self._stopped = False

    def take_build(self) -> int | None:
        """The index of the next graph to build, or None (all taken, or stopped)."""
        with self._changed:
            if self._stopped or self._next_build == len(self.entries):
                return None
            self._next_build += 1
            return self._next_build - 1

    def take_instantiation(self) -> int | None:
        """The index of the next graph to instantiate, or None (all taken, or stopped). Only
        after take_build() has returned None."""
        with self._changed:
            if self._stopped or self._next_instantiate == len(self.entries):
                return None
            self._next_instantiate += 1
            return self._next_instantiate - 1

    def built(self, index: int, graph: int | None, error: BaseException | None = None) -> None:
        """Records a build's CUgraph, or its failure."""
        with self._changed:
            self._built[index] = (graph, error)
            self._changed.notify_all()

    def wait_built(self, index: int) -> tuple[int | None, BaseException | None]:
        """The build's (CUgraph, failure), once every build taken has finished (the runners that
        took them are running): no instantiation runs beside the chunk's builds."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._built) == self._next_build)
            return self._built[index]

    @property
    def stopped(self) -> bool:
        with self._changed:
            return self._stopped

    def stop(self) -> None:
        """Runners leave at their next take; executables not settled yet are cancelled."""
        with self._changed:
            self._stopped = True
        for future in self.executables:
            future.cancel()


def settle(future: Future, result: int | None = None, error: BaseException | None = None) -> None:
    """Sets a future's result or failure, unless it was cancelled meanwhile (a stopped load)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
