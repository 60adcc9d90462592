"""foundry_trace: record captured CUDA graphs with their execution context into an archive.

SAVE: `with foundry_trace.record(path) as rec:` around warm-up and capture (or FOUNDRY_MODE=save),
then `foundry inspect path`.
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
from .restore import Restored, RestoredGraph, load

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
    "record",
    "restore_point",
    "start_tracing",
]
