"""Command line: ``unimmad train | eval | predict | export | bench | demo |
convert-release`` (also
``python -m unimmad ...``).  ``unimmad <command> --help`` explains every option."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import textwrap
import warnings

import torch

from kernels.accelerate import accelerate as accelerate_model

from . import bench
from .config import UniMMADConfig
from .engine.checkpoint import (CheckpointError, apply_model_state, convert_release, load_checkpoint,
                                load_weights, read_extras, update_config)
from .engine.continual import ReplayDataset
from .engine.demo import run_demo
from .engine.distributed import init_distributed
from .engine.evaluate import evaluate, thresholds_table
from .engine.predict import expand_items, predict_files
from .engine.runconfig import (DEFAULT_EVAL, RUN_CONFIG_FILE, EvalConfig, build_datasets,
                               build_model_config, load_run_config, run_file_beside)
from .engine.trainer import TrainConfig, Trainer, resolve_device
from .export import export_onnx, save_torch, verify_export
from .models.model import UniMMAD

__all__ = ["main", "build_parser", "RUN_OUTPUTS"]

log = logging.getLogger("unimmad")

#: What ``unimmad train`` writes into ``train.out_dir`` (a folder holding any of them is a
#: run that a new ``train`` does not overwrite unless asked).
RUN_OUTPUTS = ("last", "weights", "log.jsonl", "run_config.json")


# ----------------------------------------------------------------------------- logging
class _StderrHandler(logging.Handler):
    """Writes to the *current* ``sys.stderr`` (so redirected or captured stderr works):
    ``[unimmad <command>] message``; warnings and errors as ``unimmad <command>: warning:
    message`` (no source line)."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"unimmad {self.command}: {record.levelname.lower()}: {msg}"
            else:
                text = f"[unimmad {self.command}] {msg}"
            try:
                from tqdm import tqdm
                tqdm.write(text, file=sys.stderr)  # above any progress bar
            except ImportError:  # pragma: no cover
                print(text, file=sys.stderr)
        except Exception:  # pragma: no cover (logging must never raise)
            self.handleError(record)


@contextlib.contextmanager
def _logging_for(command: str, verbose: int, quiet: bool):
    """The ``unimmad`` logger's level (``-v``: debug, ``--quiet``: warnings only, else
    info) and handler for one command; Python warnings are shown through it, one line
    each, without the source line.  Restored afterwards (``main`` may run many times in
    one process, e.g. in tests)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = _StderrHandler(command)
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    old_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        name = category.__name__
        log.warning("%s%s", "" if name == "UserWarning" else f"{name}: ", message)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old_show
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_propagate


def _fields_help(cls) -> str:
    items = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        items.append(f"{f.name}={default!r}")
    return textwrap.fill(", ".join(items), 92, initial_indent="    ", subsequent_indent="    ")


def _config_help() -> str:
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


def _add_log_args(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    """``-v``/``--verbose`` and ``-q``/``--quiet`` (also accepted before the command)."""
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more messages (debug level)")
    if quiet:
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="warnings and errors only, no progress bars")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="run config file (YAML or JSON; sections below)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted overrides of the config, e.g. train.epochs=5")


def _load_model(checkpoint: str, device: str, accelerate: bool):
    """The model of a checkpoint (folder or its config.json; old .pt read weights-only),
    verified and shape-checked by the one checkpoint reader."""
    model = load_weights(checkpoint, device=resolve_device(device))
    if accelerate:
        accelerate_model(model)
    return model


def cmd_train(args) -> int:
    run = load_run_config(args.config, args.overrides)
    info = init_distributed()
    mcfg = build_model_config(run)
    tcfg = TrainConfig.from_dict(run.get("train") or {})
    if args.quiet:
        tcfg = dataclasses.replace(tcfg, progress=False)
    data = run.get("data") or {}
    train_set = build_datasets(data.get("train"), "train", mcfg, data.get("loss_weights"),
                               preprocess=data.get("preprocess"))
    replay = data.get("replay")
    if replay:
        earlier = build_datasets(replay.get("earlier"), "train", mcfg, data.get("loss_weights"),
                                 preprocess=data.get("preprocess"))
        train_set = ReplayDataset(train_set, [earlier], replay.get("fraction", 0.01))
    if info.is_main or not info.enabled:
        _protect_run_folder(tcfg.out_dir, args.resume, args.overwrite)
    torch.manual_seed(tcfg.seed)
    model = UniMMAD(mcfg)
    if args.init:
        ckpt = load_checkpoint(args.init)
        apply_model_state(model, ckpt["model"], ckpt["source"])
    trainer = Trainer(model, train_set, tcfg, info)
    if args.resume:
        trainer.resume(args.resume)
    if info.is_main:
        os.makedirs(tcfg.out_dir, exist_ok=True)
        with open(os.path.join(tcfg.out_dir, RUN_CONFIG_FILE), "w") as f:
            json.dump(run, f, indent=2)
        log.info("%d samples, %d classes, trainable share %.1f%%, %d process(es), epochs "
                 "%d->%d, writing %s", len(train_set), len(train_set_classes(train_set)),
                 100 * trainer.trainable_share, info.world_size, trainer.epoch, tcfg.epochs,
                 tcfg.out_dir)
    trainer.fit()
    if info.is_main:
        log.info("training state (--resume): %s", trainer.checkpoint_path)
        log.info("weights (eval, predict, sharing): %s", trainer.weights_path)
    return 0


def _protect_run_folder(out_dir: str, resume, overwrite: bool) -> None:
    """Refuse to train into a folder holding another run (:data:`RUN_OUTPUTS`) unless
    ``--resume`` continues it or ``--overwrite`` replaces it (only those entries are
    removed)."""
    if not os.path.isdir(out_dir) or resume:
        return
    found = [e for e in RUN_OUTPUTS if os.path.lexists(os.path.join(out_dir, e))]
    if not found:
        return
    if not overwrite:
        raise ValueError(f"train.out_dir {out_dir!r} already holds a run ({', '.join(found)}); "
                         f"continue it with --resume {os.path.join(out_dir, 'last')}, train "
                         "into another folder with --set train.out_dir=FOLDER, or replace it "
                         "with --overwrite")
    for e in found:
        path = os.path.join(out_dir, e)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    log.warning("--overwrite: removed %s from %s", ", ".join(found), out_dir)


def train_set_classes(ds):
    return sorted(set(ds.class_names))


def _run_file(args) -> "str | None":
    """``--config``, else the run file ``unimmad train`` saved beside ``--checkpoint``."""
    if args.config:
        return args.config
    found = run_file_beside(args.checkpoint)
    if found:
        log.info("run file: %s (saved beside the checkpoint; --config picks another)", found)
    return found


def cmd_eval(args) -> int:
    run = load_run_config(_run_file(args), args.overrides)
    ev = EvalConfig.from_dict(run.get("eval") or {})
    model = _load_model(args.checkpoint, args.device, ev.accelerate)
    data = run.get("data") or {}
    test = build_datasets(data.get("test"), "test", model.config,
                          preprocess=data.get("preprocess"))
    folder = args.checkpoint if os.path.isdir(args.checkpoint) or args.checkpoint.endswith(
        (".pt", ".pth")) else os.path.dirname(os.path.abspath(args.checkpoint))
    out_dir = ev.out_dir or os.path.join(os.path.dirname(os.path.abspath(folder)), "eval")
    report = evaluate(model, test, out_dir, ev.batch_size, ev.aupro, ev.pixel_bins,
                      ev.overlays, ev.num_workers, progress=not args.quiet)
    print(report.to_markdown())
    print("Decision thresholds (anomalous = score >= threshold; normalised scores put it at "
          "0.5):\n")
    print(thresholds_table(report.thresholds))
    log.info("wrote %s/results.{csv,json,md}, thresholds.json and overlays/", out_dir)
    if ev.store_thresholds:
        try:
            update_config(args.checkpoint, {"thresholds": report.thresholds})
            log.info("stored the thresholds in %s (unimmad predict uses them)",
                     os.path.join(folder, "config.json"))
        except CheckpointError as exc:
            log.warning("thresholds not stored with the model (%s); give unimmad predict "
                        "--thresholds %s", exc, os.path.join(out_dir, "thresholds.json"))
    return 0


def cmd_predict(args) -> int:
    items = expand_items(args.items)
    if args.thresholds:
        with open(args.thresholds, encoding="utf-8") as f:
            try:
                thresholds = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{args.thresholds}: invalid JSON at line {exc.lineno}: "
                                 f"{exc.msg}") from None
    else:
        thresholds = read_extras(args.checkpoint).get("thresholds")
    model = _load_model(args.checkpoint, args.device, not args.no_accelerate)
    mods = args.modalities.split(",") if args.modalities else None
    log.info("%d item(s) -> %s", len(items), args.out)
    rows = predict_files(model, items, args.out, mods, args.batch_size, thresholds=thresholds,
                         class_name=args.class_name, progress=not args.quiet,
                         overlays=not args.no_overlays)
    print("score\tnormalised\tlabel\tfiles")
    for r in rows:
        norm = f"{r['score_normalised']:.3f}" if r["score_normalised"] != "" else "-"
        print(f"{r['score']:.6f}\t{norm}\t{r['label'] or '-'}\t{r['files']}")
    log.info("wrote %s/scores.csv, maps/%s%s", args.out,
             ", masks/" if any(r["mask"] for r in rows) else "",
             ", overlays/" if any(r["overlay"] for r in rows) else "")
    return 0


def cmd_export(args) -> int:
    if args.checkpoint:
        if args.config or args.overrides:
            raise ValueError("export: give either --checkpoint or --config/--set (a fresh "
                             "model), not both")
        model = _load_model(args.checkpoint, "cpu", accelerate=False)
        source = args.checkpoint
    else:
        cfg = build_model_config(load_run_config(args.config, args.overrides))
        torch.manual_seed(args.seed)
        model = UniMMAD(cfg).eval()
        source = f"a fresh model (seed {args.seed}, no checkpoint)"
    out = args.out or ("model.onnx" if args.format == "onnx" else "model.pt2")
    per = "modality" if args.modalities == 1 else "modalities"
    print(f"[unimmad export] {source} -> {out} ({args.format}, {args.modalities} {per} "
          "per sample)", file=sys.stderr)
    if args.format == "onnx":
        try:
            export_onnx(model, out, args.modalities, args.batch_size, routing=args.routing)
        except ImportError as exc:  # the optional onnx extra is missing
            print(f"unimmad export: error: {exc}", file=sys.stderr)
            return 2
        shape = f"[{args.batch_size}, {args.modalities}, 3, S, S]"
    else:
        save_torch(model, out, args.modalities, routing=args.routing)
        shape = f"[B, {args.modalities}, 3, S, S] (any B)"
    S = model.config.image_size
    print(f"[unimmad export] input images {shape.replace('S', str(S))} float32; outputs "
          f"anomaly_map, pred_score{', routing_*' if args.routing else ''}", file=sys.stderr)
    if args.no_check:
        return 0
    check = verify_export(model, out, args.format, args.modalities,
                          args.batch_size if args.format == "onnx" else 3)
    if check is None:
        print("[unimmad export] check skipped: onnxruntime is not installed "
              "(pip install -e \".[onnx]\")", file=sys.stderr)
        return 0
    routing = {None: "", True: ", routing identical", False: ", routing DIFFERENT"}
    print(f"[unimmad export] check against the PyTorch model (batch {check['batch_size']}): "
          f"map rel. err {check['map_rel_err']:.2e}, score rel. err "
          f"{check['score_rel_err']:.2e}{routing[check['routing_equal']]}", file=sys.stderr)
    if not check["ok"]:
        print(f"unimmad export: error: the exported model disagrees with the PyTorch model "
              f"(tolerance {check['tol']:.0e})", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    report = run_demo(args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    print(report.to_markdown())
    print(f"[unimmad demo] wrote {args.out}/eval (results.csv/json/md, overlays/) and "
          f"{args.out}/train (checkpoint, log)", file=sys.stderr)
    return 0


def cmd_convert_release(args) -> int:
    report = convert_release(args.checkpoint_dir, args.backbone_weights, args.out)
    print(report.summary(), file=sys.stderr)
    print(f"[unimmad convert-release] wrote {args.out}/model.safetensors and config.json; use "
          f"it as `unimmad eval --checkpoint {args.out} ...`", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unimmad", description="UniMMAD anomaly detection: train, evaluate, predict, "
        "export, benchmark, and a self-contained demo.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages (debug level)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="warnings and errors only, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train a model from a run config", epilog=_config_help(),
                       formatter_class=fmt, description="Train UniMMAD. Under `torchrun "
                       "--nproc_per_node N -m unimmad train ...` the N processes train with "
                       "DistributedDataParallel (same result as one process with the same "
                       "global batch).")
    _add_run_args(p)
    p.add_argument("--resume", help="training-state folder to continue exactly (model, "
                   "optimizer, schedule, RNG), e.g. runs/unimmad/last")
    p.add_argument("--init", help="checkpoint whose weights initialise the model (e.g. before "
                   "continual learning with train.continual=true), e.g. runs/old/weights")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in "
                   "train.out_dir (its last/, weights/, log.jsonl, run_config.json); without "
                   "it such a folder is refused")
    _add_log_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the configured test data",
                       epilog=_config_help(), formatter_class=fmt,
                       description="Per-class image and pixel metrics, means per dataset and "
                       "overall (CSV/JSON/Markdown); the decision thresholds and normalisation "
                       "of each class and of all the data (thresholds.json, and stored in the "
                       "checkpoint's config.json for unimmad predict; F1-optimal where the "
                       "test data holds anomalies, else max + std of the normal scores); "
                       "pictures of each class's highest- and lowest-scored items. Without "
                       "--config, the run file unimmad train saved beside the checkpoint "
                       "(run_config.json) gives the test data.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder written by unimmad "
                   "train (runs/x/weights or runs/x/last), its config.json, or a weights folder written by "
                   "unimmad convert-release")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_run_args(p)
    _add_log_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="decisions, scores, masks and maps for image files",
                       description="Each ITEM is 1-4 comma-separated parts, one per modality "
                       "(e.g. rgb.png,xyz.tiff). A part is a file, a folder (its images, one "
                       "item each) or a quoted glob (\"scans/*.png\"); with several folders or "
                       "globs (rgb/,xyz/) files are paired by name. Writes scores.csv (raw "
                       "and normalised score, label), masks/ (predicted defect pixels, PNG), "
                       "maps/ (raw anomaly maps, .npy) and overlays/, using the thresholds "
                       "unimmad eval stored in the checkpoint (or --thresholds).")
    p.add_argument("items", nargs="+", metavar="ITEM",
                   help="file[,file...] | folder[,folder...] | 'glob'[,'glob'...]")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder written by unimmad "
                   "train (runs/x/weights or runs/x/last), its config.json, or a weights folder written by "
                   "unimmad convert-release")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--modalities", help="comma list naming each file's modality (rgb, depth, "
                   "infrared, ct, oct, endoscopy, flair, t1, t1ce, t2; default: depth for "
                   ".tiff point clouds, else rgb)")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-accelerate", action="store_true", help="run the reference model")
    p.add_argument("--thresholds", metavar="FILE", help="a thresholds.json written by unimmad "
                   "eval (default: the thresholds stored in the checkpoint)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="use this class's "
                   "thresholds and colour scale (default: those of all the evaluation data)")
    p.add_argument("--no-overlays", action="store_true", help="no pictures (faster)")
    _add_log_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export the inference model (ONNX or torch.export)",
                       description="Exports images [B, M, 3, S, S] -> (anomaly_map [B, S, S], "
                       "pred_score [B]) for a fixed number M of modalities per sample (the "
                       "reference PyTorch path; no training, no mixed modality counts). ONNX "
                       "models have a fixed batch size, torch.export programs (.pt2) take any. "
                       "The model comes from --checkpoint, or is built fresh from "
                       "--config/--set (e.g. --set preset=tiny) for testing. Afterwards the "
                       "exported model is run once against the PyTorch model (onnxruntime "
                       "for ONNX) and the errors are printed. ONNX needs pip install -e "
                       "\".[onnx]\".")
    p.add_argument("--format", choices=("onnx", "torch"), default="onnx",
                   help="onnx (.onnx file, the default) or torch (torch.export program, .pt2)")
    p.add_argument("--checkpoint", help="a checkpoint written by unimmad train")
    p.add_argument("--config", help="run config file (YAML or JSON) of a fresh model "
                   "(see unimmad train --help)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dotted overrides of that config, e.g. preset=tiny model.top_k=1")
    p.add_argument("--modalities", type=int, required=True, metavar="M",
                   help="modalities per sample the exported model takes (1..max_modalities)")
    p.add_argument("--out", help="output file (default: model.onnx / model.pt2)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="batch size of an ONNX model (default: 1; torch programs take any)")
    p.add_argument("--routing", action="store_true",
                   help="also output each C-MoE level and branch's chosen leaders (debug)")
    p.add_argument("--seed", type=int, default=0,
                   help="weight seed of a fresh model (default: 0)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the exported model against the PyTorch model")
    _add_log_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="benchmark inference on generated inputs",
                       description=bench.DESCRIPTION, formatter_class=bench.HelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)

    p = sub.add_parser("demo", help="generate a small dataset, train the tiny preset on the "
                       "CPU, evaluate", description="Writes generated data in real folder "
                       "layouts (MVTec 3D-AD: RGB + point cloud; BMAD: a CT-like scan), a "
                       "checkpoint and log, metric tables and overlays into --out. No "
                       "downloads, a few minutes on a CPU.",
                       formatter_class=bench.HelpFormatter)
    p.add_argument("--out", default="unimmad_demo", help="output folder")
    p.add_argument("--epochs", type=int, default=24, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and sampling")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="warnings and errors only, no progress bars")
    _add_log_args(p, quiet=False)
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
    with _logging_for(args.command, args.verbose, args.quiet):
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
