"""The tracer's registry of module binaries: each kept once, and explicit loads tied to the
CUmodule handle they returned (on the thread that loaded them)."""

from __future__ import annotations

import hashlib
import threading

from foundry_trace.modules import ModuleRegistry


def test_an_explicit_load_maps_its_handle_to_the_binary_it_loaded() -> None:
    registry = ModuleRegistry()
    registry.add(b"not an ELF: entries listed later by the driver")
    registry.add_handle(0x5000)
    assert registry.by_handle == {0x5000: hashlib.sha256(b"not an ELF: entries listed later by the driver").hexdigest()}
    assert len(registry.binaries) == 1 and len(registry.pending) == 1


def test_a_handle_without_a_load_on_its_thread_maps_nothing() -> None:
    registry = ModuleRegistry()
    registry.add(b"loaded on the main thread")
    other = threading.Thread(target=registry.add_handle, args=(0x6000,))
    other.start()
    other.join()
    registry.add_handle(0x7000)
    registry.add_handle(0x8000)  # a second handle for the same load: already taken
    assert list(registry.by_handle) == [0x7000]


def test_the_same_binary_loaded_twice_is_kept_once_under_both_handles() -> None:
    registry = ModuleRegistry()
    for handle in (0x1000, 0x2000):
        registry.add(b"same bytes")
        registry.add_handle(handle)
    assert len(registry.binaries) == 1
    assert registry.by_handle[0x1000] == registry.by_handle[0x2000]
