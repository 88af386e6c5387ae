"""The adapters' modules stand in layers: no import circle, and the settings
record below both sides (it imports none of their modules), so every side
and the command line take it from below."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parents[2] / "adapters" / "bridgeproto_adapters"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each adapter module, and the adapter modules it imports anywhere in it
    (a function's deferred import counts: it is a tie all the same)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.level and node.module else node.module
                module = module or base
                targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_adapter_module_is_in_an_import_circle() -> None:
    graph = _imports()
    for start in graph:
        paths = {module: [start, module] for module in graph[start]}
        todo = list(paths)
        while todo:
            module = todo.pop()
            assert module != start, "an import circle: " + " -> ".join(paths[module])
            for after in graph[module]:
                if after not in paths:
                    paths[after] = [*paths[module], after]
                    todo.append(after)


def test_the_settings_record_sits_below_both_sides() -> None:
    """settings imports neither side's session code, directly or through
    another module: both sides take their records from it."""
    graph = _imports()
    below, todo = set(), list(graph["bridgeproto_adapters.settings"])
    while todo:
        if (module := todo.pop()) not in below:
            below.add(module)
            todo += graph[module]
    sides = {"session", "sandbox_side", "host_side", "launch", "daemon"}
    assert not below & {f"bridgeproto_adapters.{name}" for name in sides}, sorted(below)


def test_every_public_list_names_what_its_module_has() -> None:
    import importlib

    for name in _imports():
        if name.startswith(("bridgeproto_adapters.bench", "bridgeproto_adapters.verifiers")):
            continue  # (their names come lazily, from optional packages)
        if name.endswith("__main__"):
            continue  # (it runs the command)
        module = importlib.import_module(name)
        missing = [n for n in getattr(module, "__all__", ()) if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names what it lacks: {missing}"
