"""The house rules of ../shared/DESIGN.md, checked on the code itself: the library imports without
Lightning and Hydra, its imports point one way (no circle), and it never imports the training
wing, train.py or eval/."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "vljepa"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """vljepa modules that ``path`` imports (at any depth of the file), resolved to names."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vljepa")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("vljepa"):
                # "from . import hub" names a module; "from .model import VLJEPA" the module itself
                subs = [f"{name}.{a.name}" for a in node.names]
                out |= {s for s in subs if _exists(s)} or {name}
    return out


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    files = sorted(LIBRARY.rglob("*.py"))
    names = {_module_name(f) for f in files}
    graph = {}
    for f in files:
        me = _module_name(f)
        deps = set()
        for dep in _imports(f):
            while dep not in names and "." in dep:  # a name inside a module -> that module
                dep = dep.rpartition(".")[0]
            if dep in names and dep != me and not me.startswith(dep + "."):
                deps.add(dep)
        graph[me] = deps - {"vljepa"}  # the package face re-exports; nothing imports through it
    return graph


def test_importing_the_library_imports_neither_lightning_nor_hydra():
    # as in an environment without them: importing any of them raises ImportError
    code = ("import sys; blocked = ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf'); "
            "sys.modules.update(dict.fromkeys(blocked)); "
            "import vljepa, vljepa.cli, vljepa.metrics, vljepa.selective, vljepa.video; "
            "print([m for m in blocked if sys.modules.get(m) is not None])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_library_imports_form_no_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_only_the_training_wing_imports_lightning_and_hydra():
    for f in sorted(LIBRARY.rglob("*.py")):
        if "training" in f.relative_to(LIBRARY).parts:
            continue
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert not n.startswith(("lightning", "hydra", "omegaconf")), f"{f}: imports {n}"
                assert "training" not in n.split("."), f"{f}: imports the training wing ({n})"


def test_the_circle_check_sees_a_circle(tmp_path, monkeypatch):
    """The check above can fail: two modules that import each other are reported."""
    graph = {"a": {"b"}, "b": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: graph)
    try:
        test_library_imports_form_no_circle()
    except AssertionError as e:
        assert "a -> b -> a" in str(e)
    else:
        raise AssertionError("a circle went unreported")


EVAL = ROOT / "eval"
SYS_PATH_EDITS = {"insert", "append", "extend", "remove", "pop", "clear", "__setitem__",
                  "__delitem__", "__iadd__"}


def _benchmark_violations(source: str) -> list[str]:
    """What a benchmark in eval/ must not do, found in its ``source``: edit ``sys.path`` (a
    mutating call, an assignment to it or one of its items or slices, ``+=``, ``del``) or import
    a module of tests/ (``tests.*``, or a name that is a file in tests/, such as ``conftest``)."""
    test_modules = {"tests"} | {p.stem for p in (ROOT / "tests").glob("*.py")}

    def is_sys_path(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "path"
                and isinstance(node.value, ast.Name) and node.value.id == "sys")

    found = []
    for node in ast.walk(ast.parse(source)):
        targets = (node.targets if isinstance(node, (ast.Assign, ast.Delete)) else
                   [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in targets:
            if is_sys_path(t) or (isinstance(t, ast.Subscript) and is_sys_path(t.value)):
                found.append((node.lineno, "assigns to sys.path"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and is_sys_path(node.func.value) and node.func.attr in SYS_PATH_EDITS:
            found.append((node.lineno, f"sys.path.{node.func.attr}(...)"))
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            names = []
        found += [(node.lineno, f"imports {n} from tests/") for n in names
                  if n.split(".")[0] in test_modules]
    return [f"line {line}: {what}" for line, what in sorted(found)]


def test_benchmarks_neither_edit_sys_path_nor_import_from_tests():
    """eval/ scripts import vljepa as the installed package and share helpers through eval/
    itself (eval/common.py, eval/faults.py), never through tests/."""
    problems = {f.name: v for f in sorted(EVAL.glob("*.py"))
                if (v := _benchmark_violations(f.read_text()))}
    assert not problems, problems


def test_the_benchmark_check_sees_sys_path_edits_and_test_imports():
    """The check above can fail: each kind of violation is reported."""
    source = "\n".join([
        "import sys", "sys.path.insert(0, 'x')", "sys.path[:0] = ['x']", "sys.path += ['x']",
        "sys.path = ['x']", "sys.path.append('x')", "import tests.faults",
        "from conftest import compose", "from tests import hub_standin",
        "print(sys.path)", "import os.path", "from eval.common import build"])  # fine, these 3
    found = _benchmark_violations(source)
    assert [f.split(":")[0] for f in found] == [f"line {i}" for i in range(2, 10)], found
