"""Shared setup for C-MoE parity tests and benchmarks: reference modules, inputs and the
float64 reference of each fused primitive (baselines come from ``unimmad``, never rewritten)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import cmoe_ops
from unimmad import CMoE


def make_cmoe(C=20, E=24, N=3, L=5, K=2, ks=(1, 3, 5), seed=None, dtype=torch.float32):
    """A reference C-MoE with non-trivial BatchNorm statistics and fixed expert (so eval
    mode and the fold are really exercised)."""
    if seed is not None:
        torch.manual_seed(seed)
    m = CMoE(C, E, N, L, K, ks)
    with torch.no_grad():
        bn = m.cond[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        for b in m.branches:
            b.fixed_expert.add_(0.05 * torch.randn_like(b.fixed_expert))
    return m.to(dtype)


def make_inputs(units_per_sample, C=20, H=7, W=9, dtype=torch.float32):
    """general ``[B, C, H, W]``, prior ``[U, C, H, W]``, unit_to_sample ``[U]``."""
    counts = torch.tensor(units_per_sample)
    uts = torch.repeat_interleave(torch.arange(len(units_per_sample)), counts)
    general = torch.randn(len(units_per_sample), C, H, W, dtype=dtype)
    prior = torch.randn(len(uts), C, H, W, dtype=dtype)
    return general, prior, uts


def route_all_to(module: CMoE, leaders):
    """Make every unit choose ``leaders`` (distinct, best first) in every branch."""
    with torch.no_grad():
        for b in module.branches:
            b.router.weight.zero_()
            b.router.bias.fill_(-10.0)
            for rank, l in enumerate(leaders):
                b.router.bias[l] = 10.0 - rank


def oihw_from_bank(bank: torch.Tensor, k: int, layout: str) -> torch.Tensor:
    """Bank ``[NW, Co, R]`` → kernels ``[NW, Co, Ci, k, k]``."""
    NW, Co, R = bank.shape
    Ci = R // (k * k)
    if layout == "triton":
        return bank.view(NW, Co, k, k, Ci).permute(0, 1, 4, 2, 3)
    return bank.view(NW, Co, Ci, k, k)


def dyn_conv_reference(x, bank, job_sample, job_weight, k, layout):
    """float64 per-job loop of ``kernels.cmoe_ops.dyn_conv``."""
    w = oihw_from_bank(bank.double(), k, layout)
    return torch.cat([F.conv2d(x[s:s + 1].double(), w[wi], padding=k // 2)
                      for s, wi in zip(job_sample.tolist(), job_weight.tolist())])


def relu_margin(module, *inputs) -> float:
    """Smallest |pre-ReLU value| in ``module``'s GroupNorm+ReLU layers for these inputs.

    Where it is within rounding of 0, fp32 and float64 take different sides of a ReLU
    kink and their gradients legitimately differ at that element."""
    from unimmad.models.layers import GroupNormReLU
    seen = []
    hooks = [m.norm.register_forward_hook(lambda mod, a, out: seen.append(out.detach().abs().min()))
             for m in module.modules() if isinstance(m, GroupNormReLU) and m.relu]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return float(torch.stack(seen).min())


def smooth_inputs(module64, units_per_sample, margin=2e-6, tries=30, **kw):
    """Inputs (float32) whose float64 forward stays ``margin`` away from every ReLU kink."""
    for _ in range(tries):
        general, prior, uts = make_inputs(units_per_sample, **kw)
        if relu_margin(module64, general.double(), prior.double(), uts) >= margin:
            return general, prior, uts
    raise RuntimeError("could not draw inputs away from ReLU kinks")


def dynamic_filter(x, unit_to_sample, fixed, base, leaders, indices, scores, backend="auto"):
    """The fused primitives composed into the paper's fixed + routed dynamic filtering
    without replication (collapse, no fold): ``post``'s input ``[U, 2E, H, W]``.

    One ``compose`` gives each unit's mixed kernel; one ``dyn_conv`` launch with ragged
    jobs runs the fixed expert once per *sample* and the mixed kernel once per unit —
    the job layout the primitives must serve, checked against
    :func:`unimmad.models.cmoe.grouped_dynamic_filter`."""
    B, U, k = x.shape[0], unit_to_sample.shape[0], fixed.shape[-1]
    mixed = cmoe_ops.compose(cmoe_ops.to_bank(base, backend), leaders, indices, scores, backend)
    bank = torch.cat([cmoe_ops.to_bank(fixed, backend).unsqueeze(0).to(mixed.dtype), mixed], 0)
    dev = x.device
    job_sample = torch.cat([torch.arange(B, device=dev), unit_to_sample])
    job_weight = torch.cat([torch.zeros(B, dtype=torch.long, device=dev),
                            torch.arange(1, U + 1, device=dev)])
    y = cmoe_ops.dyn_conv(x, bank.to(x.dtype), job_sample, job_weight, k, backend)
    return torch.cat([y[:B][unit_to_sample], y[B:]], 1)
