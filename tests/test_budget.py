"""The benches' time budget (bench/budget.py): each child gets what is left, an optional phase
that does not fit is skipped and named, one cut by the budget's time-out is recorded, not
raised, and a genuine failure still raises."""

from __future__ import annotations

import pytest

from foundry_trace.bench.budget import RESERVE_S, Budget
from foundry_trace.bench.children import DEFAULT_TIMEOUT_S
from foundry_trace.errors import ChildProcessFailed


def _budget(total: float | None) -> tuple[Budget, list[float]]:
    clock = [100.0]
    return Budget(total, clock=lambda: clock[0]), clock


def test_each_child_gets_what_is_left_less_the_reserve_and_at_most_the_default() -> None:
    budget, clock = _budget(RESERVE_S + 300.0)
    seen: list[float] = []
    budget.run("save", lambda timeout: seen.append(timeout) or clock.__setitem__(0, clock[0] + 120.0))
    budget.run("native", lambda timeout: seen.append(timeout))
    assert seen == [300.0, 180.0]
    assert budget.children_s == {"save": 120.0, "native": 0.0}
    unlimited, _ = _budget(None)
    assert unlimited.timeout() == DEFAULT_TIMEOUT_S and unlimited.left() is None


def test_an_optional_phase_runs_only_where_its_expected_time_fits_and_is_named_otherwise() -> None:
    budget, clock = _budget(RESERVE_S + 60.0)
    assert budget.run_optional("prefetch", lambda timeout: "ran", expected_s=50.0) == "ran"
    clock[0] += 30.0
    assert budget.run_optional("background", lambda timeout: "ran", expected_s=40.0) is None
    assert budget.run_optional("fit point", lambda timeout: "ran") == "ran"  # unknown length: it gets what is left
    assert budget.skipped == [{"phase": "background", "why": "not started: too little time left", "left_s": 30.0, "expected_s": 40.0}]
    assert "background" not in budget.children_s and budget.record()["budget_s"] == RESERVE_S + 60.0


def test_a_child_cut_by_the_budget_is_recorded_and_a_child_failing_sooner_still_raises() -> None:
    budget, clock = _budget(RESERVE_S + 60.0)

    def stalls(timeout: float) -> None:
        clock[0] += timeout
        raise ChildProcessFailed("cold 2 stalled past the time-out of 60 s; its output: /tmp/x.log")

    assert budget.run_optional("cold 2", stalls) is None
    assert budget.skipped[0]["phase"] == "cold 2" and "/tmp/x.log" in budget.skipped[0]["why"]

    budget, clock = _budget(RESERVE_S + 60.0)

    def fails(timeout: float) -> None:
        clock[0] += 5.0
        raise ChildProcessFailed("cold 2 failed (exit 1)")

    with pytest.raises(ChildProcessFailed):
        budget.run_optional("cold 2", fails)
    with pytest.raises(ChildProcessFailed):  # without a budget, a stall is a failure as before
        Budget(None).run_optional("cold 2", stalls)


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Budget(0.0)
