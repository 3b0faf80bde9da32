#!/usr/bin/env python3
"""Lists the `use` edges between the modules of Rust crates and fails when they form a circle.

    python scripts/module_cycles.py crates/ember-model crates/ember-cuda [--quiet]

A module is a file (or a folder's `mod.rs`, or a file named by `#[path]`). `use crate::...`,
`use super::...`, `use self::...`, paths into a child module and inline `crate::`/`super::`
paths all count. The check runs at every level of the module tree: the children of one module
must not use each other in a circle, where a child stands for itself and everything below it.
Edges from a module to its own ancestors are part of that module's implementation (a file
splitting its parent's `impl` or using its helpers) and do not count.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ModPath = tuple[str, ...]

_PATH_ATTR = re.compile(r'#\[path\s*=\s*"([^"]+)"\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;')
_MOD_DECL = re.compile(r"^\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
_USE = re.compile(r"\b(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")
_INLINE = re.compile(r"\b((?:crate|super|self)(?:::\w+)+)")


@dataclass(frozen=True)
class Edge:
    """`source` uses `target` (at `file`:`line`)."""

    source: ModPath
    target: ModPath
    file: str
    line: int


def _strip(text: str, strings: bool = True) -> str:
    """Removes comments (and string literals, unless `strings` is false), keeping line breaks so
    line numbers stay right."""
    out = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    if strings:
        out = re.sub(r'"(?:\\.|[^"\\])*"', '""', out)
    return re.sub(r"//[^\n]*", "", out)


def _expand(tree: str) -> list[str]:
    """The full paths of one use tree: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    start = tree.find("{")
    if start < 0:
        return [re.sub(r"\bas\w+$", "", tree)]
    prefix, body = tree[:start], tree[start + 1 : tree.rfind("}")]
    parts, depth, current = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current += ch
    parts.append(current)
    return [path for part in parts if part for path in _expand(prefix + part)]


def module_files(src: Path) -> dict[Path, ModPath]:
    """Every .rs file under `src` with its module path (honouring `#[path]`)."""
    modules: dict[Path, ModPath] = {}

    def visit(file: Path, path: ModPath) -> None:
        modules[file] = path
        text = _strip(file.read_text(), strings=False)
        folder = file.parent if file.name in ("lib.rs", "mod.rs") else file.parent / file.stem
        named = {}
        for target, name in _PATH_ATTR.findall(text):
            named[name] = file.parent / target
        for name in _MOD_DECL.findall(text):
            child = named.get(name)
            if child is None:
                child = folder / f"{name}.rs"
                if not child.exists():
                    child = folder / name / "mod.rs"
            if child.exists():
                visit(child, (*path, name))

    visit(src / "lib.rs", ())
    return modules


def edges_of(modules: dict[Path, ModPath], root: Path) -> list[Edge]:
    """The `use` edges of every module, each resolved to the longest module path it names
    (edges to the module's own ancestors included)."""
    known = set(modules.values())
    edges = []
    for file, module in modules.items():
        children = {m[-1] for m in known if m[:-1] == module and len(m) == len(module) + 1}
        text = _strip(file.read_text())
        paths: list[tuple[str, int]] = []
        for match in _USE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            paths += [(p, line) for p in _expand(match.group(1))]
        for match in _INLINE.finditer(_USE.sub("", text)):
            paths.append((match.group(1), text.count("\n", 0, match.start()) + 1))
        for path, line in paths:
            segments = [s for s in path.split("::") if s and s != "*"]
            if not segments:
                continue
            if segments[0] == "crate":
                resolved = segments[1:]
            elif segments[0] in ("self", "super"):
                base = list(module)
                while segments and segments[0] in ("self", "super"):
                    if segments.pop(0) == "super" and base:
                        base.pop()
                resolved = base + segments
            elif segments[0] in children:
                resolved = [*module, *segments]
            else:
                continue
            target: ModPath = ()
            for i in range(len(resolved), 0, -1):
                if tuple(resolved[:i]) in known:
                    target = tuple(resolved[:i])
                    break
            if target != module:
                edges.append(Edge(module, target, str(file.relative_to(root)), line))
    return edges


def _is_prefix(a: ModPath, b: ModPath) -> bool:
    return b[: len(a)] == a


def level_cycles(modules: set[ModPath], edges: list[Edge]) -> list[tuple[ModPath, list[list[Edge]]]]:
    """For every module, the circles among its children (each a list of one example edge per hop)."""
    found = []
    for parent in sorted(modules):
        children = sorted(m for m in modules if len(m) == len(parent) + 1 and _is_prefix(parent, m))
        if len(children) < 2:
            continue
        graph: dict[ModPath, dict[ModPath, Edge]] = defaultdict(dict)
        for e in edges:
            src = next((c for c in children if _is_prefix(c, e.source)), None)
            dst = next((c for c in children if _is_prefix(c, e.target)), None)
            # A child using its own ancestor (the parent or above) is not an edge between children.
            if src and dst and src != dst and not _is_prefix(e.target, e.source):
                graph[src].setdefault(dst, e)
        for cycle in _cycles(children, graph):
            found.append((parent, cycle))
    return found


def _cycles(nodes: list[ModPath], graph: dict[ModPath, dict[ModPath, Edge]]) -> list[list[Edge]]:
    """One example circle per strongly connected component of more than one node (Tarjan's
    algorithm; each circle names one edge per hop)."""
    index: dict[ModPath, int] = {}
    low: dict[ModPath, int] = {}
    stack: list[ModPath] = []
    on_stack: set[ModPath] = set()
    components: list[list[ModPath]] = []

    def connect(v: ModPath) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in nodes:
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        members = set(component)
        # Walk inside the component from its first node until a node repeats.
        path, seen, v = [], {}, component[0]
        while v not in seen:
            seen[v] = len(path)
            nxt = next(w for w in graph[v] if w in members)
            path.append(graph[v][nxt])
            v = nxt
        cycles.append(path[seen[v] :])
    return cycles


def _name(path: ModPath) -> str:
    return "crate" if not path else "::".join(path)


def check(crate: Path, quiet: bool) -> bool:
    """Prints the crate's module edges and circles; True when there is no circle."""
    modules = module_files(crate / "src")
    edges = [e for e in edges_of(modules, crate) if not _is_prefix(e.target, e.source)]
    print(f"{crate.name}: {len(modules)} modules, {len(edges)} use edges between them")
    if not quiet:
        pairs = sorted({(_name(e.source), _name(e.target)) for e in edges})
        for source, target in pairs:
            print(f"  {source} -> {target}")
    cycles = level_cycles(set(modules.values()), edges)
    for parent, cycle in cycles:
        hops = " -> ".join([_name(cycle[0].source), *(_name(e.target) for e in cycle)])
        print(f"  CIRCLE among the modules of {_name(parent)}: {hops}")
        for e in cycle:
            print(f"    {_name(e.source)} uses {_name(e.target)} at {e.file}:{e.line}")
    return not cycles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crates", nargs="+", type=Path, help="crate folders (each with src/lib.rs)")
    parser.add_argument("--quiet", action="store_true", help="print only counts and circles, not every edge")
    args = parser.parse_args(argv)
    ok = [check(crate, args.quiet) for crate in args.crates]
    print("module circles: none" if all(ok) else "module circles: FOUND (see above)")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
