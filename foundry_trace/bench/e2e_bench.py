"""`foundry bench e2e`: the example program examples/generate.py end to end, the way a user runs
it, each run a fresh process on the same GPU: greedy tokens and times with native graphs (plain
PyTorch, no Foundry in the process) against graphs SAVEd once and restored (prefetch at process
start, load at the restore point), and eager (no graphs) for the tokens alone.

Per model: one SAVE (at the first batch size, the archive holding every batch size's graph);
then, REPEATS times, for each batch size a native run and a LOAD run, alternating (a drift of the
machine hits both sides; the medians are reported, every run kept); then an eager run per batch
size. A case per model and batch: whether the tokens are identical in every graph run (native,
SAVE, LOAD) and whether eager gives them too, and the medians of process start to first token,
the graph phase (warm-up + capture vs restore, from the restore point) and per-token latency.
What a run did not measure stays null.

The runs are the example itself, not a harness child: what is timed is what a user who copies it
gets. It is found in the current directory's examples/, else in the checkout this package lives
in (`--example` names another).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from foundry_trace.bench.budget import Budget
from foundry_trace.bench.children import run_program
from foundry_trace.errors import WorkloadError

EXAMPLE = Path("examples") / "generate.py"
DEFAULT_BATCHES = (1, 8)
DEFAULT_TOKENS = 100
DEFAULT_REPEATS = 3  # cold native and LOAD runs per batch size
GRAPH_MODES = ("native", "save", "load")  # their tokens must all be equal
# Left out of every run's environment: each mode sets Foundry up itself (the baseline not at all).
UNSET = ("FOUNDRY_MODE", "FOUNDRY_ARCHIVE", "FOUNDRY_ALLOC")
ENVIRONMENT_PROBE = "import json; from foundry_trace.bench.results import device_fields; print(json.dumps(device_fields()))"


def find_example(path: Path | None = None) -> Path:
    """The example to run: `path`, else examples/generate.py here or in the package's checkout."""
    candidates = [path] if path is not None else [Path.cwd() / EXAMPLE, Path(__file__).resolve().parents[2] / EXAMPLE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise WorkloadError(
        f"foundry bench e2e runs {EXAMPLE}, which is not at {', '.join(str(c) for c in candidates)}: "
        "run it from a checkout of the project, or name the file with --example"
    )


def _example_module(path: Path) -> ModuleType:
    """The example as a module, for its own argument parser (importing it imports torch, but
    touches no GPU: it runs only under __main__)."""
    spec = importlib.util.spec_from_file_location("foundry_e2e_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_flags(model: str | None, layers: int | None, batches: Sequence[int], tokens: int) -> list[str]:
    """The example's flags that every run of one model shares (the mode and batch added per run)."""
    flags = ["--batch-sizes", ",".join(str(b) for b in batches), "--tokens", str(tokens)]
    flags += ["--config", model] if model else []
    flags += ["--layers", str(layers)] if layers is not None else []
    return flags


def models_of(workload: str | None) -> list[str | None]:
    """The example's named configs of `workload`, a comma list (None: the example's default)."""
    return workload.split(",") if workload else [None]


def check_arguments(
    workload: str | None, *, layers: int | None = None, batches: Sequence[int] = DEFAULT_BATCHES, tokens: int = DEFAULT_TOKENS,
    repeats: int = DEFAULT_REPEATS, example: Path | None = None, budget_s: float | None = None,
) -> Path:
    """Raises WorkloadError for anything the bench or the example would refuse, before any GPU is
    asked for; returns the example's path."""
    if budget_s is not None and budget_s <= 0:
        raise WorkloadError(f"--budget-s {budget_s}: give a positive number of seconds, or leave it out for no limit")
    if repeats < 1:
        raise WorkloadError(f"--repeats must be at least 1, not {repeats}")
    if not batches:
        raise WorkloadError("--batches names no batch size")
    path = find_example(example)
    module = _example_module(path)
    unknown = [model for model in models_of(workload) if model is not None and model not in module.CONFIGS]
    if unknown:
        raise WorkloadError(f"foundry bench e2e runs the example's models ({', '.join(module.CONFIGS)}), not {', '.join(map(repr, unknown))}")
    parse = module.parse_arguments
    for model in models_of(workload):
        argv = [*model_flags(model, layers, batches, tokens), "--batch", str(batches[0])]
        try:
            parse(argv)
        except SystemExit:
            raise WorkloadError(f"{path} refuses the arguments {' '.join(argv)} (its message is above)") from None
    return path


def run_example(example: Path, flags: Sequence[str], mode: str, batch: int, scratch: Path, label: str, timeout: float) -> dict[str, object]:
    """One run of the example in a fresh process, stopped after `timeout` seconds; its report
    (the JSON of --output)."""
    output = scratch / f"{label.replace(' ', '-')}.json"
    command = [sys.executable, "-P", str(example), *flags, "--batch", str(batch), "--output", str(output)]
    if mode in ("save", "load"):
        command += [f"--{mode}", str(scratch / "e2e.foundry")]
    elif mode == "eager":
        command.append("--eager")
    environment = {k: v for k, v in os.environ.items() if k not in UNSET}
    print(f"foundry bench e2e: {label}", file=sys.stderr, flush=True)
    run_program(command, label=label, environment=environment, timeout=timeout)
    return json.loads(output.read_text())


def run_model(
    example: Path, model: str | None, *, layers: int | None, batches: Sequence[int], tokens: int, repeats: int, eager: bool,
    budget: Budget,
) -> tuple[list[dict[str, object]], int]:
    """Every run of one model (SAVE, then native and LOAD alternating, then eager), and the
    archive's size. SAVE and each batch size's first native and LOAD runs are required; a later
    pair starts only where the budget has room for both (as long as the longest pair so far), an
    eager run where it has room for the longest native run; what did not fit is in the budget's
    record."""
    flags = model_flags(model, layers, batches, tokens)
    name = model or "default"

    def timed(mode: str, batch: int, label: str) -> dict[str, object]:
        return budget.run(label, lambda timeout: run_example(example, flags, mode, batch, scratch, label, timeout))

    with tempfile.TemporaryDirectory(prefix="foundry-e2e-") as folder:
        scratch = Path(folder)
        reports = [timed("save", batches[0], f"{name} save b{batches[0]}")]
        archive_bytes = (scratch / "e2e.foundry").stat().st_size
        pairs_s: list[float] = []
        for repeat in range(repeats):
            for batch in batches:
                labels = [f"{name} {mode} b{batch} ({repeat + 1} of {repeats})" for mode in ("native", "load")]
                if repeat and not budget.allows(" and ".join(labels), max(pairs_s)):
                    continue
                reports += [timed(mode, batch, label) for mode, label in zip(("native", "load"), labels, strict=True)]
                pairs_s.append(sum(budget.children_s[label] for label in labels))
        natives_s = [seconds for label, seconds in budget.children_s.items() if label.startswith(f"{name} native ")]
        for batch in batches if eager else ():
            label = f"{name} eager b{batch}"
            if budget.allows(label, max(natives_s)):
                reports.append(timed("eager", batch, label))
    return reports, archive_bytes


def _median(reports: Sequence[Mapping[str, object]], field: str) -> float | None:
    """The median of `field` over `reports`; None where there is none, or one run lacks it."""
    values = [report.get(field) for report in reports]
    return statistics.median(values) if values and all(v is not None for v in values) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def e2e_case(name: str, batch: int, reports: Sequence[Mapping[str, object]], archive_bytes: int | None = None) -> dict[str, object]:
    """A case of the results file from the example's reports of one model and batch size (any
    mix of modes; a mode without reports leaves its fields null). The native runs' tokens are the
    reference: `tokens_equal` holds where every graph run (native, SAVE, LOAD) gave them and both
    native and LOAD ran; `tokens_equal_eager` where eager ran and gave them too."""
    by_mode = {mode: [r for r in reports if r["mode"] == mode and r["batch"] == batch] for mode in ("eager", *GRAPH_MODES)}
    native, load, save, eager = by_mode["native"], by_mode["load"], by_mode["save"], by_mode["eager"]
    reference = native[0]["tokens"] if native else None
    graph_runs = native + save + load
    tokens_equal = all(r["tokens"] == reference for r in graph_runs) if native and load else None
    native_phase, foundry_phase = _median(native, "graph_phase_s"), _median(load, "graph_phase_s")
    native_token, foundry_token = _median(native, "per_token_ms"), _median(load, "per_token_ms")
    any_run = next(iter(graph_runs + eager), {})
    return {
        "name": f"{name}-b{batch}",
        "model": name,
        "batch": batch,
        "description": any_run.get("description"),
        "graphs": len(any_run["batch_sizes"]) if any_run else None,
        "tokens": len(reference[0]) if reference else None,
        "tokens_equal": tokens_equal,
        "tokens_equal_eager": all(r["tokens"] == reference for r in eager) if eager and reference is not None else None,
        "first_token_native_s": _median(native, "first_token_s"),
        "first_token_foundry_s": _median(load, "first_token_s"),
        "graph_phase_native_s": native_phase,
        "graph_phase_foundry_s": foundry_phase,
        "graph_phase_speedup": _ratio(native_phase, foundry_phase),
        "per_token_ms_native": native_token,
        "per_token_ms_foundry": foundry_token,
        "per_token_delta_pct": (foundry_token / native_token - 1) * 100 if native_token and foundry_token is not None else None,
        "first_token_eager_s": _median(eager, "first_token_s"),
        "per_token_ms_eager": _median(eager, "per_token_ms"),
        "save_graph_phase_s": _median(save, "graph_phase_s"),  # capture, recording and writing the archive
        "archive_bytes": archive_bytes,
        "runs": {mode: [{k: r[k] for k in ("first_token_s", "graph_phase_s", "per_token_ms")} for r in runs]
                 for mode, runs in by_mode.items()},
        "token_ids": reference,
    }


def workload_label(workload: str | None, layers: int | None, reports: Sequence[Mapping[str, object]]) -> str:
    """The results file's workload: the models, and the layers where --layers cut them."""
    models = "-".join(dict.fromkeys(str(r["model"]) for r in reports)) or (workload or "default")
    return models + (f"-{layers}-layers" if layers is not None else "")


def run(
    workload: str | None, output_dir: Path | None, *, layers: int | None = None, batches: Sequence[int] = DEFAULT_BATCHES,
    tokens: int = DEFAULT_TOKENS, repeats: int = DEFAULT_REPEATS, example: Path | None = None, eager: bool = True,
    budget_s: float | None = None,
) -> dict[str, object]:
    """`workload`: a comma list of the example's named configs (None: its default). `budget_s`:
    the seconds the whole bench may take (budget.py): each run's time-out is what is left, and
    the optional runs that do not fit are left out and named in the results (skipped_for_time)."""
    from foundry_trace.bench.results import Case, ResultsFile

    path = check_arguments(workload, layers=layers, batches=batches, tokens=tokens, repeats=repeats, example=example, budget_s=budget_s)
    budget = Budget(budget_s)
    started = time.perf_counter()
    cases, reports = [], []
    for model in models_of(workload):
        runs, archive_bytes = run_model(
            path, model, layers=layers, batches=batches, tokens=tokens, repeats=repeats, eager=eager, budget=budget
        )
        reports += runs
        cases += [Case(**e2e_case(str(runs[0]["model"]), batch, runs, archive_bytes)) for batch in batches]
    environment = json.loads(run_program([sys.executable, "-P", "-c", ENVIRONMENT_PROBE], label="environment").strip().splitlines()[-1])
    results = ResultsFile.of_this_run(
        environment,
        what="e2e",
        workload=workload_label(workload, layers, reports),
        workload_desc=f"{EXAMPLE}: {tokens} greedy tokens at batch {', '.join(map(str, batches))}, a graph per batch size; "
        f"native graphs vs SAVE once + LOAD (prefetch at process start), {repeats} cold run(s) each in fresh processes, "
        f"medians{'; eager once per batch' if eager else ''}",
        gpus=1, cases=cases, bench_s=time.perf_counter() - started, **budget.record(),
    )
    if output_dir is not None:
        results.write(output_dir)
    return results.model_dump()


def render(results: dict[str, object]) -> str:
    from rich.table import Table

    from foundry_trace.bench.results import table_text

    table = Table(title=f"{results['device']}: {results['workload_desc']}")
    columns = ("case", "tokens", "= native/SAVE/LOAD", "= eager", "first token s native / Foundry",
               "graph phase s native / Foundry", "speed-up", "per token ms native / Foundry")
    for column in columns:
        table.add_column(column, justify="left" if column == "case" else "right")
    for c in results["cases"]:
        table.add_row(
            c["name"], _text(c["tokens"]), _text(c["tokens_equal"]), _text(c["tokens_equal_eager"]),
            f"{_text(c['first_token_native_s'], '.2f')} / {_text(c['first_token_foundry_s'], '.2f')}",
            f"{_text(c['graph_phase_native_s'], '.3f')} / {_text(c['graph_phase_foundry_s'], '.3f')}",
            _text(c["graph_phase_speedup"], ".1f") + ("x" if c["graph_phase_speedup"] is not None else ""),
            f"{_text(c['per_token_ms_native'], '.2f')} / {_text(c['per_token_ms_foundry'], '.2f')}",
        )
    return table_text(table, width=170)


def _text(value: object, spec: str = "") -> str:
    """A table cell: a measured value, or `-` for one not measured."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, spec)
