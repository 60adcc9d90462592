"""The `foundry` command.

Library commands (need only the package): env, layout-diff, inspect, keygen, sign,
verify-signature. Harness commands (need the bench extra, `pip install 'foundry[bench]'`):
bench, verify; they run their GPU work in child processes under a time-out
(foundry_trace.bench.children).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from foundry_trace.bench import e2e_bench, tp_bench
from foundry_trace.bench.workloads import registry
from foundry_trace.bench.workloads.registry import ATTENTION_CHOICES, WORKLOADS  # names only: imports no torch
from foundry_trace.restore import DEFAULT_THREADS

WORKLOAD_HELP = "; ".join(f"{name}: {w.summary}" for name, w in WORKLOADS.items())
ATTENTION_HELP = (
    "pin SDPA to one kernel family (default: the workload's own choice; torch's choice for the reference workload, "
    "whose cuDNN kernels are not reproducible at large batches; efficient for transformers models)"
)
DEFAULT_RESULTS_DIR = Path("bench/results")
BENCH_OPTIONS = {
    "alloc": ("backend",), "save": ("archive",), "soak": (), "load": ("threads", "attention", "layers", "checkpoint", "budget_s", "archive"), "fit": ("threads", "attention", "budget_s"), "coverage": ("threads",), "tp": ("degrees", "archive", "layers", "attention", "communicator", "threads", "compare", "repeats", "builders"),
    "e2e": ("layers", "batches", "tokens", "repeats", "example", "eager", "budget_s"),
}
DEFAULT_WORKLOAD = "small"
OWN_DEFAULT = ("coverage", "e2e")  # benches whose default workload is their own (every case; the example's model)
BENCH_EXTRA = "the benchmark harness needs the bench extra: pip install 'foundry[bench]' (rich, matplotlib)"


def _env(_: argparse.Namespace) -> int:
    import foundry_alloc
    from foundry_trace.archive.signing import ENVIRONMENT_VARIABLES as TRUST_VARIABLES
    from foundry_trace.archive.signing import TrustPolicy, key_id
    from foundry_trace.errors import UntrustedArchiveError
    from foundry_trace.mode import ENVIRONMENT_VARIABLES as MODE_VARIABLES
    from foundry_trace.mode import mode_from_environment

    print("Environment variables (the allocator's and FOUNDRY_MODE's are read at interpreter start-up by the foundry_alloc.pth hook,")
    print("the trust variables by every LOAD):")
    for name, meaning in {**foundry_alloc.ENVIRONMENT_VARIABLES, **MODE_VARIABLES, **TRUST_VARIABLES}.items():
        print(f"  {name:<24} {meaning}")
    try:
        config = foundry_alloc.AllocatorConfig.from_environment()
        setting = mode_from_environment()
        policy = TrustPolicy.from_environment()
    except (foundry_alloc.ConfigError, UntrustedArchiveError) as error:
        print(f"\ncurrent setting is invalid: {error}")
        return 2
    if policy.trusted_keys:
        print(f"\nLOAD restores only archives signed by: {', '.join(key_id(k) for k in policy.trusted_keys)}")
    if policy.digest:
        print(f"\nLOAD restores only the archive sha256:{policy.digest}")
    if setting.mode is not None:
        config = setting.allocator
        print(f"\nFOUNDRY_MODE={setting.mode}: {'writes' if setting.mode == 'save' else 'restores'} {setting.archive}")
    if config is None:
        print("\nallocator currently off (FOUNDRY_ALLOC and FOUNDRY_MODE are unset or off)")
    else:
        print(f"\nallocator currently on: range {config.base:#x} + {config.size:#x} bytes per device; peer window of "
              f"tensor-parallel ranks {config.peer_window_base:#x} + {config.peer_window_size:#x} ({config.peer_stride:#x} a slot)")
    return 0


def _layout_diff(arguments: argparse.Namespace) -> int:
    import foundry_alloc

    first = foundry_alloc.Layout.read(arguments.first)
    second = foundry_alloc.Layout.read(arguments.second)
    diff = foundry_alloc.diff_layouts(first, second, arguments.arena or None)
    print(diff.render(str(arguments.first), str(arguments.second), limit=arguments.limit))
    return 0 if diff.equal else 1


def _inspect(arguments: argparse.Namespace) -> int:
    from foundry_trace.archive import summary
    from foundry_trace.archive.signing import TrustPolicy

    keys = TrustPolicy.from_environment().with_arguments(None, arguments.trusted_keys).trusted_keys
    result = summary.summarize(arguments.archive, keys)
    print(json.dumps(result, indent=2) if arguments.json else summary.render(result, kernels=arguments.kernels))
    return 0


def _keygen(arguments: argparse.Namespace) -> int:
    from foundry_trace.archive.signing import generate_key, key_id, load_public_key

    private, public = generate_key(arguments.out)
    print(f"wrote {private} (private: keep it where archives are signed) and {public} (key {key_id(load_public_key(public))}: "
          "give it to LOAD through FOUNDRY_TRUSTED_KEYS)")
    return 0


def _sign(arguments: argparse.Namespace) -> int:
    from foundry_trace.archive.signing import key_id, load_private_key, raw_public_key, sign_archive

    digest = sign_archive(arguments.archive, arguments.key)
    print(f"signed {arguments.archive} (digest sha256:{digest}) with key {key_id(raw_public_key(load_private_key(arguments.key)))}")
    return 0


def _verify_signature(arguments: argparse.Namespace) -> int:
    from foundry_trace.archive.signing import ENV_TRUSTED_KEYS, trusted_key_paths, verify_signatures

    keys = arguments.trusted_keys or trusted_key_paths()
    if not keys:
        print(f"foundry: name the trusted public keys with --trusted-keys or {ENV_TRUSTED_KEYS}", file=sys.stderr)
        return 2
    signers = verify_signatures(arguments.archive, keys)
    print(f"{arguments.archive}: intact, signed by trusted key {', '.join(signers)}")
    return 0


def _bench(arguments: argparse.Namespace) -> int:
    """Runs foundry_trace.bench.<kind>_bench: each has run(workload, output_dir, **options) and render()."""
    _require_bench_extra()
    from foundry_trace.bench.hardware import require_gpu

    module = importlib.import_module(f"foundry_trace.bench.{arguments.kind}_bench")
    options = {name: getattr(arguments, name) for name in BENCH_OPTIONS[arguments.kind]}
    for name in ("threads", "repeats", "builders"):
        if options.get(name, 0) is None:  # not given: the bench's own default
            del options[name]
    workload = arguments.workload or (None if arguments.kind in OWN_DEFAULT else DEFAULT_WORKLOAD)
    _check_workload(arguments.kind, workload, module, options)  # the arguments' errors before the hardware's
    if arguments.kind == "load" and arguments.checkpoint is not None:
        registry.require_checkpoint_support(workload)
    if arguments.kind == "load" and arguments.archive is not None:
        module.check_archive(arguments.archive, workload, {k: options.get(k) for k in ("attention", "layers")})
    if not (arguments.kind == "alloc" and arguments.backend == "host"):
        require_gpu(f"`foundry bench {arguments.kind}`")
    results = module.run(workload, None if arguments.no_write else arguments.output, **options)
    print(json.dumps(results, indent=2) if arguments.json else module.render(results))
    return 0


def _check_workload(kind: str, name: str | None, module: object, options: dict[str, object]) -> None:
    """Raises WorkloadError unless bench `kind` runs workload `name` with `options`."""
    if kind == "coverage":
        module.covered(name)
        return
    if kind == "e2e":  # the example's own models and checks
        module.check_arguments(name, **{k: v for k, v in options.items() if k != "eager"})
        return
    if kind == "tp":  # degrees, communicator and workload together
        module.check_arguments(name, **{k: v for k, v in options.items() if k not in ("archive", "attention")})
        return
    registry.workload(name)  # known
    if kind == "alloc":
        registry.require_decode(name, kind)
    if kind == "fit":
        registry.require_pieces(name)


def _verify(arguments: argparse.Namespace) -> int:
    _require_bench_extra()
    from foundry_trace.bench.verify import verify_archive

    loaded, workload = verify_archive(arguments.archive, arguments.workload, arguments.threads, attention=arguments.attention)
    against_saved = (
        f"outputs equal SAVE's graphs bit for bit: {loaded['bitwise_equal_saved']} (differ: {loaded['mismatched_saved'] or 'none'}; "
        f"differ but nondeterministic here: {loaded['mismatched_saved_nondeterministic'] or 'none'}; nondeterministic at SAVE: "
        f"{loaded['nondeterministic_saved'] or 'none'})"
        if loaded["has_references"]
        else "the archive holds no outputs of SAVE's graphs (not saved by `foundry bench save`): compared with a native capture alone"
    )
    print(
        f"{loaded['graphs']} graphs of {workload} restored on {loaded['device']}: {against_saved}; equal a native capture here: "
        f"{loaded['bitwise_equal']} (differ: {loaded['mismatched'] or 'none'}; differ but nondeterministic at SAVE: "
        f"{loaded.get('mismatched_nondeterministic_at_save') or 'none'}; nondeterministic here: {loaded['nondeterministic_native'] or 'none'})"
    )
    for batch, latency in loaded["latency"].items():
        print(f"  replay b={batch}: native {latency['native_ms']:.3f} ms, restored {latency['restored_ms']:.3f} ms ({latency['delta_pct']:+.2f} %)")
    return 0 if loaded["bitwise_equal"] and loaded.get("bitwise_equal_saved", True) else 1


def _require_bench_extra() -> None:
    try:
        import rich  # noqa: F401 - the harness's tables and progress
    except ImportError:
        raise SystemExit(f"foundry: {BENCH_EXTRA}") from None


def _batch_sizes(text: str) -> tuple[int, ...]:
    """A comma list of positive batch sizes, in the order given, each once."""
    try:
        sizes = tuple(dict.fromkeys(int(size) for size in text.split(",")))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"a comma list of positive batch sizes, e.g. 1,8; not {text!r}")
    return sizes


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="foundry", description="Persist and restore CUDA graphs.")
    commands = root.add_subparsers(dest="command", required=True)

    env = commands.add_parser("env", help="show the FOUNDRY_* environment variables, check and show their current setting")
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
    inspect.add_argument(
        "--trusted-keys", action="append",
        help="check signatures against this public key file or folder of *.pub (repeatable; added to FOUNDRY_TRUSTED_KEYS)",
    )
    inspect.set_defaults(run=_inspect)

    keygen = commands.add_parser("keygen", help="write a new Ed25519 key pair for signing archives (OUT and OUT.pub)")
    keygen.add_argument("--out", type=Path, required=True, help="the private key file; the public key goes to OUT.pub")
    keygen.set_defaults(run=_keygen)

    sign = commands.add_parser("sign", help="check an archive's blobs and add a signature of its digest (the file is rewritten atomically)")
    sign.add_argument("archive", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="the private key (foundry keygen)")
    sign.set_defaults(run=_sign)

    verify_signature = commands.add_parser("verify-signature", help="check an archive's blobs and its signature by a trusted key")
    verify_signature.add_argument("archive", type=Path)
    verify_signature.add_argument(
        "--trusted-keys", action="append", help="a public key file or a folder of *.pub (repeatable; default FOUNDRY_TRUSTED_KEYS)"
    )
    verify_signature.set_defaults(run=_verify_signature)

    bench = commands.add_parser(
        "bench",
        help="benchmarks on the device (default: load, native warm-up + capture vs Foundry restore)",
        description="load: native warm-up + capture vs Foundry restore, same GPU, fresh processes (table, JSON, PNG "
        "timeline); coverage: restore vs native capture, bit for bit, for transformers models, torch.compile, streams and "
        "fused attention; save: SAVE's archive size and contents; alloc: Foundry's allocator vs PyTorch's caching allocator "
        "(--backend host: the placement code alone, without a GPU); tp: tensor parallelism from one single-GPU SAVE per "
        "degree, every rank restored vs captured natively (NCCL, or the peer communicator); soak: 1,000 failed loads of each kind, then a good one, "
        "and the process unchanged; fit (piecewise workloads): restore and driver-alone time against graph and node counts, "
        "least squares over five archives of the workload (two of them subsets of the others); e2e: examples/generate.py end to end (greedy tokens, process start "
        "to first token, graph phase, per-token latency), native graphs vs SAVE + LOAD, in fresh processes.",
    )
    bench.add_argument("kind", nargs="?", choices=tuple(BENCH_OPTIONS), default="load")
    bench.add_argument(
        "--workload",
        help=f"default small (coverage: every case it covers, or a comma list; e2e: the example's model configs, a comma list, "
        f"default llama-3-8b). {WORKLOAD_HELP}",
    )
    bench.add_argument("--output", type=Path, default=DEFAULT_RESULTS_DIR, help="directory for the results JSON (and PNG)")
    bench.add_argument("--no-write", action="store_true", help="print only")
    bench.add_argument("--json", action="store_true", help="print the results JSON instead of a table")
    bench.add_argument("--archive", type=Path, help="save: keep the archive here; load: SAVE's archive, kept, and "
                       "restored without a new SAVE where it exists already (the same workload and options); tp: the archive directory "
                       "(default: temporary)")
    bench.add_argument(
        "--threads", type=int,
        help=f"load, fit, coverage: restore threads (default {DEFAULT_THREADS}); tp: each rank's (default: the machine's cores "
        f"shared among its ranks, at most {DEFAULT_THREADS})",
    )
    bench.add_argument(
        "--builders", help="tp: each LOAD rank's cap on graphs built at a time, B (default LOAD's own) or B:C with chunks of at most C "
        "nodes; or a comma list of them restored side by side in every cold pair, the first the case's (e.g. default,4:4096)",
    )
    bench.add_argument("--attention", choices=ATTENTION_CHOICES, help=ATTENTION_HELP)
    bench.add_argument(
        "--compare", choices=("all", "latency"), default="all",
        help="tp: the LOAD ranks compare every batch size bit for bit with a native capture (all), or only the latency batch "
        "sizes 1, 64 and 256 (latency: many ranks sharing one GPU at full size, whose replays wait for every peer's time slice)",
    )
    bench.add_argument("--degrees", default="1,2", help="tp: tensor-parallel degrees to SAVE (each on one GPU) and run where GPUs allow")
    bench.add_argument("--layers", type=int, help="tp, load, e2e: layers of the model (default: the workload's)")
    bench.add_argument(
        "--budget-s", type=float,
        help="load, fit, e2e: seconds the whole bench may take (default: no limit); each child gets what is left, and what does "
        "not fit (later cold pairs, prefetch, background, the fit's points, e2e's later repeats and eager runs) is left out and "
        "named in the JSON (skipped_for_time)",
    )
    bench.add_argument("--batches", type=_batch_sizes, default=e2e_bench.DEFAULT_BATCHES,
                       help="e2e: batch sizes, a graph each, every one generated at (default 1,8)")
    bench.add_argument("--tokens", type=int, default=e2e_bench.DEFAULT_TOKENS, help="e2e: greedy tokens per sequence (default %(default)s)")
    bench.add_argument("--repeats", type=int,
                       help=f"e2e: cold native and LOAD runs per batch size (default {e2e_bench.DEFAULT_REPEATS}); tp: cold pairs of "
                       f"driver-alone and restoring ranks per degree, alternating (default {tp_bench.DEFAULT_REPEATS}); medians reported")
    bench.add_argument("--example", type=Path, help="e2e: the example program (default examples/generate.py of the checkout)")
    bench.add_argument("--no-eager", dest="eager", action="store_false", help="e2e: skip the eager runs (tokens without graphs)")
    bench.add_argument(
        "--checkpoint", type=Path,
        help="load: the folder of the weights' safetensors checkpoint, written once and reused by later runs (transformers "
        "workloads; default for qwen3-235b-rank: a temporary folder on local disk; where the disk is too small, a folder on "
        "tmpfs, e.g. /dev/shm/qwen3-235b-rank)",
    )
    bench.add_argument(
        "--communicator", choices=("nccl", "peer"), default="nccl",
        help="tp: nccl (a GPU a rank; collectives bound at LOAD) or peer (all-reduce kernels over peer memory; ranks share GPUs where there are fewer)",
    )
    bench.add_argument("--backend", choices=("cuda", "host"), default="cuda", help="alloc: cuda (default) or host, the placement code without a GPU")
    bench.set_defaults(run=_bench)

    verify = commands.add_parser(
        "verify",
        help="restore an archive and compare it with SAVE's graphs and a native capture, bit for bit",
        description="Restores the archive in a fresh process, rebuilding the engine of the workload that wrote it (the "
        "archive's metadata names it), captures the same graphs natively there and compares the outputs, bit for bit, with "
        "that capture and with the outputs SAVE stored in the archive. Without --archive, SAVEs the workload first.",
    )
    verify.add_argument("--archive", type=Path, help="an archive written by `foundry bench save` (default: SAVE one first)")
    verify.add_argument("--workload", choices=tuple(WORKLOADS), help="the workload that rebuilds the engine (default: the one the archive names, else small)")
    verify.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    verify.add_argument("--attention", choices=ATTENTION_CHOICES, help=ATTENTION_HELP)
    verify.set_defaults(run=_verify)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    from foundry_alloc import FoundryAllocError
    from foundry_trace.errors import FoundryTraceError

    arguments = parser().parse_args(argv)
    try:
        return arguments.run(arguments)
    except (FoundryAllocError, FoundryTraceError) as error:
        print(f"foundry: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
