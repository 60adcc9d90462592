"""foundry_trace: record captured CUDA graphs with their execution context into an archive, and
restore them in another process.

SAVE: `with foundry_trace.record(path) as rec:` around warm-up and capture (or FOUNDRY_MODE=save),
then `foundry inspect path`. LOAD: `foundry_trace.load(path)` at the restore point (or
FOUNDRY_MODE=load), optionally after `foundry_trace.prefetch(path)` at start-up.
"""

from .archive import Archive, Fingerprint, Manifest
from .errors import (
    ArchiveFormatError,
    CuptiUnavailableError,
    DriverCallError,
    FingerprintMismatchError,
    FoundryTraceError,
    LayoutMismatchError,
    MissingBinaryError,
    RestoreError,
    TracerStateError,
    UnsupportedNodeError,
)
from .recording import Recording, record, restore_point, start_tracing
from .restore import Restored, RestoredGraph, load, prefetch

__all__ = [
    "Archive",
    "ArchiveFormatError",
    "CuptiUnavailableError",
    "DriverCallError",
    "FingerprintMismatchError",
    "Fingerprint",
    "FoundryTraceError",
    "LayoutMismatchError",
    "Manifest",
    "MissingBinaryError",
    "Recording",
    "RestoreError",
    "Restored",
    "RestoredGraph",
    "TracerStateError",
    "UnsupportedNodeError",
    "load",
    "prefetch",
    "record",
    "restore_point",
    "start_tracing",
]
