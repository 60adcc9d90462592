"""A bench's time budget: each child gets what is left of it, and a phase that cannot finish in
time is skipped (or cut) and recorded, rather than failing the whole run.

A device call has a hard limit (10 minutes): a bench that runs past it loses everything it
measured, while one that knows its budget writes what it measured and says what it left out.
Phases come in two kinds. Required ones (SAVE, the native capture, the LOAD child and the cold
pairs) run with whatever is left; the rest are optional: before one starts, its expected
seconds (what a like child took earlier in the same run, where the caller knows it) must fit in
what is left, and a child cut by the budget's time-out is recorded as cut, not raised. Every
child's wall time is recorded too, so that the next run's accounting is measured, not guessed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from foundry_trace.bench.children import DEFAULT_TIMEOUT_S
from foundry_trace.errors import ChildProcessFailed

T = TypeVar("T")
RESERVE_S = 15.0  # kept back for writing the results, the table and the plot after the last child


@dataclass
class Budget:
    """`total_s` seconds from creation (None: no limit, every child gets the default time-out).
    `skipped` lists the phases left out or cut for time; `children_s` each child's wall time."""

    total_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    skipped: list[dict[str, object]] = field(default_factory=list)
    children_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.total_s is not None and self.total_s <= 0:
            raise ValueError(f"a time budget of {self.total_s} s: give a positive number of seconds, or none")
        if self.started < 0:
            self.started = self.clock()

    def left(self) -> float | None:
        """Seconds left for children (the reserve kept back), or None without a limit."""
        if self.total_s is None:
            return None
        return self.total_s - RESERVE_S - (self.clock() - self.started)

    def timeout(self) -> float:
        """The time-out of the next child: what is left (at least one second), at most the default."""
        left = self.left()
        return DEFAULT_TIMEOUT_S if left is None else max(1.0, min(DEFAULT_TIMEOUT_S, left))

    def allows(self, phase: str, expected_s: float | None) -> bool:
        """Whether optional `phase`, expected to take `expected_s` (None: not known), fits in what
        is left; if not, it is recorded as skipped."""
        left = self.left()
        if left is None or (left > 0 and (expected_s is None or expected_s <= left)):
            return True
        self.skipped.append({"phase": phase, "why": "not started: too little time left", "left_s": round(left, 1),
                             "expected_s": None if expected_s is None else round(expected_s, 1)})
        return False

    def run(self, phase: str, child: Callable[[float], T]) -> T:
        """Runs a required child, `child(timeout)`, recording its wall time; its failures raise."""
        timeout = self.timeout()
        began = self.clock()
        try:
            return child(timeout)
        finally:
            self.children_s[phase] = round(self.clock() - began, 2)

    def run_optional(self, phase: str, child: Callable[[float], T], expected_s: float | None = None) -> T | None:
        """Runs an optional child if it fits (allows()); None where it was skipped, or cut by the
        budget's time-out (recorded with the error, which names the child's log). A child that
        fails before its time-out still raises: the budget hides no fault."""
        if not self.allows(phase, expected_s):
            return None
        timeout = self.timeout()
        began = self.clock()
        try:
            return child(timeout)
        except ChildProcessFailed as error:
            spent = self.clock() - began
            if self.total_s is None or timeout >= DEFAULT_TIMEOUT_S or spent < timeout - 1.0:
                raise
            self.skipped.append({"phase": phase, "why": f"cut at the budget's time-out of {timeout:.0f} s: {error}",
                                 "left_s": 0.0, "expected_s": None if expected_s is None else round(expected_s, 1)})
            return None
        finally:
            self.children_s[phase] = round(self.clock() - began, 2)

    def record(self) -> dict[str, object]:
        """What a results file keeps of the budget."""
        return {"budget_s": self.total_s, "skipped_for_time": list(self.skipped), "children_s": dict(self.children_s)}
