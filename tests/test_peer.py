"""The peer communicator's host side, on the CPU: the window's layout (every rank's buffer at one
address in every process), its configuration, and the Unix-socket rendezvous (descriptors passed
between processes, a peer that never comes, a peer that sends garbage, a peer that leaves)."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import foundry_alloc as fa
from foundry_alloc.config import PEER_SLOTS
from foundry_trace.errors import PeerError, StallError
from foundry_trace.parallel.rendezvous import RankInfo, Rendezvous, _connect
from foundry_trace.parallel.window import DATA_OFFSET, GRANULE, MAX_RANKS, PACK_BYTES, WindowLayout

MiB, GiB = 1 << 20, 1 << 30


@given(
    base=st.integers(1, 1 << 20).map(lambda n: n * GRANULE),
    stride=st.integers(1, 1024).map(lambda n: n * GRANULE),
    buffer=st.integers(1, 1024).map(lambda n: n * GRANULE),
)
def test_every_rank_has_a_slot_of_its_own_after_the_process_own_one(base: int, stride: int, buffer: int) -> None:
    if buffer > stride:
        with pytest.raises(PeerError, match="does not fit a slot"):
            WindowLayout(base, stride, buffer)
        return
    layout = WindowLayout(base, stride, buffer)
    slots = [layout.base] + [layout.slot(rank) for rank in range(MAX_RANKS)]
    assert slots == [base + i * stride for i in range(PEER_SLOTS)], "slot 0 is the process's own, rank r's is r + 1"
    assert all(not (a < b + buffer and b < a + buffer) for a, b in zip(slots, slots[1:])), "buffers never overlap"
    assert layout.size == PEER_SLOTS * stride and slots[-1] + buffer <= base + layout.size
    assert layout.capacity % PACK_BYTES == 0 and DATA_OFFSET + 2 * layout.capacity <= buffer


def test_a_window_that_does_not_fit_is_refused_by_name() -> None:
    with pytest.raises(PeerError, match="multiple of 2 MiB"):
        WindowLayout(0x300000000000 + 4096, GiB, 64 * MiB)
    with pytest.raises(PeerError, match="ends past the user address space"):
        WindowLayout((1 << 47) - 2 * GiB, GiB, 64 * MiB)
    with pytest.raises(PeerError, match="rank 8"):
        WindowLayout(0x300000000000, GiB, 64 * MiB).slot(MAX_RANKS)


def test_the_window_follows_the_allocator_range_unless_placed(monkeypatch: pytest.MonkeyPatch) -> None:
    config = fa.AllocatorConfig.create()
    assert config.peer_window_base == config.base + config.size
    placed = fa.AllocatorConfig.create(peer_base=0x600000000000, peer_stride=512 * MiB)
    assert placed.peer_window_base == 0x600000000000 and placed.peer_window_size == PEER_SLOTS * 512 * MiB
    with pytest.raises(fa.ConfigError, match="overlaps the allocator's range"):
        fa.AllocatorConfig.create(base=0x200000000000, peer_base=0x200000000000 + GiB)
    with pytest.raises(fa.ConfigError, match="peer_stride 0x300001 is not a multiple of 2 MiB"):
        fa.AllocatorConfig.create(peer_stride=0x300001)
    monkeypatch.setenv("FOUNDRY_ALLOC_PEER_STRIDE", "3M")
    with pytest.raises(fa.ConfigError, match="FOUNDRY_ALLOC_PEER_STRIDE"):
        fa.AllocatorConfig.create(**__import__("foundry_alloc.config", fromlist=["_"]).environment_settings())


def _info(rank: int, world: int, **changes: object) -> RankInfo:
    values = dict(rank=rank, world=world, pid=os.getpid(), base=0x300000000000, stride=GiB, buffer_bytes=64 * MiB, device_uuid=b"u" * 16)
    values.update(changes)
    return RankInfo(**values)


def _in_threads(*tasks: Callable[[], object]) -> list[object]:
    """Runs each task on a thread of its own; returns results or the exceptions raised."""
    results: list[object] = [None] * len(tasks)

    def run(index: int) -> None:
        try:
            results[index] = tasks[index]()
        except BaseException as error:  # noqa: BLE001 - handed back
            error.add_note("".join(__import__("traceback").format_tb(error.__traceback__)))
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(tasks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.fixture
def path() -> str:
    with tempfile.TemporaryDirectory(prefix="foundry-rv-") as folder:
        yield os.path.join(folder, "r.sock")


def test_every_rank_gets_every_rank_s_buffer_descriptor_and_can_agree(path: str, tmp_path: Path) -> None:
    world = 3
    files = []
    for rank in range(world):
        file = tmp_path / f"buffer{rank}"
        file.write_bytes(f"rank {rank}'s buffer".encode())
        files.append(os.open(file, os.O_RDONLY))

    def rank(r: int) -> tuple[list[bytes], list[bytes]]:
        rendezvous, infos, fds = Rendezvous.join(path, _info(r, world), files[r], timeout=10)
        try:
            assert [i.rank for i in infos] == list(range(world))
            contents = [os.pread(fd, 64, 0) for fd in fds]
            agreed = rendezvous.exchange("phase one", f"from {r}".encode(), timeout=10)
            return contents, agreed
        finally:
            for fd in fds:
                os.close(fd)
            rendezvous.close()

    results = _in_threads(*(lambda r=r: rank(r) for r in range(world)))
    for result in results:
        assert not isinstance(result, BaseException), result
        contents, agreed = result
        assert contents == [f"rank {r}'s buffer".encode() for r in range(world)], "each descriptor is that rank's own"
        assert agreed == [f"from {r}".encode() for r in range(world)]
    assert not os.path.exists(path), "rank 0 removes its socket"
    for fd in files:
        os.close(fd)


def test_a_peer_that_never_comes_is_named_within_the_time_out(path: str) -> None:
    start = time.monotonic()
    with pytest.raises(StallError, match=r"rank 0 of 3: the rendezvous at .*: rank\(s\) 1, 2 did not come within 0.5 s"):
        Rendezvous.join(path, _info(0, 3), os.open(os.devnull, os.O_RDONLY), timeout=0.5)
    assert time.monotonic() - start < 5
    with pytest.raises(StallError, match="rank 1 of 2: the rendezvous at .*: rank 0 did not listen within 0.3 s"):
        Rendezvous.join(path, _info(1, 2), os.open(os.devnull, os.O_RDONLY), timeout=0.3)


def _connected(path: str) -> socket.socket:
    """A connection to rank 0's socket, once it listens (as a rank connects)."""
    return _connect(path, _info(1, 2), time.monotonic() + 5, 5)


def _garbage_peer(path: str, payload: bytes) -> Callable[[], None]:
    def send() -> None:
        with _connected(path) as connection:
            connection.sendall(payload)
            time.sleep(0.5)

    return send


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 100, "it is not a Foundry rank"),
        (_info(1, 2).pack()[:-3], "sent nothing within|left"),
        (_info(1, 3).pack(), "world 3 where rank 0 has 2"),
        (_info(1, 2, stride=2 * GiB).pack(), "stride 0x80000000 where rank 0 has 0x40000000"),
        (_info(5, 2).pack(), "rank number 5, outside 1..1"),
        (_info(1, 2).pack(), "1 file descriptors|0 file descriptors"),
    ],
    ids=["not-foundry", "cut-short", "other-world", "other-window", "bad-rank", "no-descriptor"],
)
def test_a_peer_that_sends_garbage_is_refused_with_its_fault(path: str, payload: bytes, message: str) -> None:
    host = lambda: Rendezvous.join(path, _info(0, 2), os.open(os.devnull, os.O_RDONLY), timeout=2)  # noqa: E731
    result, _ = _in_threads(host, _garbage_peer(path, payload))
    assert isinstance(result, (PeerError, StallError)), result
    assert __import__("re").search(message, str(result)), str(result)
    assert not os.path.exists(path), "a failed rendezvous removes its socket"


def test_a_rank_that_leaves_stops_every_other_rank_at_the_next_agreement(path: str) -> None:
    world = 3

    def rank(r: int) -> object:
        descriptor = os.open(os.devnull, os.O_RDONLY)
        rendezvous, _, fds = Rendezvous.join(path, _info(r, world), descriptor, timeout=10)
        for fd in fds:
            os.close(fd)
        try:
            if r == 2:
                return "left"
            return rendezvous.exchange("the end of LOAD", b"", timeout=10)
        finally:
            rendezvous.close()

    results = _in_threads(*(lambda r=r: rank(r) for r in range(world)))
    assert results[2] == "left"
    for r in (0, 1):
        assert isinstance(results[r], StallError), (results[r], getattr(results[r], "__notes__", None))
        assert "rank 2 left during the end of LOAD" in str(results[r])


def test_a_frame_longer_than_the_cap_costs_one_capped_read(path: str) -> None:
    from foundry_trace.parallel import rendezvous as module

    def guest() -> object:
        with _connected(path) as connection:
            socket.send_fds(connection, [_info(1, 2).pack()], [os.open(os.devnull, os.O_RDONLY)])
            connection.recv(1 << 16)  # the welcome
            connection.sendall(struct.pack("<4sI", b"XCHG", module.MAX_FRAME + 1))
            time.sleep(0.5)
        return None

    def host() -> object:
        rendezvous, _, fds = Rendezvous.join(path, _info(0, 2), os.open(os.devnull, os.O_RDONLY), timeout=5)
        for fd in fds:
            os.close(fd)
        try:
            return rendezvous.exchange("phase", b"", timeout=5)
        finally:
            rendezvous.close()

    result, _ = _in_threads(host, guest)
    assert isinstance(result, PeerError) and "announced" in str(result), result


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=4096))
def test_the_rendezvous_reader_on_random_bytes(data: bytes) -> None:
    from fuzz.fuzz_rendezvous import one_input

    one_input(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"XCHG", b"RSLT", b"ABRT", b"WLCM", b"????"]), st.binary(max_size=64), st.booleans())))
def test_the_rendezvous_reader_on_frames_cut_or_lying_about_their_length(frames: list[tuple[bytes, bytes, bool]]) -> None:
    from fuzz.fuzz_rendezvous import one_input

    stream = b"".join(struct.pack("<4sI", kind, len(body) + (1 << 21 if lie else 0)) + body for kind, body, lie in frames)
    one_input(_info(1, 2).pack() + stream)


def test_foundry_env_shows_the_peer_window_and_refuses_a_bad_one(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from foundry_trace.cli import main

    monkeypatch.setenv("FOUNDRY_ALLOC", "1")
    monkeypatch.setenv("FOUNDRY_ALLOC_PEER_BASE", "0x600000000000")
    assert main(["env"]) == 0
    assert "peer window of tensor-parallel ranks 0x600000000000 + 0x240000000 (0x40000000 a slot)" in capsys.readouterr().out
    monkeypatch.delenv("FOUNDRY_ALLOC")
    monkeypatch.setenv("FOUNDRY_ALLOC_PEER_STRIDE", "3M")
    assert main(["env"]) == 2
    assert "FOUNDRY_ALLOC_PEER_STRIDE" in capsys.readouterr().out
