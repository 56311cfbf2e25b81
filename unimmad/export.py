"""Export of the inference forward: ``torch.export`` programs (``.pt2``) and ONNX models.

:class:`ExportableUniMMAD` is the forward of a :class:`UniMMAD` for a *fixed* number ``M``
of modalities per sample: ``images [B, M, 3, H, W] → (anomaly_map [B, H, W],
pred_score [B])``, the same numbers as ``model(images padded to max_modalities slots,
num_modalities=M for every sample)``.  With ``M`` fixed the units are known from the
shape alone (``B·M`` units, sample-major, slots in order), so the exported path has no
boolean-mask packing, no data-dependent shape and no check that reads values.

What is exported is the *reference* (plain PyTorch) model: the fused fast path of
:mod:`kernels` runs as ``torch.library`` custom ops, which the ONNX exporter cannot
translate and which a ``.pt2`` program could only run with ``kernels`` imported.  An
``unimmad.accelerate``-d model is refused with an error (load the checkpoint without
``accelerate``).  Not exported: training and the losses, batches mixing different
modality counts (export one model per ``M``), the Triton kernels, input validation
(NaN / Inf checks read values).  ONNX models have a fixed batch size: the reference C-MoE
filters each unit with its own kernels in one grouped convolution whose group count
(``B·M·(K+1)``) ONNX requires to be a constant.  ``torch.export`` programs take any batch
size.

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional: ``pip install -e ".[onnx]"``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import List, Optional, Tuple

import torch
from torch import nn

from .models.cmoe import CMoE
from .models.model import UniMMAD
from .scoring import anomaly_map as reference_anomaly_map
from .scoring import image_score as reference_image_score

__all__ = ["ExportableUniMMAD", "export_program", "save_torch", "export_onnx",
           "verify_export", "check_exportable"]

# Protobuf caps a single ONNX file at 2 GiB; larger weights go to ``<out>.data``.
_ONNX_SINGLE_FILE_BYTES = 1_800_000_000


def check_exportable(model: UniMMAD) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``model`` is a reference
    :class:`UniMMAD` (no fused C-MoE, reference map and score functions)."""
    if not isinstance(model, UniMMAD):
        raise TypeError(f"model must be a unimmad.UniMMAD, got {type(model).__name__}")
    fused = [name for name, m in model.named_modules()
             if isinstance(m, CMoE) and type(m) is not CMoE]
    if fused or model.anomaly_map_fn is not reference_anomaly_map \
            or model.image_score_fn is not reference_image_score:
        raise ValueError(
            "export needs the reference model, but this one was unimmad.accelerate()-d "
            f"(fused modules: {fused or 'map/score functions'}); build or load it without "
            "accelerate: the fused kernels are custom ops the exporters cannot translate")


class ExportableUniMMAD(nn.Module):
    """Inference forward of ``model`` for exactly ``num_modalities`` modalities per sample.

    ``forward(images [B, M, 3, H, W])`` returns ``(anomaly_map [B, H, W], pred_score [B])``
    and, with ``routing=True``, then one ``[B·M, top_k]`` long tensor per level and C-MoE
    branch: the leaders chosen for each unit (unit ``b·M + m`` is slot ``m`` of sample
    ``b``), in the order of :attr:`output_names`.  ``images`` holds the modalities in the
    slot order the model was trained with (e.g. RGB then depth).

    The wrapper shares ``model``'s parameters (no copy) and runs only in eval mode
    (``.eval()`` on the wrapper puts ``model`` in eval mode).  Shape and dtype are checked
    (``ValueError`` / ``TypeError``); the value checks of ``UniMMAD.check_inputs``
    (NaN / Inf) are not part of this path.
    """

    def __init__(self, model: UniMMAD, num_modalities: int, routing: bool = False):
        super().__init__()
        check_exportable(model)
        max_m = model.config.max_modalities
        if isinstance(num_modalities, bool) or not isinstance(num_modalities, int) \
                or not 1 <= num_modalities <= max_m:
            raise ValueError(
                f"num_modalities must be an int in [1, {max_m}] (config.max_modalities), "
                f"got {num_modalities!r}")
        self.model = model
        self.num_modalities = num_modalities
        self.routing = bool(routing)

    @property
    def output_names(self) -> List[str]:
        """``anomaly_map``, ``pred_score`` and, with routing, ``routing_l{level}_k{size}``
        for levels 1..3 and each C-MoE kernel size."""
        names = ["anomaly_map", "pred_score"]
        if self.routing:
            names += [f"routing_l{lvl}_k{k}" for lvl, cmoe in enumerate(self.model.cmoe, 1)
                      for k in cmoe.kernel_sizes]
        return names

    def example_input(self, batch_size: int = 2, dtype: Optional[torch.dtype] = None,
                      device=None) -> torch.Tensor:
        """Random ``[batch_size, M, 3, H, W]`` images of the model's dtype and device."""
        param = self.model.embedding.embedding
        S = self.model.config.image_size
        return torch.randn(batch_size, self.num_modalities, 3, S, S,
                           dtype=dtype or param.dtype, device=device or param.device)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        cfg, M = self.model.config, self.num_modalities
        S = cfg.image_size
        if not isinstance(images, torch.Tensor) or images.dim() != 5 \
                or images.shape[1] != M or images.shape[2] != 3 \
                or tuple(images.shape[3:]) != (S, S):
            raise ValueError(
                f"images must be [B, {M}, 3, {S}, {S}] (this export takes {M} modalities "
                f"per sample), got {tuple(getattr(images, 'shape', ()))}")
        dtype = self.model.embedding.embedding.dtype
        if images.dtype != dtype and not torch.is_autocast_enabled(images.device.type):
            raise TypeError(f"images are {images.dtype} but the model's parameters {dtype}")
        if self.model.training:
            raise ValueError("ExportableUniMMAD is the inference forward: call .eval() first")
        B = images.shape[0]
        dev = images.device
        if M < cfg.max_modalities:  # the model's absent slots hold zeros
            pad = images.new_zeros(B, cfg.max_modalities - M, *images.shape[2:])
            images = torch.cat([images, pad], 1)
        num_modalities = torch.full((B,), M, dtype=torch.long, device=dev)
        # pack_units for M modalities everywhere, from the shape alone
        unit_to_sample = torch.arange(B, device=dev)[:, None].expand(B, M).reshape(-1)
        unit_slot = torch.arange(M, device=dev)[None, :].expand(B, M).reshape(-1)
        out = self.model.features(images, num_modalities, (unit_to_sample, unit_slot),
                                  validate=False)
        amap, score = self.model.map_and_score(out, B)
        if not self.routing:
            return amap, score
        return (amap, score) + tuple(idx for a in out.aux for idx in a.indices)


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module):
    """Eval mode and no autograd for the duration; the model's previous mode is restored.
    The exporters' own chatter (a deprecation warning inside torch, notices about
    torchvision ops) is silenced."""
    was_training = model.training
    model.eval()
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registry.setLevel(level)
        model.train(was_training)


def export_program(model: UniMMAD, num_modalities: int, routing: bool = False,
                   dynamic_batch: bool = True, batch_size: int = 2
                   ) -> torch.export.ExportedProgram:
    """``torch.export`` program of :class:`ExportableUniMMAD` (``model`` in eval mode;
    its mode is restored afterwards).  With ``dynamic_batch`` the program takes any batch
    size (traced at ``batch_size``, which must then be ≥ 2); otherwise exactly
    ``batch_size``."""
    if not isinstance(batch_size, int) or batch_size < (2 if dynamic_batch else 1):
        raise ValueError(f"batch_size must be an int ≥ {2 if dynamic_batch else 1} "
                         f"(dynamic_batch={dynamic_batch}), got {batch_size!r}")
    wrapper = ExportableUniMMAD(model, num_modalities, routing)
    example = wrapper.example_input(batch_size)
    dyn = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with _eval_no_grad(model):
        return torch.export.export(wrapper.eval(), (example,), dynamic_shapes=dyn)


def save_torch(model: UniMMAD, path: str, num_modalities: int, routing: bool = False
               ) -> str:
    """Write a dynamic-batch ``torch.export`` program (``torch.export.save``) to ``path``
    (``.pt2``); load it with ``torch.export.load(path).module()``.  Returns ``path``."""
    program = export_program(model, num_modalities, routing, dynamic_batch=True)
    _make_parent(path)
    with _eval_no_grad(model):
        torch.export.save(program, path)
    return path


def export_onnx(model: UniMMAD, path: str, num_modalities: int, batch_size: int = 1,
                routing: bool = False, opset: Optional[int] = None) -> str:
    """Write an ONNX model of :class:`ExportableUniMMAD` for ``batch_size`` samples of
    ``num_modalities`` modalities to ``path``: input ``images``, outputs
    :attr:`ExportableUniMMAD.output_names`.  The weights are stored in the file (beside it,
    in ``<path>.data``, above ≈ 1.8 GB).  Needs ``pip install -e ".[onnx]"``."""
    try:
        import onnx  # noqa: F401  (the exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs the optional packages onnx and onnxscript ({exc}); "
            "install them with: pip install -e \".[onnx]\"") from exc
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    wrapper = ExportableUniMMAD(model, num_modalities, routing)
    example = wrapper.example_input(batch_size)
    size = sum(t.numel() * t.element_size()
               for t in list(model.parameters()) + list(model.buffers()))
    _make_parent(path)
    with _eval_no_grad(model):
        # The reference C-MoE's grouped convolution has B·M·(K+1) groups, an ONNX
        # attribute (a constant): hence one batch size per ONNX model.
        torch.onnx.export(wrapper.eval(), (example,), path, dynamo=True, input_names=["images"],
                          output_names=wrapper.output_names, opset_version=opset,
                          external_data=size > _ONNX_SINGLE_FILE_BYTES, verbose=False)
    return path


def _make_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def verify_export(model: UniMMAD, path: str, fmt: str, num_modalities: int,
                  batch_size: int = 2, tol: float = 1e-4, seed: int = 0) -> Optional[dict]:
    """Run the exported file at ``path`` (``fmt`` ``"onnx"``: onnxruntime on the CPU;
    ``"torch"``: ``torch.export.load``) and ``model.forward`` (``num_modalities`` for every
    sample, padded slots) on the same random images; ``None`` when ONNX is asked for and
    onnxruntime is not installed.

    Returns ``{map_rel_err, score_rel_err, routing_equal, ok, tol, batch_size}``: relative
    errors are ``max|exported − model| / max|model|``; ``routing_equal`` is ``None`` when
    the file has no routing outputs, else whether every unit chose the same leaders.
    """
    if fmt not in ("onnx", "torch"):
        raise ValueError(f"fmt must be 'onnx' or 'torch', got {fmt!r}")
    ExportableUniMMAD(model, num_modalities)  # checks the model and num_modalities
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return None
    gen = torch.Generator().manual_seed(seed)
    param = model.embedding.embedding
    S, M, Mx = model.config.image_size, num_modalities, model.config.max_modalities
    images = torch.randn(batch_size, M, 3, S, S, generator=gen, dtype=param.dtype)
    padded = torch.cat([images, images.new_zeros(batch_size, Mx - M, 3, S, S)], 1)
    with _eval_no_grad(model):
        ref = model(padded.to(param.device), torch.full((batch_size,), M,
                                                        device=param.device))
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        # copies: the arrays onnxruntime returns do not own their memory
        outs = [torch.from_numpy(o.copy())
                for o in session.run(None, {"images": images.numpy()})]
    else:
        with _eval_no_grad(model):
            program = torch.export.load(path).module()
            outs = list(program(images.to(param.device)))

    def rel(a, b):
        b = b.detach().float().cpu()
        return float((a.float().cpu() - b).abs().max() / b.abs().max().clamp_min(1e-30))

    map_err, score_err = rel(outs[0], ref.anomaly_map), rel(outs[1], ref.pred_score)
    routing = None
    if len(outs) > 2:
        ref_idx = [idx.cpu() for a in ref.aux for idx in a.indices]
        routing = len(outs) - 2 == len(ref_idx) and all(
            torch.equal(o.cpu().long(), r) for o, r in zip(outs[2:], ref_idx))
    return {"map_rel_err": map_err, "score_rel_err": score_err, "routing_equal": routing,
            "ok": map_err <= tol and score_err <= tol and routing is not False, "tol": tol,
            "batch_size": batch_size}
