"""Ranks meet over a Unix-domain socket: rank 0 hosts it, every other rank connects, sends a
description of itself and its buffer's file descriptor (SCM_RIGHTS), and gets back every rank's
description and descriptor. The connections stay open: the ranks agree on later phases through
rank 0 (exchange()), and a rank that dies is seen at once as a closed connection.

Every wait has a deadline: a peer that never comes, leaves, or answers late becomes StallError
naming this rank, the phase and the peer; what is not a Foundry rank of the same run (wrong
bytes, another window or degree, a second rank of one number) becomes PeerError, and rank 0
tells every connected rank why it stopped. Frames are length-prefixed with a cap, so a peer
that sends garbage costs at most one capped read.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import struct
import time
from dataclasses import dataclass

from foundry_trace.errors import PeerError, StallError

MAGIC = b"FNDRYRV1"
VERSION = 1
_HELLO = struct.Struct("<8sIIIIQQQ16s")  # magic, version, rank, world, pid, base, stride, buffer bytes, device UUID
_FRAME = struct.Struct("<4sI")  # kind, payload bytes
HELLO_BYTES = _HELLO.size
MAX_FRAME = 1 << 20
MAX_PATH = 107  # sockaddr_un's sun_path, less its NUL
_WELCOME, _EXCHANGE, _RESULT, _ABORT = b"WLCM", b"XCHG", b"RSLT", b"ABRT"


@dataclass(frozen=True)
class RankInfo:
    """What a rank tells its peers: who it is, its window, and the GPU its buffer lives on."""

    rank: int
    world: int
    pid: int
    base: int
    stride: int
    buffer_bytes: int
    device_uuid: bytes

    def pack(self) -> bytes:
        return _HELLO.pack(MAGIC, VERSION, self.rank, self.world, self.pid, self.base, self.stride, self.buffer_bytes, self.device_uuid)

    @classmethod
    def unpack(cls, data: bytes, sender: str) -> RankInfo:
        if len(data) != _HELLO.size:
            raise PeerError(f"{sender} sent {len(data)} bytes where a rank's description has {_HELLO.size}: it is not a Foundry rank")
        magic, version, rank, world, pid, base, stride, buffer_bytes, uuid = _HELLO.unpack(data)
        if magic != MAGIC or version != VERSION:
            raise PeerError(
                f"{sender} sent {magic!r} version {version} where a Foundry rank sends {MAGIC!r} version {VERSION}: it is not a "
                "Foundry rank of this version; give each run a socket path of its own"
            )
        return cls(rank, world, pid, base, stride, buffer_bytes, uuid)

    def agrees_with(self, other: RankInfo) -> str | None:
        """What differs between two ranks that must agree (None: nothing)."""
        for name in ("world", "base", "stride", "buffer_bytes"):
            if getattr(self, name) != getattr(other, name):
                shown = (lambda v: f"{v:#x}") if name != "world" else str
                return f"{name.replace('_', ' ')} {shown(getattr(other, name))} where rank {self.rank} has {shown(getattr(self, name))}"
        return None


class Rendezvous:
    """One rank's side of the meeting: rank 0 holds a connection to every rank, every other
    rank one to rank 0. Use join(); close() ends the connections (and removes rank 0's socket)."""

    def __init__(self, me: RankInfo, connections: dict[int, socket.socket], path: str) -> None:
        self.me, self._connections, self.path = me, connections, path

    def _what(self, phase: str) -> str:
        return f"rank {self.me.rank} of {self.me.world}: {phase}"

    @classmethod
    def join(cls, path: str, me: RankInfo, fd: int, timeout: float) -> tuple[Rendezvous, list[RankInfo], list[int]]:
        """Meets every rank at `path`. Returns the rendezvous, every rank's description by rank,
        and a file descriptor of every rank's buffer by rank (the caller closes them)."""
        if len(os.fsencode(path)) > MAX_PATH:
            raise PeerError(f"the rendezvous socket path {path!r} is longer than {MAX_PATH} bytes: choose a shorter one")
        deadline = time.monotonic() + timeout
        if me.rank == 0:
            return _host(path, me, fd, deadline, timeout)
        return _guest(path, me, fd, deadline, timeout)

    def exchange(self, phase: str, payload: bytes, timeout: float) -> list[bytes]:
        """Every rank's `payload` for `phase`, by rank, once every rank has reached it. Raises
        StallError when a rank leaves or does not come within `timeout`, on every rank."""
        deadline = time.monotonic() + timeout
        tag = phase.encode()[:64] + b"\0"
        if self.me.rank != 0:
            connection = self._connections[0]
            host = lambda: self._what(f"{phase}: rank 0, which hosts the rendezvous,")  # noqa: E731
            try:
                _send(connection, _EXCHANGE, tag + payload)
            except OSError:  # rank 0 closed: it may have said why before it did
                deadline = min(deadline, time.monotonic() + 1.0)
            kind, body = receive_frame(connection, deadline, host, timeout)
            if kind == _ABORT:
                raise StallError(self._what(f"{phase}: rank 0 stopped every rank: {body.decode(errors='replace')}"))
            if kind != _RESULT:
                raise PeerError(self._what(f"{phase}: rank 0 answered {kind!r} where a result comes"))
            return _split(body, self.me.world, self._what(phase))
        payloads: dict[int, bytes] = {0: payload}
        waiting = dict(self._connections)
        while waiting:
            remaining = deadline - time.monotonic()
            ready = select.select(list(waiting.values()), [], [], max(0.0, remaining))[0] if remaining > 0 else []
            if not ready:
                late = ", ".join(str(r) for r in sorted(waiting))
                reason = f"rank(s) {late} did not reach {phase} within {timeout:g} s"
                self.abort(reason)
                raise StallError(self._what(reason))
            for rank, connection in list(waiting.items()):
                if connection not in ready:
                    continue
                try:
                    kind, body = receive_frame(connection, deadline, lambda r=rank: self._what(f"{phase}: rank {r}"), timeout)
                except StallError:
                    reason = f"rank {rank} left during {phase} (its connection closed)"
                    self.abort(reason)
                    raise StallError(self._what(reason)) from None
                if kind == _ABORT:
                    reason = f"rank {rank} stopped: {body.decode(errors='replace')}"
                    self.abort(reason)
                    raise StallError(self._what(f"{phase}: {reason}"))
                got, _, data = body.partition(b"\0")
                if kind != _EXCHANGE or got != tag[:-1]:
                    reason = f"rank {rank} sent {kind!r} for {got.decode(errors='replace')!r} where {phase!r} was due"
                    self.abort(reason)
                    raise PeerError(self._what(reason))
                payloads[rank] = data
                del waiting[rank]
        joined = b"".join(struct.pack("<I", len(payloads[r])) + payloads[r] for r in range(self.me.world))
        for rank, connection in self._connections.items():
            try:
                _send(connection, _RESULT, joined)
            except OSError:
                reason = f"rank {rank} left after reaching {phase} (its connection closed)"
                self.abort(reason)
                raise StallError(self._what(reason)) from None
        return [payloads[r] for r in range(self.me.world)]

    def abort(self, reason: str) -> None:
        """Tells every connected rank that this run stops, and why (rank 0 relays to all)."""
        for connection in self._connections.values():
            try:
                _send(connection, _ABORT, reason.encode()[:4096])
            except OSError:
                pass

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        if self.me.rank == 0:
            _remove_socket(self.path)


def _host(path: str, me: RankInfo, fd: int, deadline: float, timeout: float) -> tuple[Rendezvous, list[RankInfo], list[int]]:
    listener = _listen(path, me.world)
    connections: dict[int, socket.socket] = {}
    infos: dict[int, RankInfo] = {0: me}
    fds: dict[int, int] = {}
    rendezvous = Rendezvous(me, connections, path)
    try:
        while len(infos) < me.world:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([listener], [], [], remaining)[0]:
                missing = ", ".join(str(r) for r in range(me.world) if r not in infos)
                raise StallError(f"rank 0 of {me.world}: the rendezvous at {path}: rank(s) {missing} did not come within {timeout:g} s")
            connection, _ = listener.accept()
            sender = f"a process at {path}"
            try:
                data, received = _receive_with_fds(connection, _HELLO.size, 1, deadline, lambda: f"rank 0 of {me.world}: {sender}", timeout)
                info = RankInfo.unpack(data, sender)
                problem = me.agrees_with(info) or _placement(info, infos, received)
            except BaseException:
                connection.close()
                raise
            if problem:
                connection.close()
                close_fds(received)
                raise PeerError(f"rank 0 of {me.world}: rank {info.rank} (pid {info.pid}) at {path} has {problem}: start every rank of a run with the same settings")
            connections[info.rank], infos[info.rank], fds[info.rank] = connection, info, received[0]
        fds[0] = os.dup(fd)
        hellos = b"".join(infos[r].pack() for r in range(me.world))
        ordered = [fds[r] for r in range(me.world)]
        for connection in connections.values():
            _send(connection, _WELCOME, hellos, ordered)
        return rendezvous, [infos[r] for r in range(me.world)], ordered
    except BaseException as error:
        rendezvous.abort(str(error))
        rendezvous.close()
        close_fds(list(fds.values()))
        raise
    finally:
        listener.close()


def _placement(info: RankInfo, infos: dict[int, RankInfo], received: list[int]) -> str | None:
    if not 0 < info.rank < info.world:
        return f"rank number {info.rank}, outside 1..{info.world - 1}"
    if info.rank in infos:
        return f"the number of rank {info.rank} (pid {infos[info.rank].pid}), which came first"
    if len(received) != 1:
        return f"{len(received)} file descriptors where one buffer's comes"
    return None


def _guest(path: str, me: RankInfo, fd: int, deadline: float, timeout: float) -> tuple[Rendezvous, list[RankInfo], list[int]]:
    connection = _connect(path, me, deadline, timeout)
    rendezvous = Rendezvous(me, {0: connection}, path)
    fds: list[int] = []
    try:
        socket.send_fds(connection, [me.pack()], [fd])
        what = lambda: f"rank {me.rank} of {me.world}: the rendezvous at {path}: rank 0"  # noqa: E731
        head, fds = _receive_with_fds(connection, _FRAME.size, me.world, deadline, what, timeout)
        kind, length = _FRAME.unpack(head)
        body = _receive_exact(connection, _check_length(length, what()), deadline, what, timeout)
        if kind == _ABORT:
            raise StallError(f"rank {me.rank} of {me.world}: rank 0 stopped the rendezvous: {body.decode(errors='replace')}")
        if kind != _WELCOME or length != me.world * _HELLO.size or len(fds) != me.world:
            raise PeerError(f"{what()} answered {kind!r} with {length} bytes and {len(fds)} descriptors: it is not a Foundry rank 0 of {me.world}")
        infos = [RankInfo.unpack(body[r * _HELLO.size : (r + 1) * _HELLO.size], f"rank 0 (for rank {r})") for r in range(me.world)]
        for r, info in enumerate(infos):
            if info.rank != r or info.world != me.world:
                raise PeerError(f"{what()} described rank {r} as rank {info.rank} of {info.world}")
        return rendezvous, infos, fds
    except BaseException:
        rendezvous.close()
        close_fds(fds)
        raise


def _listen(path: str, backlog: int) -> socket.socket:
    """A listening socket at `path`, readable only by this user. A stale socket file of an
    ended run is replaced; a live one, or any other file, is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise PeerError(f"the rendezvous path {path} exists and is not a socket: choose another path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(path) == 0:
                raise PeerError(f"another rendezvous is listening at {path}: give each run a socket path of its own")
        _remove_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o077)
        try:
            listener.bind(path)
        finally:
            os.umask(previous)
        listener.listen(max(1, backlog))
    except OSError as error:
        listener.close()
        raise PeerError(f"rank 0 cannot listen at {path} ({error.strerror}): choose a path in a writable folder") from None
    return listener


def _connect(path: str, me: RankInfo, deadline: float, timeout: float) -> socket.socket:
    """Connects to rank 0, trying again until it listens or the deadline passes."""
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(path)
            return connection
        except (FileNotFoundError, ConnectionRefusedError):
            connection.close()
        if time.monotonic() > deadline:
            raise StallError(f"rank {me.rank} of {me.world}: the rendezvous at {path}: rank 0 did not listen within {timeout:g} s")
        time.sleep(0.02)


def _remove_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _send(connection: socket.socket, kind: bytes, payload: bytes, fds: list[int] | None = None) -> None:
    data = _FRAME.pack(kind, len(payload)) + payload
    if fds:
        sent = socket.send_fds(connection, [data], fds)
        if sent < len(data):  # a send of nothing to a peer that has closed would fail
            connection.sendall(data[sent:])
    else:
        connection.sendall(data)


def _check_length(length: int, sender: str) -> int:
    if length > MAX_FRAME:
        raise PeerError(f"{sender} announced {length} bytes (at most {MAX_FRAME} are read): it is not a Foundry rank")
    return length


def receive_frame(connection: socket.socket, deadline: float, sender, timeout: float) -> tuple[bytes, bytes]:  # noqa: ANN001 - a callable naming the sender
    """One frame (kind, payload) within the deadline; its announced length is capped before any read."""
    kind, length = _FRAME.unpack(_receive_exact(connection, _FRAME.size, deadline, sender, timeout))
    return kind, _receive_exact(connection, _check_length(length, sender()), deadline, sender, timeout)


def _receive_exact(connection: socket.socket, size: int, deadline: float, sender, timeout: float) -> bytes:  # noqa: ANN001
    chunks, missing = [], size
    while missing:
        connection.settimeout(max(1e-3, deadline - time.monotonic()))
        try:
            chunk = connection.recv(missing)
        except (socket.timeout, TimeoutError):
            raise StallError(f"{sender()} sent nothing within {timeout:g} s") from None
        except OSError as error:
            raise StallError(f"{sender()} left ({error.strerror})") from None
        if not chunk:
            raise StallError(f"{sender()} left (its connection closed)")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _receive_with_fds(connection: socket.socket, size: int, max_fds: int, deadline: float, sender, timeout: float) -> tuple[bytes, list[int]]:  # noqa: ANN001
    """`size` bytes, and the descriptors that came with the first of them."""
    connection.settimeout(max(1e-3, deadline - time.monotonic()))
    try:
        data, fds, _, _ = socket.recv_fds(connection, size, max_fds)
    except (socket.timeout, TimeoutError):
        raise StallError(f"{sender()} sent nothing within {timeout:g} s") from None
    except OSError as error:
        raise StallError(f"{sender()} left ({error.strerror})") from None
    if not data:
        close_fds(fds)
        raise StallError(f"{sender()} left (its connection closed)")
    try:
        rest = _receive_exact(connection, size - len(data), deadline, sender, timeout) if len(data) < size else b""
    except BaseException:
        close_fds(fds)
        raise
    return data + rest, fds


def _split(body: bytes, count: int, what: str) -> list[bytes]:
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(body):
            raise PeerError(f"{what}: rank 0's result is cut short")
        (length,) = struct.unpack_from("<I", body, offset)
        if offset + 4 + length > len(body):
            raise PeerError(f"{what}: rank 0's result is cut short")
        items.append(body[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if offset != len(body):
        raise PeerError(f"{what}: rank 0's result holds {len(body) - offset} bytes more than {count} payloads")
    return items


def close_fds(fds: list[int]) -> None:
    """Closes file descriptors, ignoring those already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
