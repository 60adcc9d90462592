"""Writes the seed corpus of the native fuzz target (fuzz_restore.cpp) to fuzz/native/corpus/:
real node tables, encoded by foundry_trace.archive._node_table.encode as SAVE encodes them, and
the tables of tests/data/micro.foundry. Each file is a 4-byte table length, the table, then the
payload (the input format of fuzz/fuzz_node_table.py too).
    python -m fuzz.native.make_corpus
Function numbers and argument sizes follow the fake functions of fuzz_restore.cpp: 0 takes 32
bytes, 1 takes 48, 2 takes 24, 3 nothing.
"""

from __future__ import annotations

import struct
from pathlib import Path

from foundry_trace.archive._node_table import MAX_GRAPH_DEPTH, encode
from foundry_trace.archive.format import Archive
from foundry_trace.archive.records import (
    ChildGraphNode,
    CollectiveNode,
    Edge,
    EmptyNode,
    EventRecordNode,
    EventWaitNode,
    GraphBody,
    KernelNode,
    MemcpyNode,
    MemsetNode,
)

HERE = Path(__file__).resolve().parent
ARGUMENT_BYTES = {0: 32, 1: 48, 2: 24, 3: 0}
BASE = 0x200000000000


def sample(table: bytes, payload: bytes) -> bytes:
    return struct.pack("<I", len(table)) + table + payload


def kernel(function: int, **attributes: bytes) -> KernelNode:
    arguments = bytes(range(ARGUMENT_BYTES[function]))
    return KernelNode(
        function=function,
        grid=(64, 1, 1),
        block=(128, 1, 1),
        shared_bytes=1024 * function,
        arguments=arguments,
        attributes={int(k.removeprefix("a")): v for k, v in attributes.items()},
    )


def value(*words: int) -> bytes:
    """A CUlaunchAttributeValue holding 32-bit words."""
    return struct.pack(f"<{len(words)}I", *words).ljust(64, b"\0")


def chain(*nodes) -> GraphBody:  # noqa: ANN002 - records
    return GraphBody(nodes=nodes, edges=tuple(Edge(source=i, destination=i + 1) for i in range(len(nodes) - 1)))


def nested(depth: int) -> GraphBody:
    """Child graphs nested `depth` deep, each level a kernel beside its child."""
    body = GraphBody(nodes=(kernel(2),), edges=())
    for _ in range(depth):
        body = chain(kernel(0), ChildGraphNode(graph=body))
    return body


def graphs() -> dict[str, GraphBody]:
    memset = MemsetNode(destination=BASE, pitch=0, value=7, element_size=4, width=1024, height=1)
    memcpy = MemcpyNode(
        source=BASE,
        source_pitch=0,
        source_height=0,
        source_offset=(0, 0, 0),
        destination=BASE + 4096,
        destination_pitch=0,
        destination_height=0,
        destination_offset=(0, 0, 0),
        extent=(4096, 1, 1),
    )
    attributes = {
        "a4": value(2, 1, 1),  # cluster dimension
        "a5": value(1),  # cluster scheduling policy
        "a8": value(1),  # priority
        "a9": value(0x0100),  # memory sync domain map
        "a14": value(50),  # preferred shared memory carveout
    }
    child = chain(kernel(3), memset)
    return {
        "kernels": chain(kernel(0), kernel(1), kernel(2), kernel(3)),
        "attributes": chain(kernel(0, **attributes), kernel(1, a2=value(1), a6=value(1))),
        "copies_and_events": chain(memset, memcpy, EventRecordNode(event=0), EventWaitNode(event=1), EmptyNode()),
        "children": GraphBody(
            nodes=(
                kernel(0),
                ChildGraphNode(graph=child),
                ChildGraphNode(graph=chain(ChildGraphNode(graph=child), kernel(1))),
            ),
            edges=(Edge(source=0, destination=1), Edge(source=0, destination=2)),
        ),
        "collectives": chain(kernel(2), CollectiveNode(collective=0), kernel(2), CollectiveNode(collective=3)),
        "programmatic": GraphBody(
            nodes=(kernel(0), kernel(1), kernel(2)),
            edges=(
                Edge(source=0, destination=1, from_port=1, type=1),
                Edge(source=1, destination=2),
                Edge(source=0, destination=2),
            ),
        ),
        "deepest": nested(MAX_GRAPH_DEPTH),
    }


def main() -> None:
    directory = HERE / "corpus"
    directory.mkdir(exist_ok=True)
    for name, body in graphs().items():
        encoded = encode(body)
        (directory / f"{name}.bin").write_bytes(sample(encoded.table, encoded.payload))
    with Archive(HERE.parent.parent / "tests" / "data" / "micro.foundry") as archive:
        for entry in archive.manifest.graphs:
            table, payload = archive.graph_blobs(entry)
            (directory / f"micro_{entry.key}.bin").write_bytes(sample(bytes(table), bytes(payload)))


if __name__ == "__main__":
    main()
