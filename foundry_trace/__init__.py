"""foundry_trace: record captured CUDA graphs with their execution context into an archive
(SAVE), and restore them in another process (LOAD).

SAVE: `with foundry_trace.record(path) as rec:` around warm-up and capture (or FOUNDRY_MODE=save),
then `foundry inspect path`. LOAD: `foundry_trace.load(path)` at the restore point (or
FOUNDRY_MODE=load), optionally after `foundry_trace.prefetch(path)` at start-up. Signing:
generate_key, sign_archive, verify_signatures. Tensor parallelism: foundry_trace.parallel.
Reading an archive's contents: foundry_trace.archive.

The public surface is each package's __all__ (this one's below); modules whose names start with
an underscore are internal and may change in any release. The benchmark harness (workloads,
benches, probes) is foundry_trace.bench, which nothing here imports.

Layout (imports run downward only): mode -> save/, restore/ -> parallel/, archive/, binary/ ->
_native, _driver, fingerprint -> errors, and foundry_alloc below all of it.
"""

from foundry_trace.archive.signing import generate_key, sign_archive, verify_signatures
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
from foundry_trace.restore import ReleaseSummary, Restored, RestoredGraph, Span, load, prefetch
from foundry_trace.save.recording import Recording, record, start_tracing

__all__ = [
    "ArchiveFormatError",
    "CuptiUnavailableError",
    "DriverCallError",
    "FingerprintMismatchError",
    "FoundryTraceError",
    "GraphReleasedError",
    "LayoutMismatchError",
    "MissingBinaryError",
    "NcclError",
    "Recording",
    "ReleaseSummary",
    "RestoreError",
    "RestoreTimeoutError",
    "Restored",
    "RestoredGraph",
    "Span",
    "StallError",
    "TensorParallelError",
    "TracerStateError",
    "UnsupportedNodeError",
    "UntrustedArchiveError",
    "generate_key",
    "load",
    "prefetch",
    "record",
    "restore_point",
    "sign_archive",
    "start_tracing",
    "verify_signatures",
]
