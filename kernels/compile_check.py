"""Compile every Triton kernel for a GPU target without a GPU, as a real launch gets it, and
report what each compiled variant uses.

1. **Record** (under ``TRITON_INTERPRET=1``): the library's launchers run on CPU tensors
   inside :func:`kernels.backend.gpu_launch_params` (the GPU's tile sizes, native bf16
   operands: no interpreter upcast) and every kernel launch is recorded *without being
   executed*: each tensor argument's dtype and 16-byte alignment, every scalar's value,
   every constexpr and launch option.  :func:`representative_launches` makes them: the
   C-MoE primitives with the paper's divisibility (every size and stride a multiple of 16,
   as at 256 channels) and at odd sizes (partial tiles), in fp32 with IEEE and with TF32
   dot products (PyTorch's default) and in bf16, from channels-last and NCHW tensors; the
   anomaly map in both modes, the score and the loss forward and backward.
2. **Compile** (without the interpreter): Triton's own JIT binder binds each recorded
   launch for the target, so integers get the divisibility-by-16 and ``== 1``
   specialisations and pointers their alignment exactly as ``kernel[grid](...)`` computes
   them, and ``triton.compile`` builds it for each configuration — the same call and cache
   key as a JIT launch, so on a GPU machine this also fills Triton's cache before the
   benchmarks run (``benchmarks/gpu_suite.sh``, stage ``compile``).
3. **Report**: one row per compiled variant: registers, stack frame and local memory
   (spills; ``cuobjdump --dump-resource-usage`` of the cubin), shared memory (compiled
   metadata), the 16-byte asynchronous copies (``cp.async … 16``) and matrix instructions
   in the PTX, compile seconds.  The exit status is 1 on a compile error, shared memory
   over :data:`SHARED_LIMIT`, or a spill in a kernel of :data:`NO_SPILL`.

What is compiled (the cap that keeps CI near a minute): every autotune configuration of
the launches recorded as ``sweep`` (the k = 5 convolution and weight gradient at paper
divisibility in each of bf16, fp32-TF32 and fp32-IEEE; the cosine stage of the map in
fp32/NCHW and bf16/channels-last), the pinned configuration (first row) for every other
launch (k = 1 and 3, odd sizes, the loss, other layouts), each distinct specialisation
once: about 70 variants, ~35 s of CPU.  ``--all-configs`` compiles every configuration of every launch (the GPU suite does,
with ``--jobs``).

``python -m kernels.compile_check [--jobs N] [--json OUT.json] [--all-configs]`` runs both
steps (recording in a child process); ``--record SPECS`` and ``--compile SPECS`` run one.
It checks compilation only: it does not run anything on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from unimmad import scoring as ref_scoring

from . import cmoe_triton
from .amap import anomaly_map, decompression_loss, image_score
from .backend import gpu_launch_params

__all__ = ["SHARED_LIMIT", "NO_SPILL", "record_launches", "launch_case",
           "representative_launches", "compile_specs", "failures", "format_table"]

#: Hopper's largest shared-memory allocation per block (227 KiB).
SHARED_LIMIT = 227 * 1024
#: Kernels that must compile without register spills (stack frame or local memory): the
#: convolution and weight-gradient GEMMs, the map tile and the cosine stage.
NO_SPILL = ("_dyn_conv_kernel", "_wgrad_kernel", "_map_tile_kernel", "_cos_kernel")

_CASE: List = [None, False]     # label and sweep flag of the launches being recorded


@contextlib.contextmanager
def launch_case(label: str, sweep: bool = False) -> Iterator[None]:
    """Label the launches recorded inside this block (``sweep``: compile them for every
    autotune configuration, not only the pinned one)."""
    old = list(_CASE)
    _CASE[:] = [label, sweep]
    try:
        yield
    finally:
        _CASE[:] = old


def _describe(name: str, value):
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).replace("torch.", ""),
                "aligned": value.data_ptr() % 16 == 0}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record argument {name}={value!r}")


@contextlib.contextmanager
def record_launches(specs: List[Dict]) -> Iterator[List[Dict]]:
    """Record every interpreted kernel launch into ``specs`` instead of running it (its
    outputs stay unwritten), with the launchers choosing GPU launch parameters."""
    from triton.runtime.interpreter import InterpretedFunction
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        names = list(inspect.signature(self.fn).parameters)
        bound = dict(zip(names, args))
        bound.update((k, v) for k, v in kwargs.items() if k in names)
        specs.append({
            "module": self.fn.__module__, "name": self.fn.__name__, "case": _CASE[0],
            "sweep": _CASE[1], "args": {n: _describe(n, v) for n, v in bound.items()},
            "options": {k: v for k, v in kwargs.items()
                        if k not in names and isinstance(v, (bool, int, float, str))}})
        return None

    InterpretedFunction.run = run
    # the kernels do not run, so their outputs hold whatever memory held: the library's
    # finiteness check of a map or loss would refuse them
    check_finite = ref_scoring.check_finite_output
    ref_scoring.check_finite_output = lambda out, *a, **k: out
    try:
        with gpu_launch_params():
            yield specs
    finally:
        InterpretedFunction.run = original
        ref_scoring.check_finite_output = check_finite


def representative_launches() -> None:
    """Launch every Triton kernel the way the library does on a GPU (recorded by
    :func:`record_launches`): small tensors with the divisibility of the real ones."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, dtype=torch.float32, fmt=torch.contiguous_format):
        return torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=fmt)

    cl = torch.channels_last
    js, jw = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    # C-MoE convolution, forward and backward.  256 channels at 16 × 16 pixels have the
    # paper's divisibility (every size and stride a multiple of 16, as at 64 × 64 or
    # 32 × 32); 20 → 24 channels at 7 × 9 give partial tiles and no divisibility.  Inputs
    # come channels-last and NCHW (the launchers convert NCHW: one specialisation).
    for dt, prec in [(torch.bfloat16, "tf32"), (torch.float32, "tf32"),
                     (torch.float32, "ieee")]:
        for label, ci, co, h, w, ks in [("paper", 256, 256, 16, 16, (1, 3, 5)),
                                        ("odd", 20, 24, 7, 9, (5,))]:
            for k in ks:
                wb = r(3, co, k * k * ci, dtype=dt)
                with launch_case(f"{label} k={k} {str(dt)[6:]} {prec}",
                                 sweep=label == "paper" and k == 5):
                    for fmt in (cl, torch.contiguous_format):
                        x = r(2, ci, h, w, dtype=dt, fmt=fmt)
                        cmoe_triton.dyn_conv(x, wb, js, jw, k, prec)
                    gy = r(3, co, h, w, dtype=dt, fmt=cl)
                    cmoe_triton.dyn_conv_backward(gy, x, wb, js, jw, k, prec, True, True)
    idx, sc = torch.tensor([[0, 2], [1, 0]]), torch.rand(2, 2, generator=g)
    for dt in (torch.float32, torch.bfloat16):
        with launch_case(f"paper {str(dt)[6:]}"):
            cmoe_triton.compose(r(8, 256, 9 * 256, dtype=dt), r(32, 8, 256, dtype=dt), idx, sc)
            cmoe_triton.mix(r(256, 9 * 256, dtype=dt), r(32, 256, 9 * 256, dtype=dt), idx, sc)
    # Anomaly map, score and loss: the paper's three level sides with channel counts
    # divisible by 16, 32 samples of 2 modalities (64 units); every layout and dtype; the
    # cosine stage of the map swept in fp32/NCHW and bf16/channels-last.
    uts = torch.arange(32).repeat_interleave(2)
    for dt, fmt, sweep in [(torch.float32, torch.contiguous_format, True),
                           (torch.bfloat16, cl, True), (torch.float32, cl, False),
                           (torch.bfloat16, torch.contiguous_format, False)]:
        label = f"paper {str(dt)[6:]} {'channels_last' if fmt == cl else 'NCHW'}"
        pri = [r(64, c, s, s, dtype=dt, fmt=fmt) for c, s in ((16, 64), (32, 32), (64, 16))]
        pre = [r(*t.shape, dtype=dt, fmt=fmt).requires_grad_(True) for t in pri]
        with launch_case(label, sweep=sweep):
            for mode in ("mean", "joint"):
                m = anomaly_map(pri, pre, uts, 256, num_samples=32, mode=mode, backend="triton")
        with launch_case(label):
            image_score(m, backend="triton")
            loss, _ = decompression_loss(pri, pre, uts, backend="triton")
            loss.backward()
    pri = [r(3, 20, 7, 9), r(3, 12, 4, 5)]
    pre = [r(3, 20, 7, 9).requires_grad_(True), r(3, 12, 4, 5).requires_grad_(True)]
    with launch_case("odd float32 NCHW"):
        anomaly_map(pri, pre, torch.tensor([0, 1, 1]), 30, num_samples=2, backend="triton")
        loss, _ = decompression_loss(pri, pre, torch.tensor([0, 1, 1]), backend="triton")
        loss.backward()


# ----------------------------------------------------------------------------- compile
class _Pointer:
    """What Triton's binder reads of a tensor argument: its dtype and address."""

    def __init__(self, dtype: torch.dtype, aligned: bool):
        self.dtype = dtype
        self._ptr = (1 << 20) + (0 if aligned else 2)

    def data_ptr(self) -> int:
        return self._ptr


def _kernel(spec: Dict):
    """``(JITFunction, autotune configurations or None)`` of a recorded launch (the
    configurations from the module's ``TUNED`` table; the conv's by its precision)."""
    from triton.runtime.jit import JITFunction
    module = importlib.import_module(spec["module"])
    obj = getattr(module, spec["name"])
    tuned = getattr(module, "TUNED", {}).get(spec["name"])
    if isinstance(tuned, dict):
        tuned = tuned[spec["args"]["PRECISION"]]
    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj, tuned


def _bind(spec: Dict, config, target):
    """What ``JITFunction.run`` computes before compiling: ``(cache key, ASTSource,
    options)`` for this launch and configuration."""
    from triton import knobs
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    jf, _ = _kernel(spec)
    backend = make_backend(target)
    kwargs = {}
    for name, value in spec["args"].items():
        if isinstance(value, dict):
            value = _Pointer(getattr(torch, value["tensor"]), value["aligned"])
        kwargs[name] = value
    kwargs.update(spec["options"])
    if config is not None:
        kwargs.update(config.all_kwargs())
    kwargs["debug"] = kwargs.get("debug", jf.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(jf.signature, jf.params, backend)
    bound, specialization, options = binder(**kwargs)
    key = (spec["name"], str(specialization), str(options))
    options, signature, constexprs, attrs = jf._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return key, ASTSource(jf, signature, constexprs, attrs), options, specialization


def _cuobjdump() -> Optional[str]:
    try:
        from triton import knobs
        return knobs.nvidia.cuobjdump.path
    except Exception:  # pragma: no cover - older layouts
        import shutil
        return shutil.which("cuobjdump")


def _resources(cubin: bytes) -> Dict[str, int]:
    """Registers, stack frame and local memory per thread of the cubin's kernel."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, timeout=60).stdout
    found = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out))
    return {"registers": int(found["REG"]), "stack": int(found.get("STACK", 0)),
            "local": int(found.get("LOCAL", 0))} if "REG" in found else {}


def _ptx_facts(ptx: str) -> Dict[str, object]:
    mma = ("wgmma" if "wgmma.mma_async" in ptx else "mma" if re.search(r"\bmma\.sync", ptx)
           else "none")
    widths = sorted(set(re.findall(r"ld\.global(?:\.[a-z]+)*\.((?:v\d\.)?[bfsu]\d+)", ptx)))
    copies = re.findall(r"cp\.async\.c[ag]\.shared\.global[^;]*,\s*(?:16|0x10)\s*[,;]", ptx)
    return {"cp_async_16B": len(copies), "global_loads": widths, "mma": mma}


def _summary(spec: Dict, specialization) -> Dict[str, List[str]]:
    """Which runtime arguments the JIT specialised: divisible by 16 (``D``) or equal to 1
    (turned into a constant)."""
    jf, _ = _kernel(spec)
    div16, ones = [], []
    for param, s in zip(jf.params, specialization):
        if param.is_constexpr:
            continue
        if s[0] == "constexpr":
            ones.append(param.name)
        elif s[1] == "D":
            div16.append(param.name)
    return {"div16": div16, "const1": ones}


def _dtype_of(spec: Dict) -> str:
    dts = [v["tensor"] for v in spec["args"].values() if isinstance(v, dict)
           and v["tensor"] in ("float32", "bfloat16", "float16")]
    return dts[0] if dts else "-"


_TILE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_P", "BLOCK_C", "PIPE")
_CONFIG_KEYS = _TILE_KEYS + ("num_warps", "num_stages")
#: constexprs shown in the table (those that tell variants of one launch apart)
_SHOWN = ("LOSS", "JOINT", "FINAL", "CHANNELS_LAST", "FLAT")


def _compile_one(task: Tuple[Dict, Optional[int], int]) -> Dict:
    spec, cfg_index, capability = task
    import triton
    from triton.backends.compiler import GPUTarget
    target = GPUTarget("cuda", capability, 32)
    _, tuned = _kernel(spec)
    config = tuned[cfg_index] if cfg_index is not None else None
    opts = config.all_kwargs() if config is not None else {
        k: v for k, v in spec["options"].items() if k in ("num_warps", "num_stages")}
    row = {"kernel": spec["name"], "case": spec["case"], "dtype": _dtype_of(spec),
           "config": {k: v for k, v in opts.items() if k in _CONFIG_KEYS},
           "constexprs": {k: v for k, v in spec["args"].items()
                          if k.isupper() and k not in _CONFIG_KEYS and not isinstance(v, dict)}}
    t0 = time.time()
    try:
        key, src, options, specialization = _bind(spec, config, target)
        row["key"] = key
        row.update(_summary(spec, specialization))
        kernel = triton.compile(src, target=target, options=options.__dict__)
        row.update(ok=True, shared=int(kernel.metadata.shared))
        row.update(_resources(kernel.asm["cubin"]))
        row.update(_ptx_facts(kernel.asm["ptx"]))
    except Exception as exc:  # report every failure, not only the first
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
    row["seconds"] = round(time.time() - t0, 2)
    return row


def _tasks(specs: List[Dict], capability: int, all_configs: bool):
    tasks = []
    for spec in specs:
        _, tuned = _kernel(spec)
        if tuned is None:
            tasks.append((spec, None, capability))
        else:
            count = len(tuned) if (all_configs or spec["sweep"]) else 1
            tasks += [(spec, i, capability) for i in range(count)]
    return tasks


def compile_specs(specs: List[Dict], capability: int = 90, all_configs: bool = False,
                  jobs: int = 1, on_row: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
    """Compile the recorded launches (see the module docstring for which configurations);
    one row per distinct compiled variant, each passed to ``on_row`` as soon as it is
    there.  ``jobs > 1`` compiles in that many spawned processes."""
    from triton.backends.compiler import GPUTarget
    target = GPUTarget("cuda", capability, 32)
    seen, unique = set(), []
    for task in _tasks(specs, capability, all_configs):
        spec, i, _ = task
        _, tuned = _kernel(spec)
        try:
            key = _bind(spec, tuned[i] if i is not None else None, target)[0]
        except Exception:   # binding errors are reported by the compile step
            key = (spec["name"], spec["case"], i)
        if key not in seen:
            seen.add(key)
            unique.append(task)
    rows: List[Dict] = []

    def done(row):
        row.pop("key", None)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    if jobs > 1:
        import concurrent.futures
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            for row in pool.map(_compile_one, unique):
                done(row)
    else:
        for task in unique:
            done(_compile_one(task))
    return rows


def failures(rows: List[Dict]) -> List[str]:
    """Why the check fails (empty when it passes)."""
    out = []
    for r in rows:
        what = f"{r['kernel']} [{r['case']}] {r['config']}"
        if not r["ok"]:
            out.append(f"{what}: {r['error']}")
            continue
        if r["shared"] > SHARED_LIMIT:
            out.append(f"{what}: {r['shared']} B shared memory > {SHARED_LIMIT}")
        if r["kernel"] in NO_SPILL and (r.get("stack", 0) or r.get("local", 0)):
            out.append(f"{what}: spills ({r['stack']} B stack frame, {r['local']} B local)")
        if r["kernel"] in NO_SPILL and "registers" not in r:
            out.append(f"{what}: no resource usage (cuobjdump missing?)")
    return out


def _line(r: Dict) -> str:
    cfg = r["config"]
    tile = "x".join(str(cfg[k]) for k in _TILE_KEYS[:5] if k in cfg)
    pipe = f" p{cfg['PIPE']}" if "PIPE" in cfg else ""
    cfg_s = f"{tile or '-'}{pipe} w{cfg.get('num_warps', '?')} s{cfg.get('num_stages', '-')}"
    flags = " ".join(f"{k}" for k in _SHOWN if r["constexprs"].get(k))
    launch = f"{r['case']} {flags}".strip()
    if not r["ok"]:
        return f"{r['kernel']:<19} {launch:<40} {cfg_s:<22} ERROR {r['error'][:120]}"
    return (f"{r['kernel']:<19} {launch:<40} {cfg_s:<22} "
            f"{r.get('registers', '?'):>4} {r.get('stack', '?'):>5} {r.get('local', '?'):>5} "
            f"{r['shared'] / 1024:>7.1f} {r['cp_async_16B']:>5} {r['mma']:<6} "
            f"{r['seconds']:>5.1f}")


def format_table(rows: List[Dict]) -> str:
    """Registers, spills and shared memory per kernel, launch and configuration."""
    head = (f"{'kernel':<19} {'launch':<40} {'config':<22} {'regs':>4} {'stack':>5} "
            f"{'local':>5} {'smemKiB':>7} {'cp16':>5} {'mma':<6} {'sec':>5}")
    return "\n".join([head] + [_line(r) for r in rows])


def _record(path: str) -> int:
    specs: List[Dict] = []
    with record_launches(specs):
        representative_launches()
    with open(path, "w") as f:
        json.dump(specs, f)
    print(f"recorded {len(specs)} launches", file=sys.stderr)
    return len(specs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", metavar="SPECS_JSON", help="only record (TRITON_INTERPRET=1)")
    ap.add_argument("--compile", metavar="SPECS_JSON", help="only compile recorded launches")
    ap.add_argument("--json", metavar="OUT_JSON", help="write the rows (and meta) here")
    ap.add_argument("--capability", type=int, default=90, help="compute capability (90)")
    ap.add_argument("--all-configs", action="store_true",
                    help="every autotune configuration of every launch")
    ap.add_argument("--jobs", type=int, default=1, help="compile processes (default 1)")
    args = ap.parse_args(argv)
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if args.record:
        if not interpreting:
            raise SystemExit("--record needs TRITON_INTERPRET=1")
        _record(args.record)
        if not args.compile:
            return 0
    if interpreting:
        raise SystemExit("compiling needs TRITON_INTERPRET unset (run without it: the "
                         "recording step starts its own interpreter process)")
    import platform

    import triton
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.compile
        if path is None:
            path = os.path.join(tmp, "specs.json")
            env = dict(os.environ, TRITON_INTERPRET="1")
            rec = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--record",
                                  path], env=env)
            if rec.returncode != 0:
                raise SystemExit(f"recording the launches failed (exit status "
                                 f"{rec.returncode}; its error is printed above): nothing "
                                 "compiled")
        with open(path) as f:
            specs = json.load(f)
    record = {"meta": {"python": platform.python_version(), "torch": torch.__version__,
                       "triton": triton.__version__, "host": platform.node()},
              "summary": {"capability": args.capability, "launches": len(specs),
                          "all_configs": args.all_configs, "status": "running"},
              "rows": []}

    def save(status: str) -> None:     # after every row: a stopped run keeps what it did
        record["summary"].update(status=status, variants=len(record["rows"]),
                                 seconds=round(time.time() - start, 1),
                                 failures=failures(record["rows"]))
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump(record, f, indent=1)
            os.replace(args.json + ".tmp", args.json)

    def on_row(row):
        record["rows"].append(row)
        print(_line(row), flush=True)
        save("running")

    print(format_table([]), flush=True)
    try:
        compile_specs(specs, args.capability, args.all_configs, args.jobs, on_row)
    except KeyboardInterrupt:
        save("interrupted")
        print("interrupted: the rows compiled so far are written", flush=True)
        return 130
    save("complete")
    bad = record["summary"]["failures"]
    print(f"{len(record['rows'])} variants of {len(specs)} launches compiled for "
          f"sm_{args.capability} in {record['summary']['seconds']:.0f} s; {len(bad)} failures")
    for line in bad:
        print("FAIL", line)
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main())
