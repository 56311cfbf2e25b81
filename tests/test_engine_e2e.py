"""End to end on generated data in real folder layouts (tiny preset, CPU): train,
checkpoint, be killed, resume to the same weights and metrics, evaluate; continual
learning; the train / eval / predict / demo commands."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from unimmad import UniMMAD, UniMMADConfig
from unimmad.cli import main
from unimmad.engine import TrainConfig, Trainer, evaluate, freeze_for_continual
from unimmad.engine.demo import demo_datasets, make_demo_data

EPOCHS = 16
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN_SCRIPT = r"""
import os, sys, time, torch, warnings
warnings.simplefilter("ignore")
from unimmad import UniMMAD, UniMMADConfig
from unimmad.engine import Trainer, TrainConfig, checkpoint as C
from unimmad.engine.demo import demo_datasets
data, out, epochs, phase, at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
cfg = UniMMADConfig.tiny()
torch.manual_seed(0)
paths = {"mvtec3d": data + "/mvtec3d", "scan": data + "/scan"}
t = Trainer(UniMMAD(cfg), demo_datasets(paths, "train", cfg),
            TrainConfig(epochs=epochs, batch_size=8, out_dir=out, progress=False, device="cpu"))
if os.path.isdir(os.path.join(out, "last")):
    t.resume(os.path.join(out, "last"))


def pause():  # tell the parent where we are, then wait for its SIGKILL
    open(os.path.join(out, "PAUSED"), "w").close()
    time.sleep(600)


save, write, fsync_dir = t.save, C.write_safetensors, C.fsync_dir
if phase == "after-log":               # the epoch is logged, its checkpoint not yet written
    t.save = lambda *a: pause() if t.epoch == at else save(*a)
elif phase.endswith(".safetensors"):   # mid-save: that file written, the folder not committed
    def w(tensors, path, *a):
        write(tensors, path, *a)
        if t.epoch == at and path.endswith(phase):
            pause()
    C.write_safetensors = w
elif phase == "between-renames":       # last/ renamed away, the new folder not yet in place
    def f(path):
        fsync_dir(path)
        if t.epoch == at and not os.path.exists(os.path.join(out, "last")):
            pause()
    C.fsync_dir = f
t.fit()
"""
#: (where the training subprocess is SIGKILLed, at which epoch's save), in order
KILLS = [("after-log", 3), ("model.safetensors", 5), ("between-renames", 7),
         ("training.safetensors", 9)]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_data(str(root), size=64, train_per_class=8, test_good=6, test_bad=6)


def _trainer(paths, out_dir, epochs=EPOCHS):
    cfg = UniMMADConfig.tiny()
    torch.manual_seed(0)
    return Trainer(UniMMAD(cfg), demo_datasets(paths, "train", cfg),
                   TrainConfig(epochs=epochs, batch_size=8, out_dir=out_dir, progress=False,
                               device="cpu"))


def _epoch_records(log_path):
    with open(log_path) as f:
        return [json.loads(line) for line in f if '"type": "epoch"' in line]


def test_train_kill_resume_evaluate(demo_data, tmp_path):
    """SIGKILLed at four points of the save (after the epoch's log line, mid-file, between
    the renames of the commit, mid second file), each time restarted from what is on disk:
    no temporary file survives the next start, every epoch is logged exactly once, and the
    resumed weights and metrics equal those of an uninterrupted run bit for bit."""
    cfg = UniMMADConfig.tiny()
    # 1. uninterrupted run
    full = _trainer(demo_data, str(tmp_path / "full"))
    full.fit()
    report_full = evaluate(full.model, demo_datasets(demo_data, "test", cfg),
                           str(tmp_path / "eval_full"), progress=False)
    # 2. the same run in separate processes, each killed (SIGKILL) at a point of a save
    out = str(tmp_path / "killed")
    env = dict(os.environ, PYTHONPATH=ROOT)
    data_root = os.path.dirname(demo_data["mvtec3d"])
    seen = []
    for phase, at in KILLS:
        proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, data_root, out, str(EPOCHS),
                                 phase, str(at)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 900   # a hang guard, not a speed check (CI may be busy)
        while not os.path.exists(os.path.join(out, "PAUSED")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, f"the training subprocess never reached {phase}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        os.unlink(os.path.join(out, "PAUSED"))
        seen.append((phase, sorted(e for e in os.listdir(out) if e.startswith(".")),
                     os.path.isdir(os.path.join(out, "last"))))
    # the kills left what a crash leaves: a half-written folder, or last/ renamed away
    assert all(any(e.startswith(".last.tmp-") for e in left) for p, left, _ in seen
               if p != "after-log")
    assert any(e.startswith(".last.old-") for e in seen[2][1]) and not seen[2][2]
    # 3. resume from the last checkpoint on disk (the trainer's start cleans up first)
    resumed = _trainer(demo_data, out)
    assert sorted(os.listdir(out)) == ["last", "log.jsonl"]
    resumed.resume(os.path.join(out, "last"))
    assert resumed.epoch == KILLS[-1][1] - 1
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"weights differ at {k}")
    assert sorted(os.listdir(out)) == ["last", "log.jsonl", "weights"]
    assert [r["epoch"] for r in _epoch_records(os.path.join(out, "log.jsonl"))] == \
        list(range(1, EPOCHS + 1))
    steps = [json.loads(l)["step"] for l in open(os.path.join(out, "log.jsonl"))
             if '"type": "step"' in l]
    assert steps == sorted(set(steps)) and steps
    report = evaluate(resumed.model, demo_datasets(demo_data, "test", cfg),
                      str(tmp_path / "eval"), progress=False)
    assert report.to_dict() == report_full.to_dict()
    mean = next(r for r in report.rows() if r["class"] == "mean_of_classes")
    assert mean["image_AUROC"] >= 0.7, report.to_markdown()
    # tables and overlays
    for ext in ("csv", "json", "md"):
        assert os.path.getsize(tmp_path / "eval" / f"results.{ext}") > 100
    pngs = [f for _, _, fs in os.walk(tmp_path / "eval" / "overlays") for f in fs]
    assert len(pngs) == 3 * 4  # 3 classes × (2 highest + 2 lowest)
    log = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    usage = log[-1]["expert_usage"]
    assert set(usage) == {"level1", "level2", "level3"} and set(usage["level1"]) == {"k1", "k3", "k5"}
    # the weights-only export of the run is what eval needs
    from unimmad.engine import load_weights
    exported = load_weights(os.path.join(out, "weights"))
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in exported.state_dict().items())


def test_continual_learning_keeps_the_first_task(demo_data, tmp_path):
    """Task 1: the two RGB + depth classes; task 2: the scan class, training < 10 % of the
    parameters with 1 % replay.  Stated margin: task-1 image AUROC drops by < 0.15."""
    from unimmad.data import BMADStyle, MultiDataset, MVTec3DAD, Preprocess
    from unimmad.engine import ReplayDataset
    cfg = UniMMADConfig.tiny()
    pre = Preprocess.from_config(cfg)
    task1 = lambda split: MultiDataset([MVTec3DAD(demo_data["mvtec3d"], split, preprocess=pre,
                                                  dataset_name="demo3d")])
    task2 = MultiDataset([BMADStyle(demo_data["scan"], "train", preprocess=pre,
                                    class_name="scan", modality="ct", dataset_name="demoscan")])
    torch.manual_seed(0)
    model = UniMMAD(cfg)
    t1 = Trainer(model, task1("train"), TrainConfig(epochs=EPOCHS, batch_size=8, progress=False,
                                                    out_dir=str(tmp_path / "t1"), device="cpu"))
    t1.fit()
    auroc = lambda: next(r for r in evaluate(model, task1("test"), None, progress=False).rows()
                         if r["class"] == "mean_of_classes")["image_AUROC"]
    before = auroc()
    replay = ReplayDataset(task2, [task1("train")], fraction=0.01)
    t2 = Trainer(model, replay, TrainConfig(epochs=8, batch_size=8, continual=True, progress=False,
                                            out_dir=str(tmp_path / "t2"), device="cpu"))
    assert t2.trainable_share < 0.10
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    t2.fit()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    after = auroc()
    assert before >= 0.7 and before - after < 0.15, (before, after)
    with pytest.raises(AssertionError, match="continual"):
        import unimmad.engine.continual as c
        old, c.MAX_CONTINUAL_SHARE = c.MAX_CONTINUAL_SHARE, 0.001
        try:
            freeze_for_continual(UniMMAD(cfg))
        finally:
            c.MAX_CONTINUAL_SHARE = old


def test_cli_train_eval_predict(demo_data, tmp_path, capsys):
    run = {"preset": "tiny",
           "train": {"epochs": 2, "batch_size": 8, "out_dir": str(tmp_path / "run"),
                     "progress": False, "device": "cpu"},
           "data": {"train": [{"name": "mvtec3d", "root": demo_data["mvtec3d"]}],
                    "test": [{"name": "mvtec3d", "root": demo_data["mvtec3d"]}]},
           "eval": {"overlays": 1, "out_dir": str(tmp_path / "eval")}}
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(run))
    assert main(["train", "--config", str(cfg_path), "--set", "train.epochs=1"]) == 0
    ckpt = str(tmp_path / "run" / "last")
    from unimmad.engine import load_checkpoint
    assert load_checkpoint(ckpt, training=True)["epoch"] == 1
    assert main(["train", "--config", str(cfg_path), "--resume", ckpt]) == 0
    assert load_checkpoint(ckpt, training=True)["epoch"] == 2
    ckpt = str(tmp_path / "run" / "weights")
    assert main(["eval", "--checkpoint", ckpt, "--config", str(cfg_path)]) == 0
    assert (tmp_path / "eval" / "results.md").exists()
    d = os.path.join(demo_data["mvtec3d"], "plate", "test", "color")
    item = f"{d}/rgb/000.png,{d}/xyz/000.tiff"
    assert main(["predict", "--checkpoint", ckpt, "--out", str(tmp_path / "pred"), item,
                 os.path.join(demo_data["scan"], "test", "good", "img", "000.png")]) == 0
    assert len(open(tmp_path / "pred" / "scores.csv").read().splitlines()) == 3
    assert len(list((tmp_path / "pred" / "maps").glob("*.npy"))) == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval", "predict", "bench", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 300


def test_demo_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "unimmad", "demo", "--out", str(tmp_path),
                          "--epochs", "2", "--quiet"], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mean_of_classes" in out.stdout
    assert (tmp_path / "eval" / "results.csv").exists() and (tmp_path / "train" / "last").is_dir()
    assert (tmp_path / "train" / "weights" / "config.json").exists()
    assert any((tmp_path / "eval" / "overlays").rglob("*.png"))
