"""`foundry inspect`: what an archive holds, for people (text) and machines (JSON)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from foundry_alloc.units import format_bytes
from foundry_trace._native import check_table
from foundry_trace.archive._node_table import Census, census
from foundry_trace.archive.format import Archive
from foundry_trace.archive.keys import group_of, key_order
from foundry_trace.archive.manifest import MAX_ARCHIVE_NODES, Manifest
from foundry_trace.archive.records import PEER_KERNEL_PREFIX
from foundry_trace.archive.signing import INVALID, UNVERIFIED, VERIFIED, signature_status
from foundry_trace.errors import ArchiveFormatError


def summarize(path: str | Path, trusted_keys: tuple[bytes, ...] = ()) -> dict[str, object]:
    """What the archive holds. Its cost follows the archive's size, never what it claims: each
    distinct node table and payload is read and checked once (graphs that share them share the
    work), a table is counted without being expanded (node_table.census), and the nodes all
    graphs expand to are capped over the archive (MAX_ARCHIVE_NODES). Signatures are checked
    against `trusted_keys` (raw Ed25519 keys): only those that verify are `signed_by`."""
    with Archive(path) as archive:
        m = archive.manifest
        censuses: dict[str, Census] = {}
        collective_figures: dict[str, tuple[int, int]] = {}  # per table: collective nodes, bytes reduced
        read: dict[str, bytes] = {}
        checked: set[tuple[str, str]] = set()
        uses: Counter = Counter()  # graphs per table
        expanded = 0
        graphs = []
        for graph in m.graphs:
            if (graph.table, graph.payload) not in checked:
                for digest in (graph.table, graph.payload):
                    if digest not in read:
                        read[digest] = archive.blob(digest)
                check_table(read[graph.table], read[graph.payload], len(m.functions), m.events, len(m.collectives), f"{archive.path}: graph {graph.key!r}")
                checked.add((graph.table, graph.payload))
                if graph.table not in censuses:
                    counted = censuses[graph.table] = census(read[graph.table])
                    peer = sum(n for i, n in counted.launches.items() if is_peer_all_reduce(m, i))
                    collective_figures[graph.table] = (
                        sum(counted.collectives.values()) + peer,
                        sum(m.collectives[i].size_bytes * n for i, n in counted.collectives.items()),
                    )
            counted = censuses[graph.table]
            uses[graph.table] += 1
            expanded += sum(counted.kinds.values())
            if expanded > MAX_ARCHIVE_NODES:
                raise ArchiveFormatError(
                    f"{archive.path}: its graphs expand to more than {MAX_ARCHIVE_NODES} nodes (child graphs counted once per "
                    "use, as the driver copies them): the archive is corrupted or hostile; save it again"
                )
            collectives, collective_bytes = collective_figures[graph.table]
            graphs.append(
                {
                    "key": graph.key,
                    "template": graph.template,
                    "nodes": counted.nodes,
                    "driver_nodes": graph.driver_nodes,
                    "edges": graph.driver_edges,
                    "outputs": [o.name for o in graph.outputs],
                    "collectives": collectives,
                    "collective_bytes": collective_bytes,
                }
            )
        kinds: Counter = Counter()
        launches: Counter = Counter()
        for table, count in uses.items():  # once per distinct table: graphs that share one share this work
            for kind, n in censuses[table].kinds.items():
                kinds[kind] += n * count
            for function, n in censuses[table].launches.items():
                launches[function] += n * count
        module_bytes = sum(mod.size for mod in m.modules)
        signatures = signature_status(archive, trusted_keys)
        return {
            "path": str(path),
            "archive_bytes": Path(path).stat().st_size,
            "format": archive.version,
            "digest": f"sha256:{archive.digest}",
            "signed_by": [key for key, status in signatures if status == VERIFIED],
            "signatures": [{"key": key, "status": status} for key, status in signatures],
            "fingerprint": m.fingerprint.model_dump(),
            "created": m.created,
            "graphs": graphs,
            "templates": len(m.templates),
            "nodes": sum(kinds.values()),
            "nodes_by_kind": dict(kinds.most_common()),
            "modules": [
                {"digest": mod.digest, "bytes": mod.size, "loaded_bytes": mod.loaded_size, "entries": mod.entries, "variables": len(mod.variables)}
                for mod in m.modules
            ],
            "module_bytes": module_bytes,
            "loaded_module_bytes": sum(mod.loaded_size for mod in m.modules),
            "kernels": [
                {"name": f.name, "module": m.modules[f.module].digest[:12], "launches": launches[i], "attributes": f.attributes}
                for i, f in enumerate(m.functions)
            ],
            "table_bytes": sum(m.blobs[g.table].size for g in m.graphs),
            "payload_bytes": sum(m.blobs[g.payload].size for g in m.graphs),
            "memory_segments": len(m.memory),
            "memory_bytes": sum(s.size for s in m.memory),
            "carried_memory_bytes": sum(m.blobs[s.contents].size for s in m.memory if s.contents),
            "events": m.events,
            "tensor_parallel": m.tensor_parallel,
            "distinct_collectives": len(m.collectives),
            "peer_window": m.peer_window.model_dump() if m.peer_window is not None else None,
        }


def is_peer_all_reduce(manifest: Manifest, function: int) -> bool:
    """Whether a function of a peer-window archive is one of the peer all-reduce kernels."""
    return manifest.peer_window is not None and manifest.functions[function].name.startswith(PEER_KERNEL_PREFIX)


def escaped(text: str) -> str:
    """`text` from an archive, safe to print: every character that is not printable (terminal
    escape sequences, other controls, bidirectional overrides) written as a Python escape, so
    an archive cannot move the cursor, clear the screen or draw lines of its own."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _signature_line(summary: dict[str, object]) -> str:
    """What is known of each signature block: only a block checked against a given key names
    its signer as such."""
    shown = {
        VERIFIED: "signed by {} (verified)",
        INVALID: "a signature naming trusted key {} DOES NOT VERIFY",
        UNVERIFIED: "an unverified signature block naming key {}",
    }
    blocks = summary["signatures"]
    line = "; ".join(shown[b["status"]].format(b["key"]) for b in blocks) or "not signed"
    return line + (" (give --trusted-keys to check it)" if any(b["status"] == UNVERIFIED for b in blocks) else "")


def _graph_lines(graphs: list[dict[str, object]], collectives: bool) -> list[str]:
    """A line per graph; where steps are cut into pieces (keys "8/00", "8/01", ...), a line per
    batch size instead: thousands of graphs stay readable."""
    groups: dict[str, list[dict[str, object]]] = {}
    for graph in sorted(graphs, key=lambda g: key_order(g["key"])):
        groups.setdefault(group_of(graph["key"]), []).append(graph)
    shown = "collectives (bytes reduced)" if collectives else ""
    if all(len(members) == 1 for members in groups.values()):
        lines = ["  graphs (key: nodes/edges, template" + (f", {shown}" if shown else "") + "):"]
        return lines + [
            f"    {g['key']}: {g['nodes']}/{g['edges']}, template {g['template']}"
            + (f", {g['collectives']} collectives ({format_bytes(g['collective_bytes'])})" if collectives else "")
            for g in graphs
        ]
    lines = ["  graphs by batch size (group: graphs, nodes/edges, templates" + (f", {shown}" if shown else "") + "):"]
    for group, members in groups.items():
        templates = sorted({g["template"] for g in members})
        line = (f"    {group}: {len(members)} graphs, {sum(g['nodes'] for g in members)}/{sum(g['edges'] for g in members)}, "
                f"templates {templates[0]}..{templates[-1]} ({len(templates)})")
        if collectives:
            line += f", {sum(g['collectives'] for g in members)} collectives ({format_bytes(sum(g['collective_bytes'] for g in members))})"
        lines.append(line)
    return lines


def render(summary: dict[str, object], *, kernels: int = 20) -> str:
    f = {key: escaped(value) if isinstance(value, str) else value for key, value in summary["fingerprint"].items()}
    lines = [
        f"{summary['path']}: {format_bytes(summary['archive_bytes'])}, format {summary['format']}, created {escaped(summary['created'])}",
        f"  digest {summary['digest']}, {_signature_line(summary)}",
        f"  for {f['gpu']} (sm {f['compute_capability']}), driver {f['driver']}, CUDA API {f['cuda_driver_api']}, "
        f"torch {f['torch']}, allocator {f['allocator_base']:#x} + {format_bytes(f['allocator_size'])}",
        f"  {len(summary['graphs'])} graphs in {summary['templates']} templates, {summary['nodes']} nodes: "
        + ", ".join(f"{count} {kind}" for kind, count in summary["nodes_by_kind"].items()),
        f"  {len(summary['kernels'])} kernels from {len(summary['modules'])} modules ({format_bytes(summary['module_bytes'])} "
        f"stored of {format_bytes(summary['loaded_module_bytes'])} loaded at SAVE); node tables "
        f"{format_bytes(summary['table_bytes'])}, payloads {format_bytes(summary['payload_bytes'])}",
        f"  memory: {summary['memory_segments']} segments, {format_bytes(summary['memory_bytes'])} "
        f"({format_bytes(summary['carried_memory_bytes'])} of contents carried); {summary['events']} events",
    ]
    collective_nodes = sum(g["collectives"] for g in summary["graphs"])
    window = summary["peer_window"]
    if window is not None:
        lines.append(
            f"  tensor parallelism {summary['tensor_parallel']} (one rank's step, the same on every rank): {collective_nodes} peer "
            f"all-reduce kernels over the peer window at {window['base']:#x} (stride {format_bytes(window['stride'])}, buffers of "
            f"{format_bytes(window['buffer_bytes'])})"
        )
    elif summary["tensor_parallel"] > 1 or collective_nodes:
        lines.append(
            f"  tensor parallelism {summary['tensor_parallel']} (one rank's step): {collective_nodes} collective nodes, "
            f"{summary['distinct_collectives']} distinct all-reduces, bound to the live communicator at LOAD"
        )
    lines += _graph_lines(summary["graphs"], collective_nodes > 0)
    ranked = sorted(summary["kernels"], key=lambda k: -k["launches"])
    lines.append(f"  kernels by launches (top {min(kernels, len(ranked))} of {len(ranked)}):")
    lines += [f"    {k['launches']:>7}  {escaped(k['name'][:110])}  [{k['module']}]" for k in ranked[:kernels]]
    return "\n".join(lines)
