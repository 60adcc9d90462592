"""`foundry inspect`: what an archive holds, for people (text) and machines (JSON)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from foundry_alloc.units import format_bytes
from foundry_trace.archive.format import Archive
from foundry_trace.archive.keys import group_of, key_order
from foundry_trace.archive.records import CollectiveNode, KernelNode, operation_count, walk_nodes
from foundry_trace.archive.signing import key_id


def summarize(path: str | Path) -> dict[str, object]:
    with Archive(path) as archive:
        m = archive.manifest
        kinds: Counter = Counter()
        launches: Counter = Counter()
        graphs = []
        for graph in m.graphs:
            body = archive.graph(graph)
            collectives = []
            for node in walk_nodes(body.nodes):
                kinds[node.kind] += 1
                if isinstance(node, KernelNode):
                    launches[node.function] += 1
                    if m.peer_window is not None and m.functions[node.function].name.startswith(PEER_KERNEL_PREFIX):
                        collectives.append(peer_all_reduce_bytes(node))
                elif isinstance(node, CollectiveNode):
                    collectives.append(m.collectives[node.collective].size_bytes)
            graphs.append(
                {
                    "key": graph.key,
                    "template": graph.template,
                    "nodes": operation_count(body.nodes),
                    "driver_nodes": graph.driver_nodes,
                    "edges": graph.driver_edges,
                    "outputs": [o.name for o in graph.outputs],
                    "collectives": len(collectives),
                    "collective_bytes": sum(collectives),
                }
            )
        module_bytes = sum(mod.size for mod in m.modules)
        return {
            "path": str(path),
            "archive_bytes": Path(path).stat().st_size,
            "format": archive.version,
            "digest": f"sha256:{archive.digest}",
            "signed_by": [key_id(s.public_key) for s in archive.signatures],
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


PEER_KERNEL_PREFIX = "foundry_peer_"  # parallel/peer_all_reduce.cu's kernels


def peer_all_reduce_bytes(node: KernelNode) -> int:
    """Bytes a peer all-reduce sums: its second argument counts 16-byte packs (data, packs, window)."""
    return int.from_bytes(node.arguments[8:16], "little") * 16 if len(node.arguments) >= 16 else 0


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
    f = summary["fingerprint"]
    lines = [
        f"{summary['path']}: {format_bytes(summary['archive_bytes'])}, format {summary['format']}, created {summary['created']}",
        f"  digest {summary['digest']}, signed by {', '.join(summary['signed_by']) or 'nobody'}",
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
    lines += [f"    {k['launches']:>7}  {k['name'][:110]}  [{k['module']}]" for k in ranked[:kernels]]
    return "\n".join(lines)
