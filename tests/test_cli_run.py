"""The command line as a user meets it: ``eval``/``predict`` from the run file saved
beside the checkpoint, ``--set`` creating list entries, run folders not overwritten
unless asked, resume keeping its learning-rate schedule (or stretching it when asked),
per-epoch lines that stay, one-line warnings, ``--quiet``."""
import json
import math
import os
import warnings

import pytest
import torch

from unimmad import UniMMAD, UniMMADConfig
from unimmad.cli import main
from unimmad.engine import TrainConfig, Trainer, load_checkpoint
from unimmad.engine.demo import make_demo_data
from unimmad.engine.runconfig import apply_overrides, load_run_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clirun")
    return make_demo_data(str(root), size=64, train_per_class=2, test_good=2, test_bad=2)


def _train_args(data, out, *extra):
    """``unimmad train`` with no run file at all: everything from ``--set``."""
    return ["train", "--set", "preset=tiny", "data.train.0.name=mvtec3d",
            f"data.train.0.root={data['mvtec3d']}", "data.train.0.classes=[plate]",
            "data.test.0.name=mvtec3d", f"data.test.0.root={data['mvtec3d']}",
            "data.test.0.classes=[plate]", "train.epochs=1", "train.batch_size=2",
            "train.device=cpu", "train.progress=false", f"train.out_dir={out}",
            f"eval.out_dir={out}/eval", "eval.overlays=1", *extra]


# ----------------------------------------------------------------------------- --set
def test_set_creates_list_entries_in_order():
    run = apply_overrides({}, ["data.train.0.name=mvtec", "data.train.0.root=/d/mvtec",
                               "data.train.1.name=visa", "data.train.1.root=/d/visa",
                               "data.test.0.classes=[bottle, grid]"])
    assert run["data"]["train"] == [{"name": "mvtec", "root": "/d/mvtec"},
                                    {"name": "visa", "root": "/d/visa"}]
    assert run["data"]["test"] == [{"classes": ["bottle", "grid"]}]
    # an existing entry is edited in place, not appended
    run = apply_overrides(run, ["data.train.1.root=/e/visa"])
    assert run["data"]["train"][1] == {"name": "visa", "root": "/e/visa"}
    with pytest.raises(ValueError, match="would leave a gap"):
        apply_overrides({}, ["data.train.1.name=mvtec"])
    with pytest.raises(ValueError, match="is a list; 'x' is not an index"):
        apply_overrides({"data": {"train": []}}, ["data.train.x=1"])
    with pytest.raises(ValueError, match="first key must be one of"):
        apply_overrides({}, ["nope.a=1"])


def test_set_only_run_config_is_checked(tmp_path):
    run = load_run_config(None, ["data.train.0.name=mvtec", f"data.train.0.root={tmp_path}"])
    assert run["data"]["train"][0]["name"] == "mvtec"
    with pytest.raises(ValueError, match="unknown dataset 'mvtek'"):
        load_run_config(None, ["data.train.0.name=mvtek", "data.train.0.root=/x"])
    with pytest.raises(TypeError, match="train.epochs: expected an int, got bool"):
        load_run_config(None, ["train.epochs=true"])
    with pytest.raises(TypeError, match="train.lr: expected a number, got str 'abc'"):
        load_run_config(None, ["train.lr=abc"])


# ----------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "run")
    assert main(_train_args(data, out)) == 0
    return out


def test_eval_with_only_the_checkpoint_uses_the_run_file_beside_it(trained, capsys):
    assert os.path.isfile(os.path.join(trained, "run_config.json"))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", os.path.join(trained, "weights"), "--device", "cpu",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "plate_mvtec3d" in out and "Decision thresholds" in out
    assert os.path.isfile(os.path.join(trained, "eval", "results.md"))
    stored = json.load(open(os.path.join(trained, "weights", "config.json")))["thresholds"]
    assert stored == json.load(open(os.path.join(trained, "eval", "thresholds.json")))
    # the stored thresholds keep the folder loadable (hashes right) and reach predict
    load_checkpoint(os.path.join(trained, "weights"))
    d = os.path.join(os.path.dirname(trained), "pred")
    img = os.path.join(json.load(open(os.path.join(trained, "run_config.json")))
                       ["data"]["test"][0]["root"], "plate", "test", "good")
    assert main(["predict", "--checkpoint", os.path.join(trained, "weights"), "--out", d,
                 "--device", "cpu", "--quiet", f"{img}/rgb,{img}/xyz"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "score\tnormalised\tlabel\tfiles" and len(lines) == 3
    assert all(l.split("\t")[2] in ("normal", "anomalous") for l in lines[1:])


def test_eval_of_a_training_state_folder_stores_thresholds_too(trained):
    last = os.path.join(trained, "last")
    assert main(["eval", "--checkpoint", last, "--device", "cpu", "--quiet",
                 "--set", "eval.overlays=0"]) == 0
    ck = load_checkpoint(last, training=True)        # training.json's hashes still hold
    assert ck["config"]["thresholds"]["format"] == "unimmad-thresholds"


def test_eval_without_any_test_data_says_how_to_give_it(tmp_path, capsys):
    from unimmad.engine import save_weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ck = save_weights(UniMMAD(UniMMADConfig.tiny()), str(tmp_path / "w"))
    assert main(["eval", "--checkpoint", ck]) == 2
    err = capsys.readouterr().err
    assert "no test datasets configured" in err and "--set data.test.0.name=" in err


def test_a_second_train_into_the_same_folder_is_refused(data, trained, capsys):
    before = os.path.getmtime(os.path.join(trained, "weights", "model.safetensors"))
    capsys.readouterr()
    assert main(_train_args(data, trained)) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert os.path.getmtime(os.path.join(trained, "weights", "model.safetensors")) == before


def test_overwrite_replaces_only_the_run_entries(data, tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(_train_args(data, out)) == 0
    open(os.path.join(out, "notes.txt"), "w").write("mine")
    os.makedirs(os.path.join(out, "last", "junk"))
    assert main(_train_args(data, out, "--overwrite")) == 0
    assert open(os.path.join(out, "notes.txt")).read() == "mine"
    assert not os.path.exists(os.path.join(out, "last", "junk"))
    assert "--overwrite: removed" in capsys.readouterr().err


def test_resume_into_its_own_folder_is_allowed(data, tmp_path):
    out = str(tmp_path / "r")
    assert main(_train_args(data, out)) == 0
    assert main(_train_args(data, out, "train.epochs=2", "--resume",
                            os.path.join(out, "last"))) == 0
    assert load_checkpoint(os.path.join(out, "last"), training=True)["epoch"] == 2


def test_epoch_lines_stay_and_warnings_have_no_source_line(data, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")   # shown even if an earlier test triggered it
        assert main(_train_args(data, str(tmp_path / "r"))) == 0   # no ImageNet weights
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if "epoch 1/1" in l)
    assert line.startswith("[unimmad train] epoch 1/1  loss ")
    assert " lr " in line and " s" in line and "dec " in line
    # a warning from inside the run: one line, no "file.py:NN:" and no source line
    warns = [l for l in err.splitlines() if ": warning:" in l]
    assert warns and all(".py:" not in l for l in warns)
    assert any("no ImageNet backbone weights" in l for l in warns)
    assert not any(l.strip().startswith("warnings.warn(") for l in err.splitlines())
    assert main(_train_args(data, str(tmp_path / "r3"), "--quiet")) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" not in err and "[unimmad train]" not in err


# ----------------------------------------------------------------------------- schedule
def _cosine_ref(step, total, base=1e-3):
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _trainer(data, out, epochs, **kw):
    cfg = UniMMADConfig.tiny()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = UniMMAD(cfg)
    from unimmad.data import MultiDataset, MVTec3DAD, Preprocess
    ds = MultiDataset([MVTec3DAD(data["mvtec3d"], "train", preprocess=Preprocess.from_config(cfg),
                                 classes=["plate"])])
    return Trainer(model, ds, TrainConfig(epochs=epochs, batch_size=1, out_dir=out,
                                          progress=False, device="cpu", accelerate=False, **kw))


def _lrs(trainer, epochs):
    seen = []
    orig = trainer.train_step

    def step(batch, usage=None):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return orig(batch, usage)
    trainer.train_step = step
    trainer.fit(stop_after_epochs=epochs)
    return seen


def test_resume_keeps_the_schedule_it_was_started_with(data, tmp_path, caplog):
    out = str(tmp_path / "k")
    t = _trainer(data, out, epochs=2)               # 2 samples, batch 1: 2 steps per epoch
    assert _lrs(t, 1) == pytest.approx([_cosine_ref(s, 4) for s in range(2)], rel=1e-12)
    longer = _trainer(data, out, epochs=4)
    with caplog.at_level("WARNING", logger="unimmad"):
        longer.resume(os.path.join(out, "last"))
    assert "keeping its learning-rate schedule" in caplog.text
    assert "train with learning rate 0" in caplog.text
    lrs = _lrs(longer, 2)
    # the 2-epoch cosine continues where it was (no jump), then 0 past its end
    assert lrs == pytest.approx([_cosine_ref(s, 4) for s in range(2, 6)], rel=1e-12, abs=1e-15)
    assert longer.schedule.anneal_epochs == 2


def test_resume_stretches_the_schedule_when_asked(data, tmp_path, caplog):
    out = str(tmp_path / "s")
    t = _trainer(data, out, epochs=2)
    _lrs(t, 1)
    at = t.optimizer.param_groups[0]["lr"]          # the rate step 2 would use
    longer = _trainer(data, out, epochs=4, resume_schedule="stretch")
    with caplog.at_level("INFO", logger="unimmad"):
        longer.resume(os.path.join(out, "last"))
    assert "stretched" in caplog.text
    lrs = _lrs(longer, 2)
    # from the rate it had, down a half cosine to 0 at the new end (step 8)
    ref = [at * 0.5 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(2, 6)]
    assert lrs == pytest.approx(ref, rel=1e-12)
    assert lrs[0] == pytest.approx(at, rel=1e-12)
    # the stretched schedule is saved with the run: a second resume keeps it
    again = _trainer(data, out, epochs=4)
    again.resume(os.path.join(out, "last"))
    assert (again.schedule.start_step, again.schedule.total_steps) == (2, 8)


def test_resume_of_a_checkpoint_with_a_lambda_schedule_keeps_its_length(data, tmp_path):
    """Checkpoints written before the schedule was saved (a lambda: no state) get the
    length of their saved ``train.epochs``."""
    from unimmad.engine.checkpoint import save_checkpoint
    out = str(tmp_path / "old")
    t = _trainer(data, out, epochs=2)
    t.fit(stop_after_epochs=1)
    sched = torch.optim.lr_scheduler.LambdaLR(t.optimizer, lambda s: t.schedule(s))
    sched.load_state_dict({k: v for k, v in t.scheduler.state_dict().items()
                           if k != "lr_lambdas"} | {"lr_lambdas": [None]})
    save_checkpoint(os.path.join(out, "last"), t.model, t.optimizer, sched, epoch=1, step=2,
                    train_config={"epochs": 2, "optimizer": "adam", "continual": False},
                    classes=t.classes)
    longer = _trainer(data, out, epochs=4)
    longer.resume(os.path.join(out, "last"))
    assert longer.schedule.total_steps == 4 and longer.schedule.anneal_epochs == 2


def test_bad_resume_schedule_is_refused():
    with pytest.raises(ValueError, match="resume_schedule must be one of"):
        TrainConfig(resume_schedule="restart")


class _RecordingTrainer:
    """Stands in for the Trainer: records what ``unimmad train`` built, trains nothing."""
    seen = {}

    def __init__(self, model, train_set, config, info):
        _RecordingTrainer.seen.update(model=model, train_set=train_set, config=config)
        self.trainable_share, self.epoch = 1.0, 0
        self.checkpoint_path = self.weights_path = config.out_dir

    def resume(self, path):
        raise AssertionError("no resume asked")

    def fit(self):
        pass


@pytest.mark.parametrize("fraction, replayed", [(None, 1), (1.0, 2)])
def test_train_with_replay_mixes_in_each_earlier_class(data, tmp_path, monkeypatch, fraction,
                                                      replayed):
    """``data.replay`` builds the earlier classes' readers and mixes ``fraction`` (default
    1 %, at least one item) of each into the new task's training set."""
    import unimmad.cli as cli
    monkeypatch.setattr(cli, "Trainer", _RecordingTrainer)
    argv = ["train", "--quiet", "--set", "preset=tiny", "data.train.0.name=mvtec3d",
            f"data.train.0.root={data['mvtec3d']}", "data.train.0.classes=[plate]",
            "data.replay.earlier.0.name=mvtec3d", f"data.replay.earlier.0.root={data['mvtec3d']}",
            "data.replay.earlier.0.classes=[tile]", f"train.out_dir={tmp_path / 'r'}"]
    if fraction is not None:
        argv.append(f"data.replay.fraction={fraction}")
    assert main(argv) == 0
    ts = _RecordingTrainer.seen["train_set"]
    new = len(ts.new_task)
    earlier_items = len(ts) - new
    # 2 tile training items: 1 % → 1 (at least one), 100 % → 2
    assert ts.replayed == earlier_items == replayed and new == 2
    assert sorted(set(ts.class_names)) == ["plate_mvtec3d", "tile_mvtec3d"]
    saved = json.load(open(tmp_path / "r" / "run_config.json"))
    assert saved["data"]["replay"]["earlier"][0]["classes"] == ["tile"]


@pytest.mark.parametrize("quiet", [True, False])
def test_each_command_asks_for_progress_unless_quiet(data, trained, tmp_path, monkeypatch,
                                                     quiet):
    """``train`` (``train.progress`` kept unless ``--quiet``), ``eval`` and ``demo`` pass
    progress = not --quiet to the work they start (tqdm hides bars off a terminal)."""
    import unimmad.cli as cli
    q = ["--quiet"] if quiet else []
    monkeypatch.setattr(cli, "Trainer", _RecordingTrainer)
    argv = _train_args(data, str(tmp_path / "t"), "train.progress=true")
    assert main(argv[:1] + q + argv[1:]) == 0
    assert _RecordingTrainer.seen["config"].progress is (not quiet)

    seen = {}

    class Report:
        thresholds = {}

        def to_markdown(self):
            return "table"

    def fake_evaluate(*a, **kw):
        seen["eval"] = kw["progress"]
        return Report()

    def fake_demo(out, epochs, seed, progress):
        seen["demo"] = progress
        return Report()
    monkeypatch.setattr(cli, "evaluate", fake_evaluate)
    monkeypatch.setattr(cli, "run_demo", fake_demo)
    assert main(["eval", "--checkpoint", os.path.join(trained, "weights"), "--device", "cpu",
                 "--set", f"eval.out_dir={tmp_path / 'e'}", "eval.store_thresholds=false"]
                + q) == 0
    assert main(["demo", "--out", str(tmp_path / "d")] + q) == 0
    assert seen == {"eval": not quiet, "demo": not quiet}
