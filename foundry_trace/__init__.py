"""foundry_trace: record captured CUDA graphs with their execution context into an archive.

SAVE: `with foundry_trace.record(path) as rec:` around warm-up and capture (or FOUNDRY_MODE=save),
then `foundry inspect path`.
"""

from .archive import Archive, Fingerprint, Manifest
from .errors import (
    ArchiveFormatError,
    CuptiUnavailableError,
    DriverCallError,
    FoundryTraceError,
    MissingBinaryError,
    TracerStateError,
    UnsupportedNodeError,
)
from .recording import Recording, record, restore_point, start_tracing

__all__ = [
    "Archive",
    "ArchiveFormatError",
    "CuptiUnavailableError",
    "DriverCallError",
    "Fingerprint",
    "FoundryTraceError",
    "Manifest",
    "MissingBinaryError",
    "Recording",
    "TracerStateError",
    "UnsupportedNodeError",
    "record",
    "restore_point",
    "start_tracing",
]
