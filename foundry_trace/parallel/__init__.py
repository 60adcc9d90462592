"""Tensor parallelism from a single-GPU SAVE: one rank's step SAVEd without a peer, restored by
every rank. PeerCommunicator: all-reduce kernels over peer memory at fixed addresses, the archive
restored unchanged on every rank (ranks may share a GPU). NcclCommunicator: collectives recorded
as markers, bound to each rank's live NCCL communicator at LOAD."""

from foundry_trace.parallel.collectives import (
    Communicator,
    RecordingCommunicator,
    archive_path,
    check_communicator,
    tensor_parallel_archive,
)
from foundry_trace.parallel.nccl import NcclCommunicator
from foundry_trace.parallel.peer import PeerCommunicator

__all__ = [
    "Communicator",
    "NcclCommunicator",
    "PeerCommunicator",
    "RecordingCommunicator",
    "archive_path",
    "check_communicator",
    "tensor_parallel_archive",
]
