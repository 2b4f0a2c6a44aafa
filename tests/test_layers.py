"""The layering of DESIGN.md, checked on the source: lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deploy_tasks"

# lowest first; a module may import its own layer and any layer below
LAYERS = {
    "errors": 0, "redact": 0, "processes": 0, "outcome": 0, "atomic": 0, "names": 0, "settings": 1, "inventory": 2,
    "plan": 3, "artifacts": 4, "configgen": 4,
    "transports": 5, "steps": 6, "runner": 7, "report": 8, "rehearsal": 9, "tasks": 10,
}


def _layer_of(dotted: str) -> int:
    return LAYERS[dotted.split(".")[0]]


def _imports(path: Path, package: str):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base[1:] + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            elif node.module and node.module.startswith("deploy_tasks."):
                names = [node.module[len("deploy_tasks."):]]
            else:
                continue
            for name in names:
                yield node.lineno, name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("deploy_tasks."):
                    yield node.lineno, alias.name[len("deploy_tasks."):]


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts
        if len(parts) == 2 and parts[1] == "__init__":
            continue
        module = ".".join(parts[1:])
        package = ".".join(parts[:-1]) if parts[-1] != "__init__" else ".".join(parts[:-1])
        if parts[-1] == "__init__":
            package = ".".join(parts[:-1])
        own = _layer_of(module)
        for line, target in _imports(path, package):
            if not target or target.split(".")[0] not in LAYERS:
                continue
            if _layer_of(target) > own:
                wrong.append(f"{rel}.py:{line} imports {target}")
    assert not wrong, "layering violations:\n" + "\n".join(wrong)


def test_tasks_py_is_thin():
    text = (PACKAGE.parent / "tasks.py").read_text()
    code = [l for l in text.splitlines() if l.strip() and not l.strip().startswith(("#", '"""'))]
    assert code == ["from deploy_tasks.tasks import ns  # noqa: F401"]
