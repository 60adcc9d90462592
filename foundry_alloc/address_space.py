"""Checks, before anything is reserved, that the fixed range is free in this process."""

from __future__ import annotations

from pathlib import Path

from . import _native
from .config import ENV_BASE, AllocatorConfig
from .errors import ReservationError


def host_mappings(maps: Path = Path("/proc/self/maps")) -> list[tuple[int, int, str]]:
    """(start, end, what) of every mapping of this process; empty where /proc is not available."""
    try:
        text = maps.read_text()
    except OSError:
        return []
    result = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        start, _, end = fields[0].partition("-")
        result.append((int(start, 16), int(end, 16), fields[5] if len(fields) > 5 else "[anonymous]"))
    return result


def check_range_free(config: AllocatorConfig) -> None:
    """Raises ReservationError naming the mapping that overlaps the first device's range."""
    begin, end = config.base, config.base + config.size
    for start, stop, what in host_mappings():
        if start < end and begin < stop:
            suggestion = _native.library().fa_suggest_base(config.size)
            hint = f"e.g. {ENV_BASE}={suggestion:#x} (free in this process)" if suggestion else "a lower size"
            raise ReservationError(
                f"the fixed range [{begin:#x}, {end:#x}) overlaps {what} at [{start:#x}, {stop:#x}) in this "
                f"process; choose another base ({hint}) and use it for SAVE and LOAD alike"
            )
