"""Tensor parallelism from a single-GPU SAVE: collectives recorded without a peer at SAVE, bound
to each rank's live communicator at LOAD."""

from foundry_trace.parallel.collectives import (
    Communicator,
    RecordingCommunicator,
    archive_path,
    check_communicator,
    tensor_parallel_archive,
)
from foundry_trace.parallel.nccl import NcclCommunicator

__all__ = [
    "Communicator",
    "NcclCommunicator",
    "RecordingCommunicator",
    "archive_path",
    "check_communicator",
    "tensor_parallel_archive",
]
