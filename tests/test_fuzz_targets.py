"""The fuzz targets of fuzz/, driven by hypothesis on the CPU: random and mutated inputs."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

import foundry_alloc as fa
from fuzz.fuzz_layout import one_input

from .sim_helpers import allocate

VALID = fa.Layout(
    device=0,
    base=0x200000000000,
    size=1 << 40,
    granularity=2 << 20,
    allocations=(fa.Allocation(address=0x200000000000, size=512, requested=100, arena="engine", sequence=0),),
).model_dump_json().encode()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_layout_parser_on_random_bytes(data: bytes) -> None:
    one_input(data)


@settings(max_examples=300)
@given(st.data())
def test_layout_parser_on_mutated_layouts(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            raw[position] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        elif action == "delete":
            del raw[position]
        elif action == "insert":
            raw.insert(position, data.draw(st.integers(min_value=0, max_value=255)))
        else:
            del raw[position:]
        if not raw:
            break
    one_input(bytes(raw))


def test_layout_parser_accepts_real_layouts(sim: fa.NativeAllocator) -> None:
    allocate(sim, 4096)
    one_input(sim.layout().model_dump_json().encode())
