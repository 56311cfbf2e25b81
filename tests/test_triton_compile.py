"""Every Triton kernel compiles for Hopper (sm_90) as a real launch gets it — checked on a
machine without a GPU (``kernels.compile_check``): launches recorded on the interpreter
with GPU launch parameters, bound by Triton's own JIT binder (divisibility and ``== 1``
specialisations, pointer alignment), compiled for every autotune configuration of the swept
launches; no compile error, shared memory within 227 KiB, no register spills in the conv,
weight-gradient, map-tile and cosine kernels.  The table of registers, spills and shared
memory is printed (``pytest -s``) and attached to any failure."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from kernels import amap_triton, cmoe_triton  # noqa: E402
from kernels.compile_check import (NO_SPILL, SHARED_LIMIT, format_table,  # noqa: E402
                                   record_launches, representative_launches)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = {"_dyn_conv_kernel", "_wgrad_kernel", "_compose_kernel", "_mix_kernel", "_cos_kernel",
           "_map_tile_kernel", "_topk_kernel", "_focal_grad_kernel"}
needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="recording uses the interpreter; on a GPU machine the suite's compile stage runs "
           "python -m kernels.compile_check and the kernels compile for real in the gpu tests")


@pytest.fixture(scope="module")
def specs():
    recorded = []
    with record_launches(recorded):
        representative_launches()
    return recorded


@needs_interpreter
def test_recorded_launches_are_what_a_gpu_gets(specs):
    assert {s["name"] for s in specs} >= KERNELS
    conv = [s for s in specs if s["name"] == "_dyn_conv_kernel"]
    # native bf16 operands and GPU tiles, not the interpreter's upcast and small tiles
    bf16 = [s for s in conv if s["args"]["x_ptr"]["tensor"] == "bfloat16"]
    assert bf16 and all(s["args"]["UPCAST"] is False for s in bf16)
    assert {s["args"]["PRECISION"] for s in conv} == {"tf32", "ieee"}
    compose = next(s for s in specs if s["name"] == "_compose_kernel")
    assert (compose["args"]["BLOCK_O"], compose["args"]["BLOCK_R"]) == (32, 128)
    # composition at the paper's N = 8 base experts, E = 256, k = 3
    assert {(s["args"]["N"], s["args"]["Co"], s["args"]["R"]) for s in specs
            if s["name"] == "_compose_kernel"} == {(8, 256, 9 * 256)}
    # the folded-kernel mix at the paper's E = 256, k = 3: one [256, 9·256] kernel per unit
    mix = [s for s in specs if s["name"] == "_mix_kernel"]
    assert mix and {s["args"]["SIZE"] for s in mix} == {256 * 9 * 256}
    assert {s["args"]["BLOCK"] for s in mix} == {2048}
    # NCHW inputs reach the conv channels-last (the launcher converts them)
    assert all(s["args"]["sxc"] == 1 for s in conv)
    cos = [s for s in specs if s["name"] == "_cos_kernel"]
    assert {s["args"]["CHANNELS_LAST"] for s in cos} == {True, False}


@needs_interpreter
def test_recorded_shapes_are_the_documented_cases(specs):
    """The sizes representative_launches documents: the conv at the paper's 256 channels
    on 16 × 16 for k = 1, 3, 5 and at 20 → 24 channels on 7 × 9 for k = 5, in bf16/tf32,
    fp32/tf32 and fp32/ieee (two forward layouts and the input gradient, one weight
    gradient each; only paper k = 5 swept); the map at 256² for 64 units over the paper's
    three levels (16 × 64², 32 × 32², 64 × 16²) in both modes, and the odd 30² map of 3
    units over 20 × 7 × 9 and 12 × 4 × 5."""
    from unimmad.scoring import top_k_count
    sizes = {"paper": (256, 256, 16, 16), "odd": (20, 24, 7, 9)}
    want = {f"{lbl} k={k} {dt} {p}" for dt, p in [("bfloat16", "tf32"), ("float32", "tf32"),
                                                  ("float32", "ieee")]
            for lbl, ks in [("paper", (1, 3, 5)), ("odd", (5,))] for k in ks}
    # per case: (Ci, Co) of the forward launches, of the input gradient's (a conv from the
    # output channels back), of the weight gradient
    for name, roles in (("_dyn_conv_kernel", ("fwd", "fwd", "dgrad")),
                        ("_wgrad_kernel", ("fwd",))):
        launches = [s for s in specs if s["name"] == name]
        assert {s["case"] for s in launches} == want, name
        for case in want:
            label, k, dt, _ = case.split()
            ci, co, h, w = sizes[label]
            got = sorted((s["args"]["Ci"], s["args"]["Co"], s["args"]["H"], s["args"]["W"],
                          s["args"]["KS"], s["args"]["R"]) for s in launches
                         if s["case"] == case)
            k = int(k[2:])
            assert got == sorted((ci, co, h, w, k, k * k * ci) if r == "fwd" else
                                 (co, ci, h, w, k, k * k * co) for r in roles), (name, case)
        for s in launches:
            label, k, dt, _ = s["case"].split()
            assert s["args"]["x_ptr"]["tensor"] == dt
            assert s["sweep"] is (label == "paper" and k == "k=5")
    paper = {f"paper {dt} {f}" for dt in ("float32", "bfloat16")
             for f in ("NCHW", "channels_last")}
    tiles = [s for s in specs if s["name"] == "_map_tile_kernel"]
    assert {(s["case"], s["args"]["JOINT"]) for s in tiles} == \
        {(c, j) for c in paper for j in (False, True)} | {("odd float32 NCHW", False)}
    for s in tiles:
        a = s["args"]
        assert (a["U"], a["L"], a["H"], a["W"]) == ((3, 2, 30, 30) if s["case"].startswith("odd")
                                                    else (64, 3, 256, 256))
    levels = {"paper": {(16, 64 * 64), (32, 32 * 32), (64, 16 * 16)},
              "odd": {(20, 7 * 9), (12, 4 * 5)}}
    for name in ("_cos_kernel", "_focal_grad_kernel"):
        for label in levels:
            got = {(s["args"]["C"], s["args"]["P"]) for s in specs
                   if s["name"] == name and s["case"].startswith(label)}
            assert got == levels[label], (name, label)
    for s in specs:
        if s["name"] == "_topk_kernel":
            assert s["args"]["K"] == top_k_count(256 * 256) and s["case"] in paper
            assert s["args"]["FINAL"] or s["args"]["N"] == 256 * 256


@needs_interpreter
def test_every_kernel_compiles_for_sm90_without_spills(specs, tmp_path):
    path, out_json = tmp_path / "specs.json", tmp_path / "compile.json"
    path.write_text(json.dumps(specs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--compile", str(path),
                          "--json", str(out_json)],
                         capture_output=True, text=True, env=env, timeout=900)
    print(out.stdout)
    assert out_json.exists(), out.stderr[-3000:]
    rows = json.loads(out_json.read_text())["rows"]
    table = format_table(rows)
    failed = [f"{r['kernel']} {r['case']} {r['config']}: {r['error']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert out.returncode == 0, out.stdout[-3000:]
    assert {r["kernel"] for r in rows} == KERNELS
    for r in rows:
        assert 0 < r["registers"] <= 255, (r, table)
        assert r["shared"] <= SHARED_LIMIT, (r, table)
        if r["kernel"] in NO_SPILL:
            assert r["stack"] == 0 and r["local"] == 0, f"spills:\n{table}"
    # every configuration of each swept launch was compiled
    by_case = {}
    for r in rows:
        by_case.setdefault((r["kernel"], r["case"]), []).append(r)
    for prec, case in [("tf32", "paper k=5 bfloat16 tf32"), ("tf32", "paper k=5 float32 tf32"),
                       ("ieee", "paper k=5 float32 ieee")]:
        tuned = cmoe_triton.TUNED["_dyn_conv_kernel"][prec]
        assert len(by_case[("_dyn_conv_kernel", case)]) == len(tuned), table
        assert len(by_case[("_wgrad_kernel", case)]) == len(cmoe_triton.TUNED["_wgrad_kernel"])
    maps = [r for r in by_case[("_cos_kernel", "paper float32 NCHW")]
            if not r["constexprs"]["LOSS"]]
    assert len(maps) == len(amap_triton.TUNED["_cos_kernel"])
    # the specialisations of real channels-last / NCHW tensors: unit channel stride and
    # sizes divisible by 16 at paper dimensions; none of it at odd sizes
    paper_bf16 = by_case[("_dyn_conv_kernel", "paper k=5 bfloat16 tf32")]
    assert {r["dtype"] for r in paper_bf16} == {"bfloat16"}
    assert {r["dtype"] for r in by_case[("_dyn_conv_kernel", "paper k=5 float32 ieee")]} == {"float32"}
    for r in paper_bf16:
        assert "sxc" in r["const1"] and {"Ci", "Co", "H", "W", "sxh", "sxw"} <= set(r["div16"])
        assert r["cp_async_16B"] > 0 and r["mma"] == "wgmma", table
    odd = by_case[("_dyn_conv_kernel", "odd k=5 bfloat16 tf32")]
    assert all("Ci" not in r["div16"] for r in odd)
    cos_cl = by_case[("_cos_kernel", "paper bfloat16 channels_last")]
    cos_nchw = by_case[("_cos_kernel", "paper bfloat16 NCHW")]
    assert all("suc" in r["const1"] for r in cos_cl)
    assert all("suw" in r["const1"] and "suc" in r["div16"] for r in cos_nchw)
    # the pipelined cosine loop streams with 16-byte asynchronous copies
    assert all(r["cp_async_16B"] > 0 for r in maps if r["config"]["PIPE"] > 1)
