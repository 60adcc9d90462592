"""Fuzz targets: each module has one_input(data: bytes) and runs under atheris as a script."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_atheris(one_input: Callable[[bytes], None]) -> None:
    """Coverage-guided fuzzing of `one_input` with atheris (pip install atheris), under the cost
    oracle (fuzz/cost.py): an input past its time or memory allowance is a finding."""
    import atheris

    from fuzz.cost import bounded

    atheris.instrument_all()
    atheris.Setup(sys.argv, bounded(one_input))
    atheris.Fuzz()
