"""Every error foundry_trace raises. Each message says what is wrong and how to fix it."""

from __future__ import annotations

from foundry_alloc.errors import ConfigError


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
    """A cubin holds something binary/compact.py cannot rewrite safely (the message says what);
    SAVE then cuts the module to stubs instead."""


class ArchiveFormatError(FoundryTraceError):
    """A file is not a valid Foundry archive: wrong magic or version, truncated, corrupted."""


class UntrustedArchiveError(FoundryTraceError):
    """An archive this process's trust policy does not accept: not the pinned digest, unsigned
    or signed by no trusted key, or changed after it was signed. Refused before any of it
    reaches the driver."""


class TrustSettingError(UntrustedArchiveError, ConfigError):
    """A trust setting that names nothing or cannot be read: FOUNDRY_TRUSTED_KEYS or
    FOUNDRY_ARCHIVE_DIGEST set blank or malformed, an empty key entry, load(trusted_keys=[]),
    or load(early, ...) asking for a check its prefetch() did not make. A ConfigError too (as
    every bad FOUNDRY_* setting): a blank security setting is an error, never "no check"."""


class DriverCallError(FoundryTraceError):
    """A CUDA driver call made by the tracer or the graph walker failed."""


class FingerprintMismatchError(FoundryTraceError):
    """The archive was saved for another GPU, driver, CUDA, torch or allocator range."""


class LayoutMismatchError(FoundryTraceError):
    """The engine's memory at the restore point differs from the one recorded at SAVE."""


class RestoreError(FoundryTraceError):
    """Rebuilding the graphs failed; everything LOAD created has been released."""


class GraphReleasedError(RestoreError):
    """A restored graph was used after its load was released (or failed and was released)."""


class RestoreTimeoutError(RestoreError):
    """LOAD did not finish within its time-out; everything it made has been released."""


class TensorParallelError(FoundryTraceError):
    """A tensor-parallel archive and this process's communicator do not fit (rank count, no
    communicator, a collective the communicator cannot issue)."""


class CommunicatorError(FoundryTraceError):
    """A communicator of tensor-parallel ranks failed: its setup, a peer, or a collective."""


class NcclError(CommunicatorError):
    """The NCCL library cannot be loaded, or an NCCL call failed (or did not return in time)."""


class PeerError(CommunicatorError):
    """The peer-memory communicator cannot be set up or used: its window (base, stride, buffer
    size), a peer's buffer, or what a peer sent at the rendezvous; the message names the rank."""


class StallError(NcclError, PeerError):
    """A rank waited past its time limit: for a peer (the rendezvous, an agreement, a
    collective's barrier on the device), or for a blocking call (NCCL's init waiting for a
    peer, its destroy waiting for graphs); the message names the rank, the phase or call, and
    which peer did not come."""


class ChildProcessFailed(FoundryTraceError):
    """A benchmark's or probe's child process (or one rank of several) failed or stalled; the
    message names it, the phase it was in, its last line and the log file that holds its whole
    output (its traceback there, not in the message). Every other child was stopped."""


class NoGpuError(FoundryTraceError):
    """A command that runs on a GPU was started where there is none (or torch is a CPU build);
    checked before any child process starts, so the message is one line naming the fix."""


class WorkloadError(FoundryTraceError, ValueError):
    """The benchmark harness cannot run what was asked: an unknown workload, an option it does
    not take, or an archive that does not name the workload that wrote it."""
