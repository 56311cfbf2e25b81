"""Compile every Triton kernel for a GPU target without a GPU (``triton.compile`` with an
explicit target; ptxas ships with triton).  The kernels' launches are first *recorded* on
the CPU interpreter — the real argument dtypes, scalars and constexprs the launchers pass —
then each recorded launch is compiled for every autotune configuration in a process
without ``TRITON_INTERPRET``.  This catches GPU-only compile errors (types, layouts,
shared-memory overuse) that the interpreter cannot see; it is not a substitute for running
on a GPU.

``python -m kernels.compile_check --record specs.json`` (needs TRITON_INTERPRET=1), then
``python -m kernels.compile_check --compile specs.json`` (needs it unset).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
from typing import Dict, List

import torch

from . import cmoe_triton
from .amap import anomaly_map, decompression_loss, image_score

__all__ = ["record_launches", "representative_launches", "compile_specs", "SHARED_LIMIT"]

#: Hopper's largest shared-memory allocation per block (227 KiB).
SHARED_LIMIT = 227 * 1024
_DTYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16",
           torch.int32: "*i32", torch.int64: "*i64", torch.float64: "*fp64"}


@contextlib.contextmanager
def record_launches(specs: List[Dict], execute: bool = False):
    """Record every interpreted kernel launch into ``specs`` (without running it unless
    ``execute``: outputs are then left unwritten)."""
    from triton.runtime.interpreter import InterpretedFunction
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        sig = inspect.signature(self.fn)
        bound = sig.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
        constexprs = {n for n, p in sig.parameters.items()
                      if "constexpr" in str(p.annotation)}
        spec = {"module": self.fn.__module__, "name": self.fn.__name__, "signature": {},
                "constexprs": {}, "num_warps": kwargs.get("num_warps", 4),
                "num_stages": kwargs.get("num_stages", 3)}
        for name, value in bound.arguments.items():
            if name in constexprs:
                spec["constexprs"][name] = value
            elif isinstance(value, torch.Tensor):
                spec["signature"][name] = _DTYPES[value.dtype]
            elif isinstance(value, bool):
                spec["signature"][name] = "i1"
            elif isinstance(value, int):
                spec["signature"][name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            elif isinstance(value, float):
                spec["signature"][name] = "fp32"
            else:
                raise TypeError(f"{spec['name']}: cannot type argument {name}={value!r}")
        specs.append(spec)
        if execute:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        return None

    InterpretedFunction.run = run
    try:
        yield specs
    finally:
        InterpretedFunction.run = original


def representative_launches() -> None:
    """Launch every Triton kernel the way the library does (fp32 and bf16), small sizes."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dt=torch.float32: torch.randn(*s, generator=g).to(dt)
    for dt in (torch.float32, torch.bfloat16):
        for k in (1, 3, 5):
            x = r(2, 16, 5, 6, dt=dt).contiguous(memory_format=torch.channels_last)
            w = r(3, 16, k * k * 16, dt=dt)
            js, jw = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
            cmoe_triton.dyn_conv(x, w, js, jw, k, "ieee")
            gy = r(3, 16, 5, 6, dt=dt)
            cmoe_triton.dyn_conv_backward(gy, x, w, js, jw, k, "ieee", True, True)
        idx, sc = torch.tensor([[0, 2], [1, 0]]), torch.rand(2, 2, generator=g)
        cmoe_triton.compose(r(3, 16, 144, dt=dt), r(4, 3, 16, dt=dt), idx, sc)
        cmoe_triton.mix(r(16, 144, dt=dt), r(4, 16, 144, dt=dt), idx, sc)
        uts = torch.tensor([0, 1, 1])
        pri = [r(3, 8, s, s, dt=dt) for s in (16, 8, 4)]
        pre = [r(3, 8, s, s, dt=dt).requires_grad_(True) for s in (16, 8, 4)]
        for mode in ("mean", "joint"):
            m = anomaly_map(pri, pre, uts, 64, num_samples=2, mode=mode, backend="triton")
        image_score(m, backend="triton")
        loss, _ = decompression_loss(pri, pre, uts, backend="triton")
        loss.backward()


def compile_specs(specs: List[Dict], capability: int = 90) -> List[Dict]:
    """Compile each recorded launch for every autotune configuration; one result row per
    compilation (``ok``, ``shared`` bytes, ``error``)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget("cuda", capability, 32)
    seen, rows = set(), []
    for spec in specs:
        mod = importlib.import_module(spec["module"])
        obj = getattr(mod, spec["name"])
        fn = obj.fn if hasattr(obj, "configs") else obj
        configs = getattr(obj, "configs", [None])
        for cfg in configs:
            constexprs = dict(spec["constexprs"])
            opts = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
            if cfg is not None:
                constexprs.update(cfg.kwargs)
                opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            key = json.dumps([spec["name"], spec["signature"], constexprs, opts], sort_keys=True,
                             default=str)
            if key in seen:
                continue
            seen.add(key)
            signature = dict(spec["signature"], **{n: "constexpr" for n in constexprs})
            row = {"kernel": spec["name"], "constexprs": constexprs, "options": opts,
                   "signature": spec["signature"]}
            try:
                out = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                     target=target, options=opts)
                row.update(ok=True, shared=int(out.metadata.shared))
            except Exception as exc:  # report every failure, not only the first
                row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--record", metavar="SPECS_JSON")
    ap.add_argument("--compile", metavar="SPECS_JSON")
    ap.add_argument("--capability", type=int, default=90)
    args = ap.parse_args(argv)
    if args.record:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--record needs TRITON_INTERPRET=1")
        specs: List[Dict] = []
        with record_launches(specs):
            representative_launches()
        with open(args.record, "w") as f:
            json.dump(specs, f)
        print(f"recorded {len(specs)} launches")
    if args.compile:
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise SystemExit("--compile needs TRITON_INTERPRET unset")
        with open(args.compile) as f:
            rows = compile_specs(json.load(f), args.capability)
        json.dump(rows, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
