"""Every error foundry_trace raises. Each message says what is wrong and how to fix it."""

from __future__ import annotations


class FoundryTraceError(Exception):
    """Base class of foundry_trace's errors."""


class CuptiUnavailableError(FoundryTraceError):
    """CUPTI (the cupti-python package and its libcupti) cannot be loaded."""


class TracerStateError(FoundryTraceError):
    """The tracer was used out of order (started twice, stopped when not running, ...)."""


class UnsupportedNodeError(FoundryTraceError):
    """A captured graph holds a node kind that cannot be persisted (host callback, conditional, ...)."""


class MissingBinaryError(FoundryTraceError):
    """A kernel used by a graph comes from a module whose binary the tracer did not see."""


class CubinFormatError(FoundryTraceError):
    """The bytes are not a cubin or fatbin the module readers understand."""


class CompactionDeclined(FoundryTraceError):
    """A cubin holds something cubin_compact.py cannot rewrite safely (the message says what);
    SAVE then cuts the module to stubs instead."""


class ArchiveFormatError(FoundryTraceError):
    """A file is not a valid Foundry archive: wrong magic or version, truncated, corrupted."""


class DriverCallError(FoundryTraceError):
    """A CUDA driver call made by the tracer or the graph walker failed."""


class FingerprintMismatchError(FoundryTraceError):
    """The archive was saved for another GPU, driver, CUDA, torch or allocator range."""


class LayoutMismatchError(FoundryTraceError):
    """The engine's memory at the restore point differs from the one recorded at SAVE."""


class RestoreError(FoundryTraceError):
    """Rebuilding the graphs failed; everything LOAD created has been released."""


class TensorParallelError(FoundryTraceError):
    """A tensor-parallel archive and this process's communicator do not fit (rank count, no
    communicator, a collective the communicator cannot issue)."""


class NcclError(FoundryTraceError):
    """The NCCL library cannot be loaded, or an NCCL call failed."""
