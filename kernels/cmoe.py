"""``FastCMoE``: drop-in C-MoE running the algebra of SPEC §2 on fused ops.

Per branch (kernel size k), with ``P = [P_fix | P_rt]`` the bias-free 1×1 ``post`` conv:

* **collapse** — the K routed convolutions become one conv with the mixed kernel
  ``M_u = Σ_n α[u, n, o] W[n, o]``, ``α = Σ_j s_j softmax_n(S[idx_j])`` (``ops.compose``);
* **fold** — ``post`` is linear and comes before its GroupNorm, so
  ``post(cat(conv(x, F), conv(x, M_u))) = conv(x, P_fix∘F + P_rt∘M_u)``: one E→E
  convolution per unit (``ops.dyn_conv``), one third of the reference's FLOPs, and no
  replicated values.  Units of a sample read the sample's values in place.

In inference (no gradient needed for the branch weights) the folded kernels of all
leaders, ``G_ℓ = P_rt∘Ŵ_ℓ`` and ``G₀ = P_fix∘F``, are cached and each unit's kernel is
``G₀ + Σ_j s_j G_{idx_j}`` (``ops.mix``).  The cache is keyed on the weights' identity,
version counter, dtype and device, so any in-place update (optimizer step,
``load_state_dict``) rebuilds it; it is never used while the weights need gradients.
In training the fold runs inside autograd (``compose`` → two matmuls → ``dyn_conv``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from unimmad.models.cmoe import CMoE, CMoEAux, CMoEBranch

from . import ops

__all__ = ["FastCMoE", "dynamic_filter", "folded_banks"]


def folded_banks(branch: CMoEBranch, backend: str, dtype: torch.dtype
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(G₀ [E, R], G [L, E, R])``: ``post`` folded into the fixed expert and into every
    leader's composed kernel (computed in fp32, returned in ``dtype``)."""
    E = branch.post.weight.shape[0]
    P = branch.post.weight.reshape(E, 2 * E)
    P = P.to(torch.promote_types(P.dtype, torch.float32))
    L = branch.leaders.shape[0]
    idx = torch.arange(L, device=P.device)[:, None]
    ones = torch.ones(L, 1, device=P.device)
    acc = P.dtype
    leaders_k = ops.compose(ops.to_bank(branch.base_experts.to(acc), backend),
                            branch.leaders.to(acc), idx, ones.to(acc), backend)  # [L, E, R]
    g0 = P[:, :E] @ ops.to_bank(branch.fixed_expert.to(acc), backend)
    bank = torch.matmul(P[:, E:], leaders_k)
    return g0.to(dtype), bank.to(dtype)


def dynamic_filter(x: torch.Tensor, unit_to_sample: torch.Tensor, fixed: torch.Tensor,
                   base: torch.Tensor, leaders: torch.Tensor, indices: torch.Tensor,
                   scores: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Fused fixed + routed dynamic filtering: ``post``'s input ``[U, 2E, H, W]``.

    Same function as :func:`unimmad.models.cmoe.grouped_dynamic_filter` (x ``[B, E, H, W]``
    per sample, fixed ``[E, E, k, k]``, base ``[N, E, E, k, k]``, leaders ``[L, N, E]``,
    indices/scores ``[U, K]``) without replicating x: the K routed kernels are collapsed
    into one mixed kernel per unit (``ops.compose``), and one ``ops.dyn_conv`` launch
    computes the fixed expert once per *sample* and the mixed kernel once per unit.
    """
    B = x.shape[0]
    U = unit_to_sample.shape[0]
    k = fixed.shape[-1]
    backend = ops.kernel_backend(backend, x.device)
    mixed = ops.compose(ops.to_bank(base, backend), leaders, indices, scores, backend)
    bank = torch.cat([ops.to_bank(fixed, backend).unsqueeze(0).to(mixed.dtype), mixed], 0)
    dev = x.device
    job_sample = torch.cat([torch.arange(B, device=dev), unit_to_sample])
    job_weight = torch.cat([torch.zeros(B, dtype=torch.long, device=dev),
                            torch.arange(1, U + 1, device=dev)])
    y = ops.dyn_conv(x, bank.to(x.dtype), job_sample, job_weight, k, backend)  # [B+U, E, H, W]
    return torch.cat([y[:B][unit_to_sample], y[B:]], 1)


class FastCMoE(CMoE):
    """Drop-in :class:`unimmad.CMoE` on fused kernels (same constructor, parameters and
    state-dict keys).

    Args:
        backend: ``"auto"`` (Triton on CUDA tensors, the torch fast path elsewhere),
            ``"triton"`` (error where it cannot run), ``"torch"``, or ``"reference"``
            (the paper's formulation, i.e. :class:`unimmad.CMoE`).
        Other arguments as :class:`unimmad.CMoE`.
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fast(backend)

    def _init_fast(self, backend: str) -> None:
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.backend = backend
        self._bank_cache: Dict[int, Tuple[tuple, torch.Tensor, torch.Tensor]] = {}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_reference(cls, module: CMoE, backend: str = "auto") -> "FastCMoE":
        """A ``FastCMoE`` with a copy of ``module``'s weights, device, dtype and mode."""
        if not isinstance(module, CMoE):
            raise TypeError(f"from_reference needs a unimmad.CMoE, got {type(module).__name__}")
        fast = cls(module.in_channels, module.embed_dim, module.num_base_experts,
                   module.num_leaders, module.top_k, module.kernel_sizes,
                   module.branches[0].temperature, z_loss_weight=module.z_loss_weight,
                   backend=backend)
        ref_param = next(module.parameters())
        fast.to(device=ref_param.device, dtype=ref_param.dtype)
        fast.load_state_dict(module.state_dict())
        return fast.train(module.training)

    @classmethod
    def convert_(cls, module: CMoE, backend: str = "auto") -> "FastCMoE":
        """Turn ``module`` into a ``FastCMoE`` in place: the same parameter objects (an
        optimizer holding them keeps working), buffers, hooks and mode."""
        if not isinstance(module, CMoE):
            raise TypeError(f"convert_ needs a unimmad.CMoE, got {type(module).__name__}")
        if not isinstance(module, cls):
            module.__class__ = cls
            module._init_fast(backend)
        else:
            module.backend = backend
        return module

    # ------------------------------------------------------------------ pieces
    def resolved_backend(self, device: torch.device) -> str:
        return ops.resolve_backend(self.backend, device)

    def condition(self, key: torch.Tensor, prior: torch.Tensor,
                  unit_to_sample: torch.Tensor) -> torch.Tensor:
        """As the reference, but the 3×3 conv's key half runs once per *sample* when
        samples carry several units (``conv(cat(a, b)) = conv(a, W_a) + conv(b, W_b)``)."""
        if key.shape[0] >= prior.shape[0] or self.backend == "reference":
            return super().condition(key, prior, unit_to_sample)
        query = self.query(prior)
        w = self.cond[0].weight
        E = self.embed_dim
        h = (F.conv2d(key, w[:, :E], padding=1)[unit_to_sample]
             + F.conv2d(query, w[:, E:], padding=1))
        return self.cond[1:](h).mean((2, 3))

    def _weights_need_grad(self, branch: CMoEBranch) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in (branch.base_experts, branch.leaders,
                                      branch.fixed_expert, branch.post.weight))

    def _cached_banks(self, branch: CMoEBranch, backend: str, dtype: torch.dtype):
        params = (branch.base_experts, branch.leaders, branch.fixed_expert, branch.post.weight)
        key = tuple((id(p), p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        key = key + (dtype, backend)
        hit = self._bank_cache.get(id(branch))
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        self._bank_cache.pop(id(branch), None)  # free the stale banks before rebuilding
        with torch.no_grad():
            g0, bank = folded_banks(branch, backend, dtype)
        self._bank_cache[id(branch)] = (key, g0, bank)
        return g0, bank

    def clear_cache(self) -> None:
        """Drop the cached folded kernels (they are rebuilt on the next inference call)."""
        self._bank_cache.clear()

    def folded_kernels(self, branch: CMoEBranch, indices: torch.Tensor, scores: torch.Tensor,
                       backend: str, dtype: torch.dtype) -> torch.Tensor:
        """Each unit's folded kernel ``[U, E, R]`` (bank layout): ``P_fix∘F + P_rt∘M_u``."""
        if not self._weights_need_grad(branch) and not torch.compiler.is_compiling():
            g0, bank = self._cached_banks(branch, backend, dtype)
            return ops.mix(g0, bank, indices, scores, backend)
        E = self.embed_dim
        P = branch.post.weight.reshape(E, 2 * E)
        mixed = ops.compose(ops.to_bank(branch.base_experts, backend), branch.leaders, indices,
                            scores, backend)
        g0 = P[:, :E] @ ops.to_bank(branch.fixed_expert, backend)
        return (torch.matmul(P[:, E:], mixed) + g0).to(dtype)

    def branch_filter(self, branch: CMoEBranch, x: torch.Tensor, unit_to_sample: torch.Tensor,
                      indices: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        backend = self.resolved_backend(x.device)
        if backend == "reference":
            return super().branch_filter(branch, x, unit_to_sample, indices, scores)
        U = unit_to_sample.shape[0]
        kernels = self.folded_kernels(branch, indices, scores, backend, x.dtype)
        same = (U == x.shape[0] and unit_to_sample.device.type == "cpu"
                and not torch.compiler.is_compiling()
                and bool(torch.equal(unit_to_sample, torch.arange(U))))
        jobs = torch.arange(U, device=x.device)
        return ops.dyn_conv(x, kernels, unit_to_sample, jobs, branch.kernel_size, backend,
                            same_samples=same, same_weights=True)

    def forward(self, general: torch.Tensor, prior: torch.Tensor,
                unit_to_sample: torch.Tensor):
        self.resolved_backend(general.device)  # clear error before any work
        return super().forward(general, prior, unit_to_sample)
