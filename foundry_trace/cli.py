"""The `foundry` command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

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


def _bench(arguments: argparse.Namespace) -> int:
    """Runs foundry_trace.bench_<kind>: each has run(workload, output_dir, **options) and render()."""
    module = importlib.import_module(f"foundry_trace.bench_{arguments.kind}")
    options = {name: getattr(arguments, name) for name in arguments.options}
    results = module.run(arguments.workload, None if arguments.no_write else arguments.output, **options)
    print(json.dumps(results, indent=2) if arguments.json else module.render(results))
    return 0


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

    bench = commands.add_parser("bench", help="benchmarks on the device")
    kinds = bench.add_subparsers(dest="kind", required=True)
    benches = {
        "alloc": "Foundry's allocator vs PyTorch's caching allocator (peak memory, alloc+free)",
        "save": "SAVE of the reference workload: archive size and contents",
        "load": "native warm-up + capture vs Foundry restore, same GPU, fresh processes",
    }
    for kind, description in benches.items():
        sub = kinds.add_parser(kind, help=description)
        sub.add_argument("--workload", default="tiny", help="tiny, small or llama8b (default tiny)")
        sub.add_argument("--output", type=Path, default=DEFAULT_RESULTS_DIR, help="directory for the results JSON")
        sub.add_argument("--no-write", action="store_true", help="print only")
        sub.add_argument("--json", action="store_true", help="print the results JSON instead of a table")
        sub.set_defaults(run=_bench, options=())
    kinds.choices["save"].add_argument("--archive", type=Path, help="keep the archive here (default: a temporary file)")
    kinds.choices["save"].set_defaults(options=("archive",))
    kinds.choices["load"].add_argument("--threads", type=int, default=4, help="instantiation threads (default 4)")
    kinds.choices["load"].set_defaults(options=("threads",))
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
