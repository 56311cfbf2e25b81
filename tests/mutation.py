"""One-line mutation testing of ``unimmad/`` and ``kernels/`` against this test suite.

Measures how many single-line bugs the suite catches: each mutant changes one operator,
comparison, constant, boolean or reduction on one line of the package, the tests that
execute that line run against the mutated tree, and the mutant is *killed* when any of
them fails (a run that exceeds ``--timeout`` is reported apart and counted as surviving).
Not collected by pytest (no ``test_`` prefix); a developer tool:

    python tests/mutation.py coverage --out mut/            # which tests run which lines
    python tests/mutation.py list --out mut/ --sample 200   # a random table of mutants
    python tests/mutation.py run --out mut/                 # kill them; writes results

The table is drawn fresh by ``--seed``; a mutant that no test executes counts as
surviving.  ``run`` works on a copy of the tree (the checkout is never modified).
Coverage needs ``pip install coverage``.
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("unimmad", "kernels")

_CMP = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
        ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in"}
_BIN = {ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*", ast.FloorDiv: "/",
        ast.Mod: "//", ast.Pow: "*"}
_SWAP_CALLS = {"mean": "sum", "sum": "mean", "max": "min", "min": "max", "amax": "amin",
               "amin": "amax", "clamp_min": "clamp_max", "floor": "ceil", "ceil": "floor",
               "argmax": "argmin", "sqrt": "square", "exp": "log", "softmax": "log_softmax"}


def _package_files() -> List[str]:
    out = []
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            out += [os.path.relpath(os.path.join(dirpath, f), ROOT)
                    for f in files if f.endswith(".py")]
    return sorted(out)


def _skip_lines(tree: ast.AST) -> set:
    """Lines that hold no behaviour worth mutating: docstrings, raise messages, logging and
    warnings texts, ``__all__``, annotations."""
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            skip.update(range(body[0].lineno, body[0].end_lineno + 1))
        if isinstance(node, ast.Raise) and node.exc is not None:
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                for t in node.targets):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("warn", "write", "info", "debug", "warning", "print"):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("print", "_log", "log"):
            skip.update(range(node.lineno, node.end_lineno + 1))
    return skip


def _mutants_of(path: str) -> List[Dict]:
    src = open(os.path.join(ROOT, path), encoding="utf-8").read()
    lines = src.splitlines()
    tree = ast.parse(src)
    skip = _skip_lines(tree)
    found = []

    def add(node, start, end, new, kind):
        line = node.lineno
        if line in skip or node.lineno != node.end_lineno:
            return
        old = lines[line - 1]
        raw = old.encode("utf-8")            # ast columns are UTF-8 byte offsets
        start = len(raw[:start].decode("utf-8"))
        end = len(raw[:end].decode("utf-8"))
        mutated = old[:start] + new + old[end:]
        if mutated != old:
            found.append({"file": path, "line": line, "kind": kind, "old": old.strip(),
                          "new": mutated.strip(), "col": start, "end_col": end,
                          "replacement": new})

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP:
            left, right = node.left, node.comparators[0]
            if left.end_lineno == right.lineno == node.lineno:
                add(node, left.end_col_offset, right.col_offset,
                    f" {_CMP[type(node.ops[0])]} ", "compare")
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN \
                and node.left.end_lineno == node.right.lineno == node.lineno:
            add(node, node.left.end_col_offset, node.right.col_offset,
                f" {_BIN[type(node.op)]} ", "arith")
        elif isinstance(node, ast.BoolOp) and len(node.values) == 2 \
                and node.values[0].end_lineno == node.values[1].lineno == node.lineno:
            op = "or" if isinstance(node.op, ast.And) else "and"
            add(node, node.values[0].end_col_offset, node.values[1].col_offset, f" {op} ",
                "bool")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            add(node, node.col_offset, node.operand.col_offset, "", "unary")
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool) \
                and node.lineno == node.end_lineno:
            v = node.value
            if isinstance(v, bool):
                new = repr(not v)
            elif isinstance(v, int):
                new = repr(v + 1) if v != 1 else "2"
            else:
                new = repr(v * 2) if v != 0 else "1.0"
            add(node, node.col_offset, node.end_col_offset, new, "constant")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in _SWAP_CALLS and node.func.end_lineno == node.lineno:
            end = node.func.end_col_offset
            add(node, end - len(node.func.attr), end, _SWAP_CALLS[node.func.attr], "call")
        elif isinstance(node, ast.keyword) and node.arg in ("dim", "keepdim", "align_corners",
                                                            "descending", "stable") \
                and isinstance(node.value, ast.Constant) and node.lineno == node.end_lineno:
            v = node.value.value
            new = repr(not v) if isinstance(v, bool) else (repr(0 if v != 0 else 1)
                                                           if isinstance(v, int) else None)
            if new is not None:
                add(node.value, node.value.col_offset, node.value.end_col_offset, new,
                    "keyword")
    return found


def _context_map(out: str) -> Dict[str, Dict[str, List[str]]]:
    path = os.path.join(out, "lines.json")
    return json.load(open(path)) if os.path.exists(path) else {}


# ----------------------------------------------------------------------------- commands
def cmd_coverage(args) -> None:
    """Run the suite once under coverage with one context per test; store, per package
    line, the test node ids that executed it."""
    os.makedirs(args.out, exist_ok=True)
    tag = "-merge" if args.merge else ""
    data = os.path.join(os.path.abspath(args.out), ".coverage" + tag)
    rc = os.path.join(os.path.abspath(args.out), "coveragerc")
    with open(rc, "w") as f:
        # subprocesses too (CLI and compile-check tests): each gets its test's name as
        # static context from the root conftest.py; every process writes its own file
        f.write(f"[run]\nsource = {','.join(PACKAGES)}\ndynamic_context = test_function\n"
                f"data_file = {data}\nparallel = True\npatch = subprocess\n")
    env = dict(os.environ, COVERAGE_RCFILE=rc, UNIMMAD_MUTATION_COVERAGE="1")
    for stale in os.listdir(args.out):
        if stale.startswith(os.path.basename(data)):
            os.remove(os.path.join(args.out, stale))
    junit = os.path.join(os.path.abspath(args.out), f"junit{tag}.xml")
    subprocess.run([sys.executable, "-m", "coverage", "run", "--rcfile", rc, "-m", "pytest",
                    "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"] + args.pytest_args,
                   cwd=ROOT, env=env, check=False)
    import coverage
    cov = coverage.Coverage(data_file=data)
    cov.combine(keep=False)
    cov.save()
    cov.load()
    cd = cov.get_data()
    # --merge: the tests just run are added to the map of an earlier full run (the
    # package's lines must not have moved since; the tool checks the files' hashes)
    table: Dict[str, Dict[str, List[str]]] = _context_map(args.out) if args.merge else {}
    hashes = _package_hashes()
    if args.merge:
        old = _load_json(os.path.join(args.out, "hashes.json"), {})
        moved = sorted(f for f in set(old) | set(hashes) if old.get(f) != hashes.get(f))
        if moved:
            raise SystemExit(f"--merge: package files changed since the full coverage run "
                             f"({', '.join(moved[:5])}); run coverage without --merge")
    _add_contexts(table, cd)
    with open(os.path.join(args.out, "lines.json"), "w") as f:
        json.dump(table, f)
    durations = _load_json(os.path.join(args.out, "durations.json"), {}) if args.merge else {}
    durations.update(_junit_durations(junit))
    with open(os.path.join(args.out, "durations.json"), "w") as f:
        json.dump(durations, f)
    if not args.merge:
        with open(os.path.join(args.out, "hashes.json"), "w") as f:
            json.dump(hashes, f)
    print(f"coverage contexts for {len(table)} files written to {args.out}/lines.json")


def _statement_starts(path: str) -> Dict[int, int]:
    """Line -> first line of the innermost statement holding it.  Coverage records a
    statement that spans lines (a call's continuation lines, a literal table, a ``for``
    header over a list) on its first line only; a mutant on a later line is run by the
    tests of that first line."""
    return _statement_starts_in(ROOT, path)


@functools.lru_cache(maxsize=None)
def _statement_starts_in(root: str, path: str) -> Dict[int, int]:
    tree = ast.parse(open(os.path.join(root, path), encoding="utf-8").read())
    start: Dict[int, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            body = [s for f in ("body", "orelse", "finalbody", "handlers")
                    for s in getattr(node, f, []) or []]
            inner = {ln for s in body for ln in range(s.lineno, s.end_lineno + 1)}
            for ln in range(first, node.end_lineno + 1):
                if ln not in inner and start.get(ln, 0) < first:
                    start[ln] = first
    return start


def _line_contexts(file_lines: Dict[str, List[str]], path: str, line: int):
    """The coverage entry of a mutant's line (its statement's first line when coverage has
    none for the line itself); None when no test executes it."""
    if str(line) in file_lines:
        return file_lines[str(line)]
    first = _statement_starts(path).get(line)
    return file_lines.get(str(first)) if first is not None else None


def _add_contexts(table: Dict[str, Dict[str, List[str]]], cd) -> None:
    """Per package line, the test contexts of coverage data ``cd`` that ran it.  The empty
    context (the line ran outside any test: at import, in the main process) is kept as
    ``""``: such a line is then also run by every test of its file (``cmd_run``)."""
    for fpath in cd.measured_files():
        rel = os.path.relpath(fpath, ROOT)
        if not rel.startswith(PACKAGES):
            continue
        lines = table.setdefault(rel, {})
        for k, v in cd.contexts_by_lineno(fpath).items():
            lines[str(k)] = sorted(set(lines.get(str(k), [])) | {c.split("|")[0] for c in v})


def _importers(path: str) -> List[str]:
    """Test files that import the module at ``path`` by name (``import a.b.c``, ``from
    a.b.c import x``, ``from a.b import c``): a test reading only a module constant (e.g. a
    tolerance table) runs no line of it inside the test, so coverage cannot name it.  A
    test file holding the line ``# mutation-tool: runs-every-import-time-line`` (one that
    inspects every module, e.g. the signature defaults) is returned for every module."""
    dotted = path[:-3].replace(os.sep, ".")
    if dotted.endswith(".__init__"):
        dotted = dotted[:-9]
    pkg, _, name = dotted.rpartition(".")
    pats = [rf"^\s*(from|import)\s+{re.escape(dotted)}\b"]
    if pkg:
        pats.append(rf"^\s*from\s+{re.escape(pkg)}\s+import\s+[^#\n]*\b{re.escape(name)}\b")
    marker = "# mutation-tool: runs-every-import-time-line"
    return [f for f, text in _test_sources(ROOT)
            if marker in text or any(re.search(p, text, re.M) for p in pats)]


@functools.lru_cache(maxsize=None)
def _test_sources(root: str) -> Tuple[Tuple[str, str], ...]:
    """``(tests/test_x.py, its text)`` of every test file under ``root``, read once."""
    out = []
    for base in ("tests", "benchmarks"):
        folder = os.path.join(root, base)
        for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if f.startswith("test_") and f.endswith(".py"):
                with open(os.path.join(folder, f), encoding="utf-8") as fh:
                    out.append((f"{base}/{f}", fh.read()))
    return tuple(out)


def _load_json(path: str, default):
    return json.load(open(path)) if os.path.exists(path) else default


def _package_hashes() -> Dict[str, str]:
    import hashlib
    return {p: hashlib.sha256(open(os.path.join(ROOT, p), "rb").read()).hexdigest()
            for p in _package_files()}


def _junit_durations(path: str) -> Dict[str, float]:
    """Seconds per test function (parametrisations summed) from pytest's junit XML, keyed
    like ``_test_ids``: ``tests/test_x.py::Class::test``."""
    import xml.etree.ElementTree as ET
    if not os.path.exists(path):
        return {}
    out: Dict[str, float] = {}
    for case in ET.parse(path).iter("testcase"):
        parts = case.get("classname", "").split(".")
        name = case.get("name", "").split("[")[0]
        # classname is "tests.test_x" or "tests.test_x.Class"
        for i in range(len(parts), 0, -1):
            path_ = os.path.join(*parts[:i]) + ".py"
            if os.path.exists(os.path.join(ROOT, path_)):
                key = "::".join([path_] + parts[i:] + [name])
                out[key] = out.get(key, 0.0) + float(case.get("time", 0) or 0)
                break
    return out


def _test_ids(ctx_names: List[str]) -> List[str]:
    """coverage's ``test_function`` contexts are ``module.Class.test``: map them to pytest
    node ids (``tests/test_x.py::test``), parametrisations collapsed."""
    ids = set()
    for c in ctx_names:
        parts = c.split(".")
        for i in range(len(parts), 0, -1):
            # tests/ has no __init__.py: its modules are named from tests/ itself
            for base in ("", "tests"):
                mod = os.path.join(base, *parts[:i]) + ".py"
                if os.path.exists(os.path.join(ROOT, mod)):
                    ids.add(mod + "::" + "::".join(parts[i:]))
                    break
            else:
                continue
            break
    return sorted(ids)


def cmd_list(args) -> None:
    rng = random.Random(args.seed)
    allm = [m for p in _package_files() for m in _mutants_of(p)]
    lines = _context_map(args.out)
    if args.covered_only and lines:
        allm = [m for m in allm
                if _line_contexts(lines.get(m["file"], {}), m["file"], m["line"])]
    # at most one mutant per line, then a random sample
    by_line: Dict[tuple, List[Dict]] = {}
    for m in allm:
        by_line.setdefault((m["file"], m["line"]), []).append(m)
    pool = [rng.choice(ms) for ms in by_line.values()]
    rng.shuffle(pool)
    table = pool[:args.sample]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "mutants.json"), "w") as f:
        json.dump(table, f, indent=1)
    print(f"{len(table)} mutants (of {len(allm)} candidates on {len(by_line)} lines) "
          f"written to {args.out}/mutants.json")


def _apply(tree_root: str, m: Dict) -> str:
    path = os.path.join(tree_root, m["file"])
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    old = lines[m["line"] - 1]
    lines[m["line"] - 1] = old[:m["col"]] + m["replacement"] + old[m["end_col"]:]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return text


def cmd_run(args) -> None:
    table = json.load(open(os.path.join(args.out, "mutants.json")))
    lines = _context_map(args.out)
    durations = _load_json(os.path.join(args.out, "durations.json"), {})
    for key, seconds in list(durations.items()):      # a whole file: its tests' sum
        f = key.split("::")[0]
        if f != key:
            durations[f] = durations.get(f, 0.0) + seconds
    work = tempfile.mkdtemp(prefix="unimmad-mut-")
    tree = os.path.join(work, "tree")
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "bench_out", "mut*"))
    env = dict(os.environ, PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1")
    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else []
    done = {(r["file"], r["line"], r["new"]) for r in results}
    for i, m in enumerate(table):
        if (m["file"], m["line"], m["new"]) in done:
            continue
        file_lines = lines.get(m["file"], {})
        contexts = _line_contexts(file_lines, m["file"], m["line"])
        tests = _test_ids(contexts or [])
        if contexts is not None and (not tests or "" in contexts):
            # executed while importing (defaults, constants, decorators): no test context
            # holds it (or only tests whose subprocesses imported it), so every test that
            # runs anything in the same file stands in
            tests = sorted(set(tests) | set(_test_ids(sorted(
                {t for v in file_lines.values() for t in v}))) | set(_importers(m["file"])))
        if args.max_tests and len(tests) > args.max_tests:
            # a fixed random subset: fewer tests can only let more mutants survive
            tests = sorted(random.Random(f"{m['file']}:{m['line']}").sample(tests,
                                                                           args.max_tests))
        # fastest first (a test not timed yet, i.e. added since, before all): the verdict
        # does not depend on the order, only how soon -x stops on a killed mutant
        tests.sort(key=lambda t: (durations.get(t, 0.0), t))
        if not tests and lines:
            results.append(dict(m, status="survived", reason="no test runs this line",
                                tests=0, seconds=0.0))
        else:
            original = _apply(tree, m)
            t0 = time.time()
            try:
                cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                       "--benchmark-disable"] + (tests or ["tests"])
                proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                                      timeout=args.timeout)
                status = "killed" if proc.returncode != 0 else "survived"
                reason = (proc.stdout.strip().splitlines() or [""])[-1][:200]
            except subprocess.TimeoutExpired:
                status, reason = "timeout", f"no verdict within {args.timeout}s"
            finally:
                with open(os.path.join(tree, m["file"]), "w", encoding="utf-8") as f:
                    f.write(original)
            results.append(dict(m, status=status, reason=reason, tests=len(tests),
                                seconds=round(time.time() - t0, 1)))
        r = results[-1]
        print(f"[{i + 1}/{len(table)}] {r['status']:8s} {m['file']}:{m['line']} "
              f"{m['old']!r} -> {m['new']!r}", flush=True)
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)
    killed = sum(r["status"] == "killed" for r in results)
    timeouts = sum(r["status"] == "timeout" for r in results)
    n = max(len(results), 1)
    print(f"killed {killed}/{len(results)} = {killed / n:.1%} (timeouts {timeouts}, counted as "
          f"surviving; with them as killed {(killed + timeouts) / n:.1%})")
    shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("coverage", help="run the suite under coverage (test contexts)")
    c.add_argument("--out", required=True)
    c.add_argument("--merge", action="store_true",
                   help="add the contexts of the tests run now (e.g. tests added since) to the "
                        "map of the last full run instead of replacing it")
    c.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    c.set_defaults(func=cmd_coverage)
    c = sub.add_parser("list", help="draw a table of one-line mutants")
    c.add_argument("--out", required=True)
    c.add_argument("--sample", type=int, default=150)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--covered-only", action="store_true",
                   help="draw only from lines some test executes")
    c.set_defaults(func=cmd_list)
    c = sub.add_parser("run", help="run the tests that cover each mutant's line")
    c.add_argument("--out", required=True)
    c.add_argument("--timeout", type=float, default=600)
    c.add_argument("--max-tests", type=int, default=0,
                   help="run at most this many of a line's covering tests (0: all)")
    c.set_defaults(func=cmd_run)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
