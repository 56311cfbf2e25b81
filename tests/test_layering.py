"""The layering rule of the README, read off the import statements of every module:

* the core (``unimmad`` except ``engine``, ``bench``, ``cli`` and the package façade) never
  imports ``kernels``;
* ``kernels`` imports only the core of ``unimmad`` (never engine, bench, cli, data,
  metrics);
* nobody hides an import of ``kernels`` inside a function to dodge the rule;
* no module edits ``sys.path``.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPPER = ("unimmad/engine/", "unimmad/bench/", "unimmad/cli.py", "unimmad/__init__.py",
         "unimmad/__main__.py")
NOT_FOR_KERNELS = ("unimmad.engine", "unimmad.bench", "unimmad.cli", "unimmad.data",
                   "unimmad.metrics")


def _modules(*folders):
    for folder in folders:
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    yield os.path.relpath(path, ROOT).replace(os.sep, "/"), path


def _imports(path):
    """``(module name, inside a function?)`` of every import in the file (relative imports
    resolved against the file's package)."""
    rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
    package = rel[:-3].replace("/", ".").rsplit(".", 1)[0]
    if rel.endswith("__init__.py"):
        package = rel[:-len("/__init__.py")].replace("/", ".")
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module
                found.append((name, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _is(name, top):
    return name == top or name.startswith(top + ".")


@pytest.mark.parametrize("rel, path", list(_modules("unimmad")))
def test_core_never_imports_kernels(rel, path):
    if rel.startswith(UPPER):
        return
    bad = [n for n, _ in _imports(path) if _is(n, "kernels")]
    assert not bad, f"{rel} (core) imports {bad}: the core must not depend on kernels"


@pytest.mark.parametrize("rel, path", list(_modules("kernels")))
def test_kernels_import_only_the_core(rel, path):
    bad = [n for n, _ in _imports(path) if any(_is(n, t) for t in NOT_FOR_KERNELS)]
    assert not bad, f"{rel} imports {bad}: kernels builds on the core only"


@pytest.mark.parametrize("rel, path", list(_modules("unimmad", "kernels", "benchmarks")))
def test_no_hidden_imports_of_kernels(rel, path):
    hidden = [n for n, inside in _imports(path) if inside and _is(n, "kernels")]
    assert not hidden, f"{rel} imports {hidden} inside a function: import at the top"


def _edits_sys_path(path) -> bool:
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        f = getattr(node, "func", None)
        if (isinstance(node, ast.Call) and isinstance(f, ast.Attribute)
                and f.attr in ("insert", "append", "extend")
                and isinstance(f.value, ast.Attribute) and f.value.attr == "path"
                and isinstance(f.value.value, ast.Name) and f.value.value.id == "sys"):
            return True
    return False


@pytest.mark.parametrize("rel, path", list(_modules("unimmad", "kernels", "benchmarks",
                                                     "tests")))
def test_no_sys_path_edits(rel, path):
    assert not _edits_sys_path(path), f"{rel} edits sys.path (imports must work from anywhere)"


def test_the_rule_is_checked_on_real_files(tmp_path):
    """The walk finds the layers (a wrong ROOT would make every test above vacuous)."""
    rels = {rel for rel, _ in _modules("unimmad", "kernels")}
    assert {"unimmad/models/cmoe.py", "unimmad/scoring.py", "kernels/cmoe.py",
            "kernels/backend.py", "unimmad/bench/cases.py"} <= rels
    assert ("kernels", False) in [(n.split(".")[0], f) for n, f in
                                  _imports(os.path.join(ROOT, "unimmad/bench/cases.py"))]
    probe = tmp_path / "probe.py"        # the detectors see what they look for
    probe.write_text("import sys\ndef g():\n    import kernels\n    sys.path.insert(0, 'x')\n")
    assert _edits_sys_path(str(probe)) and ("kernels", True) in _imports(str(probe))
