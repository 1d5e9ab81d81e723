"""The house's rules, read from the source (docs/architecture.md): every import of a parity module points to
its own floor or one below, never up; and no files import each other in a circle, function-level imports
included (they are deferred, not absent)."""

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "parity"

# top-level part of src/parity -> its floor (docs/architecture.md)
FLOORS = {"core": 1, "capture": 2, "diagnose": 2, "report": 2, "sanity": 3, "kernel": 3, "commands": 4,
          "testing": 5, "cli": 5, "pytest_plugin": 6, "__main__": 6, "__init__": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    """The parity modules `path` imports anywhere in it (a name imported from a package counts as that
    package's submodule when one exists)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("parity")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("parity") and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _exists(submodule) else node.module)
    return found


def _exists(module: str) -> bool:
    path = SOURCE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in SOURCE.rglob("*.py")}
    return {name: {target for target in imports(path) if target in files and target != name}
            for name, path in files.items()}


def test_no_import_points_up_a_floor():
    upward = [f"{source} -> {target}" for source, targets in graph().items() for target in targets
              if FLOORS[part(target)] > FLOORS[part(source)]]
    assert not upward, upward


def test_no_files_import_each_other_in_a_circle():
    edges = graph()
    # a package's __init__ that re-exports its own modules is the package itself, not a circle with them
    edges = {source: {target for target in targets if not (source.endswith(target.rsplit(".", 1)[0])
                                                            and target.startswith(source + "."))}
             for source, targets in edges.items()}
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, circles
