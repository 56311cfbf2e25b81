"""The GPU suite's stage logic, without a GPU (``unimmad.bench.suite`` with fake stages, and
the real plan of ``benchmarks/gpu_suite.py``): STAGES selection, per-stage budgets ending in
SIGINT then SIGKILL, result files written row by row that survive the interrupt (pytest's
junit XML too), ``suite.json`` written first and after every stage, the 8-file limit, the
suite's own SIGINT, the commit for a copy without ``.git``, and the import path of every
module the suite runs on the GPU machine's package set."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks import gpu_suite
from unimmad.bench import meta
from unimmad.bench.suite import MAX_FILES, Stage, StageContext, Unavailable, run_suite, select

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _py(code: str):
    """A stage running ``code`` (``OUT`` and ``SOFT`` are defined for it)."""
    body = textwrap.dedent(code)

    def command(ctx: StageContext):
        return [sys.executable, "-c", f"OUT = {ctx.out!r}; SOFT = {ctx.soft_budget_s!r}\n{body}"]
    return command


# a script of the suite's shape: a JsonRecord written after every row, forever
ROWS_FOREVER = """
import sys, time
from unimmad.bench.record import JsonRecord, run_script
def main(argv):
    with JsonRecord(OUT + "/slow.json", {"commit": "x"}, budget_s=None) as rec:
        i = 0
        while True:
            rec.row({"i": i}, lambda: {"ms": 1.0})
            i += 1
            time.sleep(0.05)
sys.exit(run_script(main, []))
"""


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _summary(out):
    with open(os.path.join(out, "suite.json")) as f:
        return json.load(f)


def test_select_keeps_plan_order_and_rejects_unknown_names():
    stages = [Stage(n, 1, _py("pass")) for n in ("a", "b", "c")]
    assert [s.name for s in select(stages, "c,a")] == ["a", "c"]
    assert [s.name for s in select(stages, None)] == ["a", "b", "c"]
    assert [s.name for s in select(stages, "all")] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['d'\].*\['a', 'b', 'c'\]"):
        select(stages, "a,d")


def test_overrunning_stage_is_interrupted_and_keeps_its_partial_json(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", ROOT)
    out = str(tmp_path / "out")
    stages = [
        Stage("first", 20, _py("""
            import json
            with open(OUT + '/suite.json') as f:          # written before any stage ran
                print('suite.json commit', json.load(f)['commit'])
            """)),
        Stage("slow", 12, _py(ROWS_FOREVER), files=("slow.json",)),   # imports take seconds
        Stage("stubborn", 5, _py("""
            import signal, time
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print('ignoring SIGINT', flush=True)
            time.sleep(60)
            """)),
        Stage("broken", 20, _py("raise SystemExit(3)")),
        Stage("missing", 20, lambda ctx: (_ for _ in ()).throw(Unavailable("no tool here"))),
    ]
    t0 = time.monotonic()
    # grace: Python with torch loaded takes a second or two to exit after the interrupt
    rc = run_suite(out, stages, None, total_budget_s=60, grace_s=4.0, head={"commit": "abc"},
                   root=ROOT)
    assert time.monotonic() - t0 < 45
    assert rc == 1
    s = _summary(out)
    by = {r["stage"]: r for r in s["stages"]}
    assert by["first"]["status"] == "ok" and "suite.json commit abc" in by["first"]["tail"]
    assert by["slow"]["status"] == "timeout" and by["slow"]["interrupted"]
    assert not by["slow"]["killed"] and by["slow"]["returncode"] == 130
    assert by["slow"]["seconds"] < 12 + 1
    with open(os.path.join(out, "slow.json")) as f:
        partial = json.load(f)
    assert partial["status"] == "interrupted" and len(partial["rows"]) >= 3
    assert by["stubborn"]["status"] == "timeout" and by["stubborn"]["killed"]
    assert by["broken"]["status"] == "failed" and by["broken"]["returncode"] == 3
    assert by["missing"]["status"] == "failed" and "no tool here" in by["missing"]["why"]
    assert s["status"] == "failed" and s["failed"] == ["slow", "stubborn", "broken", "missing"]
    log = open(os.path.join(out, "suite.log")).read()
    assert "[slow" in log and "SIGINT" in log and "SIGKILL" in log and "ignoring SIGINT" in log
    assert sorted(os.listdir(out)) == ["slow.json", "suite.json", "suite.log"]


def test_a_process_that_escapes_the_stage_cannot_hang_the_suite(tmp_path):
    """A stage whose child left its process group (setsid) and still holds the output pipe:
    the suite stops waiting for that output after a few seconds and the suite's own process
    exits, instead of waiting for the escaped child (here 120 s)."""
    pid_file = tmp_path / "escaped.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys
        from unimmad.bench.suite import Stage, run_suite
        child = ("import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                 "time.sleep(120)")

        def command(ctx):
            return [sys.executable, "-c",
                    "import subprocess, sys; subprocess.Popen([sys.executable, '-c', %r], "
                    "start_new_session=True); print('started', flush=True)" % child]
        rc = run_suite({str(tmp_path / "out")!r}, [Stage("escape", 60, command)], None,
                       total_budget_s=90, grace_s=2.0, head={{"commit": "x"}}, root={ROOT!r})
        print("suite returned", rc, flush=True)
        """)
    t0 = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=_env(), timeout=100)
        took = time.monotonic() - t0
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    assert out.returncode == 0 and "suite returned 0" in out.stdout, out.stderr[-2000:]
    assert took < 90, took                 # not the escaped child's 120 s
    assert _summary(str(tmp_path / "out"))["stages"][0]["status"] == "ok"


def test_interrupted_pytest_stage_still_writes_its_junit_xml(tmp_path):
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "test_sleep.py").write_text("import time\n\ndef test_ok():\n    pass\n\n"
                                         "def test_sleeps():\n    time.sleep(60)\n")
    out = str(tmp_path / "out")

    def command(ctx):
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                "addopts=", f"--rootdir={tests}", str(tests / "test_sleep.py"),
                f"--junitxml={ctx.out}/parity.xml"]
    rc = run_suite(out, [Stage("parity", 6, command)], None, grace_s=3.0, root=str(tests))
    assert rc == 1
    xml = open(os.path.join(out, "parity.xml")).read()
    assert "test_ok" in xml and "<testsuite" in xml
    assert _summary(out)["stages"][0]["status"] == "timeout"


def test_suite_budget_skips_later_stages_and_file_limit_is_enforced(tmp_path):
    out = str(tmp_path / "out")
    many = _py(f"""
        import time
        for i in range({MAX_FILES}):
            open(OUT + f'/f{{i}}.json', 'w').write('{{}}')
        time.sleep(2)
        """)
    stages = [Stage("many", 10, many), Stage("late", 10, _py("pass"))]
    rc = run_suite(out, stages, None, total_budget_s=3, grace_s=1.0, root=ROOT)
    s = _summary(out)
    assert rc == 1
    assert s["stages"][1]["status"] == "skipped" and "budget" in s["stages"][1]["why"]
    assert s["problems"] and "at most 8" in s["problems"][0]


def test_sigint_to_the_suite_interrupts_the_stage_and_writes_the_summary(tmp_path):
    out = str(tmp_path / "out")
    script = textwrap.dedent(f"""
        import sys
        from unimmad.bench.suite import Stage, run_suite
        sleep = [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(60)"]
        stages = [Stage("long", 60, lambda ctx: sleep), Stage("next", 60, lambda ctx: sleep)]
        sys.exit(run_suite({out!r}, stages, None, grace_s=2.0))
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:                   # wait until the stage runs
        if "sleeping" in line:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 1
    s = _summary(out)
    assert s["status"] == "interrupted"
    assert s["stages"][0]["status"] == "interrupted"
    assert s["stages"][1]["status"] == "skipped"


# ----------------------------------------------------------------------------- the real plan
def test_plan_fits_the_device_limits():
    names = [s.name for s in gpu_suite.STAGES]
    assert len(set(names)) == len(names)
    files = [f for s in gpu_suite.STAGES for f in s.files] + ["suite.log", "suite.json"]
    assert len(files) == len(set(files)) <= MAX_FILES
    assert all("/" not in f for f in files)
    assert sum(s.budget_s for s in gpu_suite.STAGES) <= 360    # whole run ≤ 6 minutes
    assert all(os.path.exists(os.path.join(ROOT, t)) for t in gpu_suite.PARITY_TESTS)


def test_plan_commands(tmp_path, monkeypatch):
    ctx = StageContext(str(tmp_path), 60, 50, "python3", ROOT)
    by = {s.name: s for s in gpu_suite.STAGES}
    parity = by["parity"].command(ctx)
    assert f"--junitxml={tmp_path}/parity.xml" in parity and "gpu or interpreter" in parity
    assert by["parity"].env["UNIMMAD_AUTOTUNE"] == "0"
    assert "--all-configs" in by["compile"].command(ctx)
    assert by["kernels"].command(ctx)[-2:] == ["--budget-s", "50"]
    assert by["memcheck"].env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"
    tool = tmp_path / "cuda" / "bin" / "compute-sanitizer"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    argv = by["memcheck"].command(ctx)
    assert argv[0] == str(tool)
    assert argv[1:6] == ["--tool", "memcheck", "--error-exitcode", "1", "--print-limit"]
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "none"))
    monkeypatch.setattr(gpu_suite.glob, "glob", lambda *a, **k: [])
    with pytest.raises(Unavailable, match="compute-sanitizer not found"):
        by["memcheck"].command(ctx)


def test_shell_entry_point_lists_and_rejects():
    sh = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")
    out = subprocess.run(["bash", sh, "--list"], capture_output=True, text=True,
                         env=dict(_env(), PYTHON=sys.executable), timeout=120)
    assert out.returncode == 0 and "parity" in out.stdout and "memcheck" in out.stdout
    bad = subprocess.run(["bash", sh, "/tmp/x"], capture_output=True, text=True,
                         env=dict(_env(), PYTHON=sys.executable, STAGES="nope"), timeout=120)
    assert bad.returncode == 2 and "unknown stage" in bad.stderr


def test_commit_travels_to_a_copy_without_git(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIMMAD_COMMIT", raising=False)
    src = tmp_path / "src"
    (src / "kernels").mkdir(parents=True)
    (src / "benchmarks").mkdir()
    (src / "kernels" / "k.py").write_text("x = 1\n")
    git = lambda *a: subprocess.run(["git", *a], cwd=src, check=True, capture_output=True)
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True,
                          text=True).stdout.strip()
    info = meta.write_source(str(src))
    assert info["commit"] == head and not info["dirty"] and "kernels/k.py" in info["files"]
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns(".git"))
    p = meta.provenance(str(copy))
    assert p["commit"] == head and p["commit_from"] == meta.SOURCE_FILE and p["tree_matches"]
    assert meta.git_commit(str(copy)) == head
    (copy / "kernels" / "k.py").write_text("x = 2\n")
    p = meta.provenance(str(copy))
    assert not p["tree_matches"] and p["changed"] == ["kernels/k.py"]
    os.remove(copy / meta.SOURCE_FILE)
    assert meta.provenance(str(copy))["commit_from"] == "unknown"
    assert meta.git_commit(str(copy)) is None
    monkeypatch.setenv("UNIMMAD_COMMIT", "f" * 40)
    assert meta.git_commit(str(copy)) == "f" * 40
    assert meta.provenance(str(copy)) == {"commit": "f" * 40, "commit_from": "UNIMMAD_COMMIT",
                                          "tree_matches": None}
    monkeypatch.delenv("UNIMMAD_COMMIT")
    # a git checkout without the prepared digests: the commit and whether tracked files
    # changed since it
    os.remove(src / meta.SOURCE_FILE)
    p = meta.provenance(str(src))
    assert (p["commit"], p["commit_from"], p["dirty"]) == (head, "git", False)
    (src / "kernels" / "k.py").write_text("x = 3\n")
    assert meta.provenance(str(src))["dirty"] is True


def test_source_files_are_the_code_folders_and_top_level_configs(tmp_path):
    # what decides a benchmark: .py/.sh/.ini/.cfg/.toml/.txt under kernels/, unimmad/,
    # benchmarks/, tests/ and at the top level; never caches, stored results, other
    # folders, other extensions, or the digest file itself
    for rel in ("setup.py", "pytest.ini", "notes.md", "kernels/a.py", "kernels/sub/b.sh",
                "kernels/__pycache__/a.cpython-312.pyc", "kernels/__pycache__/c.py",
                "benchmarks/results/r.txt", "benchmarks/results/deep/x.py",
                "benchmarks/gpu_suite.sh", "benchmarks/x.json", "tests/t.py", "docs/d.py",
                "unimmad/m.toml", meta.SOURCE_FILE):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    assert meta.source_files(str(tmp_path)) == [
        "benchmarks/gpu_suite.sh", "kernels/a.py", "kernels/sub/b.sh", "pytest.ini",
        "setup.py", "tests/t.py", "unimmad/m.toml"]


# ----------------------------------------------------------------------------- GPU image
#: Import names of the Python packages the GPU machine's image holds (its KINDS.md list) —
#: everything the suite imports must be among them or in the standard library.
GPU_IMAGE = {
    "torch", "triton", "numpy", "tqdm", "matplotlib", "PIL", "safetensors", "pytest", "_pytest",
    "pluggy", "iniconfig", "packaging", "yaml", "jinja2", "markupsafe", "sympy", "mpmath",
    "networkx", "filelock", "fsspec", "typing_extensions", "pygments", "scipy", "sklearn",
    "joblib", "threadpoolctl", "contourpy", "cycler", "fontTools", "kiwisolver", "pyparsing",
    "dateutil", "six", "pytest_benchmark", "cpuinfo", "xdist", "execnet", "pytest_timeout",
    "pytest_cov", "coverage", "pytest_mock", "psutil", "cuda", "nvidia", "requests", "urllib3",
    "certifi", "idna", "charset_normalizer", "tifffile", "pandas", "pytz", "tzdata",
    "hypothesis", "attrs", "attr", "sortedcontainers", "tabulate", "rich", "markdown_it",
    "mdurl", "setuptools", "pkg_resources", "_distutils_hack", "wheel", "pip", "opt_einsum",
    "einops", "importlib_metadata", "zipp", "optree", "ml_dtypes", "cloudpickle", "regex",
    "tensorboard", "google", "protobuf", "grpc", "absl", "lightning_utilities", "torchvision",
    "torchgen", "py",
}
BLOCKED = ("fvcore", "nibabel", "yacs", "iopath", "trimesh", "portalocker", "termcolor")


def test_suite_imports_work_on_the_gpu_image():
    """Every module a stage runs, and every test module of the parity stage, imports with
    the packages the GPU image lacks blocked, and pulls in nothing outside its list."""
    modules = ["benchmarks.gpu_suite", *gpu_suite.STAGE_MODULES]
    tests = [os.path.splitext(os.path.basename(t))[0] for t in gpu_suite.PARITY_TESTS]
    script = textwrap.dedent(f"""
        import importlib, json, sys
        for name in {list(BLOCKED)!r}:
            sys.modules[name] = None          # 'import name' now raises ImportError
        for name in {modules + tests!r}:
            importlib.import_module(name)
        third = sorted({{m.split('.')[0] for m in sys.modules if sys.modules[m] is not None
                        and not m.startswith('_')}} - set(sys.stdlib_module_names))
        print(json.dumps(third))
        """)
    env = dict(_env(), PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    third = set(json.loads(out.stdout.strip().splitlines()[-1]))
    ours = {"unimmad", "kernels", "benchmarks", "helpers", "cmoe_cases"} | set(tests)
    if os.environ.get("UNIMMAD_MUTATION_COVERAGE"):   # tests/mutation.py measures the child
        ours |= {"coverage", "$coverage"}
    assert not third - GPU_IMAGE - ours, sorted(third - GPU_IMAGE - ours)


@pytest.mark.interpreter
def test_memcheck_script_runs_every_launch_group(monkeypatch, capsys):
    """The memcheck stage's script, on the CPU interpreter with one configuration per kernel
    and smaller shapes (on the GPU it forces each configuration in turn under
    compute-sanitizer)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the memcheck stage itself runs it on the GPU")
    from benchmarks import gpu_memcheck
    from kernels import amap_triton, cmoe_triton
    from unimmad.bench import cases
    conv = cmoe_triton.TUNED["_dyn_conv_kernel"]
    monkeypatch.setitem(cmoe_triton.TUNED, "_dyn_conv_kernel",
                        {p: cfgs[:1] for p, cfgs in conv.items()})
    for table, name in ((cmoe_triton.TUNED, "_wgrad_kernel"), (amap_triton.TUNED, "_cos_kernel"),
                        (amap_triton.TUNED, "_focal_grad_kernel")):
        monkeypatch.setitem(table, name, table[name][:1])
    monkeypatch.setattr(cases, "TILE_CASE", {"pixels": (3, 5), "ci": 6, "co": 10})
    monkeypatch.setattr(gpu_memcheck, "MAP_SIZE", 8)
    monkeypatch.setattr(gpu_memcheck, "CMOE", {"channels": 4, "embed": 4, "pixels": (3, 4)})
    gpu_memcheck.launch_all("cpu")
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("ok ")]
    assert len(lines) == 3 + 1 + 2 * 2 + 2
    assert lines[-2:] == ["ok FastCMoE train step + inference",
                          "ok anomaly map (mean, joint) + score"]


def test_open_record_turns_cudnn_benchmark_on_and_records_it(tmp_path, monkeypatch):
    import argparse

    import torch
    from unimmad.bench.record import open_record
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    rec = open_record(argparse.Namespace(out=str(tmp_path / "o"), budget_s=None), "x.json",
                      device="cpu")
    assert torch.backends.cudnn.benchmark is True
    assert rec.data["settings"]["cudnn_benchmark"] is True
    assert os.path.isdir(tmp_path / "o")
