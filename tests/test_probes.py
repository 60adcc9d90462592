"""The probes' own arithmetic (their GPU runs are tools/gpu-check's cold-probe and replay-probe)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from foundry_trace.bench.probes.cold_restore import _gaps
from foundry_trace.restore._pipeline import Span

intervals = st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), min_size=1, max_size=30)


@given(intervals)
def test_idle_time_is_the_span_of_the_tasks_less_what_some_task_covers(raw: list[tuple[int, int]]) -> None:
    spans = [Span("graph", "build", "w", start / 1000, (start + length) / 1000) for start, length in raw]
    covered = set()
    for start, length in raw:
        covered.update(range(start, start + length))
    first, last = min(s for s, _ in raw), max(s + n for s, n in raw)
    gaps = _gaps(spans)
    assert abs(sum(length for _, length in gaps) - (last - first - len(covered)) / 1000) < 1e-3
    for start, length in gaps:  # each gap starts where a task ended, and no task runs within it
        assert length > 0 and any(abs(s.end - start) < 1e-9 for s in spans)
        assert not any(s.start < start + length - 1e-9 and s.end > start + 1e-9 for s in spans)


def test_the_module_probe_runs_side_variants_as_that_many_processes_started_together(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import pytest

    from foundry_trace.bench.probes import module_load

    assert [module_load.side_by_side(v) for v in ("serial", "threads-8", "side-1", "side-8", "eager-side-4")] == [1, 1, 1, 8, 4]
    module_load._start_together(tmp_path, "side-1", 1)  # alone: at once
    monkeypatch.setattr(module_load, "BARRIER_TIMEOUT_S", 0.05)
    with pytest.raises(TimeoutError, match="2 processes did not all start"):
        module_load._start_together(tmp_path, "side-2", 2)
    (tmp_path / "ready-side-3-1").touch()  # the other process's marker
    module_load._start_together(tmp_path, "side-3", 2)  # with this one's: both ready, no wait
    assert module_load._environments(["serial", "eager-side-8"]) == {"eager-side-8": {"CUDA_MODULE_LOADING": "EAGER"}}


def test_the_module_probe_names_a_cubins_largest_sections_and_never_raises_on_other_bytes() -> None:
    """The probe's first line: each large module's sections by size, read by the library's
    bounded ELF reader; a fatbin or damaged bytes are described, not raised on."""
    from pathlib import Path

    from foundry_trace.bench.probes.module_load import section_sizes

    data = Path(__file__).parent / "data"
    cubin = (data / "trim_kernels.cubin").read_bytes()
    sections = section_sizes(cubin, shown=50)
    names = [name for name, _ in sections]
    assert any(name.startswith(".text.") for name in names), names
    assert [size for _, size in sections] == sorted((size for _, size in sections), reverse=True)
    assert len(section_sizes(cubin, shown=3)) == 3
    assert section_sizes((data / "entries_two_archs.fatbin").read_bytes()) == "not an ELF image (a fatbin)"
    assert section_sizes(cubin[:100]).startswith("unreadable ELF")


def test_the_module_probe_counts_symbols_and_takes_only_the_debug_sections_out() -> None:
    """no-debug's images: every section but the debug frames and their relocations stays, with
    the same symbols (less the frames' section symbol); other bytes are described, not raised on."""
    from pathlib import Path

    from foundry_trace.bench.probes.module_load import section_sizes, symbol_counts, without_debug

    data = Path(__file__).parent / "data"
    cubin = (data / "trim_kernels.cubin").read_bytes()
    counts = symbol_counts(cubin)
    assert counts["functions"] == 8 and counts["objects"] == 5 and counts["relocations"][".rela.debug_frame"] > 0
    stripped = without_debug(cubin)
    assert isinstance(stripped, bytes) and len(stripped) < len(cubin)
    names = {name for name, _ in section_sizes(cubin, shown=100)}
    assert {name for name, _ in section_sizes(stripped, shown=100)} == {n for n in names if ".debug" not in n}
    after = symbol_counts(stripped)
    assert {**after, "sections": after["sections"] + 1, "relocations": None} == {**counts, "relocations": None}
    assert without_debug(stripped) == "kept: no debug sections"
    fatbin = (data / "entries_two_archs.fatbin").read_bytes()
    assert symbol_counts(fatbin) == without_debug(fatbin) == "not an ELF image (a fatbin)"
    assert symbol_counts(cubin[:100]).startswith("unreadable ELF") and without_debug(cubin[:100]).startswith("kept: ")


def test_the_cold_probes_schedule_variants_reach_load_and_the_seam() -> None:
    from foundry_trace.bench.probes.cold_restore import schedule_options

    assert schedule_options("builders-2-8") == {"builders": 2}
    assert schedule_options("chunk-16384-4-8") == {"chunk_nodes": 16384, "builders": 4, "native_chunks": False}
    assert schedule_options("native-4096-4-8") == {"chunk_nodes": 4096, "builders": 4, "native_chunks": True}
