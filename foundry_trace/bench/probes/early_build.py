"""Which graphs could prefetch() build before the restore point, and what stops the others?

1. Does the driver take memset and memcpy nodes whose memory is reserved but not yet mapped (as
   the graph arena is before the restore point), instantiate them, and run them correctly once
   the memory is mapped?
2. How many graphs of an archive name which arenas in their memsets and memcpys (prefetch builds
   those that name the graph arena alone early, having mapped it).

  python -m foundry_trace.bench.probes.early_build ARCHIVE
"""

from __future__ import annotations

import ctypes
import json
import sys
from collections import Counter

from cuda.bindings import driver


def _ok(result: tuple) -> object:  # noqa: ANN001
    error, *rest = result if isinstance(result, tuple) else (result,)
    if error != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(str(error))
    return rest[0] if len(rest) == 1 else rest


def _try(what: str, step, report: dict[str, str]) -> object:  # noqa: ANN001
    try:
        value = step()
    except RuntimeError as error:
        report[what] = str(error)
        return None
    report[what] = "ok"
    return value


def unmapped_nodes() -> dict[str, str]:
    import torch

    torch.zeros(1, device="cuda")
    context = _ok(driver.cuCtxGetCurrent())
    size = 2 << 20
    base = int(_ok(driver.cuMemAddressReserve(size, 0, 0, 0)))
    report: dict[str, str] = {}
    graph = _ok(driver.cuGraphCreate(0))
    memset = driver.CUDA_MEMSET_NODE_PARAMS()
    memset.dst, memset.elementSize, memset.width, memset.height, memset.value, memset.pitch = base, 4, 1024, 1, 7, 0
    node = _try("add memset to unmapped memory", lambda: _ok(driver.cuGraphAddMemsetNode(graph, None, 0, memset, context)), report)
    copy = driver.CUDA_MEMCPY3D()
    copy.srcMemoryType = copy.dstMemoryType = driver.CUmemorytype.CU_MEMORYTYPE_DEVICE
    copy.srcDevice, copy.dstDevice = base, base + (1 << 20)
    copy.WidthInBytes, copy.Height, copy.Depth = 4096, 1, 1
    dependencies = [node] if node is not None else None
    _try("add memcpy between unmapped memory",
         lambda: _ok(driver.cuGraphAddMemcpyNode(graph, dependencies, len(dependencies or ()), copy, context)), report)
    executable = _try("instantiate", lambda: _ok(driver.cuGraphInstantiate(graph, 0)), report)
    properties = driver.CUmemAllocationProp()
    properties.type = driver.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    properties.location.type = driver.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    properties.location.id = torch.cuda.current_device()
    handle = _ok(driver.cuMemCreate(size, properties, 0))
    _ok(driver.cuMemMap(base, size, 0, handle, 0))
    access = driver.CUmemAccessDesc()
    access.location = properties.location
    access.flags = driver.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    _ok(driver.cuMemSetAccess(base, size, [access], 1))
    if executable is not None:
        stream = torch.cuda.current_stream().cuda_stream
        _try("launch after mapping", lambda: (_ok(driver.cuGraphLaunch(executable, stream)), _ok(driver.cuStreamSynchronize(stream))), report)
        words = (ctypes.c_uint32 * 1024)()
        _ok(driver.cuMemcpyDtoH(ctypes.addressof(words), base + (1 << 20), 4096))
        report["copied memset values"] = "correct" if all(w == 7 for w in words) else "wrong"
        _ok(driver.cuGraphExecDestroy(executable))
    _ok(driver.cuGraphDestroy(graph))
    _ok(driver.cuMemUnmap(base, size))
    _ok(driver.cuMemRelease(handle))
    _ok(driver.cuMemAddressFree(base, size))
    return report


def graphs_of(path: str) -> dict[str, int]:
    """How many graphs name each set of arenas in their memsets and memcpys (SAVE records it)."""
    from foundry_trace.archive.format import Archive

    with Archive(path) as archive:
        return dict(Counter(
            (",".join(g.copy_arenas) or "none") if g.copy_arenas is not None else "unrecorded" for g in archive.manifest.graphs
        ))


def main() -> None:
    print(json.dumps({"unmapped": unmapped_nodes()}), flush=True)
    print(json.dumps({"copy_arenas": graphs_of(sys.argv[1])}), flush=True)


if __name__ == "__main__":
    main()
