"""Fuzz target for the node table readers (native check + decode, and node_kinds, which LOAD
reads before the check to choose the graphs prefetch builds): a graph's table and payload come
from an archive file, and LOAD hands them to the native builder.

Any (table, payload) must decode or raise ArchiveFormatError: never another exception, a crash
(the check is C++), a hang or a huge allocation. node_kinds never raises, and on a table the
check accepts it names every kind decode finds.
    python -m fuzz.fuzz_node_table [atheris options]     coverage-guided, with atheris installed
The CPU suite runs the same target under hypothesis (tests/test_fuzz_targets.py).
"""

from __future__ import annotations

import struct

from foundry_trace.archive._node_table import decode, node_kinds
from foundry_trace.archive.records import GraphBody, walk_nodes
from foundry_trace.errors import ArchiveFormatError
from fuzz import run_atheris

FUNCTIONS, EVENTS, COLLECTIVES = 4, 4, 4


def one_input(data: bytes) -> None:
    """`data` is a 4-byte table length, the table, then the payload."""
    if len(data) < 4:
        return
    (length,) = struct.unpack_from("<I", data)
    table, payload = data[4 : 4 + length], data[4 + length :]
    kinds = node_kinds(table)
    try:
        body = decode(table, payload, FUNCTIONS, EVENTS, COLLECTIVES)
    except ArchiveFormatError:
        return
    assert kinds >= body_kinds(body), (kinds, body_kinds(body))  # never misses a kind the graph holds


def body_kinds(body: GraphBody) -> frozenset[str]:
    """The kinds of node a decoded graph holds, child graphs included (what node_kinds reads)."""
    return frozenset(node.kind for node in walk_nodes(body.nodes))


if __name__ == "__main__":
    run_atheris(one_input)
