"""The compile check's verdicts and table on rows written here (no compilation): every
failure kind is reported with its numbers, the table shows each row's configuration, and
the command refuses the wrong interpreter setting for each step."""
import pytest

pytest.importorskip("triton")

from kernels import compile_check as cc  # noqa: E402


def _row(**kw):
    row = {"kernel": "_dyn_conv_kernel", "case": "paper k=5", "ok": True, "shared": 1024,
           "registers": 128, "stack": 0, "local": 0, "cp_async_16B": 4, "mma": "wgmma",
           "seconds": 1.5, "constexprs": {"FLAT": True, "LOSS": False},
           "config": {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16, "PIPE": 2,
                      "num_warps": 4, "num_stages": 3}}
    row.update(kw)
    return row


def test_a_clean_row_passes():
    assert cc.failures([_row()]) == []


def test_each_failure_kind_is_named():
    rows = [_row(ok=False, error="CompilationError: boom"),
            _row(shared=cc.SHARED_LIMIT + 1),
            _row(stack=16, local=8),
            _row(kernel="_cos_kernel", registers=None),
            _row(kernel="_topk_kernel", stack=64)]          # not a no-spill kernel: allowed
    del rows[3]["registers"]
    got = cc.failures(rows)
    assert len(got) == 4
    assert got[0].endswith(": CompilationError: boom")
    assert f"{cc.SHARED_LIMIT + 1} B shared memory > {cc.SHARED_LIMIT}" in got[1]
    assert "spills (16 B stack frame, 8 B local)" in got[2]
    assert got[3].startswith("_cos_kernel") and "no resource usage" in got[3]
    assert cc.failures([_row(shared=cc.SHARED_LIMIT)]) == []          # the limit itself fits


def test_table_lines_show_configuration_and_flags():
    table = cc.format_table([_row(), _row(ok=False, error="X" * 300)])
    head, good, bad = table.splitlines()
    assert head.split()[:4] == ["kernel", "launch", "config", "regs"]
    assert "paper k=5 FLAT" in good and "LOSS" not in good
    assert "64x32x16 p2 w4 s3" in good and " 128 " in good and "wgmma" in good
    assert "ERROR " + "X" * 120 in bad and "X" * 121 not in bad


@pytest.mark.parametrize("argv, env, match", [
    (["--record", "x.json"], None, "--record needs TRITON_INTERPRET=1"),
    (["--compile", "x.json"], "1", "compiling needs TRITON_INTERPRET unset"),
])
def test_each_step_refuses_the_wrong_interpreter_setting(monkeypatch, argv, env, match):
    if env is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", env)
    with pytest.raises(SystemExit, match=match):
        cc.main(argv)


def test_a_failed_recording_stops_with_its_exit_status(monkeypatch):
    # without --compile the check first records the launches in an interpreter process:
    # when that process fails, one clear line instead of a traceback about a missing file
    import subprocess
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    seen = []

    def run(cmd, env=None, **kw):
        seen.append((cmd[-2:], env.get("TRITON_INTERPRET"), kw.get("check", False)))
        return subprocess.CompletedProcess(cmd, 3)
    monkeypatch.setattr(cc.subprocess, "run", run)
    with pytest.raises(SystemExit, match=r"recording the launches failed \(exit status 3"):
        cc.main([])
    assert seen[0][0][0] == "--record" and seen[0][1:] == ("1", False)


@pytest.mark.parametrize("rows, status, n_bad", [
    ([_row()], 0, 0),
    ([_row(), _row(ok=False, error="CompilationError: boom")], 1, 1),
    ([_row(shared=cc.SHARED_LIMIT + 1), _row(stack=8)], 1, 2),
])
def test_exit_status_is_1_on_a_failure_and_0_otherwise(tmp_path, monkeypatch, capsys, rows,
                                                       status, n_bad):
    """The module docstring's exit status: 1 when any row fails the check, else 0; the JSON
    is complete and names each failure.  Compilation is replaced by the given rows."""
    import json
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    specs = tmp_path / "specs.json"
    specs.write_text("[]")

    def fake_compile(specs_, capability, all_configs, jobs, on_row):
        for r in rows:
            on_row(dict(r))
    monkeypatch.setattr(cc, "compile_specs", fake_compile)
    out = tmp_path / "out.json"
    assert cc.main(["--compile", str(specs), "--json", str(out)]) == status
    rec = json.loads(out.read_text())
    assert rec["summary"]["status"] == "complete" and rec["summary"]["variants"] == len(rows)
    assert len(rec["summary"]["failures"]) == n_bad
    text = capsys.readouterr().out
    assert text.count("\nFAIL ") == len(rec["summary"]["failures"])
    assert f"{len(rows)} variants of 0 launches" in text


def test_an_interrupted_compile_keeps_its_rows_and_exits_130(tmp_path, monkeypatch):
    import json
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    specs = tmp_path / "specs.json"
    specs.write_text("[]")

    def fake_compile(specs_, capability, all_configs, jobs, on_row):
        on_row(_row())
        raise KeyboardInterrupt
    monkeypatch.setattr(cc, "compile_specs", fake_compile)
    out = tmp_path / "out.json"
    assert cc.main(["--compile", str(specs), "--json", str(out)]) == 130
    rec = json.loads(out.read_text())
    assert rec["summary"]["status"] == "interrupted" and len(rec["rows"]) == 1


@pytest.mark.interpreter
def test_recorded_launches_carry_their_case_and_no_sweep_unless_asked():
    """Outside :func:`launch_case` a launch has no label and compiles only its pinned
    configuration; inside, the label and the sweep flag are the block's, and the previous
    ones come back after it."""
    import os

    import torch
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("recording patches the interpreter")
    from kernels import cmoe_triton
    g0, bank = torch.randn(4, 32), torch.randn(3, 4, 32)
    idx, sc = torch.tensor([[0, 2]]), torch.rand(1, 2)
    specs = []
    with cc.record_launches(specs):
        cmoe_triton.mix(g0, bank, idx, sc)
        with cc.launch_case("outer"):
            cmoe_triton.mix(g0, bank, idx, sc)
            with cc.launch_case("inner", sweep=True):
                cmoe_triton.mix(g0, bank, idx, sc)
            cmoe_triton.mix(g0, bank, idx, sc)
        cmoe_triton.mix(g0, bank, idx, sc)
    assert [(s["name"], s["case"], s["sweep"]) for s in specs] == [
        ("_mix_kernel", None, False), ("_mix_kernel", "outer", False),
        ("_mix_kernel", "inner", True), ("_mix_kernel", "outer", False),
        ("_mix_kernel", None, False)]
    assert specs[0]["args"]["SIZE"] == 4 * 32 and specs[0]["args"]["TOPK"] == 2
