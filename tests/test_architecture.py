"""The layers only point down, and no module imports itself back in a circle.

models (pure networks) <- runtime (decode, flow, exported model, scoring, engine, streams) <- training and
service side by side, neither importing the other <- cli (the product's one entry point). Every import
counts: module level, inside functions, and under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "runtime", "training", "service", "cli")
ALLOWED = {
    "models": {"models"},
    "runtime": {"models", "runtime"},
    "training": {"models", "runtime", "training"},
    "service": {"models", "runtime", "service"},
    "cli": set(PACKAGES),
}


def module_name(path: Path) -> str:
    """The installed name: each top folder is mapped under the one import name, `amvad` (pyproject.toml)."""
    parts = ["amvad", *path.relative_to(REPO).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    return module.split(".")[1]


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports; ``from package import module`` counts as the module."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` names a.b.c; a symbol names its module
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES:
                raise AssertionError(f"{path} imports {target} by its folder name; it is installed as amvad.{target}")
            if target and target.startswith("amvad.") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_real_imports():
    # guards the scan itself: known edges of the layout must be found, or the checks below prove nothing
    graph = import_graph()
    assert "amvad.runtime.engine" in graph["amvad.runtime.stream"]
    assert "amvad.runtime.types" in graph["amvad.runtime.engine"]
    assert "amvad.service.api.cameras" in graph["amvad.service.app"]
    assert "amvad.training.train" in graph["amvad.cli.main"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_only_point_down():
    bad = [f"{src} imports {dst}" for src, targets in import_graph().items() for dst in sorted(targets)
           if layer(dst) not in ALLOWED[layer(src)]]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_shared_types_import_nothing_of_ours():
    assert import_graph()["amvad.runtime.types"] == set()


def test_amvad_help_lists_every_command_of_the_one_cli():
    import tomllib
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["amvad"] == "amvad.cli.main:main"
    out = subprocess.run([sys.executable, "-m", "amvad.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    commands = out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert commands == ["train", "fit", "eval", "export", "flow-check", "speed", "serve", "bench", "backup", "restore",
                        "robustness", "user", "tls"]


def test_every_package_folder_is_installed_under_the_one_import_name():
    import tomllib
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {module_name(p.parent / "__init__.py"): p.parent for pkg in PACKAGES for p in (REPO / pkg).rglob("__init__.py")}
    assert sorted(setuptools["packages"]) == sorted(folders)
    assert setuptools["package-dir"] == {f"amvad.{pkg}": pkg for pkg in PACKAGES}
