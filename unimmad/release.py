"""The authors' released checkpoints (SPEC §4): read them into :class:`unimmad.UniMMAD`,
and convert C-MoE state dicts between their layout and ours.

A release checkpoint is the folder HuggingFace accelerate's ``save_state`` wrote
(``epoch_199/``): three weight files, one per trained part, plus an RNG pickle that is never
opened::

    model.safetensors    (or pytorch_model.bin)    general encoder: trunk ``0.model.*`` + FCM ``1.*``
    model_1.safetensors  (or pytorch_model_1.bin)  input embedding + stem
    model_2.safetensors  (or pytorch_model_2.bin)  the three C-MoEs ``0.*``, ``1.*``, ``2.*``

The frozen prior generator is not in the folder: it is the ImageNet WideResNet50-2 file the
release reads (``checkpoints/wide_resnet50_2.safetensors``, timm ``wide_resnet50_2.tv2_in1k``,
torchvision key names), given as ``backbone_weights``.

Mapping, theirs → ours (every tensor; ``l`` = level 0..2, ``i`` = branch of k = 1, 3, 5,
``K`` = inner kernel size 1, 3, 5 and ``i`` its index)::

    model.safetensors
      0.model.{conv1,bn1,layer1..3}.*       encoder.*  (same torchvision names)
      0.model.layer4.*                      skipped: never used by the model
      1.conv_x{1,2,3}.0.{conv1,bn1,conv2,bn2}  fcm.align.{0,1,2}.*
      1.conv_x{1,2}.0.downsample.weight     fcm.align.{0,1}.shortcut.weight (bare 1x1 conv)
      1.conv_x3.0.upsample.{weight,bias}    fcm.align.2.shortcut.* (4x4 transposed, bias)
      1.bn{K}.b{j}.{dw,pw,na.0}             fcm.inner.{i}.levels.{j-1}.{0,1,2.norm}
      1.bn{K}.post.{0,1.0}                  fcm.inner.{i}.reduce.{0,1.norm}
      1.out_bn3.{proj.0,proj.1.0}           fcm.outer.{0,1.norm}
      1.out_bn3.{head.0,head.1.0}           fcm.outer.{2,3.norm}
      1.decoder.layer{s}.{b}.{conv,bn}{1,2,3}  fcm.decoder.{s-1}.{b}.*
      1.decoder.layer{s}.0.upsample.{0,1}   fcm.decoder.{s-1}.0.shortcut.{0,1}
      1.final.{0,1,2}                       fcm.heads.{2,1,0}  (ours run level 3 first)
    model_1.safetensors
      input_embedding                       embedding.embedding
      stem.{0,1,3,4,6}.*, shortcut.*        embedding.stem.{0,1,3,4,6}.*, embedding.shortcut.*
    model_2.safetensors
      l.conv_share.{0,1.0}                  cmoe.l.key.{conv,gn.norm}
      l.conv_prior.{0,1.0}                  cmoe.l.query.{conv,gn.norm}
      l.conv_cond.{0.0,0.1,1.0,2,3.0}       cmoe.l.cond.{0,1,3.norm,4,5.norm}
      l.MoEs.i.pre.{0,1.0}                  cmoe.l.branches.i.value.{conv,gn.norm}
      l.MoEs.i.gate.gate                    cmoe.l.branches.i.router
      l.MoEs.i.experts                      cmoe.l.branches.i.leaders
      l.MoEs.i.soft_expert                  cmoe.l.branches.i.fixed_expert
      l.MoEs.i.post.{0,1.0}                 cmoe.l.branches.i.{post,post_norm.norm}
      l.expert_bases.i                      cmoe.l.branches.i.base_experts
      l.conv_out_first.{0,1.0}              cmoe.l.aggregate.{conv,gn.norm}
      l.conv_out_second.*, l.prior_head.*   skipped: never used by the release's forward
    backbone file (minus layer4.*, fc.*)    prior_generator.backbone.*

Only 2026.5 ("latest") checkpoints load.  V1.1 (2026.4) checkpoints are refused with an
error naming the differing tensors: their input stem is another model (a 6-channel
embedding and one 6→3 conv instead of the 12-channel embedding, 3-conv stem and shortcut),
fed by a 4-channel shared image in which gray and depth images are single channels, with the
inter-modal prior averages on — a different input encoding, not a renaming.
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .config import UniMMADConfig

__all__ = [
    "RELEASE_PARTS",
    "ReleaseCheckpointError",
    "ReleaseLoadReport",
    "release_config",
    "infer_release_config",
    "release_key",
    "to_release_state_dicts",
    "from_release_state_dicts",
    "expected_release_layout",
    "read_release_checkpoint",
    "load_release_checkpoint",
    "cmoe_state_dict_from_release",
    "cmoe_state_dict_to_release",
]

logger = logging.getLogger("unimmad.release")

#: part → (safetensors name, older accelerate's torch-pickle name).
RELEASE_PARTS: Dict[str, Tuple[str, str]] = {
    "encoder": ("model.safetensors", "pytorch_model.bin"),
    "embedding": ("model_1.safetensors", "pytorch_model_1.bin"),
    "cmoe": ("model_2.safetensors", "pytorch_model_2.bin"),
}
_PART_WHAT = {"encoder": "general encoder (trunk + FCM)", "embedding": "input embedding + stem",
              "cmoe": "C-MoEs"}


class ReleaseCheckpointError(ValueError):
    """A release checkpoint that does not fit the model.  ``missing``, ``unexpected`` and
    ``mismatched`` hold ``"<file>: <key>"`` entries (every offending tensor)."""

    def __init__(self, message: str, missing: Sequence[str] = (),
                 unexpected: Sequence[str] = (), mismatched: Sequence[str] = ()):
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched = list(mismatched)


@dataclass
class ReleaseLoadReport:
    """What :func:`load_release_checkpoint` read.

    files: part → file read.  loaded: part → tensors mapped into the model.
    skipped: the release's tensors the model does not use (``0.model.layer4.*``,
    ``l.conv_out_second.*``, ``l.prior_head.*``) — the only ones.  not_read: other files in
    the folder (e.g. ``random_states_0.pkl``: never opened).  backbone_ignored: keys of the
    backbone file outside the trunk (``layer4.*``, ``fc.*``).  dtypes: floating dtypes seen.
    """

    checkpoint_dir: str
    backbone_weights: str
    files: Dict[str, str] = field(default_factory=dict)
    loaded: Dict[str, int] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)
    not_read: List[str] = field(default_factory=list)
    backbone_ignored: List[str] = field(default_factory=list)
    dtypes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        groups = {}
        for k in self.skipped:
            g = ("layer4" if ".layer4." in k else
                 "conv_out_second" if ".conv_out_second." in k else "prior_head")
            groups[g] = groups.get(g, 0) + 1
        skipped = ", ".join(f"{g} ({n} tensors)" for g, n in sorted(groups.items())) or "none"
        read = ", ".join(f"{os.path.basename(f)} ({self.loaded.get(p, 0)} tensors)"
                         for p, f in self.files.items())
        return (f"release checkpoint {self.checkpoint_dir}: read {read}; prior generator from "
                f"{self.backbone_weights}; skipped as unused: {skipped}; not read: "
                f"{', '.join(self.not_read) or 'nothing'}")


# ----------------------------------------------------------------------------- config
_RELEASE_INFERENCE = dict(inter_modal_prior=False, map_mode="joint", moe_anneal="linear")


def release_config(base: Optional[UniMMADConfig] = None, **overrides) -> UniMMADConfig:
    """``base`` (default: the paper config) with the 2026.5 release's behaviour: inter-modal
    prior averages off, map mode ``"joint"``, linear L_MoE annealing (SPEC §4)."""
    base = base if base is not None else UniMMADConfig()
    return base.replace(**dict(_RELEASE_INFERENCE, **overrides))


# ----------------------------------------------------------------------------- key mapping
_Rule = Tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]


def _rules(cfg: UniMMADConfig) -> Dict[str, List[_Rule]]:
    """part → ordered (regex on our key, release key) rules; the first match wins."""
    ks = cfg.fcm_kernel_sizes
    n_heads = 3

    def r(pattern, fn):
        return re.compile(pattern + r"$"), fn

    encoder = [
        r(r"encoder\.(.+)", lambda m: f"0.model.{m[1]}"),
        r(r"fcm\.align\.(\d+)\.(conv[12]|bn[12])\.(.+)",
          lambda m: f"1.conv_x{int(m[1]) + 1}.0.{m[2]}.{m[3]}"),
        r(r"fcm\.align\.([01])\.shortcut\.weight",
          lambda m: f"1.conv_x{int(m[1]) + 1}.0.downsample.weight"),
        r(r"fcm\.align\.2\.shortcut\.(weight|bias)", lambda m: f"1.conv_x3.0.upsample.{m[1]}"),
        r(r"fcm\.inner\.(\d+)\.levels\.(\d+)\.0\.weight",
          lambda m: f"1.bn{ks[int(m[1])]}.b{int(m[2]) + 1}.dw.weight"),
        r(r"fcm\.inner\.(\d+)\.levels\.(\d+)\.1\.weight",
          lambda m: f"1.bn{ks[int(m[1])]}.b{int(m[2]) + 1}.pw.weight"),
        r(r"fcm\.inner\.(\d+)\.levels\.(\d+)\.2\.norm\.(.+)",
          lambda m: f"1.bn{ks[int(m[1])]}.b{int(m[2]) + 1}.na.0.{m[3]}"),
        r(r"fcm\.inner\.(\d+)\.reduce\.0\.(.+)", lambda m: f"1.bn{ks[int(m[1])]}.post.0.{m[2]}"),
        r(r"fcm\.inner\.(\d+)\.reduce\.1\.norm\.(.+)",
          lambda m: f"1.bn{ks[int(m[1])]}.post.1.0.{m[2]}"),
        r(r"fcm\.outer\.0\.(.+)", lambda m: f"1.out_bn3.proj.0.{m[1]}"),
        r(r"fcm\.outer\.1\.norm\.(.+)", lambda m: f"1.out_bn3.proj.1.0.{m[1]}"),
        r(r"fcm\.outer\.2\.(.+)", lambda m: f"1.out_bn3.head.0.{m[1]}"),
        r(r"fcm\.outer\.3\.norm\.(.+)", lambda m: f"1.out_bn3.head.1.0.{m[1]}"),
        r(r"fcm\.decoder\.(\d+)\.(\d+)\.shortcut\.([01])\.(.+)",
          lambda m: f"1.decoder.layer{int(m[1]) + 1}.{m[2]}.upsample.{m[3]}.{m[4]}"),
        r(r"fcm\.decoder\.(\d+)\.(\d+)\.((?:conv|bn)[123])\.(.+)",
          lambda m: f"1.decoder.layer{int(m[1]) + 1}.{m[2]}.{m[3]}.{m[4]}"),
        r(r"fcm\.heads\.(\d+)\.weight", lambda m: f"1.final.{n_heads - 1 - int(m[1])}.weight"),
    ]
    embedding = [
        r(r"embedding\.embedding", lambda m: "input_embedding"),
        r(r"embedding\.stem\.([0-9]+)\.(.+)", lambda m: f"stem.{m[1]}.{m[2]}"),
        r(r"embedding\.shortcut\.(weight|bias)", lambda m: f"shortcut.{m[1]}"),
    ]
    cmoe = [
        r(r"cmoe\.(\d+)\.(.+)", lambda m: f"{m[1]}.{_cmoe_key_to_release(m[2])}"),
    ]
    return {"encoder": encoder, "embedding": embedding, "cmoe": cmoe}


_CMOE_RULES = [
    (r"key\.conv\.weight", lambda m: "conv_share.0.weight"),
    (r"key\.gn\.norm\.(weight|bias)", lambda m: f"conv_share.1.0.{m[1]}"),
    (r"query\.conv\.weight", lambda m: "conv_prior.0.weight"),
    (r"query\.gn\.norm\.(weight|bias)", lambda m: f"conv_prior.1.0.{m[1]}"),
    (r"cond\.0\.weight", lambda m: "conv_cond.0.0.weight"),
    (r"cond\.1\.(.+)", lambda m: f"conv_cond.0.1.{m[1]}"),
    (r"cond\.3\.norm\.(weight|bias)", lambda m: f"conv_cond.1.0.{m[1]}"),
    (r"cond\.4\.weight", lambda m: "conv_cond.2.weight"),
    (r"cond\.5\.norm\.(weight|bias)", lambda m: f"conv_cond.3.0.{m[1]}"),
    (r"branches\.(\d+)\.value\.conv\.weight", lambda m: f"MoEs.{m[1]}.pre.0.weight"),
    (r"branches\.(\d+)\.value\.gn\.norm\.(weight|bias)",
     lambda m: f"MoEs.{m[1]}.pre.1.0.{m[2]}"),
    (r"branches\.(\d+)\.router\.(weight|bias)", lambda m: f"MoEs.{m[1]}.gate.gate.{m[2]}"),
    (r"branches\.(\d+)\.leaders", lambda m: f"MoEs.{m[1]}.experts"),
    (r"branches\.(\d+)\.fixed_expert", lambda m: f"MoEs.{m[1]}.soft_expert"),
    (r"branches\.(\d+)\.post\.weight", lambda m: f"MoEs.{m[1]}.post.0.weight"),
    (r"branches\.(\d+)\.post_norm\.norm\.(weight|bias)",
     lambda m: f"MoEs.{m[1]}.post.1.0.{m[2]}"),
    (r"branches\.(\d+)\.base_experts", lambda m: f"expert_bases.{m[1]}"),
    (r"aggregate\.conv\.weight", lambda m: "conv_out_first.0.weight"),
    (r"aggregate\.gn\.norm\.(weight|bias)", lambda m: f"conv_out_first.1.0.{m[1]}"),
]
_CMOE_RULES = [(re.compile(p + r"$"), fn) for p, fn in _CMOE_RULES]
# The release's C_MoE tensors its forward never uses (an anomaly head and a prior head).
_CMOE_UNUSED = ("conv_out_second", "prior_head")


def _cmoe_key_to_release(key: str) -> str:
    for pattern, fn in _CMOE_RULES:
        m = pattern.match(key)
        if m:
            return fn(m)
    raise KeyError(f"no release name for the C-MoE tensor {key!r}")


def release_key(key: str, config: Optional[UniMMADConfig] = None) -> Optional[Tuple[str, str]]:
    """``(part, release key)`` of one of our :class:`UniMMAD` state-dict keys, or ``None``
    for the prior generator (it comes from the backbone file, not the checkpoint).
    ``part`` is a key of :data:`RELEASE_PARTS`.  Raises ``KeyError`` for a key the release
    has no tensor for."""
    if key.startswith("prior_generator."):
        return None
    for part, rules in _rules(config or UniMMADConfig()).items():
        for pattern, fn in rules:
            m = pattern.match(key)
            if m:
                return part, fn(m)
    raise KeyError(f"no release name for the model tensor {key!r}")


def _meta_model(config: UniMMADConfig):
    from .models.model import UniMMAD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init warning: only the layout is needed
        with torch.device("meta"):
            return UniMMAD(config.replace(backbone_weights=None, encoder_from_pretrained=False))


def _key_table(config: UniMMADConfig) -> Tuple[Dict[Tuple[str, str], str], Dict[str, tuple]]:
    """``{(part, release key): our key}`` for every trained tensor, and our shapes."""
    sd = _meta_model(config).state_dict()
    table, shapes = {}, {}
    for k, v in sd.items():
        shapes[k] = tuple(v.shape)
        rk = release_key(k, config)
        if rk is not None:
            if rk in table:
                raise AssertionError(f"two tensors map to {rk}: {table[rk]}, {k}")
            table[rk] = k
    return table, shapes


def expected_release_layout(config: Optional[UniMMADConfig] = None
                            ) -> Dict[str, Dict[str, tuple]]:
    """part → {release key: shape} of every tensor a checkpoint must hold for ``config``
    (default: paper dims), without the skipped ones.  Built on the meta device: no memory."""
    config = config or release_config()
    table, shapes = _key_table(config)
    out = {p: {} for p in RELEASE_PARTS}
    for (part, rk), k in table.items():
        out[part][rk] = shapes[k]
    return out


def infer_release_config(parts: Mapping[str, Mapping[str, torch.Tensor]]) -> UniMMADConfig:
    """The model sizes a release checkpoint's tensors imply (image size and modality slots
    from ``input_embedding``, trunk planes / width / blocks, FCM width and kernel sizes,
    C-MoE width, base experts, leaders and kernel sizes), on top of the paper config;
    ``top_k`` (not stored in weights) stays 2, as released.  A size whose tensor is absent
    keeps the paper value (the strict load then reports the missing tensor)."""
    enc, emb, moe = (parts.get(p, {}) for p in ("encoder", "embedding", "cmoe"))
    found: Dict[str, object] = {}

    def shape(sd, key):
        v = sd.get(key)
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    e = shape(emb, "input_embedding")
    if e is not None and len(e) == 3 and e[1] == e[2] and e[0] % 3 == 0 \
            and not _v11_problems(emb):
        found.update(image_size=e[1], max_modalities=e[0] // 3)
    c1 = shape(enc, "0.model.conv1.weight")
    if c1 is not None:
        found["backbone_base_planes"] = c1[0]
        w = shape(enc, "0.model.layer1.0.conv1.weight")
        if w is not None and w[0] % c1[0] == 0:
            found["backbone_width_factor"] = w[0] // c1[0]
    blocks = []
    for i in (1, 2, 3):
        n = 0
        while f"0.model.layer{i}.{n}.conv1.weight" in enc:
            n += 1
        blocks.append(n)
    if min(blocks) > 0:
        found["backbone_layers"] = tuple(blocks)
    x1 = shape(enc, "1.conv_x1.0.conv1.weight")
    if x1 is not None:
        found["fcm_width"] = x1[0]
    ks = sorted({int(m[1]) for k in enc for m in [re.match(r"1\.bn(\d+)\.post\.0\.weight$", k)]
                 if m})
    if ks:
        found["fcm_kernel_sizes"] = tuple(ks)
    share = shape(moe, "0.conv_share.0.weight")
    if share is not None:
        found["embed_dim"] = share[0]
    ex = shape(moe, "0.MoEs.0.experts")
    if ex is not None and len(ex) == 3:
        found.update(num_leaders=ex[0], num_base_experts=ex[1])
    cks = []
    while shape(moe, f"0.MoEs.{len(cks)}.soft_expert") is not None:
        cks.append(shape(moe, f"0.MoEs.{len(cks)}.soft_expert")[-1])
    if cks:
        found["cmoe_kernel_sizes"] = tuple(cks)
    try:
        return UniMMADConfig(**found)
    except ValueError as exc:
        raise ReleaseCheckpointError(
            f"the checkpoint's tensor shapes imply an unusable model ({found}): {exc}") from exc


def _skipped(part: str, key: str, n_levels: int = 3) -> bool:
    if part == "encoder":
        return key.startswith("0.model.layer4.")
    if part == "cmoe":
        head, _, rest = key.partition(".")
        return (head.isdigit() and int(head) < n_levels
                and rest.split(".")[0] in _CMOE_UNUSED)
    return False


def to_release_state_dicts(state_dict: Mapping[str, torch.Tensor],
                           config: Optional[UniMMADConfig] = None
                           ) -> Dict[str, Dict[str, torch.Tensor]]:
    """Our :class:`UniMMAD` state dict → the release's three state dicts (part → dict;
    :data:`RELEASE_PARTS` names the files).  The prior generator is left out (the release
    reads it from the ImageNet file) and so are the unused release tensors (``layer4``,
    ``conv_out_second``, ``prior_head``): the result is what :func:`from_release_state_dicts`
    needs, key for key."""
    config = config or release_config()
    out = {p: {} for p in RELEASE_PARTS}
    for k, v in state_dict.items():
        rk = release_key(k, config)
        if rk is not None:
            out[rk[0]][rk[1]] = v
    return out


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _v11_problems(emb: Mapping[str, torch.Tensor]) -> List[str]:
    """The V1.1 (2026.4) stem's tensors found in an input-embedding state dict: its single
    stem conv (``stem.weight`` / ``stem.bias``), or its 6-channel embedding without the
    2026.5 shortcut."""
    found = [f"{k} {_fmt_shape(emb[k].shape)}" for k in ("stem.weight", "stem.bias")
             if isinstance(emb.get(k), torch.Tensor)]
    e = emb.get("input_embedding")
    if isinstance(e, torch.Tensor) and e.dim() == 3 and e.shape[0] == 6 and (
            found or "shortcut.weight" not in emb):
        found.append(f"input_embedding {_fmt_shape(e.shape)}")
    return found


def from_release_state_dicts(parts: Mapping[str, Mapping[str, torch.Tensor]],
                             config: Optional[UniMMADConfig] = None,
                             names: Optional[Mapping[str, str]] = None
                             ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The release's three state dicts (part → dict, as :func:`to_release_state_dicts`
    gives) → our state dict without the prior generator, and the list of skipped release
    keys (``"<file>: <key>"``).

    Every missing, unexpected or mis-shaped tensor of all three parts is listed in one
    :class:`ReleaseCheckpointError`; a V1.1 stem is refused with its own message.
    ``names`` (part → file name) labels the entries."""
    config = config or release_config()
    names = dict(names or {p: RELEASE_PARTS[p][0] for p in RELEASE_PARTS})
    unknown = sorted(set(parts) - set(RELEASE_PARTS))
    if unknown:
        raise ValueError(f"unknown release part(s) {unknown}; expected {sorted(RELEASE_PARTS)}")
    table, shapes = _key_table(config)
    emb = parts.get("embedding", {})
    v11 = _v11_problems(emb)
    if v11:
        f = names.get("embedding", RELEASE_PARTS["embedding"][0])
        missing = sorted(f"{f}: {rk}" for (p, rk) in table if p == "embedding" and rk not in emb)
        raise ReleaseCheckpointError(
            f"{f} holds the V1.1 (2026.4) input stem, which this library does not load: found "
            f"{', '.join(v11)}; the 2026.5 release (and this model) have input_embedding "
            f"[{config.input_channels}, H, W], stem.0/1/3/4/6 (3 convs with BN) and shortcut. "
            "V1.1 also encodes the input differently (a 4-channel shared image with gray and "
            "depth as single channels, inter-modal prior averages on). Use the 2026.5 "
            "(latest) weights. Missing 2026.5 tensors: " + ", ".join(missing),
            missing=missing, unexpected=[f"{f}: {x.split(' ')[0]}" for x in v11])
    missing, unexpected, mismatched, skipped = [], [], [], []
    out = {}
    for (part, rk), k in table.items():
        sd = parts.get(part)
        f = names.get(part, RELEASE_PARTS[part][0])
        if sd is None or rk not in sd:
            missing.append(f"{f}: {rk} {_fmt_shape(shapes[k])}")
            continue
        v = sd[rk]
        if not isinstance(v, torch.Tensor):
            mismatched.append(f"{f}: {rk} is a {type(v).__name__}, not a tensor")
        elif tuple(v.shape) != shapes[k]:
            mismatched.append(f"{f}: {rk} is {_fmt_shape(v.shape)}, the model needs "
                              f"{_fmt_shape(shapes[k])}")
        else:
            out[k] = v
    expected = set(table)
    for part, sd in parts.items():
        f = names.get(part, RELEASE_PARTS[part][0])
        for rk in sd:
            if (part, rk) in expected:
                continue
            (skipped if _skipped(part, rk) else unexpected).append(f"{f}: {rk}")
    if missing or unexpected or mismatched:
        lines = []
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", mismatched)):
            if items:
                lines.append(f"{len(items)} {title}:")
                lines += [f"  {x}" for x in sorted(items)]
        raise ReleaseCheckpointError(
            "the release checkpoint does not fit the model "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
            "mis-shaped tensors; only layer4, conv_out_second and prior_head may be left "
            "unused):\n" + "\n".join(lines),
            sorted(missing), sorted(unexpected), sorted(mismatched))
    return out, sorted(skipped)


# ----------------------------------------------------------------------------- C-MoE alone
def cmoe_state_dict_from_release(state_dict: Mapping[str, torch.Tensor], prefix: str = ""
                                 ) -> Dict[str, torch.Tensor]:
    """A state dict of the release's ``C_MoE`` → one for :class:`unimmad.CMoE` /
    :class:`kernels.FastCMoE` (same keys), so their trained C-MoE runs in our fast layer.

    ``prefix`` selects one C-MoE of a bigger dict, e.g. ``"1."`` for level 2 of the
    release's ``model_2.safetensors``.  ``conv_out_second.*`` and ``prior_head.*`` (never
    used by the release's forward) are dropped; any other key that is not a C-MoE tensor
    raises ``ValueError`` listing them all.  Build the module with the matching size:
    ``CMoE(in_channels=C)`` where ``C = state_dict["conv_share.0.weight"].shape[1]``."""
    inverse = {}
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"no key starts with {prefix!r}: not a C_MoE state dict")
    n_branches = 1 + max((int(m[1]) for k in sub
                          for m in [re.match(r"MoEs\.(\d+)\.", k)] if m), default=-1)
    if n_branches == 0:
        raise ValueError("no MoEs.<i>.* tensors: not a release C_MoE state dict")
    for ours in _cmoe_our_keys(n_branches):
        inverse[_cmoe_key_to_release(ours)] = ours
    out, unexpected = {}, []
    for k, v in sub.items():
        if k in inverse:
            out[inverse[k]] = v
        elif k.split(".")[0] not in _CMOE_UNUSED:
            unexpected.append(prefix + k)
    missing = sorted(prefix + rk for rk in inverse if rk not in sub)
    if missing or unexpected:
        raise ValueError(
            "not a release C_MoE state dict: "
            + "; ".join(f"{t} ({len(x)}): {', '.join(x)}"
                        for t, x in (("missing", missing), ("unexpected", sorted(unexpected)))
                        if x))
    return out


def _cmoe_our_keys(n_branches: int) -> List[str]:
    keys = ["key.conv.weight", "key.gn.norm.weight", "key.gn.norm.bias",
            "query.conv.weight", "query.gn.norm.weight", "query.gn.norm.bias",
            "cond.0.weight", "cond.1.weight", "cond.1.bias", "cond.1.running_mean",
            "cond.1.running_var", "cond.1.num_batches_tracked", "cond.3.norm.weight",
            "cond.3.norm.bias", "cond.4.weight", "cond.5.norm.weight", "cond.5.norm.bias",
            "aggregate.conv.weight", "aggregate.gn.norm.weight", "aggregate.gn.norm.bias"]
    for i in range(n_branches):
        keys += [f"branches.{i}.{k}" for k in (
            "value.conv.weight", "value.gn.norm.weight", "value.gn.norm.bias",
            "router.weight", "router.bias", "base_experts", "leaders", "fixed_expert",
            "post.weight", "post_norm.norm.weight", "post_norm.norm.bias")]
    return keys


def cmoe_state_dict_to_release(state_dict: Mapping[str, torch.Tensor],
                               fill_unused: bool = True) -> Dict[str, torch.Tensor]:
    """A :class:`unimmad.CMoE` / :class:`kernels.FastCMoE` state dict → one for the
    release's ``C_MoE`` (the inverse of :func:`cmoe_state_dict_from_release`).

    ``fill_unused`` adds zero ``conv_out_second`` / ``prior_head`` tensors (``[1, E, 1, 1]``
    weight, ``[1]`` bias), which their ``C_MoE`` holds but never uses, so that its
    ``load_state_dict(strict=True)`` accepts the result.  A key that is not one of our C-MoE
    tensors raises ``ValueError`` listing them all."""
    out, unexpected = {}, []
    for k, v in state_dict.items():
        try:
            out[_cmoe_key_to_release(k)] = v
        except KeyError:
            unexpected.append(k)
    n_branches = len({m[1] for k in state_dict for m in [re.match(r"branches\.(\d+)\.", k)] if m})
    missing = sorted(k for k in _cmoe_our_keys(n_branches) if k not in state_dict)
    if missing or unexpected:
        raise ValueError(
            "not a unimmad CMoE state dict: "
            + "; ".join(f"{t} ({len(x)}): {', '.join(x)}"
                        for t, x in (("missing", missing), ("unexpected", sorted(unexpected)))
                        if x))
    if fill_unused:
        w = state_dict["key.conv.weight"]
        E = w.shape[0]
        for name in _CMOE_UNUSED:
            out[f"{name}.weight"] = w.new_zeros(1, E, 1, 1)
            out[f"{name}.bias"] = w.new_zeros(1)
    return out


# ----------------------------------------------------------------------------- files
def _read_tensor_file(path: str) -> Dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path, device="cpu")
        else:  # older accelerate: a torch pickle of tensors — weights only, never more
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read {path!r}: {exc}") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path!r} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):  # a DataParallel-wrapped save
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_release_checkpoint(checkpoint_dir: str | os.PathLike
                            ) -> Tuple[Dict[str, Dict[str, torch.Tensor]], Dict[str, str],
                                       List[str]]:
    """Read the three weight files of a release checkpoint folder.

    Returns ``(parts, files, not_read)``: part → state dict, part → path read, and the
    folder's other files (never opened; ``random_states_*.pkl`` is an RNG pickle).  Prefers
    ``model*.safetensors``; falls back to older accelerate's ``pytorch_model*.bin`` (read
    with ``torch.load(weights_only=True)``).  A missing file raises ``FileNotFoundError``
    naming every missing part and listing what the folder holds."""
    d = os.fspath(checkpoint_dir)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"release checkpoint folder not found: {d!r}")
    present = sorted(os.listdir(d))
    files, absent = {}, []
    for part, names in RELEASE_PARTS.items():
        found = [n for n in names if os.path.isfile(os.path.join(d, n))]
        if found:
            files[part] = os.path.join(d, found[0])
        else:
            absent.append(f"{' or '.join(names)} ({_PART_WHAT[part]})")
    if absent:
        raise FileNotFoundError(
            f"{d!r} is not a complete release checkpoint (the folder accelerate's save_state "
            f"wrote, e.g. outputs/UniMMAD/checkpoints/epoch_199): missing {'; '.join(absent)}; "
            f"the folder holds {present or 'nothing'}")
    used = {os.path.basename(p) for p in files.values()}
    not_read = [n for n in present if n not in used]
    parts = {}
    for part, path in files.items():
        logger.info("reading %s", path)
        parts[part] = _read_tensor_file(path)
    return parts, files, not_read


def load_release_checkpoint(checkpoint_dir: str | os.PathLike,
                            backbone_weights: Optional[str | os.PathLike] = None,
                            config: Optional[UniMMADConfig] = None, device="cpu",
                            return_report: bool = False):
    """An eval-mode :class:`unimmad.UniMMAD` holding the authors' released weights.

    Args:
        checkpoint_dir: the folder accelerate's ``save_state`` wrote (``epoch_199/``):
            ``model.safetensors``, ``model_1.safetensors``, ``model_2.safetensors`` (or the
            older ``pytorch_model*.bin``, read with ``torch.load(weights_only=True)``).
            ``random_states_0.pkl`` is never opened.
        backbone_weights: the ImageNet WideResNet50-2 file the release reads for its frozen
            prior generator (``checkpoints/wide_resnet50_2.safetensors``, timm
            ``wide_resnet50_2.tv2_in1k``; a torchvision ``.pth`` of the same weights works
            too).  ``None`` reads ``$UNIMMAD_BACKBONE_WEIGHTS``; without either, an error —
            the priors are part of every anomaly map.
        config: the model configuration; default: the sizes the tensors imply
            (:func:`infer_release_config`; the released weights give the paper's) with the
            release's behaviour (:func:`release_config`: inter-modal prior off, map
            ``"joint"``).  A given config is used as it is.
        device: where the model goes.
        return_report: also return a :class:`ReleaseLoadReport`.

    Every tensor of the three files is mapped (table in this module's docstring) except
    ``0.model.layer4.*``, ``conv_out_second.*`` and ``prior_head.*``, which the release
    never uses; the function logs (logger ``unimmad.release``, INFO) what it read and
    skipped.  Missing, unexpected and mis-shaped tensors are all listed in one
    :class:`ReleaseCheckpointError`; V1.1 (2026.4) checkpoints are refused (module
    docstring).

    To reproduce the release's numbers, feed the release's preprocessing: ImageNet
    normalisation at 256², depth background filled with the foreground mean and
    ``(d − mean)·100`` — ``unimmad.data.Preprocess(depth_fill="mean", depth_norm="center")``.
    The authors' own runs also had their input stem under bf16 autocast (accelerate's
    ``mixed_precision="bf16"``; everything else in fp32): for that, pass ``config=
    release_config(infer_release_config(read_release_checkpoint(checkpoint_dir)[0]))
    .replace(embedding_autocast="bfloat16")``.  The default (fp32 throughout) is what
    their model code gives when run as it is.
    """
    from .models.backbone import load_backbone_weights, resolve_weights_path
    from .models.model import UniMMAD
    bw = resolve_weights_path(os.fspath(backbone_weights) if backbone_weights is not None
                              else None)
    if bw is None:
        raise ValueError(
            "backbone_weights is needed: the release checkpoint does not hold the frozen "
            "prior generator; give the ImageNet WideResNet50-2 file the release reads "
            "(checkpoints/wide_resnet50_2.safetensors, timm wide_resnet50_2.tv2_in1k) or set "
            "$UNIMMAD_BACKBONE_WEIGHTS")
    if not os.path.isfile(bw):
        raise FileNotFoundError(f"backbone weights file not found: {bw!r}")
    parts, files, not_read = read_release_checkpoint(checkpoint_dir)
    if config is None:
        config = release_config(infer_release_config(parts))
    names = {p: os.path.basename(f) for p, f in files.items()}
    ours, skipped = from_release_state_dicts(parts, config, names)
    build = config.replace(backbone_weights=None, encoder_from_pretrained=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no backbone weights": they are loaded below
        model = UniMMAD(build)
    bb = load_backbone_weights(model.prior_generator.backbone, bw, strict=True)
    full = dict(ours)
    full.update({k: v for k, v in model.state_dict().items()
                 if k.startswith("prior_generator.")})
    model.load_state_dict(full, strict=True)
    model.config = config.replace(backbone_weights=os.path.abspath(bw))
    model.to(device).eval()
    report = ReleaseLoadReport(
        checkpoint_dir=os.fspath(checkpoint_dir), backbone_weights=bw, files=files,
        loaded={p: sum(1 for k in ours if release_key(k, config)[0] == p) for p in files},
        skipped=skipped, not_read=not_read, backbone_ignored=bb["ignored"],
        dtypes=sorted({str(v.dtype) for sd in parts.values() for v in sd.values()
                       if v.is_floating_point()}))
    logger.info(report.summary())
    return (model, report) if return_report else model


# ----------------------------------------------------------------------------- convert
