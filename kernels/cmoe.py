"""``FastCMoE``: drop-in C-MoE running the algebra of SPEC §2 on fused ops.

Per branch (kernel size k), with ``P = [P_fix | P_rt]`` the bias-free 1×1 ``post`` conv:

* **collapse** — the K routed convolutions become one conv with the mixed kernel
  ``M_u = Σ_n α[u, n, o] W[n, o]``, ``α = Σ_j s_j softmax_n(S[idx_j])`` (``cmoe_ops.compose``);
* **fold** — ``post`` is linear and comes before its GroupNorm, so
  ``post(cat(conv(x, F), conv(x, M_u))) = conv(x, P_fix∘F + P_rt∘M_u)``: one E→E
  convolution per unit (``cmoe_ops.dyn_conv``), one third of the reference's FLOPs, and no
  replicated values.  Units of a sample read the sample's values in place.

How each unit's folded kernel is obtained is the layer's memory policy
(:mod:`kernels.cmoe_cache`): ``"none"`` (default) folds the units' kernels on the fly from
the live weights, tiled (:func:`fold_units`); ``"bounded"`` and ``"all"`` keep the
per-leader folded kernels ``G_ℓ = P_rt∘Ŵ_ℓ`` and ``G₀ = P_fix∘F`` between calls, checked by a
content fingerprint of the weights before each use, and a unit's kernel is
``G₀ + Σ_j s_j G_{idx_j}`` (``cmoe_ops.mix``).  While the branch weights need gradients the
fold runs inside autograd (``compose`` → two matmuls → ``dyn_conv``) under every policy.
"""
from __future__ import annotations

from typing import Hashable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from unimmad.models.cmoe import CMoE, CMoEBranch

from . import cmoe_ops, cmoe_torch
from .backend import check_name, resolve
from .cmoe_cache import KernelCache, fingerprint

__all__ = ["FastCMoE", "fold_units", "fixed_kernel"]

#: Transient bytes of one chunk of the tiled fold (composed kernels of a few units).
FOLD_CHUNK_BYTES = 8 * 2 ** 20


def _fold(branch: CMoEBranch, backend: str, indices: torch.Tensor, scores: torch.Tensor
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``post`` folded into the branch's kernels (SPEC §2.2), in the bank layout of the
    resolved ``backend`` and at least fp32: ``(G₀ [E, R], G [U, E, R])`` with
    ``G₀ = P_fix∘F`` and ``G[u] = P_rt∘M_u``, ``M_u`` the mixed routed kernel of unit ``u``
    (``cmoe_ops.compose`` of ``indices``/``scores``).  A unit's kernel is ``G₀ + G[u]``.  The
    differentiable form, used while gradients are needed and under ``torch.compile``."""
    E = branch.post.weight.shape[0]
    acc = torch.promote_types(branch.post.weight.dtype, torch.float32)
    P = branch.post.weight.reshape(E, 2 * E).to(acc)
    mixed = cmoe_ops.compose(cmoe_ops.to_bank(branch.base_experts.to(acc), backend),
                             branch.leaders.to(acc), indices, scores.to(acc), backend)
    g0 = P[:, :E] @ cmoe_ops.to_bank(branch.fixed_expert.to(acc), backend)
    return g0, torch.matmul(P[:, E:], mixed)


def _acc(branch: CMoEBranch) -> torch.dtype:
    return torch.promote_types(branch.post.weight.dtype, torch.float32)


def _write_bank(dst: torch.Tensor, oihw: torch.Tensor, k: int, backend: str) -> None:
    """``dst [.., E, R]`` (bank layout of ``backend``, any dtype) ← ``oihw [.., E, Ci·k·k]``."""
    if backend == "triton":
        oihw = oihw.unflatten(-1, (-1, k, k)).movedim(-3, -1).flatten(-3)
    dst.copy_(oihw)


def _fixed_oihw(branch: CMoEBranch) -> torch.Tensor:
    """``G₀ = P_fix∘F`` ``[E, Ci·k·k]`` in OIHW order, at least fp32, without autograd."""
    E = branch.post.weight.shape[0]
    acc = _acc(branch)
    with torch.no_grad():
        P = branch.post.weight.reshape(E, 2 * E)[:, :E].to(acc)
        return P @ branch.fixed_expert.reshape(E, -1).to(acc)


def fixed_kernel(branch: CMoEBranch, backend: str, dtype: Optional[torch.dtype] = None
                 ) -> torch.Tensor:
    """``G₀ = P_fix∘F`` ``[E, R]`` in the bank layout of the resolved ``backend`` at ``dtype``
    (default: at least fp32), computed without autograd."""
    g0 = _fixed_oihw(branch)
    with torch.no_grad():
        out = torch.empty_like(g0, dtype=dtype or g0.dtype)
        _write_bank(out, g0, branch.kernel_size, backend)
    return out


def fold_units(branch: CMoEBranch, backend: str, indices: torch.Tensor, scores: torch.Tensor,
               dtype: torch.dtype, with_fixed: bool = False,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Folded kernels ``[U, E, R]`` (bank layout of the resolved ``backend``, ``dtype``) of the
    units routed to ``indices``/``scores`` ``[U, K]``: ``P_rt∘M_u``, plus ``G₀ = P_fix∘F``
    with ``with_fixed`` (each unit's whole kernel).  Computed without autograd and tiled:
    per chunk of units (at most :data:`FOLD_CHUNK_BYTES` of composed kernels) the backend's
    ``compose`` on the weights as stored (on the torch backend one batched matmul over
    output channels that reads the base bank once), then one matmul per unit written
    straight into ``out`` — no ``[U, N, E, R]`` or ``[U, K, ...]`` temporary, no copy of
    the base bank.  The matmuls accumulate in fp32 (float64 for float64 weights)."""
    E, k = branch.post.weight.shape[0], branch.kernel_size
    U = indices.shape[0]
    acc = _acc(branch)
    impl = cmoe_ops.IMPLS[backend]
    with torch.no_grad():
        base = branch.base_experts.reshape(branch.base_experts.shape[0], E, -1)  # OIHW order
        R = base.shape[-1]
        if out is None:
            out = torch.empty((U, E, R), dtype=dtype, device=base.device)
        P = branch.post.weight.reshape(E, 2 * E)[:, E:].to(acc)
        leaders = branch.leaders.to(base.dtype)
        direct = backend != "triton" and out.dtype == acc  # OIHW bank, no cast: write in place
        tmp = None if direct else torch.empty((E, R), dtype=acc, device=base.device)
        g0 = _fixed_oihw(branch) if with_fixed else None
        step = max(1, FOLD_CHUNK_BYTES // (E * R * base.element_size()))
        for u0 in range(0, U, step):
            u1 = min(U, u0 + step)
            if backend == "triton":
                mixed = impl.compose(base, leaders, indices[u0:u1], scores[u0:u1])
            else:                                   # [E, c, R]: the base read once, in place
                mixed = cmoe_torch.compose_transposed(base, leaders, indices[u0:u1],
                                                      scores[u0:u1]).transpose(0, 1)
            for i in range(u1 - u0):
                dst = out[u0 + i] if direct else tmp
                torch.mm(P, mixed[i].to(acc), out=dst)
                if g0 is not None:
                    dst.add_(g0)
                if not direct:
                    _write_bank(out[u0 + i], tmp, k, backend)
            del mixed
    return out


class _EntryMix(torch.autograd.Function):
    """``W[u] = g0 + Σ_j scores[u, j] · entries[slot[u][j]]`` over separately stored folded
    kernels (the ``"bounded"`` cache), accumulated in fp32; differentiable in ``scores``.
    Reads the scores on the host (the cache's bookkeeping already synchronised on the
    routing)."""

    @staticmethod
    def forward(ctx, scores, g0, slots, *entries):
        acc = torch.promote_types(g0.dtype, torch.float32)
        U = len(slots)
        w = torch.empty((U, *g0.shape), dtype=acc, device=g0.device)
        s = scores.detach().to(torch.float64).cpu().tolist()
        for u in range(U):
            w[u].copy_(g0)
            for j, slot in enumerate(slots[u]):
                w[u].add_(entries[slot], alpha=s[u][j])
        ctx.slots = slots
        ctx.save_for_backward(*entries)
        ctx.score_dtype = scores.dtype
        return w.to(g0.dtype)

    @staticmethod
    def backward(ctx, grad):
        entries = ctx.saved_tensors
        acc = torch.promote_types(grad.dtype, torch.float32)
        d = [[(entries[slot].to(acc) * grad[u].to(acc)).sum() for slot in row]
             for u, row in enumerate(ctx.slots)]
        d_scores = torch.stack([torch.stack(row) for row in d]).to(ctx.score_dtype)
        return (d_scores, None, None) + (None,) * len(entries)


class FastCMoE(CMoE):
    """Drop-in :class:`unimmad.CMoE` on fused kernels (same constructor, parameters,
    state-dict keys and input contract).

    Args:
        backend: ``"auto"`` (Triton on CUDA tensors, the torch fast path elsewhere),
            ``"triton"`` (error where it cannot run), ``"torch"``, or ``"reference"``
            (the paper's formulation, i.e. :class:`unimmad.CMoE`); see
            :mod:`kernels.backend`.
        cache: memory policy of the folded kernels, ``"none"`` (default: fold on the fly,
            nothing kept), ``"bounded"`` or ``"all"``; see :mod:`kernels.cmoe_cache`.
        cache_mb: budget of ``"bounded"`` in MB (default
            :data:`kernels.cmoe_cache.DEFAULT_BUDGET_MB`).
        Other arguments as :class:`unimmad.CMoE`.
    """

    def __init__(self, *args, backend: str = "auto", cache: str = "none",
                 cache_mb: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fast(backend, KernelCache(cache, cache_mb))

    def _init_fast(self, backend: str, cache: KernelCache) -> None:
        self.backend = check_name(backend)
        self.kernel_cache = cache

    def extra_repr(self) -> str:
        cache = self.kernel_cache
        budget = f", cache_mb={cache.budget_mb:g}" if cache.budget_mb is not None else ""
        return f"{super().extra_repr()}, backend={self.backend!r}, cache={cache.policy!r}{budget}"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_reference(cls, module: CMoE, backend: str = "auto", cache: str = "none",
                       cache_mb: Optional[float] = None) -> "FastCMoE":
        """A ``FastCMoE`` with a copy of ``module``'s weights, device, dtype and mode."""
        if not isinstance(module, CMoE):
            raise TypeError(f"from_reference needs a unimmad.CMoE, got {type(module).__name__}")
        fast = cls(module.in_channels, module.embed_dim, module.num_base_experts,
                   module.num_leaders, module.top_k, module.kernel_sizes,
                   module.branches[0].temperature, z_loss_weight=module.z_loss_weight,
                   backend=backend, cache=cache, cache_mb=cache_mb)
        ref_param = next(module.parameters())
        fast.to(device=ref_param.device, dtype=ref_param.dtype)
        fast.load_state_dict(module.state_dict())
        return fast.train(module.training)

    @classmethod
    def convert_(cls, module: CMoE, backend: str = "auto",
                 cache: "str | KernelCache" = "none",
                 cache_mb: Optional[float] = None) -> "FastCMoE":
        """Turn ``module`` into a ``FastCMoE`` in place: the same parameter objects (an
        optimizer holding them keeps working), buffers, hooks and mode.  ``cache`` is a
        policy name (with ``cache_mb``) or a :class:`~kernels.cmoe_cache.KernelCache` to
        share with other layers."""
        if not isinstance(module, CMoE):
            raise TypeError(f"convert_ needs a unimmad.CMoE, got {type(module).__name__}")
        shared = cache if isinstance(cache, KernelCache) else KernelCache(cache, cache_mb)
        if not isinstance(module, cls):
            module.__class__ = cls
            module._init_fast(backend, shared)
        else:
            module.backend = check_name(backend)
            module.set_cache(shared)
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

    # ------------------------------------------------------------------ cache
    @property
    def cache_policy(self) -> str:
        """The memory policy of the folded kernels (``"none"``, ``"bounded"``, ``"all"``)."""
        return self.kernel_cache.policy

    def set_cache(self, cache: "str | KernelCache" = "none",
                  cache_mb: Optional[float] = None) -> "FastCMoE":
        """Switch the memory policy (a name, with ``cache_mb`` for ``"bounded"``, or a
        :class:`~kernels.cmoe_cache.KernelCache` shared with other layers); this layer's
        entries in the previous cache are dropped."""
        new = cache if isinstance(cache, KernelCache) else KernelCache(cache, cache_mb)
        self.clear_cache()
        self.kernel_cache = new
        return self

    def _owners(self) -> List[Hashable]:
        return [id(b) for b in self.branches]

    def clear_cache(self) -> None:
        """Drop this layer's cached folded kernels (rebuilt on the next call that can use
        them)."""
        self.kernel_cache.clear(self._owners())

    def cache_bytes(self) -> int:
        """Bytes of folded kernels this layer holds in its cache."""
        return self.kernel_cache.owner_bytes(self._owners())

    def _weights_need_grad(self, branch: CMoEBranch) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in (branch.base_experts, branch.leaders,
                                      branch.fixed_expert, branch.post.weight))

    def _cache_usable(self, branch: CMoEBranch) -> bool:
        """Whether the cached kernels may be used now (see :mod:`kernels.cmoe_cache`)."""
        if self.kernel_cache.policy == "none" or torch.compiler.is_compiling():
            return False
        dev = branch.leaders.device
        if dev.type == "meta" or self._weights_need_grad(branch):
            return False
        return not (dev.type == "cuda" and torch.cuda.is_current_stream_capturing())

    def _validate(self, branch: CMoEBranch, backend: str, dtype: torch.dtype) -> Hashable:
        """Drop ``branch``'s entries if its weights (or the kernels' dtype / layout) changed
        since they were folded; returns the branch's owner key."""
        owner = id(branch)
        with torch.no_grad():
            meta, content = fingerprint((branch.base_experts, branch.leaders,
                                         branch.fixed_expert, branch.post.weight))
        self.kernel_cache.validate(owner, (meta + (dtype, backend, branch.kernel_size),
                                           content))
        return owner

    def _fixed_entry(self, branch, owner, backend, dtype, pinned=()) -> torch.Tensor:
        g0 = self.kernel_cache.get(owner, "fixed")
        if g0 is None:
            g0 = fixed_kernel(branch, backend, dtype)
            self.kernel_cache.put(owner, "fixed", g0, pinned)
        return g0

    def _cached_banks(self, branch: CMoEBranch, backend: str, dtype: torch.dtype
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(G₀ [E, R], bank [L, E, R])`` of the ``"all"`` policy, refolded if stale."""
        cache = self.kernel_cache
        with torch.inference_mode(False):
            owner = self._validate(branch, backend, dtype)
            g0 = self._fixed_entry(branch, owner, backend, dtype)
            bank = cache.get(owner, "bank")
            if bank is None:
                L = branch.leaders.shape[0]
                every = torch.arange(L, device=branch.leaders.device)[:, None]
                bank = fold_units(branch, backend, every, branch.leaders.new_ones(L, 1),
                                  dtype)
                cache.put(owner, "bank", bank)
        return g0, bank

    def _bounded_kernels(self, branch: CMoEBranch, indices: torch.Tensor,
                         scores: torch.Tensor, backend: str, dtype: torch.dtype
                         ) -> torch.Tensor:
        """Units' kernels from the ``"bounded"`` cache: the leaders routed now are taken
        from the cache or folded (and kept, least recently used evicted, if they fit)."""
        cache = self.kernel_cache
        rows = indices.tolist()
        needed = sorted({leader for row in rows for leader in row})
        with torch.inference_mode(False):
            owner = self._validate(branch, backend, dtype)
            pinned = [(owner, "fixed")] + [(owner, leader) for leader in needed]
            g0 = self._fixed_entry(branch, owner, backend, dtype, pinned)
            entries = []
            for leader in needed:
                g = cache.get(owner, leader)
                if g is None:
                    one = torch.tensor([[leader]], device=indices.device)
                    g = fold_units(branch, backend, one, branch.leaders.new_ones(1, 1),
                                   dtype)[0]
                    cache.put(owner, leader, g, pinned)
                entries.append(g)
        slot = {leader: i for i, leader in enumerate(needed)}
        slots = tuple(tuple(slot[leader] for leader in row) for row in rows)
        return _EntryMix.apply(scores, g0, slots, *entries)

    def folded_kernels(self, branch: CMoEBranch, indices: torch.Tensor, scores: torch.Tensor,
                       backend: str, dtype: torch.dtype) -> torch.Tensor:
        """Each unit's folded kernel ``[U, E, R]`` (bank layout): ``P_fix∘F + P_rt∘M_u``,
        from the cache where the policy and the context allow it, else folded now."""
        if self._cache_usable(branch):
            if self.kernel_cache.policy == "all":
                g0, bank = self._cached_banks(branch, backend, dtype)
                return cmoe_ops.mix(g0, bank, indices, scores, backend)
            return self._bounded_kernels(branch, indices, scores, backend, dtype)
        if (torch.compiler.is_compiling() or self._weights_need_grad(branch)
                or (torch.is_grad_enabled() and scores.requires_grad)):
            g0, routed = _fold(branch, backend, indices, scores)
            return (routed + g0).to(dtype)
        return fold_units(branch, backend, indices, scores, dtype, with_fixed=True)

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
