"""Command line: ``unimmad train | eval | predict | bench | demo | convert-release`` (also
``python -m unimmad ...``).  ``unimmad <command> --help`` explains every option."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap

__all__ = ["main", "build_parser"]


def _fields_help(cls) -> str:
    items = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        items.append(f"{f.name}={default!r}")
    return textwrap.fill(", ".join(items), 92, initial_indent="    ", subsequent_indent="    ")


def _config_help() -> str:
    from .config import UniMMADConfig
    from .engine.runconfig import DEFAULT_EVAL
    from .engine.trainer import TrainConfig
    return "\n".join([
        "run config file (YAML or JSON), every section optional:",
        "  preset: paper | tiny        the base model configuration",
        "  model:  UniMMADConfig fields (see unimmad.UniMMADConfig's docstring):",
        _fields_help(UniMMADConfig),
        "  train:  TrainConfig fields (see unimmad.engine.TrainConfig's docstring):",
        _fields_help(TrainConfig),
        "  data:   train: [{name, root, classes?, split?, ...}], test: [...],",
        "          loss_weights: {dataset: weight}, replay: {earlier: [...], fraction: 0.01}",
        "          preprocess: Preprocess fields, e.g. the authors' release's depth rule",
        "          {depth_fill: mean, depth_norm: center}",
        "          names: mvtec, visa, mvtec3d, eyecandies, mulsen, brats, hyperkvasir,",
        "          retinaloct, liverct, meta (the authors' meta.json index)",
        "  eval:   " + ", ".join(f"{k}={v!r}" for k, v in DEFAULT_EVAL.items()),
        "overrides: --set train.epochs=5 model.top_k=1 data.train.0.root=/data/x",
    ])


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="run config file (YAML or JSON; sections below)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted overrides of the config, e.g. train.epochs=5")


def _load_model(checkpoint: str, device: str, accelerate: bool):
    import torch
    from .config import UniMMADConfig
    from .engine.checkpoint import load_checkpoint
    from .engine.trainer import resolve_device
    from .models.model import UniMMAD
    if os.path.isdir(checkpoint):  # a weights-only folder (e.g. from convert-release)
        from .release import _read_weights
        model = _read_weights(checkpoint)
        model.to(resolve_device(device)).eval()
        if accelerate:
            from . import accelerate as _accelerate
            _accelerate(model)
        return model
    ckpt = load_checkpoint(checkpoint)
    cfg = UniMMADConfig.from_dict(ckpt["model_config"]).replace(backbone_weights=None,
                                                                encoder_from_pretrained=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weights come from the checkpoint
        model = UniMMAD(cfg)
    model.load_state_dict(ckpt["model"])
    model.to(resolve_device(device)).eval()
    if accelerate:
        from . import accelerate as _accelerate
        _accelerate(model)
    return model


def cmd_train(args) -> int:
    from .engine.distributed import init_distributed
    from .engine.runconfig import build_datasets, build_model_config, load_run_config
    from .engine.trainer import TrainConfig, Trainer
    from .models.model import UniMMAD
    import torch
    run = load_run_config(args.config, args.overrides)
    info = init_distributed()
    mcfg = build_model_config(run)
    tcfg = TrainConfig.from_dict(run.get("train") or {})
    data = run.get("data") or {}
    train_set = build_datasets(data.get("train"), "train", mcfg, data.get("loss_weights"),
                               preprocess=data.get("preprocess"))
    replay = data.get("replay")
    if replay:
        from .engine.continual import ReplayDataset
        earlier = build_datasets(replay.get("earlier"), "train", mcfg, data.get("loss_weights"),
                                 preprocess=data.get("preprocess"))
        train_set = ReplayDataset(train_set, [earlier], replay.get("fraction", 0.01))
    torch.manual_seed(tcfg.seed)
    model = UniMMAD(mcfg)
    if args.init:
        from .engine.checkpoint import load_checkpoint
        model.load_state_dict(load_checkpoint(args.init)["model"])
    trainer = Trainer(model, train_set, tcfg, info)
    if args.resume:
        trainer.resume(args.resume)
    if info.is_main:
        os.makedirs(tcfg.out_dir, exist_ok=True)
        with open(os.path.join(tcfg.out_dir, "run_config.json"), "w") as f:
            json.dump(run, f, indent=2)
        print(f"[unimmad train] {len(train_set)} samples, {len(train_set_classes(train_set))} "
              f"classes, trainable share {trainer.trainable_share:.1%}, {info.world_size} "
              f"process(es), epochs {trainer.epoch}->{tcfg.epochs}", file=sys.stderr)
    trainer.fit()
    if info.is_main:
        print(f"[unimmad train] checkpoint: {os.path.join(tcfg.out_dir, 'last.pt')}")
    return 0


def train_set_classes(ds):
    return sorted(set(ds.class_names))


def cmd_eval(args) -> int:
    from .engine.evaluate import evaluate
    from .engine.runconfig import DEFAULT_EVAL, build_datasets, load_run_config
    run = load_run_config(args.config, args.overrides)
    ev = dict(DEFAULT_EVAL, **(run.get("eval") or {}))
    model = _load_model(args.checkpoint, args.device, ev["accelerate"])
    data = run.get("data") or {}
    test = build_datasets(data.get("test"), "test", model.config,
                          preprocess=data.get("preprocess"))
    out_dir = ev["out_dir"] or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    report = evaluate(model, test, out_dir, ev["batch_size"], ev["aupro"], ev["pixel_bins"],
                      ev["overlays"], ev["num_workers"])
    print(report.to_markdown())
    print(f"[unimmad eval] wrote {out_dir}/results.{{csv,json,md}} and overlays/", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from .engine.predict import predict_files
    model = _load_model(args.checkpoint, args.device, not args.no_accelerate)
    items = [[p for p in item.split(",") if p] for item in args.items]
    mods = args.modalities.split(",") if args.modalities else None
    rows = predict_files(model, items, args.out, mods, args.batch_size)
    for r in rows:
        print(f"{r['score']:.6f}\t{r['files']}")
    print(f"[unimmad predict] wrote {args.out}/scores.csv and {args.out}/maps/", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .engine.demo import run_demo
    report = run_demo(args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    print(report.to_markdown())
    print(f"[unimmad demo] wrote {args.out}/eval (results.csv/json/md, overlays/) and "
          f"{args.out}/train (checkpoint, log)", file=sys.stderr)
    return 0


def cmd_convert_release(args) -> int:
    from .release import convert_release
    report = convert_release(args.checkpoint_dir, args.backbone_weights, args.out)
    print(report.summary(), file=sys.stderr)
    print(f"[unimmad convert-release] wrote {args.out}/model.safetensors and config.json; use "
          f"it as `unimmad eval --checkpoint {args.out} ...`", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import bench

    parser = argparse.ArgumentParser(
        prog="unimmad", description="UniMMAD anomaly detection: train, evaluate, predict, "
        "benchmark, and a self-contained demo.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train a model from a run config", epilog=_config_help(),
                       formatter_class=fmt, description="Train UniMMAD. Under `torchrun "
                       "--nproc_per_node N -m unimmad train ...` the N processes train with "
                       "DistributedDataParallel (same result as one process with the same "
                       "global batch).")
    _add_run_args(p)
    p.add_argument("--resume", help="checkpoint to continue exactly (optimizer, schedule, RNG)")
    p.add_argument("--init", help="checkpoint whose weights initialise the model (e.g. before "
                   "continual learning with train.continual=true)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the configured test data",
                       epilog=_config_help(), formatter_class=fmt,
                       description="Per-class image and pixel metrics, means per dataset and "
                       "overall (CSV/JSON/Markdown), and PNG overlays of each class's highest- "
                       "and lowest-scored items.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by unimmad train, "
                   "or a weights folder written by unimmad convert-release")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_run_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="anomaly maps and scores for image files",
                       description="Each ITEM is 1-4 comma-separated files, one per modality "
                       "(e.g. rgb.png,xyz.tiff). Writes maps (PNG and .npy) and scores.csv.")
    p.add_argument("items", nargs="+", metavar="ITEM", help="file[,file...] of one item")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by unimmad train, "
                   "or a weights folder written by unimmad convert-release")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--modalities", help="comma list naming each file's modality (rgb, depth, "
                   "infrared, ct, oct, endoscopy, flair, t1, t1ce, t2; default: depth for "
                   ".tiff point clouds, else rgb)")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-accelerate", action="store_true", help="run the reference model")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("bench", help="benchmark inference on generated inputs",
                       description=bench.__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)

    p = sub.add_parser("demo", help="generate a small dataset, train the tiny preset on the "
                       "CPU, evaluate", description="Writes generated data in real folder "
                       "layouts (MVTec 3D-AD: RGB + point cloud; BMAD: a CT-like scan), a "
                       "checkpoint and log, metric tables and overlays into --out. No "
                       "downloads, a few minutes on a CPU.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="unimmad_demo", help="output folder")
    p.add_argument("--epochs", type=int, default=24, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and sampling")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert-release", help="convert the authors' released checkpoint",
                       description="Read a checkpoint folder of the authors' release (the "
                       "folder accelerate's save_state wrote, e.g. epoch_199/: model.safetensors, "
                       "model_1.safetensors, model_2.safetensors, or the older "
                       "pytorch_model*.bin) plus the ImageNet WideResNet50-2 file of its prior "
                       "generator, and write the model as a weights folder (model.safetensors + "
                       "config.json) that `unimmad eval` and `unimmad predict` take as "
                       "--checkpoint. Only the 2026.5 (latest) release loads; layer4, "
                       "conv_out_second and prior_head are the only tensors left unused.")
    p.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help="the release's folder")
    p.add_argument("--backbone-weights", required=True, metavar="FILE",
                   help="ImageNet WideResNet50-2 weights (the release's "
                   "checkpoints/wide_resnet50_2.safetensors, or a torchvision .pth)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=cmd_convert_release)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ret = args.func(args)
        return ret if isinstance(ret, int) else 0
    except (ValueError, FileNotFoundError, TypeError) as exc:
        if os.environ.get("UNIMMAD_DEBUG"):
            raise
        print(f"unimmad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
