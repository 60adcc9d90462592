"""SAVE scenarios the GPU tests run in fresh processes; each prints one JSON object last.

    python -m tests.gpu.save_program <scenario> <archive path>
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

import foundry_alloc as fa
import foundry_trace as ft
from foundry_trace.archive import Archive
from foundry_trace.archive.records import operation_count
from foundry_trace.bench.damage import compress_all
from foundry_trace.bench.workloads.registry import build_engine

BATCHES = (1, 2, 4, 8)


def save_tiny(path: str, *, references: bool = False):  # noqa: ANN201 - (DecodeEngine, captured steps by batch)
    """SAVE of the tiny reference workload at every batch size; returns the model and its graphs.
    `references`: with the outputs on fixed inputs stored in the archive, as the bench's SAVE does."""
    fa.install()
    ft.start_tracing()
    from foundry_trace.bench.capture import capture_steps
    from foundry_trace.bench.verify import record_references

    model = build_engine("tiny")
    with ft.record(path) as recording:
        captured = capture_steps(model, BATCHES, recording=recording)
        if references:
            record_references(recording, model, captured)
    return model, captured


def save(path: str) -> dict[str, object]:
    """The tiny reference workload, every batch size saved, then the archive inspected."""
    from foundry_trace.archive.summary import summarize

    save_tiny(path)
    summary = summarize(path)
    with Archive(path) as archive:
        archive.verify()
        walked = {g.key: (operation_count(archive.graph(g).nodes), g.driver_nodes) for g in archive.manifest.graphs}
    return {"summary": summary, "walked_vs_driver": walked}


def _refused_capture(path: str, x, insert) -> dict[str, object]:  # noqa: ANN001 - tensor, (stream) -> None
    """Records one graph of `x * 2`, `insert(stream)` and `+= 1`: SAVE must refuse it by name and
    leave no archive."""
    import torch
    from cuda.bindings import driver

    try:
        with ft.record(path):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                y = x * 2
                insert(driver.CUstream(torch.cuda.current_stream().cuda_stream))
                y += 1
    except ft.UnsupportedNodeError as error:
        return {"error": str(error), "archive_left": os.path.exists(path)}
    return {"error": None}


def host_node(path: str) -> dict[str, object]:
    """A graph with a host callback inside must be refused by name."""
    fa.install()
    ft.start_tracing()
    import torch
    from cuda.bindings import driver

    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: None)

    def launch_host_function(stream: driver.CUstream) -> None:
        function = driver.CUhostFn(ctypes.cast(callback, ctypes.c_void_p).value)
        (status,) = driver.cuLaunchHostFunc(stream, function, 0)
        assert status == driver.CUresult.CUDA_SUCCESS, status

    return _refused_capture(path, torch.ones(16, device="cuda"), launch_host_function)


def conditional_node(path: str) -> dict[str, object]:
    """A graph with a conditional (if) node inside must be refused by name. The node is added to
    the capturing graph through the driver (as CUDA C++ code or a newer torch would)."""
    fa.install()
    ft.start_tracing()
    import torch
    from cuda.bindings import driver

    def add_conditional_node(stream: driver.CUstream) -> None:
        _, _, _, capturing, dependencies, _, count = driver.cuStreamGetCaptureInfo(stream)
        _, context = driver.cuCtxGetCurrent()
        _, handle = driver.cuGraphConditionalHandleCreate(capturing, context, 1, 1)  # default 1, assigned at launch
        params = driver.CUgraphNodeParams()
        params.type = driver.CUgraphNodeType.CU_GRAPH_NODE_TYPE_CONDITIONAL
        params.conditional.handle = handle
        params.conditional.type = driver.CUgraphConditionalNodeType.CU_GRAPH_COND_TYPE_IF
        params.conditional.size = 1
        params.conditional.ctx = context
        status, node = driver.cuGraphAddNode(capturing, dependencies, None, count, params)
        assert status == driver.CUresult.CUDA_SUCCESS, status
        (status,) = driver.cuStreamUpdateCaptureDependencies(
            stream, [node], None, 1, driver.CUstreamUpdateCaptureDependencies_flags.CU_STREAM_SET_CAPTURE_DEPENDENCIES
        )
        assert status == driver.CUresult.CUDA_SUCCESS, status

    x = torch.ones(16, device="cuda")
    x * 2  # warm-up: the kernel loads here, traced
    return _refused_capture(path, x, add_conditional_node)


def late_tracing(path: str) -> dict[str, object]:
    """Kernels whose modules loaded before tracing started: SAVE must name them and refuse."""
    fa.install()
    from foundry_trace.bench.capture import capture_steps

    model = build_engine("tiny")  # every kernel of the step loads here, untraced
    try:
        with ft.record(path) as recording:
            capture_steps(model, (2,), recording=recording)
    except ft.MissingBinaryError as error:
        return {"error": str(error), "archive_left": os.path.exists(path)}
    return {"error": None}


def micro(path: str) -> dict[str, object]:
    """The smallest real archive: one graph of two elementwise kernels (kept as CI test data,
    compressed: its module images alone are 12 MiB raw)."""
    fa.install()
    ft.start_tracing()
    import torch

    x = torch.arange(1024, device="cuda", dtype=torch.float32)
    (x * 2).relu()  # warm-up: the kernels load here, traced
    with ft.record(path) as recording:
        graph = torch.cuda.CUDAGraph()
        with recording.key("double-relu"), torch.cuda.graph(graph):
            y = (x * 2).relu()
        recording.add_output("double-relu", "y", y)
    return {"bytes": compress_all(Path(path))}


SCENARIOS = {"save": save, "host_node": host_node, "conditional_node": conditional_node, "late_tracing": late_tracing, "micro": micro}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](sys.argv[2])))
