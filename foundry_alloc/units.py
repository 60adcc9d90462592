"""Byte counts for people."""

from __future__ import annotations


def format_bytes(count: int | float) -> str:
    """1536 -> '1.50 KiB'; binary units, like the native core's messages."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"
