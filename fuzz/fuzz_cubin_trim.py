"""Fuzz target for the cubin trimmer (SAVE rewrites the module binaries the process loaded,
which include JIT output and whatever a library ships).

Any input must give a trimmed cubin, None or a CubinFormatError: never another exception, a
crash or a hang; a trimmed cubin must trim again to nothing.
    python -m fuzz.fuzz_cubin_trim [atheris options]     coverage-guided, with atheris installed
The CPU suite runs the same target under hypothesis (tests/test_fuzz_targets.py).
"""

from __future__ import annotations

from foundry_trace.cubin import CubinFormatError, module_symbols
from foundry_trace.cubin_trim import trim_cubin
from fuzz import run_atheris


def one_input(data: bytes) -> None:
    try:
        entries = sorted(module_symbols(data).entries)
        trimmed = trim_cubin(data, entries[:1])
    except CubinFormatError:
        return
    if trimmed is not None:
        assert trim_cubin(trimmed, module_symbols(trimmed).entries) is None


if __name__ == "__main__":
    run_atheris(one_input)
