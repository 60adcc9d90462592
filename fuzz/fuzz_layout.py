"""Fuzz target for the layout file parser (layout files cross machines: SAVE writes, LOAD reads).

Any input must give a Layout or a LayoutFormatError: never another exception, a crash or a hang.
    python -m fuzz.fuzz_layout [atheris options]     coverage-guided, with atheris installed
The CPU suite runs the same target under hypothesis (tests/test_fuzz_targets.py).
"""

from __future__ import annotations

from foundry_alloc import Layout, LayoutFormatError
from fuzz import run_atheris


def one_input(data: bytes) -> None:
    try:
        layout = Layout.parse(data)
    except LayoutFormatError:
        return
    # What parses must survive its own round trip.
    assert Layout.parse(layout.model_dump_json()) == layout


if __name__ == "__main__":
    run_atheris(one_input)
