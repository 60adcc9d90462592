"""LOAD: rebuild the saved graphs in this process, at the addresses they were saved with.

    restored = foundry_trace.load("model.foundry")     # at the restore point (engine state rebuilt)
    restored[8].replay(); logits = restored[8].outputs["logits"]
    restored.release()

Order: verify the fingerprint and the live layout (refuse with the difference), claim the recorded
memory and write its contents, load the modules and resolve the kernels, create the events, build
and instantiate every graph. Any failure releases everything created so far and raises.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nvtx
from cuda.bindings import driver

import foundry_alloc

from .archive import Archive, Fingerprint, OutputTensor
from .driver import call
from .errors import FingerprintMismatchError, LayoutMismatchError, RestoreError
from .fingerprint import current_fingerprint
from .graph_builder import GraphBuilder
from .records import GraphBody

NVTX_DOMAIN = "foundry"
_FINGERPRINT_FIELDS = ("gpu", "compute_capability", "driver", "cuda_driver_api", "torch", "allocator_base", "allocator_size")


@dataclass
class RestoredGraph:
    key: str
    executable: driver.CUgraphExec
    outputs: dict[str, object]  # name -> torch.Tensor viewing the recorded output buffer

    def replay(self, stream: int | None = None) -> None:
        """Launches the graph on `stream` (default: torch's current stream)."""
        if stream is None:
            import torch

            stream = torch.cuda.current_stream().cuda_stream
        call(driver.cuGraphLaunch, self.executable, driver.CUstream(stream))


@dataclass
class Restored:
    """The restored graphs by key, what LOAD holds for them, and the time of each phase."""

    graphs: dict[str, RestoredGraph] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    _modules: list[driver.CUmodule] = field(default_factory=list)
    _events: list[driver.CUevent] = field(default_factory=list)
    _claimed: list[int] = field(default_factory=list)
    _graph_handles: list[driver.CUgraph] = field(default_factory=list)

    def __getitem__(self, key: object) -> RestoredGraph:
        return self.graphs[str(key)]

    def __contains__(self, key: object) -> bool:
        return str(key) in self.graphs

    def release(self) -> None:
        """Destroys the executables, graphs, events and modules, and frees the claimed memory."""
        for graph in self.graphs.values():
            driver.cuGraphExecDestroy(graph.executable)
        self.graphs.clear()
        for handle in self._graph_handles:
            driver.cuGraphDestroy(handle)
        for event in self._events:
            driver.cuEventDestroy(event)
        for module in self._modules:
            driver.cuModuleUnload(module)
        allocator = foundry_alloc.installed()
        for address in self._claimed:
            if allocator is not None:
                allocator.free(address)
        self._graph_handles, self._events, self._modules, self._claimed = [], [], [], []


def check_fingerprint(saved: Fingerprint, current: Fingerprint) -> None:
    differences = [
        f"{name}: saved {getattr(saved, name)!r}, here {getattr(current, name)!r}"
        for name in _FINGERPRINT_FIELDS
        if getattr(saved, name) != getattr(current, name)
    ]
    if differences:
        raise FingerprintMismatchError(
            "the archive was saved for another setup and would not be valid here ("
            + "; ".join(differences)
            + "): save it again on this setup"
        )


def load(path: str | Path, *, threads: int = 4) -> Restored:
    """Restores every graph of the archive at `path`. Call it where SAVE's recording began, after
    the engine has rebuilt its state (weights, KV cache, first library use) the same way."""
    restored = Restored()
    try:
        with nvtx.annotate("foundry.load", domain=NVTX_DOMAIN):
            _load(Path(path), restored, threads)
    except BaseException:
        restored.release()
        raise
    return restored


@contextmanager
def _phase(restored: Restored, name: str) -> Iterator[None]:
    start = time.perf_counter()
    with nvtx.annotate(f"foundry.load.{name}", domain=NVTX_DOMAIN):
        yield
    restored.phases[name] = time.perf_counter() - start


def _load(path: Path, restored: Restored, threads: int) -> None:
    import torch

    allocator = foundry_alloc.installed()
    if allocator is None:
        raise RestoreError("LOAD needs the Foundry allocator with SAVE's range: call foundry_alloc.install() first")
    device = torch.cuda.current_device()
    with _phase(restored, "open"):
        archive = Archive(path)
    with archive:
        manifest = archive.manifest
        with _phase(restored, "verify"):
            live = foundry_alloc.layout(device)
            check_fingerprint(manifest.fingerprint, current_fingerprint(live))
            diff = foundry_alloc.diff_layouts(manifest.restore_layout, live)
            if not diff.equal:
                raise LayoutMismatchError(
                    "the engine's memory at the restore point differs from SAVE's, so the saved graphs' "
                    "addresses would be wrong here. Rebuild the engine state exactly as in the SAVE run "
                    "(same allocations, same order, same arenas):\n" + diff.render("SAVE", "here")
                )
        with _phase(restored, "memory"):
            for segment in manifest.memory:
                allocator.claim(segment.address, segment.size, segment.arena, device)
                restored._claimed.append(segment.address)
                if segment.contents:
                    data = bytes(archive.blob(segment.contents))
                    call(driver.cuMemcpyHtoD, segment.address, data, len(data))
        with _phase(restored, "modules"):
            modules: dict[str, driver.CUmodule] = {}
            for module in manifest.modules:
                handle = call(driver.cuModuleLoadData, bytes(archive.blob(module.digest)))
                restored._modules.append(handle)
                modules[module.digest] = handle
                for name, digest in module.variables.items():
                    address, size = call(driver.cuModuleGetGlobal, handle, name.encode())
                    data = bytes(archive.blob(digest))
                    call(driver.cuMemcpyHtoD, address, data, min(len(data), int(size)))
            functions = []
            for record in manifest.functions:
                function = call(driver.cuModuleGetFunction, modules[record.module], record.name.encode())
                for attribute, value in record.attributes.items():
                    _set_function_attribute(function, attribute, value)
                functions.append(function)
            restored._events = [call(driver.cuEventCreate, driver.CUevent_flags.CU_EVENT_DISABLE_TIMING) for _ in range(manifest.events)]
        with _phase(restored, "build"):
            context = call(driver.cuCtxGetCurrent)
            builder = GraphBuilder(functions, restored._events, archive.blob, context)
            for entry in manifest.graphs:
                body = GraphBody.model_construct(nodes=entry.nodes, edges=manifest.templates[entry.template].edges)
                restored._graph_handles.append(builder.build(body))
        with _phase(restored, "instantiate"):
            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                executables = list(pool.map(lambda g: _instantiate(g, context), restored._graph_handles))
            for handle in restored._graph_handles:
                driver.cuGraphDestroy(handle)
            restored._graph_handles = []
            for entry, executable in zip(manifest.graphs, executables):
                restored.graphs[entry.key] = RestoredGraph(entry.key, executable, {o.name: _tensor(o) for o in entry.outputs})


def _instantiate(graph: driver.CUgraph, context: driver.CUcontext) -> driver.CUgraphExec:
    call(driver.cuCtxSetCurrent, context)  # worker threads start without a current context
    return call(driver.cuGraphInstantiate, graph, 0)


def _set_function_attribute(function: driver.CUfunction, name: str, value: int) -> None:
    attribute = getattr(driver.CUfunction_attribute, name)
    current = call(driver.cuFuncGetAttribute, attribute, function)
    if int(current) != value:
        call(driver.cuFuncSetAttribute, function, attribute, value)


def _tensor(output: OutputTensor):  # noqa: ANN202 - torch.Tensor
    """A tensor viewing the recorded output buffer (memory LOAD claimed at its saved address)."""
    import torch

    dtype = getattr(torch, output.dtype)
    item = torch.empty((), dtype=dtype).element_size()
    extent = (1 + sum((n - 1) * s for n, s in zip(output.shape, output.stride))) * item if all(output.shape) else 0

    class _Buffer:
        __cuda_array_interface__ = {"shape": (extent,), "typestr": "|u1", "data": (output.address, False), "version": 3}

    raw = torch.as_tensor(_Buffer(), device="cuda")
    return raw.view(dtype).as_strided(output.shape, output.stride)
