"""A blocking call that must not block for ever: NCCL's init and destroy wait for peers (or for
graphs) with no time limit of their own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from foundry_trace.errors import StallError

T = TypeVar("T")


def call_with_time_limit(what: str, function: Callable[[], T], seconds: float | None) -> T:
    """Runs `function` and returns its result, or raises StallError naming `what` once `seconds`
    have passed. A C call cannot be interrupted: on a stall it is left running on a daemon
    thread, which the process's exit ends (and frees its GPU memory with)."""
    if seconds is None:
        return function()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name=f"foundry-{what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise StallError(f"{what} did not return within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
