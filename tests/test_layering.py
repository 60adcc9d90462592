"""The house's rule: imports run downward only. The library never imports the harness; SAVE and
LOAD never import each other; the archive and the binary readers never call the driver; the
allocator never imports foundry_trace. Read from the source (every import, top-level or not)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each part of the library, lowest first; a module may import its own part and the ones below.
LAYERS = [
    ("foundry_alloc",),
    ("foundry_trace.errors",),
    ("foundry_trace.driver", "foundry_trace.native"),
    ("foundry_trace.archive", "foundry_trace.binary"),
    ("foundry_trace.fingerprint",),
    ("foundry_trace.parallel",),
    ("foundry_trace.save", "foundry_trace.restore"),
    ("foundry_trace.mode", "foundry_trace"),
    ("foundry_trace.bench",),
    ("foundry_trace.cli",),
]
NO_DRIVER = ("foundry_trace.archive", "foundry_trace.binary")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> tuple[int, str] | None:
    """(layer, part) of a module of the project, the most specific part first."""
    found = [(layer, part) for layer, parts in enumerate(LAYERS) for part in parts if module == part or module.startswith(part + ".")]
    return max(found, key=lambda item: len(item[1])) if found else None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # a name, or a submodule, of the module
    return found


SOURCES = sorted(p for package in ("foundry_alloc", "foundry_trace") for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downward(path: Path) -> None:
    module = _module_name(path)
    own = _part(module)
    assert own is not None, f"{module} belongs to no layer of the house: add it to LAYERS"
    for imported in _imports(path):
        target = _part(imported)
        if target is None or target[1] == own[1]:
            continue
        assert target[0] < own[0] or (target[0] == own[0] and own[1] == "foundry_trace" and target[1] == "foundry_trace.mode"), (
            f"{module} ({own[1]}) imports {imported} ({target[1]}), which is not below it"
        )


@pytest.mark.parametrize("path", [p for p in SOURCES if _module_name(p).startswith(NO_DRIVER)], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_archive_and_the_binary_readers_do_not_call_the_driver(path: Path) -> None:
    imports = _imports(path)
    assert not any(i.startswith(("cuda.bindings", "foundry_trace.driver", "torch")) for i in imports), imports


def test_relative_imports_are_not_used_across_parts() -> None:
    """Absolute imports name the part they come from, so the rule above can read them."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "foundry_trace").rglob("*.py") if any(
        isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(ast.parse(p.read_text())))]
    assert offenders == []
