"""Fuzz target for the cubin trimmers (SAVE rewrites the module binaries the process loaded,
which include JIT output and whatever a library ships): cubin_trim.py's stubs and
cubin_compact.py's removal.

Any input must give a cut cubin, None, a CubinFormatError or (compaction) CompactionDeclined:
never another exception, a crash or a hang; a cut cubin must parse, keep the kernels asked for,
and cut again to nothing.
    python -m fuzz.fuzz_cubin_trim [atheris options]     coverage-guided, with atheris installed
    e.g. python -m fuzz.fuzz_cubin_trim fuzz/corpus/cubin -max_len=600000 -timeout=10 -rss_limit_mb=2048
(the seed corpus: the real cubins and fatbins of tests/data). The CPU suite runs the same target
under hypothesis (tests/test_fuzz_targets.py), and every input kept in fuzz/regressions/cubin
(each one failed once) through one_input (tests/test_cubin_trim.py).
"""

from __future__ import annotations

from foundry_trace.binary.compact import compact_cubin
from foundry_trace.binary.cubin import CubinFormatError, module_symbols
from foundry_trace.binary.trim import dropped_sections, trim_cubin
from foundry_trace.errors import CompactionDeclined
from fuzz import run_atheris


def one_input(data: bytes) -> None:
    try:
        keep = sorted(module_symbols(data).entries)[:1]
        trimmed = trim_cubin(data, keep)
        compacted = _compacted(data, keep)
    except CubinFormatError:
        return
    if trimmed is not None:
        assert trim_cubin(trimmed, module_symbols(trimmed).entries) is None
    if compacted is not None:
        entries = module_symbols(compacted).entries
        assert set(keep) <= entries
        assert not dropped_sections(compacted, entries)


def _compacted(data: bytes, keep: list[str]) -> bytes | None:
    try:
        return compact_cubin(data, dropped_sections(data, keep))
    except CompactionDeclined:
        return None


if __name__ == "__main__":
    run_atheris(one_input)
