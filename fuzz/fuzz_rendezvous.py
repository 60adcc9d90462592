"""Fuzz target for what a rank reads from its peers at the rendezvous (parallel/rendezvous.py):
a rank's description, then length-prefixed frames, from a process that may not be a rank at all.

Any input must end in a PeerError or a StallError (wrong bytes, a frame over the cap, a peer
that stops mid-frame): never another exception, a crash, or a read that grows with what a frame
claims rather than with what was sent.
    python -m fuzz.fuzz_rendezvous [atheris options]     coverage-guided, with atheris installed
The CPU suite runs the same target under hypothesis (tests/test_peer.py).
"""

from __future__ import annotations

import socket
import struct
import time

from foundry_trace.errors import PeerError, StallError
from foundry_trace.parallel.rendezvous import HELLO_BYTES, RankInfo, receive_frame
from fuzz import run_atheris

MAX_INPUT = 1 << 16  # what one socket buffer holds: the sender never blocks


def seed_stream() -> bytes:
    """What rank 0 reads from a real peer: its description, then an agreement's frame."""
    me = RankInfo(rank=1, world=2, pid=1, base=0x240000000000, stride=1 << 30, buffer_bytes=64 << 20, device_uuid=bytes(16))
    payload = b"LOAD's archive\0" + b"0" * 64
    return me.pack() + struct.pack("<4sI", b"XCHG", len(payload)) + payload


def one_input(data: bytes) -> None:
    data = data[:MAX_INPUT]
    try:
        RankInfo.unpack(data[:HELLO_BYTES], "a fuzzed peer")
    except PeerError:
        pass
    reader, writer = socket.socketpair()
    try:
        writer.sendall(data[HELLO_BYTES:])
        writer.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 1.0
        for _ in range(len(data) + 1):  # each frame consumes at least its 8-byte head
            try:
                receive_frame(reader, deadline, lambda: "a fuzzed peer", 1.0)
            except (PeerError, StallError):
                return
        raise AssertionError("more frames read than the input holds")
    finally:
        reader.close()
        writer.close()


if __name__ == "__main__":
    run_atheris(one_input)
