"""The package layering the README's layout promises, read from the source: model ← training ← cli → service, with the
service never reaching into training or the benchmarks, and no import cycle anywhere (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cli": "jmvae.cli", "model": "jmvae.model", "training": "jmvae.training", "service": "jmvae.service"}
# What each package may import of the others (and of bench/, which is never shipped).
ALLOWED = {
    "jmvae.model": set(),
    "jmvae.training": {"jmvae.model"},
    "jmvae.service": {"jmvae.model"},
    "jmvae.cli": {"jmvae.model", "jmvae.training", "jmvae.service"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every jmvae or bench module `path` imports, at the top or inside a function, relative ones resolved."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}  # `from . import x` names a module
    return {m for m in out if m.split(".")[0] in ("jmvae", "bench")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _imports(name, path) if m in modules or m.startswith("bench")}
        for name, path in modules.items()
    }


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_each_package_imports_only_the_layers_below_it(graph: dict[str, set[str]]) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if _package(target) != _package(module) and _package(target) not in ALLOWED[_package(module)]
    )
    assert not wrong, "\n".join(wrong)


def test_the_service_never_imports_training_or_the_benchmarks(graph: dict[str, set[str]]) -> None:
    service = {m: t for m, t in graph.items() if m.startswith("jmvae.service")}
    assert service, "no service modules found"
    assert not {t for targets in service.values() for t in targets if t.startswith(("jmvae.training", "bench"))}


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target in graph and target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_a_cycle_and_a_wrong_layer(tmp_path: Path) -> None:
    # The reader above, on two made-up modules that import each other, one of them upwards.
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from jmvae.training import b\n")
    b.write_text("def f():\n    from jmvae.model.a import x\n")
    assert _imports("jmvae.model.a", a) == {"jmvae.training", "jmvae.training.b"}
    assert "jmvae.model.a" in _imports("jmvae.training.b", b)
    fake = {"jmvae.model.a": {"jmvae.training.b"}, "jmvae.training.b": {"jmvae.model.a"}}
    with pytest.raises(AssertionError, match="jmvae.model.a imports jmvae.training.b"):
        test_each_package_imports_only_the_layers_below_it(fake)
    with pytest.raises(AssertionError, match="->"):
        test_no_import_cycles(fake)


def _trees(*folders: str) -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(), str(path))
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)  # bench/.venv-<peer>/, ...
    }


def test_no_function_in_the_service_is_longer_than_60_lines() -> None:
    long = sorted(
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path, tree in _trees("service").items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    )
    assert not long, "\n".join(long)


def test_nothing_reaches_into_another_objects_private_members() -> None:
    # The project's own private names (methods and attributes set on self), used on anything but self or cls.
    trees = _trees("cli", "model", "training", "service", "bench")
    private = {
        node.name
        for tree in trees.values()
        for cls in ast.walk(tree)
        if isinstance(cls, ast.ClassDef)
        for node in cls.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("_")
        and not node.name.startswith("__")
    }
    private |= {
        node.attr
        for tree in trees.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }
    assert "_executor" in private  # the Engine's: the scan sees what it should
    reached = sorted(
        f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}"
        for path, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in private
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    )
    assert not reached, "\n".join(reached)
