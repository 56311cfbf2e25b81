"""``FastCMoE``: drop-in C-MoE running the algebra of SPEC §2 on fused ops.

Per branch (kernel size k), with ``P = [P_fix | P_rt]`` the bias-free 1×1 ``post`` conv:

* **collapse** — the K routed convolutions become one conv with the mixed kernel
  ``M_u = Σ_n α[u, n, o] W[n, o]``, ``α = Σ_j s_j softmax_n(S[idx_j])`` (``cmoe_ops.compose``);
* **fold** — ``post`` is linear and comes before its GroupNorm, so
  ``post(cat(conv(x, F), conv(x, M_u))) = conv(x, P_fix∘F + P_rt∘M_u)``: one E→E
  convolution per unit (``cmoe_ops.dyn_conv``), one third of the reference's FLOPs, and no
  replicated values.  Units of a sample read the sample's values in place.

In inference (no gradient needed for the branch weights) the folded kernels of all
leaders, ``G_ℓ = P_rt∘Ŵ_ℓ`` and ``G₀ = P_fix∘F``, are cached and each unit's kernel is
``G₀ + Σ_j s_j G_{idx_j}`` (``cmoe_ops.mix``).  The cache is keyed on the weights' identity,
version counter, dtype and device, so any in-place update (optimizer step,
``load_state_dict``) rebuilds it; it is never used while the weights need gradients.
In training the fold runs inside autograd (``compose`` → two matmuls → ``dyn_conv``).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from unimmad.models.cmoe import CMoE, CMoEBranch

from . import cmoe_ops
from .backend import check_name, resolve

__all__ = ["FastCMoE"]


def _fold(branch: CMoEBranch, backend: str, indices: torch.Tensor, scores: torch.Tensor
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``post`` folded into the branch's kernels (SPEC §2.2), in the bank layout of the
    resolved ``backend`` and at least fp32: ``(G₀ [E, R], G [U, E, R])`` with
    ``G₀ = P_fix∘F`` and ``G[u] = P_rt∘M_u``, ``M_u`` the mixed routed kernel of unit ``u``
    (``cmoe_ops.compose`` of ``indices``/``scores``).  A unit's kernel is ``G₀ + G[u]``.  Used by
    the training path (inside autograd) and, with one "unit" per leader, to build the
    inference cache."""
    E = branch.post.weight.shape[0]
    acc = torch.promote_types(branch.post.weight.dtype, torch.float32)
    P = branch.post.weight.reshape(E, 2 * E).to(acc)
    mixed = cmoe_ops.compose(cmoe_ops.to_bank(branch.base_experts.to(acc), backend),
                             branch.leaders.to(acc), indices, scores.to(acc), backend)
    g0 = P[:, :E] @ cmoe_ops.to_bank(branch.fixed_expert.to(acc), backend)
    return g0, torch.matmul(P[:, E:], mixed)


class FastCMoE(CMoE):
    """Drop-in :class:`unimmad.CMoE` on fused kernels (same constructor, parameters,
    state-dict keys and input contract).

    Args:
        backend: ``"auto"`` (Triton on CUDA tensors, the torch fast path elsewhere),
            ``"triton"`` (error where it cannot run), ``"torch"``, or ``"reference"``
            (the paper's formulation, i.e. :class:`unimmad.CMoE`); see
            :mod:`kernels.backend`.
        Other arguments as :class:`unimmad.CMoE`.
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fast(backend)

    def _init_fast(self, backend: str) -> None:
        self.backend = check_name(backend)
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
            module.backend = check_name(backend)
        return module

    # ------------------------------------------------------------------ pieces
    def resolved_backend(self, *tensors: torch.Tensor) -> str:
        """The backend that runs on ``tensors`` (:func:`kernels.backend.resolve`)."""
        return resolve(self.backend, *tensors)

    def condition(self, key: torch.Tensor, prior: torch.Tensor,
                  unit_to_sample: torch.Tensor) -> torch.Tensor:
        """As the reference, but the 3×3 conv's key half runs once per *sample* when
        samples carry several units (``conv(cat(a, b)) = conv(a, W_a) + conv(b, W_b)``)."""
        if key.shape[0] >= prior.shape[0] or self.resolved_backend(key) == "reference":
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
            L = branch.leaders.shape[0]
            every = torch.arange(L, device=branch.leaders.device)[:, None]
            g0, bank = _fold(branch, backend, every, branch.leaders.new_ones(L, 1))
            g0, bank = g0.to(dtype), bank.to(dtype)
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
            return cmoe_ops.mix(g0, bank, indices, scores, backend)
        g0, routed = _fold(branch, backend, indices, scores)
        return (routed + g0).to(dtype)

    def branch_filter(self, branch: CMoEBranch, x: torch.Tensor, unit_to_sample: torch.Tensor,
                      indices: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        backend = self.resolved_backend(x)
        if backend == "reference":
            return super().branch_filter(branch, x, unit_to_sample, indices, scores)
        U = unit_to_sample.shape[0]
        # The value is a GroupNorm output (NCHW on CUDA): hand the conv its fast layout
        # before the op, so the saved value and its gradient stay in it too.
        x = cmoe_ops.to_input_format(x, backend)
        kernels = self.folded_kernels(branch, indices, scores, backend, x.dtype)
        same = (U == x.shape[0] and unit_to_sample.device.type == "cpu"
                and not torch.compiler.is_compiling()
                and bool(torch.equal(unit_to_sample, torch.arange(U))))
        jobs = torch.arange(U, device=x.device)
        return cmoe_ops.dyn_conv(x, kernels, unit_to_sample, jobs, branch.kernel_size, backend,
                                 same_samples=same, same_weights=True)
