"""Defaults a user gets by not passing an argument, pinned to where each is stated: SPEC §1
(architecture, losses, inference, training), SPEC §3 (tolerances), the README and the
docstrings, Pillow.  A default is behaviour (``anomaly_map(u, p)`` blurs with σ = 4 because
of one literal in a signature), so changing one must be a decision that edits this table,
never a one-line slip.

Every public callable of ``unimmad`` and ``kernels`` is walked: a parameter with one of the
names below has the stated default *wherever it appears*, so a new function cannot drift
from the SPEC either.
"""
# mutation-tool: runs-every-import-time-line   (the walk below reads every module's signatures)
import importlib
import inspect
import math
import pkgutil

import PIL.Image
import pytest

import kernels
import unimmad

# ----------------------------------------------------------------------------- by name
#: parameter name -> the stated default, for every public callable that has it
BY_NAME = {
    # SPEC §1 C-MoE: E = 256, N = 8 base experts, 32 leaders, top-2, W ~ N(0, 0.05²),
    # S ~ N(0, 0.02²), router softmax at temperature 1, z-loss weight 1e-4, k ∈ {1, 3, 5}
    "embed_dim": 256, "num_base_experts": 8, "num_leaders": 32, "top_k": 2,
    "base_expert_std": 0.05, "leader_std": 0.02, "temperature": 1.0,
    "router_temperature": 1.0, "z_loss_weight": 1e-4, "cmoe_kernel_sizes": (1, 3, 5),
    # SPEC §1 input: 256², up to 4 modalities, E_in ~ N(0, 0.02²)
    "image_size": 256, "max_modalities": 4, "input_embedding_std": 0.02,
    # SPEC §1 encoder: WideResNet50-2 (3, 4, 6) blocks used, 64 base planes, width 2; FCM
    # 512 wide with k ∈ {1, 3, 5}; decoder (3, 4, 6) blocks
    "backbone_layers": (3, 4, 6), "backbone_base_planes": 64, "base_planes": 64,
    "backbone_width_factor": 2, "width_factor": 2, "fcm_width": 512,
    "fcm_kernel_sizes": (1, 3, 5), "decoder_blocks": (3, 4, 6),
    # both the FCM's and each C-MoE level's kernel sizes are k ∈ {1, 3, 5}
    "kernel_sizes": (1, 3, 5),
    # SPEC §1 losses and inference: focal γ = 2, blur σ = 4 on 15 × 15, top 0.1 %
    "focal_gamma": 2.0, "gamma": 2.0, "blur_sigma": 4.0, "blur_kernel_size": 15,
    "sigma": 4.0, "top_fraction": 0.001,
    # SPEC §1 annealing over the 200 training epochs
    "total_epochs": 200,
    # SPEC §1 metrics: AUPRO up to FPR 0.3
    "integration_limit": 0.3,
    # README "Evaluating": binned pixel metrics with 2^14 bins
    "pixel_bins": 2 ** 14, "num_bins": 2 ** 14,
    # every seeded thing (training, samplers, demo data, benchmark cases, the export check)
    # starts from seed 0 unless told: runs and benchmark inputs repeat run to run
    "seed": 0,
    # guide: long work shows progress unless asked not to
    "progress": True,
    # fast-path promises (every unit reads one sample / one weight set) are never assumed:
    # the caller states them
    "same_samples": False, "same_weights": False,
    # README "memory policies": the folded-kernel policy "none" is the default everywhere
    "cache": "none",
    # README data section: unreadable files raise unless skip_broken=True; index paths stay
    # inside the dataset root unless allow_outside_root; readers with ground-truth masks
    # require them; the layout is detected; the training split unless told
    "skip_broken": False, "allow_outside_root": False, "require_masks": True,
    "layout": "auto", "split": "train",
    # data loading in the calling process (no workers) unless asked, as TrainConfig/EvalConfig
    "num_workers": 0,
    # README training and evaluation: the fused kernels by default (train.accelerate);
    # README export: --routing *adds* the routing outputs (off unless asked)
    "accelerate": True, "routing": False,
    # single process unless the launcher says otherwise
    "rank": 0, "world_size": 1,
    # SPEC §1 encoder: the WideResNet trunk is headless; conv-BN blocks are stride 1 with
    # ReLU unless a layer says so
    "include_top": False, "stride": 1, "relu": True,
}
#: parameters of these names mean something else in these callables (checked below)
OTHER_MEANING = {
    ("gamma", "kernels.amap_triton"),          # launcher argument, always passed
}
#: single callables whose default differs on purpose
EXCEPTIONS = {
    # the demo's readers are built inside run_demo, whose own bar shows the progress
    ("progress", "unimmad.engine.demo.demo_datasets"),
}


def _modules():
    for pkg in (unimmad, kernels):
        yield pkg
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            yield importlib.import_module(info.name)


def _public_callables():
    """(qualified name, module name, callable) of every public function, class and method
    defined in the packages."""
    seen = set()
    for mod in _modules():
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            items = [(name, obj)]
            if inspect.isclass(obj):
                items += [(f"{name}.{k}", v) for k, v in vars(obj).items()
                          if inspect.isfunction(v) and not k.startswith("_")]
            for qual, fn in items:
                key = (mod.__name__, qual)
                if key in seen or not callable(fn):
                    continue
                seen.add(key)
                yield f"{mod.__name__}.{qual}", mod.__name__, fn


def _defaults(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def test_every_parameter_of_a_spec_name_has_the_spec_default():
    wrong, found = [], {name: 0 for name in BY_NAME}
    for qual, mod, fn in _public_callables():
        for name, value in _defaults(fn).items():
            if name not in BY_NAME or (name, mod) in OTHER_MEANING or value is None \
                    or (name, qual) in EXCEPTIONS:
                continue                  # None: "from the config" / "exact", documented apart
            found[name] += 1
            want = BY_NAME[name]
            if value != want or isinstance(value, bool) != isinstance(want, bool):
                wrong.append(f"{qual}({name}={value!r}), stated {BY_NAME[name]!r}")
    assert not wrong, "\n".join(wrong)
    # the walk reaches the public API (a broken walk would pass vacuously)
    assert all(found.values()), [n for n, c in found.items() if not c]
    assert found["sigma"] >= 3 and found["top_fraction"] >= 3 and found["embed_dim"] >= 3


def test_blur_kernel_size_is_15_wherever_the_blur_sigma_is_taken():
    # kernel_size means the blur's 15 × 15 window exactly where σ is a parameter too
    # (elsewhere, e.g. a conv layer's kernel_size, it is another thing)
    checked = 0
    for qual, _, fn in _public_callables():
        d = _defaults(fn)
        if "sigma" in d:
            assert d.get("kernel_size") == 15, qual
            checked += 1
    assert checked >= 3


# ----------------------------------------------------------------------------- one by one
_d = _defaults


def test_training_defaults_are_the_papers():
    from unimmad.engine import TrainConfig
    # SPEC §1 training: Adam lr 1e-3, betas (0.9, 0.999), no weight decay, 200 epochs,
    # batch 10; fp32, fused kernels on, checkpoints every epoch, one process per step
    d = _d(TrainConfig)
    assert (d["epochs"], d["batch_size"], d["lr"], d["betas"], d["weight_decay"]) == \
        (200, 10, 1e-3, (0.9, 0.999), 0.0)
    assert (d["bf16"], d["accelerate"], d["continual"], d["freeze_batchnorm"]) == \
        (False, True, False, False)
    assert (d["num_workers"], d["seed"], d["checkpoint_every"], d["log_every"]) == (0, 0, 1, 10)
    from unimmad.engine.trainer import CosineSchedule
    assert (_d(CosineSchedule)["start_step"], _d(CosineSchedule)["start_factor"]) == (0, 1.0)


def test_evaluation_and_prediction_defaults_are_the_readmes():
    from unimmad.engine.evaluate import evaluate, predict_batches
    from unimmad.engine.runconfig import EvalConfig
    # README run-file example: eval {batch_size: 16, aupro: mvtec3d, overlays: 2}
    d = _d(EvalConfig)
    assert (d["batch_size"], d["overlays"], d["accelerate"], d["num_workers"],
            d["store_thresholds"]) == (16, 2, True, 0, True)
    e = _d(evaluate)
    assert (e["batch_size"], e["overlays"], e["num_workers"]) == (16, 2, 0)
    assert _d(predict_batches)["batch_size"] == 16
    from unimmad.engine.predict import predict_files
    assert (_d(predict_files)["batch_size"], _d(predict_files)["overlays"]) == (8, True)
    from unimmad.metrics.accumulator import DEFAULT_PIXEL_BINS
    assert DEFAULT_PIXEL_BINS == 2 ** 14


def test_export_defaults_are_the_readmes():
    from unimmad import export
    # README: ONNX has a fixed batch size, default 1; the exported program a dynamic one
    # (traced at batch 2); verification at 1e-4
    assert _d(export.export_onnx)["batch_size"] == 1
    p = _d(export.export_program)
    assert (p["dynamic_batch"], p["batch_size"], p["routing"]) == (True, 2, False)
    v = _d(export.verify_export)
    assert (v["batch_size"], v["tol"], v["seed"]) == (2, 1e-4, 0)


def test_preprocessing_defaults():
    from unimmad.data import preprocess
    d = _d(preprocess.Preprocess)
    assert (d["image_size"], d["max_modalities"], d["imagenet_normalize"],
            d["normalize_gray"], d["depth_scale"]) == (256, 4, True, True, 100.0)
    assert _d(preprocess.normalize_depth)["scale"] == 100.0
    # the ImageNet statistics every WideResNet50-2 checkpoint was trained with
    assert preprocess.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert preprocess.IMAGENET_STD == (0.229, 0.224, 0.225)


def test_reader_limits_are_pillows_and_names_stay_short():
    from unimmad.data import io
    # README: images larger than Pillow's 89.5 Mpx are refused, also for TIFF and .npy
    assert io.MAX_PIXELS == PIL.Image.MAX_IMAGE_PIXELS == 89_478_485
    assert io.MAX_VOXELS == 2 ** 31
    assert _d(io.safe_component)["max_length"] == 96
    assert _d(io.read_mask)["threshold"] == 0
    assert _d(io.read_nifti_slice)["axis"] == 2
    assert _d(io.contained_path)["allow_outside_root"] is False


def test_dataset_defaults_are_the_documented_splits():
    from unimmad.data import base, industrial, medical
    # BraTS: 20 % of the cases held out, every slice with ≥ 10 % brain; Hyper-Kvasir: 10 %
    # of the normal findings (README dataset table); MRI slices divided by their 99.5th
    # percentile (docstring of BraTS2020)
    b = _d(medical.BraTS2020)
    assert (b["test_fraction"], b["slice_step"], b["min_brain_fraction"]) == (0.2, 1, 0.1)
    h = _d(medical.HyperKvasir)
    assert h["test_fraction"] == 0.1 and h["normal_findings"] == ("cecum", "ileum", "bbps-2-3")
    assert h["require_masks"] is True
    assert _d(medical.normalize_slice)["percentile"] == 99.5
    assert _d(industrial.Eyecandies)["rgb_index"] == 4
    assert _d(base.AnomalyDataset)["skip_broken"] is False
    assert _d(base.Record)["mask_modality"] == 0
    # pixel-registered modalities (RGB + xyz of one sensor, BraTS's four sequences) must
    # have one size; the base class does not assume it
    assert industrial.MVTec3DAD.aligned_modalities is industrial.Eyecandies.aligned_modalities \
        is medical.BraTS2020.aligned_modalities is True
    assert base.AnomalyDataset.aligned_modalities is False


def test_continual_learning_limits_are_the_readmes():
    from unimmad.engine import continual
    # README: data.replay mixes in 1 % of each earlier class; the engine refuses a
    # trainable share of >= 10 % of the parameters
    assert _d(continual.ReplayDataset)["fraction"] == 0.01
    assert continual.MAX_CONTINUAL_SHARE == 0.10


def test_model_level_defaults():
    from unimmad.models import backbone, encoder, layers
    from unimmad import UniMMAD
    # torchvision's WideResNet50-2: (3, 4, 6, 3) blocks, 1000 classes, RGB in; headless
    w = _d(backbone.WideResNet)
    assert (w["layers"], w["num_classes"], w["in_channels"], w["include_top"]) == \
        ((3, 4, 6, 3), 1000, 3, False)
    assert _d(backbone.wide_resnet50_2)["include_top"] is False
    assert _d(backbone.Bottleneck)["stride"] == 1 and backbone.Bottleneck.expansion == 4
    assert _d(backbone.load_backbone_weights)["strict"] is True
    assert _d(encoder.InputEmbedding)["std"] == 0.02
    assert _d(encoder.FeatureCompression)["width"] == 512
    assert _d(layers.gn_groups)["preferred"] == 32
    assert _d(layers.GroupNormReLU)["relu"] is True
    c = _d(layers.conv_bn)
    assert (c["stride"], c["relu"], c["transposed"]) == (1, True, False)
    assert _d(UniMMAD.loss)["epoch"] == 0


def test_numerical_constants_are_the_specs():
    from unimmad import scoring
    from unimmad.bench.parity import TOL
    # SPEC §3: fp32 ≤ 1e-5, TF32 ≤ 2e-3, bf16/fp16 ≤ 2e-2, gradients ≤ 1e-4
    assert TOL == {"fp32": 1e-5, "tf32": 2e-3, "bf16": 2e-2, "fp16": 2e-2, "grad": 1e-4}
    # the cosine's eps (SPEC §1 anomaly map: 1 − cos with eps 1e-8)
    assert scoring.COS_EPS == 1e-8 == _d(scoring.cosine_anomaly)["eps"]
    assert scoring.top_k_count(1000 * 1000) == 1000 and scoring.top_k_count(999) == 1
    assert math.isclose(_d(scoring.image_score)["top_fraction"], 1e-3)


@pytest.mark.parametrize("cls", ["DistInfo", "DistributedClassBalancedSampler"])
def test_single_process_defaults(cls):
    from unimmad.engine import distributed
    d = _d(getattr(distributed, cls))
    assert (d["rank"], d["world_size"]) == (0, 1)
    assert d.get("local_rank", 0) == 0 and d.get("seed", 0) == 0


def test_compile_check_limits_are_hoppers():
    pytest.importorskip("triton")
    from kernels import compile_check
    # sm_90: at most 227 KiB of shared memory per block (CUDA programming guide, compute
    # capability 9.0); the check compiles for that target by default
    assert compile_check.SHARED_LIMIT == 227 * 1024
    assert _d(compile_check.compile_specs)["capability"] == 90
    assert {"_dyn_conv_kernel", "_wgrad_kernel"} <= set(compile_check.NO_SPILL)


def test_each_exception_has_its_own_stated_default():
    # the exceptions to the by-name table are defaults too: the demo's readers stay quiet
    # (run_demo's own bar shows the progress)
    from unimmad.engine import demo
    assert _d(demo.demo_datasets)["progress"] is False
    assert {q for _, q in EXCEPTIONS} == {"unimmad.engine.demo.demo_datasets"}


def test_demo_defaults_are_its_docstrings_and_the_clis():
    from unimmad.cli import build_parser
    from unimmad.engine import demo
    # make_demo_data: 64² pictures; per class 16 training items, 6 good + 6 defective tests
    d = _d(demo.make_demo_data)
    assert (d["size"], d["train_per_class"], d["test_good"], d["test_bad"]) == (64, 16, 6, 6)
    # run_demo: 24 epochs at batch 8 into unimmad_demo/, the same as `unimmad demo`
    r = _d(demo.run_demo)
    assert (r["out_dir"], r["epochs"], r["batch_size"], r["data_dir"]) == \
        ("unimmad_demo", 24, 8, None)
    args = build_parser().parse_args(["demo"])
    assert (args.out, args.epochs, args.seed) == (r["out_dir"], r["epochs"], r["seed"])


def test_command_line_defaults_are_the_librarys():
    from unimmad import export
    from unimmad.cli import build_parser
    from unimmad.engine.predict import predict_files
    from unimmad.engine.trainer import TrainConfig
    p = build_parser()
    pred = p.parse_args(["predict", "x.png", "--checkpoint", "w"])
    f = _d(predict_files)
    assert (pred.batch_size, pred.no_overlays, pred.no_accelerate) == \
        (f["batch_size"], not f["overlays"], False)
    assert pred.device == "auto" and pred.out == "predictions"
    ex = p.parse_args(["export", "--modalities", "2"])
    e = _d(export.export_onnx)
    assert (ex.format, ex.batch_size, ex.routing, ex.seed, ex.no_check) == \
        ("onnx", e["batch_size"], e["routing"], _d(export.verify_export)["seed"], False)
    assert p.parse_args(["eval", "--checkpoint", "w"]).device == "auto"
    # README quickstart: `unimmad bench` writes ./bench_out; memory policy "none" by default
    b = p.parse_args(["bench"])
    assert (b.out, b.cache, b.seed) == ("bench_out", ["none"], TrainConfig().seed)
    assert (b.no_isolate, b.quiet, b.flops) == (False, False, True)
    # what has no default: predict needs a checkpoint, export the modality count
    for argv in (["predict", "x.png"], ["export"]):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2, argv


def test_bounded_cache_budget_is_the_readmes():
    # README "memory policies": "bounded" (cache_mb=256 by default)
    from kernels import cmoe_cache
    assert cmoe_cache.DEFAULT_BUDGET_MB == 256.0
    assert cmoe_cache.DEFAULT_POLICY == "none" and cmoe_cache.POLICIES == ("none", "bounded", "all")
    # what check_policy hands the cache: the budget only for "bounded", its default there
    assert cmoe_cache.check_policy("bounded") == ("bounded", 256.0)
    assert cmoe_cache.check_policy("bounded", 3) == ("bounded", 3.0)
    assert cmoe_cache.check_policy("all") == ("all", None)
