"""Dependency graph helpers: cycles and groups (waves). Pure functions on names."""

from __future__ import annotations

from typing import Mapping, Sequence


def find_cycles(depends_on: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Every elementary cycle found by a DFS, each as [a, b, ..., a], each reported once."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {name: WHITE for name in depends_on}
    cycles: list[list[str]] = []
    seen: set = set()

    for root in sorted(depends_on):
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(sorted(depends_on.get(root, ()))))]
        path = [root]
        colour[root] = GREY
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                colour[node] = BLACK
                continue
            if child not in colour:
                continue
            if colour[child] == GREY:
                cycle = path[path.index(child):] + [child]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle)
            elif colour[child] == WHITE:
                colour[child] = GREY
                path.append(child)
                stack.append((child, iter(sorted(depends_on.get(child, ())))))
    return cycles


def dependency_groups(depends_on: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Group (wave) of each name: 1 without dependencies, else 1 + the highest group among them.

    Unknown names are ignored. Raises ValueError on a cycle (validation reports
    cycles with their rows first, so users never see this).
    """
    groups: dict[str, int] = {}
    for root in depends_on:
        if root in groups:
            continue
        on_path = {root}
        stack = [(root, iter(depends_on.get(root, ())))]
        while stack:
            node, deps = stack[-1]
            for dep in deps:
                if dep not in depends_on or dep in groups:
                    continue
                if dep in on_path:
                    raise ValueError(f"dependency cycle through {dep}; run find_cycles() first")
                on_path.add(dep)
                stack.append((dep, iter(depends_on.get(dep, ()))))
                break
            else:
                stack.pop()
                on_path.discard(node)
                groups[node] = 1 + max((groups[d] for d in depends_on.get(node, ()) if d in groups), default=0)
    return groups
