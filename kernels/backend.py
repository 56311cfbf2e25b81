"""Which implementation of a fused op runs, decided in one place.

Every fused op of this package (the C-MoE primitives of :mod:`kernels.cmoe_ops`, the anomaly
map, image score and loss of :mod:`kernels.amap`) and the :class:`kernels.FastCMoE` layer
take a ``backend`` argument:

* ``"auto"`` — the Triton kernels on CUDA tensors (fp32, bf16, fp16), the stock-torch fast
  path everywhere else (CPU tensors, float64, no Triton installed);
* ``"triton"`` — the Triton kernels; where they cannot run (no triton package, tensors
  neither on CUDA nor on the CPU interpreter, float64) it is an error, never a silent
  fallback;
* ``"torch"`` — the same algebra in stock torch ops (always available);
* ``"reference"`` — the plain functions and layers of :mod:`unimmad` (the paper's
  formulation; for the C-MoE primitives, which have no separate reference, the torch path).

:func:`resolve` is the only function that turns a name and the tensors into the backend
that runs; every error text about backends lives here.  The module also holds the switches
every Triton file shares: whether Triton is importable, the interpreter flag
(``TRITON_INTERPRET=1``, read at import), the autotune flag (``UNIMMAD_AUTOTUNE=0`` pins one
configuration), the autotune configuration lists (:func:`configs`) and
:func:`forced_config` (one configuration at a time, for the parity tests),
:func:`gpu_launch_params` (GPU launch parameters under the interpreter, for
:mod:`kernels.compile_check`), the fp32 dot precision, and the ``out=`` buffer helper of
the launchers.
No GPU is queried at import time.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Sequence

import torch

try:  # triton is a Linux-only dependency
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is missing
    triton = tl = None
    HAVE_TRITON = False

__all__ = ["BACKENDS", "HAVE_TRITON", "INTERPRET", "AUTOTUNE", "TRITON_DTYPES", "check_name",
           "resolve", "needs_custom_op", "configs", "all_configs", "interpreted",
           "gpu_launch_params", "forced_config", "default_precision", "output", "triton", "tl"]

BACKENDS = ("auto", "triton", "torch", "reference")
#: The floating dtypes the Triton kernels take (float64 runs on the torch path).
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Triton kernels run on the CPU interpreter (set ``TRITON_INTERPRET=1`` before importing).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: Autotuning over several configurations (off under the interpreter, or with
#: ``UNIMMAD_AUTOTUNE=0``: one pinned configuration per kernel).
AUTOTUNE = os.environ.get("UNIMMAD_AUTOTUNE", "1") != "0" and not INTERPRET


def check_name(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _triton_refusal(tensors: Sequence[torch.Tensor]) -> Optional[Exception]:
    """Why the Triton kernels cannot take ``tensors`` (``None`` when they can)."""
    if not HAVE_TRITON:
        return RuntimeError("backend='triton' needs the triton package (Linux); use "
                            "backend='torch' or 'auto'")
    for t in tensors:
        if t.device.type != "cuda" and not (t.device.type == "cpu" and INTERPRET):
            return RuntimeError(
                f"backend='triton' cannot run on {t.device.type} tensors: it needs CUDA (or "
                "TRITON_INTERPRET=1 set before importing kernels, for the CPU interpreter); "
                "use backend='torch' or 'auto'")
        if t.is_floating_point() and t.dtype not in TRITON_DTYPES:
            return TypeError(f"backend='triton' takes float32, bfloat16 or float16 tensors, "
                             f"got {t.dtype}; use backend='torch' or 'auto'")
    return None


def resolve(backend: str, *tensors: torch.Tensor) -> str:
    """The backend that runs an op on ``tensors``: ``"triton"``, ``"torch"`` or
    ``"reference"``.

    ``"auto"`` gives ``"triton"`` when every tensor is a CUDA tensor the kernels take (and
    Triton is installed), else ``"torch"``; ``"triton"`` raises ``RuntimeError`` (no triton,
    wrong device) or ``TypeError`` (float64) where the kernels cannot run; ``"torch"`` and
    ``"reference"`` are returned as they are.  Integer tensors (indices) are checked for
    their device only.  Never synchronises with the device.
    """
    check_name(backend)
    if backend == "auto":
        on_cuda = bool(tensors) and all(t.device.type == "cuda" for t in tensors)
        return "triton" if on_cuda and _triton_refusal(tensors) is None else "torch"
    if backend == "triton":
        err = _triton_refusal(tensors)
        if err is not None:
            raise err
    return backend


def needs_custom_op(*tensors: torch.Tensor) -> bool:
    """Whether a fused op must run through its ``torch.library`` custom op: while
    compiling or ``torch.jit`` tracing (the op is one node of the graph, with a fake
    kernel and a FLOP handle) or when autograd records it (a tensor requires grad with
    grad mode on).  Otherwise the op's implementation is called directly, with the same
    result: eager inference then never enters the custom-op machinery, whose first call
    imports ``torch._dynamo`` (~75 MB of resident memory on a CPU)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


_GPU_PARAMS = [False]   # set inside gpu_launch_params()


def interpreted() -> bool:
    """Whether the launchers pick the interpreter's launch parameters (small tiles, fp32
    upcast of ``tl.dot`` operands): under ``TRITON_INTERPRET=1``, except inside
    :func:`gpu_launch_params`."""
    return INTERPRET and not _GPU_PARAMS[0]


@contextlib.contextmanager
def gpu_launch_params() -> Iterator[None]:
    """Within this block the launchers choose what they choose on a GPU (native bf16 dot
    operands, GPU tile sizes) even under the interpreter: :mod:`kernels.compile_check`
    records launches this way, without executing them."""
    old, _GPU_PARAMS[0] = _GPU_PARAMS[0], True
    try:
        yield
    finally:
        _GPU_PARAMS[0] = old


def all_configs(names: Sequence[str], rows: Sequence[tuple]) -> list:
    """A ``triton.Config`` per row ``(*block sizes named by names, num_warps, num_stages)``."""
    n = len(names)
    return [triton.Config(dict(zip(names, row[:n])), num_warps=row[n], num_stages=row[n + 1])
            for row in rows]


def configs(names: Sequence[str], tuned: Sequence[tuple], interpreter: Optional[tuple] = None
            ) -> list:
    """Autotune configurations of one kernel: every row of ``tuned`` (see
    :func:`all_configs`); only its first row, the pinned one, when autotuning is off
    (``UNIMMAD_AUTOTUNE=0``); the ``interpreter`` row (default: the pinned one) under
    ``TRITON_INTERPRET=1``."""
    if INTERPRET:
        return all_configs(names, [interpreter or tuned[0]])
    return all_configs(names, tuned if AUTOTUNE else tuned[:1])


@contextlib.contextmanager
def forced_config(kernel, config) -> Iterator[None]:
    """Run the autotuned ``kernel`` with ``config`` alone inside this block (no tuning:
    an autotuner with one configuration launches it as it is); its tuning cache is
    restored afterwards.  The parity tests force every configuration in turn."""
    saved_configs, saved_cache = kernel.configs, dict(kernel.cache)
    kernel.configs = [config]
    kernel.cache.clear()
    try:
        yield
    finally:
        kernel.configs = saved_configs
        kernel.cache.clear()
        kernel.cache.update(saved_cache)


def default_precision() -> str:
    """fp32 dot precision of the fused ops: ``"tf32"`` when cuDNN convolutions may use TF32
    (``torch.backends.cudnn.allow_tf32``, PyTorch's default), else ``"ieee"``."""
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def output(out: Optional[torch.Tensor], shape, dtype: torch.dtype, device: torch.device,
           contiguous: bool = True, **empty_kw) -> torch.Tensor:
    """``out`` checked against shape, dtype, device (and contiguity), or a new tensor
    (``torch.empty(shape, **empty_kw)``): the ``out=`` contract of every launcher."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device, **empty_kw)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != torch.device(device):
        raise ValueError(f"out must be {tuple(shape)} {dtype} on {device}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    if contiguous and not out.is_contiguous():
        raise ValueError("out must be contiguous")
    return out
