"""No import circles in the package: every import of a vit_ablate module, at module level or inside a
function, read from the source, makes an edge; the graph of the package's parts (cli, config, model,
training, data, sweep, report, analyze, bench, ...) and the graph of its modules must both be acyclic."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "vit_ablate"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative).with_suffix(".py").is_file() or (PACKAGE.parent / relative / "__init__.py").is_file()


def import_graph() -> Dict[str, Set[str]]:
    """module → the vit_ablate modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    graph: Dict[str, Set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = graph.setdefault(name, set())
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # `if TYPE_CHECKING:` imports count too: a circle there is one in the design
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("vit_ablate"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if not module.startswith("vit_ablate"):
                    continue
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if _is_module(sub) else module)
        targets.discard(name)
    return graph


def part_of(module: str) -> str:
    """``vit_ablate.model.vit`` → ``vit_ablate.model``; top-level modules are parts of their own."""
    return ".".join(module.split(".")[:2])


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle as a path [a, b, ..., a], or [] when the graph is acyclic (depth-first search)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_function_level_and_from_package_imports():
    graph = import_graph()
    assert "vit_ablate.model" in graph["vit_ablate"]  # the lazy `from vit_ablate import model` inside __getattr__
    assert "vit_ablate.training.run" in graph["vit_ablate.cli"]  # imported inside cmd_train
    assert len(graph) > 60


def test_no_import_circle_between_the_parts():
    graph = import_graph()
    parts: Dict[str, Set[str]] = {}
    for module, targets in graph.items():
        parts.setdefault(part_of(module), set()).update(part_of(t) for t in targets if part_of(t) != part_of(module))
    parts.pop("vit_ablate", None)  # the package's own __init__ only re-exports model names lazily
    assert find_cycle(parts) == []


def test_no_import_circle_between_the_modules():
    assert find_cycle(import_graph()) == []


def test_config_and_model_schema_import_without_torch():
    """The model section's schema is owned by model/ and read by config.py without importing torch."""
    import subprocess
    import sys

    code = "import sys, vit_ablate.config, vit_ablate.model.schema; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def _private_lightning_uses(tree: ast.AST, where: str) -> List[str]:
    found: List[str] = []
    for node in ast.walk(tree):
        at = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("lightning", "pytorch_lightning")):
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"{at} imports from {node.module}")
            found += [f"{at} imports {alias.name}" for alias in node.names if alias.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [f"{at} imports {alias.name}" for alias in node.names
                      if alias.name.startswith(("lightning", "pytorch_lightning")) and any(p.startswith("_") for p in alias.name.split("."))]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and node.attr.endswith("_connector"):
            found.append(f"{at} reads .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_") and node.value.endswith("_connector"):
            found.append(f"{at} names {node.value!r} (getattr of a private connector)")
    return found


def test_no_private_lightning_api_is_used():
    """Lightning's underscored names change without notice between releases; the package uses none:
    no ``from lightning... import _X``, no import of an underscored lightning module, no private connector."""
    found: List[str] = []
    for path in PACKAGE.rglob("*.py"):
        found += _private_lightning_uses(ast.parse(path.read_text()), str(path.relative_to(PACKAGE.parent)))
    assert not found, found
    # and the check can fail: the two uses this package used to make
    for snippet in ("from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector",
                    'getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", True)'):
        assert len(_private_lightning_uses(ast.parse(snippet), "snippet")) == 1, snippet
