"""The seam through which the harness's probes change how LOAD runs its pipeline: not an
argument of load() or prefetch(), and no name a package exports.

    with probing(hooks=PipelineHooks(around_build=lambda: lock), native_chunks=False):
        restored = foundry_trace.load(path)

A setting holds for the pipelines created inside its block, in the context that entered it (a
context variable: other threads and serving code see the defaults, which change nothing)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class PipelineHooks:
    """Where a probe may step into the Python workers' timing without changing it (the defaults
    do nothing): `worker_started` runs first on each worker thread; `around_build` and
    `around_instantiate` each give a context manager entered around every build or
    instantiation (e.g. a lock, to ask whether the driver runs them better one at a time)."""

    worker_started: Callable[[], None] = _nothing
    around_build: Callable[[], AbstractContextManager] = field(default=nullcontext)
    around_instantiate: Callable[[], AbstractContextManager] = field(default=nullcontext)


@dataclass(frozen=True)
class Probe:
    """How a pipeline runs: `native_chunks` (each chunk one call into the native runner; False:
    Python workers, one task a graph) and `hooks` (into the Python workers only)."""

    hooks: PipelineHooks | None = None
    native_chunks: bool = True


_current: ContextVar[Probe] = ContextVar("foundry_trace_probe", default=Probe())


def current() -> Probe:
    """The setting of the block this context is in (the defaults outside any)."""
    return _current.get()


@contextmanager
def probing(*, hooks: PipelineHooks | None = None, native_chunks: bool = True) -> Iterator[None]:
    """Pipelines created in this block run with these settings. Hooks step into the Python
    workers: with hooks, pass native_chunks=False (the pipeline refuses the pair otherwise)."""
    token = _current.set(Probe(hooks, native_chunks))
    try:
        yield
    finally:
        _current.reset(token)
