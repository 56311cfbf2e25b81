"""The folded-kernel cache of :class:`kernels.FastCMoE`: memory policies and the content
fingerprint that keeps it from going stale.

Per C-MoE branch the folded kernels are ``G₀ = P_fix∘F`` (the fixed expert through
``post``) and ``G_ℓ = P_rt∘Ŵ_ℓ`` for each leader ℓ (SPEC §2.2); a unit's kernel is
``G₀ + Σ_j s_j G_{idx_j}``.  Each costs ``E·E·k²`` values, i.e. ``E²·(1+9+25)`` per leader
and level for the three branches (8.75 MiB fp32 at paper dims; MB here means 2^20 bytes).

Policies (:data:`POLICIES`, chosen per model with ``accelerate(model, cache=...)`` or per
layer with ``FastCMoE(..., cache=...)``):

* ``"none"`` (the default, :data:`DEFAULT_POLICY`) — nothing is kept: every call folds each
  unit's kernel from the live weights, tiled (compose → one matmul per chunk of units, no
  ``[U, N, E, R]`` temporary).  Never holds memory, nothing to go stale.
* ``"bounded"`` — the folded kernels of the most recently routed leaders (and each branch's
  ``G₀``), least recently used evicted first, within a budget in MB shared by every layer
  using the cache (:data:`DEFAULT_BUDGET_MB` by default).  A leader not cached is folded
  once and kept if it fits.
* ``"all"`` — every leader's folded kernel and ``G₀`` for every branch, built level by level
  into one preallocated bank (no transient copies): ``L·E²·(1+9+25)`` values per level.

Guarantee (``"bounded"`` / ``"all"``): before cached kernels are used, a fingerprint of the
branch's weights (base experts, leaders' S, fixed expert, ``post``) is compared with the one
taken when they were folded; if it differs — whatever changed them: any optimizer
(fused / foreach included), ``load_state_dict``, in-place or ``.data`` edits, ``.to()`` /
``.half()`` / ``.double()``, a device move — the branch's entries are dropped and refolded.
The fingerprint also records dtype, device, shape, the kernels' dtype and bank layout.
Its content part is a random projection of each block of 4096 weights, computed in the
weights' precision (fp32 at least): a change is missed only if it is orthogonal to the
random vector or below that precision's rounding of the block sums, i.e. ≲ 1e-6 of the
block's norm in fp32 — far below what the SPEC §3 tolerance can see.  It costs one read of
the branch weights per call (a matrix-vector product).  Entries are built outside
``torch.inference_mode`` (an inference-mode build never leaks into autograd) and never
modified in place (a graph saved for backward keeps the tensors it saw).  The caches are
used only where they can be: not while the branch weights need gradients (training folds
inside autograd), not under ``torch.compile``, CUDA-graph capture or on the meta device —
there the layer folds on the fly exactly as under ``"none"``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Hashable, Iterable, Optional, Tuple

import torch

__all__ = ["POLICIES", "DEFAULT_POLICY", "DEFAULT_BUDGET_MB", "check_policy", "fingerprint",
           "KernelCache"]

POLICIES = ("none", "bounded", "all")
DEFAULT_POLICY = "none"
#: Default budget of the ``"bounded"`` policy: at paper dims (fp32) 256 MB hold the three
#: levels' fixed kernels (26.3 MB) and 26 leader kernels (8.75 MB each, all branches).
DEFAULT_BUDGET_MB = 256.0

_BLOCK = 4096                     # fingerprint block width
_SKETCH: Dict[Tuple[str, torch.dtype], torch.Tensor] = {}


def check_policy(policy: str, budget_mb: Optional[float] = None) -> Tuple[str, Optional[float]]:
    """``(policy, budget_mb)`` checked: ``policy`` one of :data:`POLICIES`; ``budget_mb`` a
    finite number ≥ 0, only for ``"bounded"`` (default :data:`DEFAULT_BUDGET_MB`)."""
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"cache must be one of {POLICIES}, got {policy!r}")
    if policy != "bounded":
        if budget_mb is not None:
            raise ValueError(f"cache_mb applies to cache='bounded' only, got cache={policy!r}")
        return policy, None
    if budget_mb is None:
        return policy, DEFAULT_BUDGET_MB
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)):
        raise TypeError(f"cache_mb must be a number of MB, got {type(budget_mb).__name__}")
    budget_mb = float(budget_mb)
    if not budget_mb >= 0 or budget_mb == float("inf"):
        raise ValueError(f"cache_mb must be finite and >= 0, got {budget_mb}")
    return policy, budget_mb


def _sketch(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = (str(device), dtype)
    v = _SKETCH.get(key)
    if v is None:
        g = torch.Generator().manual_seed(0x5EED)
        with torch.inference_mode(False):
            v = torch.randn(_BLOCK, generator=g, dtype=torch.float64).to(device=device,
                                                                        dtype=dtype)
        _SKETCH[key] = v
    return v


def _content(t: torch.Tensor) -> torch.Tensor:
    """Random projection of each block of ``_BLOCK`` values of ``t`` (in its memory order)."""
    t = t.detach()
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
    acc = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
    v = _sketch(flat.device, acc)
    n = flat.numel()
    full = n // _BLOCK * _BLOCK
    parts = []
    step = _BLOCK * 256                      # rows per product (bounded transient for half)
    for i in range(0, full, step):
        block = flat[i:min(i + step, full)].view(-1, _BLOCK)
        parts.append(torch.mv(block.to(acc), v))
    if full < n:
        parts.append((flat[full:].to(acc) * v[:n - full]).sum().reshape(1))
    return torch.cat(parts).double() if parts else flat.new_zeros(0, dtype=torch.float64)


def fingerprint(tensors: Iterable[torch.Tensor]) -> Tuple[tuple, torch.Tensor]:
    """``(meta, content)`` of ``tensors``: meta = their shapes, dtypes and devices; content =
    a float64 vector of random projections of every block of 4096 values (see the module
    docstring for what it detects).  Two fingerprints match when their metas are equal and
    their contents are equal element for element."""
    tensors = list(tensors)
    meta = tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
    content = torch.cat([_content(t).to(tensors[0].device) for t in tensors])
    return meta, content


class KernelCache:
    """Folded kernels kept between calls under one memory policy, shared by the layers it
    is given to (``accelerate`` gives one cache to every C-MoE of a model, so the budget is
    the model's).

    Entries are keyed by ``(owner, item)``: ``owner`` a branch (any hashable identity of
    it), ``item`` ``"fixed"`` (``G₀ [E, R]``), a leader index (``G_ℓ [E, R]``, ``"bounded"``)
    or ``"bank"`` (``[L, E, R]``, ``"all"``).  :meth:`validate` drops an owner's entries
    when the fingerprint of its weights changed.  ``nbytes`` is what the cache holds;
    ``stats`` counts ``folds`` (entries built), ``hits``, ``evictions`` and ``stale``
    (owners whose weights changed).
    """

    def __init__(self, policy: str = DEFAULT_POLICY, budget_mb: Optional[float] = None):
        self.policy, self.budget_mb = check_policy(policy, budget_mb)
        self._entries: "OrderedDict[Tuple[Hashable, Hashable], torch.Tensor]" = OrderedDict()
        self._prints: Dict[Hashable, Tuple[tuple, torch.Tensor]] = {}
        self.nbytes = 0
        self.stats = {"folds": 0, "hits": 0, "evictions": 0, "stale": 0}

    def __repr__(self) -> str:
        budget = f", budget_mb={self.budget_mb:g}" if self.budget_mb is not None else ""
        return (f"KernelCache(policy={self.policy!r}{budget}, entries={len(self._entries)}, "
                f"nbytes={self.nbytes})")

    @property
    def budget_bytes(self) -> Optional[int]:
        """The byte budget (``None``: unbounded or no cache)."""
        return None if self.budget_mb is None else int(self.budget_mb * 2 ** 20)

    # ----------------------------------------------------------------- bookkeeping
    def clear(self, owners: Optional[Iterable[Hashable]] = None) -> None:
        """Drop every entry (or those of ``owners``) and their fingerprints."""
        if owners is None:
            self._entries.clear()
            self._prints.clear()
            self.nbytes = 0
            return
        owners = set(owners)
        for key in [k for k in self._entries if k[0] in owners]:
            self._drop(key)
        for o in owners:
            self._prints.pop(o, None)

    def owner_bytes(self, owners: Iterable[Hashable]) -> int:
        """Bytes held for ``owners``."""
        owners = set(owners)
        return sum(_nbytes(t) for k, t in self._entries.items() if k[0] in owners)

    def _drop(self, key) -> None:
        t = self._entries.pop(key)
        self.nbytes -= _nbytes(t)

    def validate(self, owner: Hashable, print_: Tuple[tuple, torch.Tensor]) -> None:
        """Keep ``owner``'s entries only if ``print_`` (:func:`fingerprint` of its weights,
        plus anything else they depend on in the meta) equals the stored one."""
        old = self._prints.get(owner)
        if old is not None and old[0] == print_[0] and bool(torch.equal(old[1], print_[1])):
            return
        if old is not None:
            self.stats["stale"] += 1
        for key in [k for k in self._entries if k[0] == owner]:
            self._drop(key)
        self._prints[owner] = print_

    def get(self, owner: Hashable, item: Hashable) -> Optional[torch.Tensor]:
        """The entry (marked most recently used), or ``None``."""
        key = (owner, item)
        t = self._entries.get(key)
        if t is not None:
            self._entries.move_to_end(key)
            self.stats["hits"] += 1
        return t

    def put(self, owner: Hashable, item: Hashable, value: torch.Tensor,
            pinned: Iterable[Tuple[Hashable, Hashable]] = ()) -> bool:
        """Store ``value`` (just folded) if the policy allows it, evicting least recently
        used entries other than ``pinned`` (those the current call needs) to fit the budget.
        Returns whether it was stored."""
        self.stats["folds"] += 1
        if self.policy == "none":
            return False
        key, size = (owner, item), _nbytes(value)
        if key in self._entries:
            self._drop(key)
        budget = self.budget_bytes
        if budget is not None:
            pinned = set(pinned)
            for victim in [k for k in self._entries if k not in pinned]:
                if self.nbytes + size <= budget:
                    break
                self._drop(victim)
                self.stats["evictions"] += 1
            if self.nbytes + size > budget:
                return False
        self._entries[key] = value
        self.nbytes += size
        return True


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
