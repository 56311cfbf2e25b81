"""The mutation-testing tool (tests/mutation.py) on a file written here: which mutants it
draws, how a mutant is applied and undone, which tests it maps a line to."""
import importlib.util
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("mutation_tool", os.path.join(HERE, "mutation.py"))
M = importlib.util.module_from_spec(spec)
spec.loader.exec_module(M)

SRC = '''"""doc"""
LIMIT = 3


def f(x, y=2):
    """doc"""
    if x < LIMIT and y:
        raise ValueError("x < 3")
    z = (x +
         y)
    return x.sum(dim=1) * 2
'''


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    (tmp_path / "unimmad").mkdir()
    (tmp_path / "unimmad" / "m.py").write_text(SRC)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("from unimmad.m import f\n")
    (tmp_path / "tests" / "test_b.py").write_text("import os\n")
    monkeypatch.setattr(M, "ROOT", str(tmp_path))
    return tmp_path


def test_mutants_of_a_file(pkg):
    found = {(m["line"], m["kind"], m["new"]) for m in M._mutants_of("unimmad/m.py")}
    assert (2, "constant", "LIMIT = 4") in found
    assert (5, "constant", "def f(x, y=3):") in found
    assert (7, "compare", "if x <= LIMIT and y:") in found
    assert (7, "bool", "if x < LIMIT or y:") in found
    assert (11, "call", "return x.mean(dim=1) * 2") in found
    assert (11, "keyword", "return x.sum(dim=0) * 2") in found
    assert (11, "arith", "return x.sum(dim=1) / 2") in found
    lines = {line for line, _, _ in found}
    assert 8 not in lines and 1 not in lines and 6 not in lines  # raise, docstrings
    assert 9 not in lines and 10 not in lines                    # a BinOp over two lines


def test_apply_and_undo(pkg):
    m = next(m for m in M._mutants_of("unimmad/m.py") if m["kind"] == "compare")
    original = M._apply(str(pkg), m)
    assert "if x <= LIMIT and y:" in (pkg / "unimmad" / "m.py").read_text()
    assert original == SRC


def test_statement_starts_and_line_contexts(pkg):
    starts = M._statement_starts("unimmad/m.py")
    assert starts[10] == 9 and starts[9] == 9 and starts[7] == 7
    lines = {"9": ["test_a.test_x"], "2": [""]}
    assert M._line_contexts(lines, "unimmad/m.py", 10) == ["test_a.test_x"]
    assert M._line_contexts(lines, "unimmad/m.py", 11) is None


def test_test_ids_and_importers(pkg):
    assert M._test_ids(["test_a.test_x", "test_a.K.test_y", "nope.test_z", ""]) == \
        ["tests/test_a.py::K::test_y", "tests/test_a.py::test_x"]
    assert M._importers("unimmad/m.py") == ["tests/test_a.py"]


def test_junit_durations(pkg, tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="tests.test_a" name="test_x[1]" '
                   'time="0.5"/><testcase classname="tests.test_a" name="test_x[2]" time="0.25"/>'
                   '<testcase classname="tests.test_a.K" name="test_y" time="1"/></testsuite>'
                   '</testsuites>')
    assert M._junit_durations(str(xml)) == {"tests/test_a.py::test_x": 0.75,
                                            "tests/test_a.py::K::test_y": 1.0}


def test_list_draws_one_mutant_per_line(pkg, tmp_path):
    out = tmp_path / "out"
    M.main(["list", "--out", str(out), "--sample", "100", "--seed", "3"])
    table = json.loads((out / "mutants.json").read_text())
    assert sorted(m["line"] for m in table) == [2, 5, 7, 11]      # every mutable line once
