"""The reader on real bytes: tests/data/micro.foundry was written by SAVE on an H100
(tests/gpu/test_save_gpu.py::test_micro_archive_for_ci, brought back by tools/gpu-check)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from foundry_trace.archive.format import Archive
from foundry_trace.archive.summary import summarize
from foundry_trace.binary.cubin import module_symbols

MICRO = Path(__file__).parent / "data" / "micro.foundry"


def test_real_archive_verifies_and_holds_its_graph() -> None:
    with Archive(MICRO) as archive:
        archive.verify()
        manifest = archive.manifest
        assert [g.key for g in manifest.graphs] == ["double-relu"]
        graph = manifest.graphs[0]
        assert [n.kind for n in archive.graph(graph).nodes] == ["kernel", "kernel"]
        assert graph.driver_nodes == 2 and graph.driver_edges == 1
        assert graph.outputs[0].name == "y" and graph.outputs[0].shape == (1024,)
        assert manifest.fingerprint.allocator_base == 0x200000000000


def test_every_kernel_is_an_entry_of_its_module() -> None:
    with Archive(MICRO) as archive:
        for function in archive.manifest.functions:
            binary = archive.blob(archive.manifest.modules[function.module].digest)
            entries = module_symbols(bytes(binary)).entries
            if isinstance(binary, memoryview):
                binary.release()
            assert function.name in entries


def test_inspect_summarizes_the_real_archive() -> None:
    summary = summarize(MICRO)
    assert summary["nodes_by_kind"] == {"kernel": 2}
    assert len(summary["kernels"]) == 2
    completed = subprocess.run(
        [sys.executable, "-m", "foundry_trace.cli", "inspect", "--json", str(MICRO)], capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["graphs"][0]["key"] == "double-relu"
