"""The `foundry` command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .engines import ATTENTION_CHOICES, WORKLOADS
from .restore import DEFAULT_THREADS

ATTENTION_HELP = (
    "load/verify: pin SDPA to one kernel family (default: the workload's own choice; torch's choice for the "
    "reference workload, whose cuDNN kernels are not reproducible at large batches; efficient for transformers models)"
)
WORKLOAD_HELP = "; ".join(f"{name}: {w.summary}" for name, w in WORKLOADS.items())

DEFAULT_RESULTS_DIR = Path("bench/results")


def _env(_: argparse.Namespace) -> int:
    import foundry_alloc

    from ._startup import ENVIRONMENT_VARIABLES as TRACE_VARIABLES

    print("Environment variables read at interpreter start-up (by the foundry_alloc.pth hook):")
    for name, meaning in {**foundry_alloc.ENVIRONMENT_VARIABLES, **TRACE_VARIABLES}.items():
        print(f"  {name:<24} {meaning}")
    try:
        config = foundry_alloc.AllocatorConfig.from_environment()
    except foundry_alloc.ConfigError as error:
        print(f"\ncurrent setting is invalid: {error}")
        return 2
    if config is None:
        print("\ncurrently off (FOUNDRY_ALLOC is unset or 0)")
    else:
        print(f"\ncurrently on: range {config.base:#x} + {config.size:#x} bytes per device")
    return 0


def _layout_diff(arguments: argparse.Namespace) -> int:
    import foundry_alloc

    first = foundry_alloc.Layout.read(arguments.first)
    second = foundry_alloc.Layout.read(arguments.second)
    diff = foundry_alloc.diff_layouts(first, second, arguments.arena or None)
    print(diff.render(str(arguments.first), str(arguments.second), limit=arguments.limit))
    return 0 if diff.equal else 1


BENCH_OPTIONS = {
    "alloc": (), "save": ("archive",), "load": ("threads", "attention"), "coverage": ("threads",), "tp": ("degrees", "archive", "layers"),
}
DEFAULT_WORKLOAD = "small"


def _bench(arguments: argparse.Namespace) -> int:
    """Runs foundry_trace.bench_<kind>: each has run(workload, output_dir, **options) and render()."""
    module = importlib.import_module(f"foundry_trace.bench_{arguments.kind}")
    options = {name: getattr(arguments, name) for name in BENCH_OPTIONS[arguments.kind]}
    workload = arguments.workload or (None if arguments.kind == "coverage" else DEFAULT_WORKLOAD)
    results = module.run(workload, None if arguments.no_write else arguments.output, **options)
    print(json.dumps(results, indent=2) if arguments.json else module.render(results))
    return 0


def _verify(arguments: argparse.Namespace) -> int:
    from .bench_load import run_children

    _, loaded = run_children(arguments.workload, arguments.threads, arguments.archive, full=False, attention=arguments.attention)
    print(
        f"{loaded['graphs']} graphs restored on {loaded['device']}: outputs equal SAVE's graphs bit for bit: "
        f"{loaded['bitwise_equal_saved']} (differ: {loaded['mismatched_saved'] or 'none'}; differ but nondeterministic here: "
        f"{loaded['mismatched_saved_nondeterministic'] or 'none'}; nondeterministic at SAVE: "
        f"{loaded['nondeterministic_saved'] or 'none'}); equal a native capture here: {loaded['bitwise_equal']} "
        f"(differ: {loaded['mismatched'] or 'none'}; nondeterministic here: {loaded['nondeterministic_native'] or 'none'})"
    )
    for batch, latency in loaded["latency"].items():
        print(f"  replay b={batch}: native {latency['native_ms']:.3f} ms, restored {latency['restored_ms']:.3f} ms ({latency['delta_pct']:+.2f} %)")
    return 0 if loaded["bitwise_equal_saved"] else 1


def _inspect(arguments: argparse.Namespace) -> int:
    from . import summary

    result = summary.summarize(arguments.archive)
    print(json.dumps(result, indent=2) if arguments.json else summary.render(result, kernels=arguments.kernels))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="foundry", description="Persist and restore CUDA graphs.")
    commands = root.add_subparsers(dest="command", required=True)

    env = commands.add_parser("env", help="show the FOUNDRY_* environment variables and their current setting")
    env.set_defaults(run=_env)

    diff = commands.add_parser("layout-diff", help="compare two layout files (exit status 1 when they differ)")
    diff.add_argument("first", type=Path)
    diff.add_argument("second", type=Path)
    diff.add_argument("--arena", action="append", help="compare only this arena (repeatable)")
    diff.add_argument("--limit", type=int, default=40, help="most differences to print")
    diff.set_defaults(run=_layout_diff)

    inspect = commands.add_parser("inspect", help="what an archive holds: graphs, templates, kernels, modules, fingerprint")
    inspect.add_argument("archive", type=Path)
    inspect.add_argument("--json", action="store_true", help="the full summary as JSON")
    inspect.add_argument("--kernels", type=int, default=20, help="kernels to list (by launches)")
    inspect.set_defaults(run=_inspect)

    bench = commands.add_parser(
        "bench",
        help="benchmarks on the device (default: load, native warm-up + capture vs Foundry restore)",
        description="load: native warm-up + capture vs Foundry restore, same GPU, fresh processes (table, JSON, PNG "
        "timeline); coverage: restore vs native capture, bit for bit, for transformers models, torch.compile, streams and "
        "fused attention; save: SAVE's archive size and contents; alloc: Foundry's allocator vs PyTorch's caching allocator; "
        "tp: tensor parallelism from one single-GPU SAVE per degree, every rank restored vs captured natively (NCCL).",
    )
    bench.add_argument("kind", nargs="?", choices=tuple(BENCH_OPTIONS), default="load")
    bench.add_argument(
        "--workload", help=f"default small (coverage: every model it covers, or a comma list). {WORKLOAD_HELP}"
    )
    bench.add_argument("--output", type=Path, default=DEFAULT_RESULTS_DIR, help="directory for the results JSON (and PNG)")
    bench.add_argument("--no-write", action="store_true", help="print only")
    bench.add_argument("--json", action="store_true", help="print the results JSON instead of a table")
    bench.add_argument("--archive", type=Path, help="save: keep the archive here; tp: the archive directory (default: temporary)")
    bench.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"load: restore threads (default {DEFAULT_THREADS})")
    bench.add_argument("--attention", choices=ATTENTION_CHOICES, help=ATTENTION_HELP)
    bench.add_argument("--degrees", default="1,2", help="tp: tensor-parallel degrees to SAVE (each on one GPU) and run where GPUs allow")
    bench.add_argument("--layers", type=int, help="tp: layers of the model (default: the workload's)")
    bench.set_defaults(run=_bench)

    verify = commands.add_parser(
        "verify", help="restore the reference workload and compare with SAVE's graphs and a native capture, bit for bit"
    )
    verify.add_argument("--workload", default=DEFAULT_WORKLOAD, choices=tuple(WORKLOADS), help=WORKLOAD_HELP)
    verify.add_argument("--archive", type=Path, help="an archive of that workload (default: SAVE one first)")
    verify.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    verify.add_argument("--attention", choices=ATTENTION_CHOICES, help=ATTENTION_HELP)
    verify.set_defaults(run=_verify)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    from foundry_alloc import FoundryAllocError

    from .errors import FoundryTraceError

    arguments = parser().parse_args(argv)
    try:
        return arguments.run(arguments)
    except (FoundryAllocError, FoundryTraceError) as error:
        print(f"foundry: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
