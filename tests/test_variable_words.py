"""The words of a module variable that each load fills in (binary/variables.py): found by comparing
two loads' copies, left out of the comparison with the process's copy, and left out of LOAD's
write. Properties over arbitrary contents, on the CPU."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from foundry_trace.binary.variables import WORD, load_dependent_words, without_words, written_ranges

contents = st.binary(min_size=0, max_size=96)


@st.composite
def two_loads(draw: st.DrawFn) -> tuple[bytes, bytes, set[int]]:
    """A variable as two loads see it: equal but for some words holding different addresses."""
    first = draw(st.binary(min_size=1, max_size=96))
    words = draw(st.sets(st.sampled_from(range(0, len(first), WORD))))
    second = bytearray(first)
    for at in words:
        end = min(at + WORD, len(first))
        second[at] = (second[at] + 1) % 256  # one byte differs: the rest of an address may agree
        second[at + 1 : end] = draw(st.binary(min_size=end - at - 1, max_size=end - at - 1))
    return first, bytes(second), words


@given(two_loads())
def test_the_words_where_two_loads_differ_are_found(loads: tuple[bytes, bytes, set[int]]) -> None:
    first, second, words = loads
    assert load_dependent_words(first, second) == tuple(sorted(words))


@given(contents)
def test_no_second_copy_or_another_size_means_no_such_words(first: bytes) -> None:
    assert load_dependent_words(first, None) == ()
    assert load_dependent_words(first, first + b"\0") == ()


@given(two_loads(), st.data())
def test_a_copy_differing_only_in_those_words_counts_as_unchanged(loads: tuple[bytes, bytes, set[int]], data: st.DataObject) -> None:
    first, second, words = loads
    live = bytearray(first)
    for at in words:  # the process's own load put its own addresses there
        end = min(at + WORD, len(first))
        live[at:end] = data.draw(st.binary(min_size=end - at, max_size=end - at))
    assert without_words(bytes(live), words, first) == first
    if words != set(range(0, len(first), WORD)):
        at = data.draw(st.sampled_from([a for a in range(len(first)) if a - a % WORD not in words]))
        live[at] ^= 0xFF  # a byte the program changed outside them
        assert without_words(bytes(live), words, first) != first


@given(st.integers(0, 200), st.sets(st.integers(0, 30).map(lambda n: n * WORD)))
def test_load_writes_every_byte_but_the_skipped_words_once_and_in_order(size: int, skipped: set[int]) -> None:
    ranges = written_ranges(size, skipped)
    written = [at for start, end in ranges for at in range(start, end)]
    assert written == [at for at in range(size) if at - at % WORD not in skipped]
    assert all(start < end for start, end in ranges)
    assert all(end < start for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False))  # not touching: merged
