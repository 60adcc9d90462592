"""foundry_trace: record captured CUDA graphs with their execution context into an archive
(SAVE), and restore them in another process (LOAD).

SAVE: `with foundry_trace.record(path) as rec:` around warm-up and capture (or FOUNDRY_MODE=save),
then `foundry inspect path`. LOAD: `foundry_trace.load(path)` at the restore point (or
FOUNDRY_MODE=load), optionally after `foundry_trace.prefetch(path)` at start-up. Tensor
parallelism: foundry_trace.parallel. The benchmark harness (workloads, benches, probes) is
foundry_trace.bench, which nothing here imports.

Layout (imports run downward only): mode -> save/, restore/ -> parallel/, archive/, binary/ ->
native, driver, fingerprint -> errors, and foundry_alloc below all of it.
"""

from foundry_trace.archive.format import Archive
from foundry_trace.archive.manifest import Fingerprint, Manifest
from foundry_trace.errors import (
    ArchiveFormatError,
    CuptiUnavailableError,
    DriverCallError,
    FingerprintMismatchError,
    FoundryTraceError,
    GraphReleasedError,
    LayoutMismatchError,
    MissingBinaryError,
    NcclError,
    RestoreError,
    RestoreTimeoutError,
    StallError,
    TensorParallelError,
    TracerStateError,
    UnsupportedNodeError,
    UntrustedArchiveError,
)
from foundry_trace.mode import restore_point
from foundry_trace.restore import PipelineHooks, ReleaseSummary, Restored, RestoredGraph, load, prefetch
from foundry_trace.save.recording import Recording, record, start_tracing

__all__ = [
    "Archive",
    "ArchiveFormatError",
    "CuptiUnavailableError",
    "DriverCallError",
    "Fingerprint",
    "FingerprintMismatchError",
    "FoundryTraceError",
    "GraphReleasedError",
    "LayoutMismatchError",
    "Manifest",
    "MissingBinaryError",
    "NcclError",
    "PipelineHooks",
    "Recording",
    "ReleaseSummary",
    "RestoreError",
    "RestoreTimeoutError",
    "Restored",
    "RestoredGraph",
    "StallError",
    "TensorParallelError",
    "TracerStateError",
    "UnsupportedNodeError",
    "UntrustedArchiveError",
    "load",
    "prefetch",
    "record",
    "restore_point",
    "start_tracing",
]
