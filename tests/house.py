"""The house's rules, read from a source tree (the real one, or a copy with a planted violation):
every module placed in a layer, imports only downward (static, function-level and dynamic ones,
and the lines of `.pth` start-up hooks), and no driver use below the line, followed through
every import, not one level.

A module is placed by the most specific part of LAYERS naming it: a package part places the
modules inside it, a module part only itself; the top-level packages are placed as modules, so
a new module under foundry_trace/ falls into no layer until it is added to LAYERS."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("foundry_alloc", "foundry_trace")
# Each part of the library, lowest first; a module may import its own part and the ones below.
# A `.pth` hook is placed like a module, by its file name.
LAYERS: list[tuple[str, ...]] = [
    ("foundry_alloc",),
    ("foundry_trace.errors",),
    ("foundry_trace._driver", "foundry_trace._native"),
    ("foundry_trace.archive", "foundry_trace.binary"),
    ("foundry_trace.fingerprint",),
    ("foundry_trace.parallel",),
    ("foundry_trace.save", "foundry_trace.restore"),
    ("foundry_trace.mode", "foundry_trace", "foundry_alloc.pth"),
    ("foundry_trace.bench",),
    ("foundry_trace.cli",),
]
MODULE_PARTS = {"foundry_trace", "foundry_trace.errors", "foundry_trace._driver", "foundry_trace._native", "foundry_trace.fingerprint",
                "foundry_trace.mode", "foundry_trace.cli", "foundry_alloc.pth"}
# The start-up hook's own layer may import foundry_trace.mode, the module it activates.
SAME_LAYER_ALLOWED = {("foundry_trace", "foundry_trace.mode"), ("foundry_alloc.pth", "foundry_trace.mode")}
BELOW_THE_LINE = ("foundry_trace.archive", "foundry_trace.binary")  # no driver use, however indirect
HARNESS = ("foundry_trace.bench", "foundry_trace.cli")
DRIVER = ("cuda", "torch", "cupti", "foundry_trace._driver")  # the driver, or what calls it


@dataclass
class Tree:
    """The modules of a source tree and what each imports (project modules resolved to files)."""

    root: Path
    imports: dict[str, set[str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, root: Path) -> Tree:
        tree = cls(root)
        for package in PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                name = module_name(path.relative_to(root))
                tree.imports[name] = tree._imports_of(ast.parse(path.read_text()), name, path.name == "__init__.py")
        for hook in sorted(root.glob("*.pth")):
            lines = [line for line in hook.read_text().splitlines() if line.startswith(("import ", "import\t"))]
            tree.imports[hook.name] = tree._imports_of(ast.parse("\n".join(lines)), hook.name, False)
        return tree

    def _imports_of(self, syntax: ast.AST, module: str, is_package: bool) -> set[str]:
        package = module if is_package else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(syntax):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
                found |= {f"{base}.{alias.name}" for alias in node.names}  # a name, or a submodule, of the module
            elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
                target = _literal_prefix(node.args[0]) if node.args else None
                if target is None:
                    self.unreadable.append(f"{module}: a dynamic import whose module is not written out (line {node.lineno})")
                else:
                    found.add(target)
        return found

    def resolved(self, name: str) -> str | None:
        """The project module `name` is (or is a name inside), or None for another package."""
        while name:
            if name in self.imports:
                return name
            name = name.rpartition(".")[0]
        return None

    def targets(self, module: str) -> set[str]:
        """The project modules `module` imports directly (itself left out)."""
        return {target for name in self.imports[module] if (target := self.resolved(name)) not in (None, module)}

    def reach(self, module: str) -> set[str]:
        """Every name `module` imports, directly or through any chain of project modules (and
        the packages above each, but the top-level ones, whose own import gathers everything)."""
        seen, names, todo = {module}, set(), [module]
        while todo:
            for name in self.imports[todo.pop()]:
                names.add(name)
                target = self.resolved(name)
                for step in ([target] if target else []) + (_ancestors(target) if target else []):
                    if step not in seen and step in self.imports:
                        seen.add(step)
                        todo.append(step)
        return names


def module_name(relative: Path) -> str:
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _is_dynamic_import(function: ast.expr) -> bool:
    return (isinstance(function, ast.Name) and function.id in ("__import__", "import_module")) or (
        isinstance(function, ast.Attribute) and function.attr == "import_module"
    )


def _literal_prefix(argument: ast.expr) -> str | None:
    """The module a dynamic import names: a string, or the package an f-string's leading text names."""
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return argument.value
    if isinstance(argument, ast.JoinedStr) and argument.values and isinstance(argument.values[0], ast.Constant):
        text = str(argument.values[0].value)
        return text.rpartition(".")[0] or None
    return None


def part_of(module: str) -> tuple[int, str] | None:
    """(layer, part) of a module of the project: the most specific part naming it, or None."""
    found = [
        (layer, part) for layer, parts in enumerate(LAYERS) for part in parts
        if module == part or (part not in MODULE_PARTS and module.startswith(part + "."))
    ]
    return max(found, key=lambda item: len(item[1])) if found else None


def violations(root: Path) -> list[str]:
    """Every breach of the house's rules in the tree at `root`; empty when it keeps them."""
    tree = Tree.read(root)
    found = list(tree.unreadable)
    for module, imports in tree.imports.items():
        own = part_of(module)
        if own is None:
            found.append(f"{module} belongs to no layer of the house: add it to LAYERS")
            continue
        for name in sorted(imports):
            target_module = tree.resolved(name)
            target = part_of(target_module) if target_module else None
            if target is None or target[1] == own[1]:
                continue
            if not (target[0] < own[0] or (own[1], target[1]) in SAME_LAYER_ALLOWED):
                found.append(f"{module} ({own[1]}) imports {name} ({target[1]}), which is not below it")
        if module.startswith(BELOW_THE_LINE):
            driver = sorted(n for n in tree.reach(module) if n.split(".")[0] in DRIVER or n.startswith(DRIVER))
            if driver:
                found.append(f"{module} reaches the driver through its imports: {', '.join(driver)}")
    return found + _cycles(tree)


def _cycles(tree: Tree) -> list[str]:
    """Pairs of library modules (the harness aside) each reaching the other: a cycle, even
    through a function-level import, means the two are one concept or one is misplaced."""
    library = {m for m in tree.imports if not m.startswith(HARNESS)}
    graph = {m: tree.targets(m) & library for m in library}
    found = []
    for module in sorted(library):
        for target in sorted(graph[module]):
            seen, todo = {target}, [target]
            while todo:
                for step in graph[todo.pop()] - seen:
                    seen.add(step)
                    todo.append(step)
            if module in seen and module < target:
                found.append(f"{module} and {target} import each other (a cycle)")
    return found
