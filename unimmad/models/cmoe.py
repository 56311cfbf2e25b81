"""Cross Mixture-of-Experts (C-MoE), the reference formulation of the paper (§3.3).

Shapes (SPEC §1): B samples, U units (one per (sample, modality) pair), E the C-MoE width,
C the level's channels.  ``unit_to_sample[u]`` is the sample of unit ``u``.

* key   = GN(conv1×1(C→E))(f)        per sample   [B, E, H, W]
* query = GN(conv1×1(C→E))(u)        per unit     [U, E, H, W]
* cond  = conv3×3(2E→E)→BN→GELU→GN→conv1×1→GN on cat(key[sample(unit)], query);
  g = global average pool             per unit     [U, E]
* per branch k: x = GN(conv1×1)(key); router top-K leaders from g; the leaders' kernels
  are composed from the base bank (MoE-in-MoE, eq. 2); the fixed expert and the K routed
  kernels filter x by *grouped dynamic filtering* (x replicated K+1 times, one grouped
  conv); ``post`` = GN(conv1×1(2E→E))(cat(y_fix, Σ_j s_j y_j)).
* p = GN(conv1×1(3E→C))(cat(out_1, out_3, out_5))  per unit [U, C, H, W]

The grouped dynamic filtering here is the paper's formulation and the baseline every fast
kernel (``kernels.FastCMoE``) is checked and timed against.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int, check_real
from .layers import ConvGN, GroupNormReLU

__all__ = [
    "CMoE",
    "CMoEBranch",
    "CMoEAux",
    "compose_leader_kernels",
    "grouped_dynamic_filter",
    "balance_loss",
]


@dataclass
class CMoEAux:
    """Routing results of one C-MoE call.

    balance_loss: mean over branches of ``CV²(mean_u probs) + z_w·mean(logsumexp(logits)²)``
        (a scalar; the model applies the annealing factor).
    indices, scores: per branch, chosen leaders ``[U, top_k]`` (long) and their
        renormalised scores ``[U, top_k]`` (sum to 1 per unit).
    probs: per branch, router probabilities ``[U, num_leaders]``.
    """

    balance_loss: torch.Tensor
    indices: List[torch.Tensor] = field(default_factory=list)
    scores: List[torch.Tensor] = field(default_factory=list)
    probs: List[torch.Tensor] = field(default_factory=list)


def balance_loss(logits: torch.Tensor, probs: torch.Tensor, z_weight: float,
                 reduce=None) -> torch.Tensor:
    """Load-balance loss of one router: squared coefficient of variation of the mean
    routing probability per leader (population variance), plus the router z-loss.

    ``reduce(prob_sum [L], z_sum [], count [])`` may replace the local sums by sums over
    several processes (a differentiable all-reduce), so that data-parallel training
    balances the experts over the global batch exactly as one process would.
    """
    acc = torch.promote_types(logits.dtype, torch.float32)
    prob_sum = probs.to(acc).sum(0)
    z_sum = torch.logsumexp(logits.to(acc), dim=1).pow(2).sum()
    # new_full, not new_tensor(float(...)): keeps the unit count symbolic under torch.export.
    count = prob_sum.new_full((), probs.shape[0])
    if reduce is not None:
        prob_sum, z_sum, count = reduce(prob_sum, z_sum, count)
    importance = prob_sum / count
    cv2 = importance.var(correction=0) / (importance.mean() ** 2 + 1e-10)
    return cv2 + z_weight * z_sum / count


def compose_leader_kernels(base: torch.Tensor, leaders: torch.Tensor,
                           indices: torch.Tensor) -> torch.Tensor:
    """MoE-in-MoE (paper eq. 2): kernels of the selected leaders.

    base ``[N, E_out, E_in, k, k]``, leaders ``[L, N, E_out]``, indices ``[U, K]`` →
    ``[U, K, E_out, E_in, k, k]`` with ``Ŵ[u, j, o] = Σ_n softmax_n(S[idx])[n, o] W[n, o]``.
    """
    alpha = torch.softmax(leaders[indices], dim=2)  # [U, K, N, E_out]
    return torch.einsum("ujno,noikl->ujoikl", alpha, base)


def grouped_dynamic_filter(x: torch.Tensor, unit_to_sample: torch.Tensor,
                           fixed: torch.Tensor, kernels: torch.Tensor,
                           scores: torch.Tensor) -> torch.Tensor:
    """The paper's grouped dynamic filtering.

    x ``[B, E, H, W]`` (per sample), fixed ``[E, E, k, k]``, kernels ``[U, K, E, E, k, k]``,
    scores ``[U, K]``.  Each unit's x is replicated K+1 times and filtered by
    ``[F, Ŵ_1..Ŵ_K]`` in one conv with ``groups = U·(K+1)``; returns
    ``cat(y_fix, Σ_j s_j y_j)`` ``[U, 2E, H, W]``.
    """
    U, K, E, _, k, _ = kernels.shape
    _, _, H, W = x.shape
    weight = torch.cat([fixed.expand(U, 1, *fixed.shape), kernels], 1)
    xr = x[unit_to_sample].unsqueeze(1).expand(U, K + 1, E, H, W).reshape(1, U * (K + 1) * E, H, W)
    y = F.conv2d(xr, weight.reshape(U * (K + 1) * E, E, k, k), padding=k // 2,
                 groups=U * (K + 1)).view(U, K + 1, E, H, W)
    y_rt = (y[:, 1:] * scores[:, :, None, None, None].to(y.dtype)).sum(1)
    return torch.cat([y[:, 0], y_rt], 1)


class CMoEBranch(nn.Module):
    """One kernel-size branch of the C-MoE (values, router, experts, post)."""

    def __init__(self, embed_dim: int, kernel_size: int, num_base_experts: int,
                 num_leaders: int, top_k: int, temperature: float = 1.0,
                 base_expert_std: float = 0.05, leader_std: float = 0.02):
        super().__init__()
        E, k = embed_dim, kernel_size
        self.kernel_size, self.top_k, self.temperature = k, top_k, temperature
        self.value = ConvGN(E, E, 1)
        self.router = nn.Linear(E, num_leaders)
        self.base_experts = nn.Parameter(torch.randn(num_base_experts, E, E, k, k) * base_expert_std)
        self.leaders = nn.Parameter(torch.randn(num_leaders, num_base_experts, E) * leader_std)
        fixed = torch.zeros(E, E, k, k)
        fixed[torch.arange(E), torch.arange(E), k // 2, k // 2] = 1.0
        self.fixed_expert = nn.Parameter(fixed)
        self.post = nn.Conv2d(2 * E, E, 1, bias=False)
        self.post_norm = GroupNormReLU(E)

    def route(self, g: torch.Tensor, z_weight: float, reduce=None):
        """Router on the condition vector ``g [U, E]`` → (indices, scores, probs, loss);
        ``reduce`` as in :func:`balance_loss`."""
        logits = self.router(g)
        acc = torch.promote_types(logits.dtype, torch.float32)  # fp32 or better
        probs = torch.softmax(logits.to(acc) / self.temperature, dim=1)
        top, indices = probs.topk(self.top_k, dim=1)
        scores = top / top.sum(1, keepdim=True)
        return indices, scores, probs, balance_loss(logits, probs, z_weight, reduce)

    def filter_reference(self, x: torch.Tensor, unit_to_sample: torch.Tensor,
                         indices: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``post``'s conv applied to the reference grouped dynamic filtering (pre-GN)."""
        kernels = compose_leader_kernels(self.base_experts, self.leaders, indices)
        y = grouped_dynamic_filter(x, unit_to_sample, self.fixed_expert, kernels, scores)
        return self.post(y)


class CMoE(nn.Module):
    """Cross Mixture-of-Experts of one feature level (reference implementation).

    Args:
        in_channels: channels ``C`` of the level's general features and priors.
        embed_dim: internal width ``E`` (256).
        num_base_experts: base experts ``N`` per branch (8).
        num_leaders: MoE-leaders per branch (32).
        top_k: leaders activated per unit (2).
        kernel_sizes: one branch per size (1, 3, 5).

    ``forward(general [B, C, H, W], prior [U, C, H, W], unit_to_sample [U] long)`` returns
    ``(p [U, C, H, W], CMoEAux)``.  All units go through in one call.
    """

    def __init__(self, in_channels: int, embed_dim: int = 256, num_base_experts: int = 8,
                 num_leaders: int = 32, top_k: int = 2,
                 kernel_sizes: Sequence[int] = (1, 3, 5), temperature: float = 1.0,
                 base_expert_std: float = 0.05, leader_std: float = 0.02,
                 z_loss_weight: float = 1e-4):
        super().__init__()
        in_channels = check_int("in_channels", in_channels, low=1)
        embed_dim = check_int("embed_dim", embed_dim, low=1)
        num_base_experts = check_int("num_base_experts", num_base_experts, low=1)
        num_leaders = check_int("num_leaders", num_leaders, low=1)
        top_k = check_int("top_k", top_k, low=1)
        if top_k > num_leaders:
            raise ValueError(f"top_k must be in [1, num_leaders={num_leaders}], got {top_k}")
        if isinstance(kernel_sizes, (str, bytes)) or not isinstance(kernel_sizes, (list, tuple)):
            raise TypeError(f"kernel_sizes must be a list or tuple of odd positive ints, got "
                            f"{kernel_sizes!r}")
        if not kernel_sizes:
            raise ValueError("kernel_sizes must name at least one branch, got ()")
        kernel_sizes = tuple(check_int(f"kernel_sizes[{i}]", k, low=1)
                             for i, k in enumerate(kernel_sizes))
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd and positive, got {kernel_sizes}")
        temperature = check_real("temperature", temperature, low=0.0, low_open=True)
        base_expert_std = check_real("base_expert_std", base_expert_std, low=0.0)
        leader_std = check_real("leader_std", leader_std, low=0.0)
        z_loss_weight = check_real("z_loss_weight", z_loss_weight, low=0.0)
        E = embed_dim
        self.in_channels, self.embed_dim, self.top_k = in_channels, E, top_k
        self.num_base_experts, self.num_leaders = num_base_experts, num_leaders
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.z_loss_weight = z_loss_weight
        self.key = ConvGN(in_channels, E, 1)
        self.query = ConvGN(in_channels, E, 1)
        self.cond = nn.Sequential(
            nn.Conv2d(2 * E, E, 3, 1, 1, bias=False), nn.BatchNorm2d(E), nn.GELU(),
            GroupNormReLU(E), nn.Conv2d(E, E, 1, bias=False), GroupNormReLU(E))
        self.branches = nn.ModuleList(
            CMoEBranch(E, k, num_base_experts, num_leaders, top_k, temperature,
                       base_expert_std, leader_std) for k in self.kernel_sizes)
        self.aggregate = ConvGN(len(self.kernel_sizes) * E, in_channels, 1)
        # Set by the training engine under data parallelism (see balance_loss).
        self.balance_reduce = None

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, embed_dim={self.embed_dim}, "
                f"num_base_experts={self.num_base_experts}, num_leaders={self.num_leaders}, "
                f"top_k={self.top_k}, kernel_sizes={self.kernel_sizes}")

    # ----------------------------------------------------------------------------- checks
    def check_inputs(self, general: torch.Tensor, prior: torch.Tensor,
                     unit_to_sample: torch.Tensor) -> None:
        """Raise ``ValueError``/``TypeError`` naming the bad argument."""
        C = self.in_channels
        for name, t in (("general", general), ("prior", prior)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"CMoE: {name} must be a floating tensor")
            if t.dim() != 4 or t.shape[1] != C:
                raise ValueError(
                    f"CMoE: {name} must be [N, {C}, H, W], got {tuple(t.shape)}")
        if prior.shape[2:] != general.shape[2:]:
            raise ValueError(
                f"CMoE: prior spatial size {tuple(prior.shape[2:])} differs from general "
                f"{tuple(general.shape[2:])}")
        if general.dtype != prior.dtype or general.device != prior.device:
            raise TypeError(
                f"CMoE: general ({general.dtype}, {general.device}) and prior "
                f"({prior.dtype}, {prior.device}) must share dtype and device")
        param = self.key.conv.weight
        if general.device != param.device:   # before any value is read (meta, other device)
            raise ValueError(f"CMoE: general and prior are on {general.device} but the module "
                             f"on {param.device}")
        if general.dtype != param.dtype and not torch.is_autocast_enabled(general.device.type):
            raise TypeError(
                f"CMoE: general and prior are {general.dtype} but the module's parameters "
                f"{param.dtype}; cast one of them or run under torch.autocast")
        if 0 in general.shape[2:]:
            raise ValueError(f"CMoE: general and prior have no pixels: {tuple(general.shape)}")
        if not isinstance(unit_to_sample, torch.Tensor) or unit_to_sample.dtype != torch.long:
            raise TypeError("CMoE: unit_to_sample must be a long tensor [U]")
        if unit_to_sample.shape != (prior.shape[0],):
            raise ValueError(
                f"CMoE: unit_to_sample must be [U={prior.shape[0]}], got "
                f"{tuple(unit_to_sample.shape)}")
        if unit_to_sample.device != prior.device:
            raise TypeError("CMoE: unit_to_sample must be on the device of prior")
        if prior.shape[0] == 0:
            raise ValueError("CMoE: at least one unit is needed")
        if self.training and prior.shape[0] * prior.shape[2] * prior.shape[3] == 1:
            raise ValueError("CMoE: in training mode the condition's BatchNorm needs more than "
                             "one value per channel, but prior is one unit of 1×1; pass more "
                             "units or pixels, or call eval()")
        # On CUDA (and while compiling) this data-dependent check would synchronise.
        if unit_to_sample.device.type == "cpu" and not torch.compiler.is_compiling():
            lo, hi = int(unit_to_sample.min()), int(unit_to_sample.max())
            if lo < 0 or hi >= general.shape[0]:
                raise ValueError(
                    f"CMoE: unit_to_sample values must lie in [0, B={general.shape[0]}), "
                    f"got [{lo}, {hi}]")
            for name, t in (("general", general), ("prior", prior)):
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"CMoE: {name} contains NaN or Inf values")

    # ----------------------------------------------------------------------------- forward
    def condition(self, key: torch.Tensor, prior: torch.Tensor,
                  unit_to_sample: torch.Tensor) -> torch.Tensor:
        """Cross-condition vector ``g [U, E]`` from per-sample keys and per-unit priors."""
        query = self.query(prior)
        return self.cond(torch.cat([key[unit_to_sample], query], 1)).mean((2, 3))

    def branch_filter(self, branch: CMoEBranch, x: torch.Tensor, unit_to_sample: torch.Tensor,
                      indices: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Fixed + routed filtering of one branch followed by ``post``'s 1×1 conv (pre-GN).
        ``kernels.FastCMoE`` overrides this with the collapsed / folded algebra."""
        return branch.filter_reference(x, unit_to_sample, indices, scores)

    def forward(self, general: torch.Tensor, prior: torch.Tensor,
                unit_to_sample: torch.Tensor):
        self.check_inputs(general, prior, unit_to_sample)
        key = self.key(general)
        g = self.condition(key, prior, unit_to_sample)
        outs, aux = [], CMoEAux(balance_loss=g.new_zeros(()))
        losses = []
        for branch in self.branches:
            x = branch.value(key)
            indices, scores, probs, loss = branch.route(g, self.z_loss_weight,
                                                        self.balance_reduce)
            y = self.branch_filter(branch, x, unit_to_sample, indices, scores.to(x.dtype))
            outs.append(branch.post_norm(y))
            aux.indices.append(indices)
            aux.scores.append(scores)
            aux.probs.append(probs)
            losses.append(loss)
        aux.balance_loss = torch.stack(losses).mean()
        return self.aggregate(torch.cat(outs, 1)), aux
