"""Checkpoints hold no code and are verified: the weights-only and training-state folders,
SHA-256 and shape checks, pickled payloads refused by every load path (eval, predict,
train --init, train --resume, backbone weights), atomic folder commits and their clean-up,
the user's umask, and old single-file ``.pt`` checkpoints read weights-only."""
import json
import os
import random
import stat
import warnings

import numpy as np
import pytest
import torch

from unimmad import UniMMAD, UniMMADConfig
from unimmad.cli import main
from unimmad.engine import TrainConfig, Trainer, checkpoint as C
from unimmad.engine.checkpoint import (CheckpointError, apply_model_state, clean_stale,
                                       export_weights, load_checkpoint, load_weights,
                                       save_checkpoint, save_weights)
from unimmad.engine.demo import make_demo_data
from unimmad.models.backbone import load_backbone_weights, wide_resnet50_2

from engine_cases import SyntheticSet


class _Payload:
    """Pickles as a call that creates ``marker`` — code that must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _tiny(seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UniMMAD(UniMMADConfig.tiny())


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny()


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """Generated data, a run config (tiny preset, 1 epoch) and a trained run's folders."""
    root = tmp_path_factory.mktemp("ckpt_run")
    data = make_demo_data(str(root / "data"), size=64, train_per_class=2, test_good=1,
                          test_bad=1)
    run = {"preset": "tiny",
           "train": {"epochs": 1, "batch_size": 4, "out_dir": str(root / "run"),
                     "progress": False, "device": "cpu", "accelerate": False},
           "data": {"train": [{"name": "mvtec3d", "root": data["mvtec3d"]}],
                    "test": [{"name": "mvtec3d", "root": data["mvtec3d"]}]},
           "eval": {"overlays": 0, "out_dir": str(root / "eval"), "accelerate": False}}
    cfg = root / "run.json"
    cfg.write_text(json.dumps(run))
    assert main(["train", "--config", str(cfg)]) == 0
    item = os.path.join(data["mvtec3d"], "plate", "test", "good", "rgb", "000.png")
    return {"root": root, "config": str(cfg), "item": item, "run": root / "run"}


# ----------------------------------------------------------------------------- formats
def test_weights_round_trip_and_config_json(tiny_model, tmp_path):
    d = save_weights(tiny_model, tmp_path / "w", extra={"thresholds": {"bagel": 0.25}})
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["format"] == "unimmad-weights" and cfg["format_version"] == 1
    assert cfg["thresholds"] == {"bagel": 0.25}
    assert cfg["files"]["model.safetensors"]["bytes"] == os.path.getsize(tmp_path / "w" / "model.safetensors")
    assert cfg["model_config"]["embed_dim"] == tiny_model.config.embed_dim
    for path in (tmp_path / "w", tmp_path / "w" / "config.json"):
        loaded = load_weights(path)
        assert not loaded.training and _same_weights(loaded, tiny_model)
    with pytest.raises(ValueError, match="overwrite"):
        save_weights(tiny_model, tmp_path / "w2", extra={"files": {}})


def test_training_state_round_trip_restores_optimizer_schedule_and_rngs(tmp_path):
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sched.step()
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    save_checkpoint(tmp_path / "last", model, opt, sched, epoch=3, step=41,
                    train_config={"betas": (0.8, 0.99), "grad_clip": None, "lr": float("inf")},
                    classes=["a_x", "b_y"])
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    ck = load_checkpoint(tmp_path / "last", training=True)
    assert (ck["epoch"], ck["step"], ck["classes"]) == (3, 41, ["a_x", "b_y"])
    assert ck["train_config"] == {"betas": (0.8, 0.99), "grad_clip": None, "lr": float("inf")}
    C.set_rng_state(ck["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want
    ref = opt.state_dict()
    opt2 = torch.optim.Adam(_tiny(1).parameters(), lr=1.0)
    opt2.load_state_dict(ck["optimizer"])
    got = opt2.state_dict()
    assert got["param_groups"] == ref["param_groups"]
    assert all(torch.equal(got["state"][i][k], ref["state"][i][k])
               for i in ref["state"] for k in ref["state"][i])
    assert ck["scheduler"] == sched.state_dict()
    # a training-state folder is also a weights checkpoint (eval / predict / --init)
    assert _same_weights(load_weights(tmp_path / "last"), model)
    # and a weights-only one cannot be resumed
    save_weights(model, tmp_path / "w")
    with pytest.raises(CheckpointError, match="weights only"):
        load_checkpoint(tmp_path / "w", training=True)


def test_files_get_the_users_umask(tiny_model, tmp_path):
    old = os.umask(0o027)
    try:
        d = save_weights(tiny_model, tmp_path / "w")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o750
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o640


# ----------------------------------------------------------------------------- corruption
@pytest.mark.parametrize("name", ["model.safetensors", "training.safetensors"])
def test_a_flipped_byte_inside_a_tensor_is_refused_naming_the_file(tmp_path, name):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    d = save_checkpoint(tmp_path / "last", model, opt, None, epoch=1, step=1)
    path = os.path.join(d, name)
    data = bytearray(open(path, "rb").read())
    header = 8 + int.from_bytes(data[:8], "little")
    pos = header + (len(data) - header) // 2            # inside the tensor bytes
    data[pos] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{name}: SHA-256 .* differs"):
        load_checkpoint(d, training=True)
    if name == "model.safetensors":
        with pytest.raises(CheckpointError, match="model.safetensors: SHA-256"):
            load_weights(d)
        assert main(["predict", "--checkpoint", d, "--out", str(tmp_path / "p"), "x.png"]) == 2
    open(path, "ab").write(b"\0")
    with pytest.raises(CheckpointError, match=rf"{name}: .* bytes, but"):
        load_checkpoint(d, training=True)


def test_bad_config_json_is_refused_clearly(tiny_model, tmp_path):
    d = save_weights(tiny_model, tmp_path / "w")
    cfg_path = os.path.join(d, "config.json")
    good = json.loads(open(cfg_path).read())

    def write(**change):
        json.dump({**good, **change}, open(cfg_path, "w"))

    for change, message in [({"format": "something"}, "format is 'something'"),
                            ({"format_version": 2}, "newer unimmad"),
                            ({"format_version": True}, "positive int"),
                            ({"files": {}}, "must record 'model.safetensors'"),
                            ({"model_config": [1]}, "model_config"),
                            ({"model_config": {**good["model_config"], "nope": 1}}, "nope")]:
        write(**change)
        with pytest.raises(CheckpointError, match=message) as e:
            load_weights(d)
        assert "config.json" in str(e.value) or d in str(e.value)
    open(cfg_path, "w").write("{oops")
    with pytest.raises(CheckpointError, match="config.json: cannot read JSON"):
        load_weights(d)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_weights(tmp_path / "missing")


def test_a_checkpoint_of_the_pre_release_fcm_and_stem_is_refused_saying_why(tiny_model, tmp_path):
    # the earlier structure: BN'd shortcuts in the FCM's alignment blocks, bias-free stem convs
    sd = dict(tiny_model.state_dict())
    w = sd.pop("fcm.align.0.shortcut.weight")
    sd["fcm.align.0.shortcut.0.weight"] = w
    sd["fcm.align.0.shortcut.1.weight"] = torch.ones(w.shape[0])
    sd.pop("embedding.stem.0.bias")
    with pytest.raises(CheckpointError, match="written before the model took the authors' release "
                                              "structure") as e:
        apply_model_state(_tiny(), sd, "old.pt")
    assert "fcm.align.0.shortcut.weight" in str(e.value) and "convert-release" in str(e.value)
    sd["decoder.other"] = torch.zeros(1)  # anything else: the generic hint
    with pytest.raises(CheckpointError, match="another model configuration"):
        apply_model_state(_tiny(), sd, "old.pt")


def test_missing_unexpected_and_misshaped_keys_are_listed_with_the_file(tiny_model, tmp_path):
    other = UniMMADConfig.tiny().replace(embed_dim=UniMMADConfig.tiny().embed_dim * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wide = UniMMAD(other)
    d = save_weights(wide, tmp_path / "wide")
    ck = load_checkpoint(d)
    with pytest.raises(CheckpointError, match=r"wide: does not fit the model \(mis-shaped \(\d+\): "
                                              r"[^;]*file \(") as e:
        apply_model_state(_tiny(), ck["model"], ck["source"])
    assert "another model configuration" in str(e.value)
    sd = dict(tiny_model.state_dict())
    key = next(k for k in sd if k.endswith(".weight"))
    sd.pop(key)
    sd["extra.thing"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=rf"src: does not fit .*missing \(1\): {key}.*"
                                              r"unexpected \(1\): extra.thing"):
        apply_model_state(_tiny(), sd, "src")


@pytest.mark.parametrize("n, shown", [(5, 5), (6, 5)])
def test_a_long_key_list_shows_five_and_says_there_are_more(tiny_model, n, shown):
    sd = dict(tiny_model.state_dict())
    gone = sorted(k for k in sd if k.endswith(".weight"))[:n]
    for k in gone:
        sd.pop(k)
    with pytest.raises(CheckpointError) as e:
        apply_model_state(_tiny(), sd, "src")
    own = list(tiny_model.state_dict())
    listed = ", ".join(sorted(gone, key=own.index)[:shown])      # in the model's order
    tail = ", ..." if n > 5 else ""
    assert f"missing ({n}): {listed}{tail});" in str(e.value)


# ----------------------------------------------------------------------------- no code runs
def _evil_pt(path, marker, model):
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(),
                "epoch": 1, "step": 1, "payload": _Payload(marker)}, path)
    return str(path)


def _evil_folder(path, marker, model, which="model.safetensors"):
    """A valid checkpoint folder whose ``which`` file is a torch pickle carrying the
    payload, with its (correct) SHA-256 recorded — a checksum is no licence to unpickle."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    d = save_checkpoint(path, model, opt, None, epoch=1, step=1)
    target = os.path.join(d, which)
    torch.save({"w": torch.ones(2), "payload": _Payload(marker)}, target)
    def entry(p):
        return {"sha256": C.sha256_file(p), "bytes": os.path.getsize(p)}

    cfg_path, train_path = os.path.join(d, "config.json"), os.path.join(d, "training.json")
    if which == "model.safetensors":
        cfg = json.load(open(cfg_path))
        cfg["files"][which] = entry(target)
        json.dump(cfg, open(cfg_path, "w"))
    train = json.load(open(train_path))
    train["files"].update({which: entry(target), "config.json": entry(cfg_path)})
    json.dump(train, open(train_path, "w"))
    return d


def test_pickled_payloads_never_run_through_any_command(run_files, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    model = load_weights(run_files["run"] / "weights")
    cfg, item = run_files["config"], run_files["item"]
    evil = {"old .pt": _evil_pt(tmp_path / "evil.pt", marker, model),
            "folder": _evil_folder(tmp_path / "evil_model", marker, model),
            "folder (training tensors)": _evil_folder(tmp_path / "evil_train", marker, model,
                                                      "training.safetensors")}
    commands = {
        "eval": lambda p: ["eval", "--checkpoint", p, "--config", cfg],
        "predict": lambda p: ["predict", "--checkpoint", p, "--out", str(tmp_path / "pred"), item],
        "init": lambda p: ["train", "--config", cfg, "--init", p,
                           "--set", f"train.out_dir={tmp_path / 'init_run'}"],
        "resume": lambda p: ["train", "--config", cfg, "--resume", p,
                             "--set", f"train.out_dir={tmp_path / 'resume_run'}"],
    }
    for kind, path in evil.items():
        for name, argv in commands.items():
            if kind == "folder (training tensors)" and name != "resume":
                continue  # eval/predict/init never read the training tensors
            capsys.readouterr()
            assert main(argv(path)) == 2, (kind, name)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and os.path.basename(path) in err, (kind, name, err)
            assert ("refused" in err or "not a readable .safetensors" in err), err
            assert not marker.exists(), f"{name} ran the payload of {kind}"
    assert not (tmp_path / "init_run" / "last").exists()


def test_backbone_pth_with_a_payload_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    net = wide_resnet50_2()
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": net.conv1.weight.detach()},
                "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"evil.pth: refused.*exec"):
        load_backbone_weights(net, path)
    assert not marker.exists()


def test_old_single_file_checkpoints_are_read_weights_only(tmp_path):
    """The earlier format (one torch.save pickle): model, config, optimizer, scheduler and
    a numpy RNG state load with weights_only=True, with a warning (no checksum)."""
    model = _tiny()
    trainer = Trainer(model, SyntheticSet(n=4), TrainConfig(epochs=2, batch_size=2,
                      out_dir=str(tmp_path / "run"), progress=False, device="cpu",
                      accelerate=False))
    trainer.fit(stop_after_epochs=1)
    old = {"model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
           "scheduler": trainer.scheduler.state_dict(), "epoch": trainer.epoch,
           "step": trainer.step, "rng": C.rng_state(), "model_config": model.config.to_dict()}
    torch.save(old, tmp_path / "last.pt")
    with pytest.warns(UserWarning, match="no checksum"):
        loaded = load_weights(tmp_path / "last.pt")
    assert _same_weights(loaded, model)
    other = Trainer(_tiny(3), SyntheticSet(n=4), TrainConfig(epochs=2, batch_size=2,
                    out_dir=str(tmp_path / "run2"), progress=False, device="cpu",
                    accelerate=False))
    with pytest.warns(UserWarning, match="no checksum"):
        other.resume(str(tmp_path / "last.pt"))
    assert (other.epoch, other.step) == (trainer.epoch, trainer.step)
    assert _same_weights(other.model, model)
    with pytest.warns(UserWarning):
        d = export_weights(tmp_path / "last.pt", tmp_path / "converted")
    assert _same_weights(load_weights(d), model)


def test_resume_refuses_a_state_of_other_train_settings(tmp_path, monkeypatch):
    def trainer(out, **kw):
        return Trainer(_tiny(), SyntheticSet(n=4), TrainConfig(
            epochs=2, batch_size=2, out_dir=str(tmp_path / out), progress=False, device="cpu",
            accelerate=False, **kw))

    first = trainer("a", optimizer="sgd")
    first.fit(stop_after_epochs=1)
    with pytest.raises(CheckpointError, match=r"last: was trained with train.optimizer='sgd', "
                                              r"this run has 'adam'"):
        trainer("b").resume(first.checkpoint_path)
    with pytest.raises(CheckpointError, match=r"train.continual=False, this run has True"):
        trainer("c", optimizer="sgd", continual=True).resume(first.checkpoint_path)
    # a state without the settings (an old file): the optimizer's own check, naming the file
    state = load_checkpoint(first.checkpoint_path, training=True)
    state["train_config"] = {}
    state["optimizer"]["param_groups"][0]["params"] = [0]
    import unimmad.engine.trainer as T
    monkeypatch.setattr(T, "load_checkpoint", lambda *a, **k: state)
    with pytest.raises(CheckpointError, match=r"last: the optimizer state does not fit"):
        trainer("d", optimizer="sgd").resume(first.checkpoint_path)


# ----------------------------------------------------------------------------- atomic folders
def test_an_interruption_between_the_commit_renames_keeps_the_previous_folder(tiny_model, tmp_path,
                                                                            monkeypatch):
    d = save_weights(tiny_model, tmp_path / "w", extra={"n": 1})
    real = os.rename
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted between the renames")
        return real(src, dst)

    monkeypatch.setattr(C.os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_weights(tiny_model, tmp_path / "w", extra={"n": 2})
    monkeypatch.undo()
    assert ".w.old-" in calls[0][1] and ".w.tmp-" in calls[1][0]
    assert os.listdir(tmp_path) == ["w"] and load_checkpoint(d)["config"]["n"] == 1
    # a SIGKILL there runs no handler: the next start (clean_stale) renames it back
    os.rename(d, tmp_path / ".w.old-0123abcd")
    (tmp_path / ".w.tmp-4567cdef").mkdir()
    with pytest.raises(FileNotFoundError, match=r"interrupted save left .*\.w\.old-0123abcd"):
        load_weights(d)
    assert len(clean_stale(str(tmp_path))) == 2 and os.listdir(tmp_path) == ["w"]
    assert load_checkpoint(d)["config"]["n"] == 1


def test_a_stale_folder_that_cannot_be_removed_does_not_stop_the_cleanup(tmp_path, monkeypatch):
    # clean-up of what interrupted saves left is best effort: a part that refuses deletion
    # (permissions, a file held open elsewhere) neither raises nor stops the other entries
    stuck = tmp_path / ".w.tmp-0123abcd"
    (stuck / "sub").mkdir(parents=True)
    (stuck / "sub" / "stuck.bin").write_bytes(b"x")
    (stuck / "free.bin").write_bytes(b"x")
    (tmp_path / ".v.tmp-4567cdef").write_bytes(b"x")
    real = os.unlink

    def unlink(path, *a, **k):
        if os.fspath(path).endswith("stuck.bin"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "unlink", unlink)
    done = clean_stale(str(tmp_path))
    assert sorted(os.path.basename(p) for p in done) == [".v.tmp-4567cdef", ".w.tmp-0123abcd"]
    assert not (tmp_path / ".v.tmp-4567cdef").exists()
    assert (stuck / "sub" / "stuck.bin").exists() and not (stuck / "free.bin").exists()


def test_stale_temporaries_are_removed_by_the_next_save_and_at_trainer_start(tiny_model, tmp_path,
                                                                             monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.tmp-0123abcd").mkdir()
    (out / ".last.tmp-0123abcd" / "model.safetensors").write_bytes(b"partial")
    (out / ".log.jsonl.tmp-89abcdef").write_text("{}")
    (out / "last.pt.k3j_x9a2.tmp").write_bytes(b"old format debris")
    (out / "keep.txt").write_text("mine")
    Trainer(_tiny(), SyntheticSet(n=4), TrainConfig(epochs=1, batch_size=2, out_dir=str(out),
            progress=False, device="cpu", accelerate=False))
    assert os.listdir(out) == ["keep.txt"]

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-save")
    real = C.write_safetensors
    monkeypatch.setattr(C, "write_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        save_weights(tiny_model, out / "w")
    monkeypatch.setattr(C, "write_safetensors", real)
    assert sorted(os.listdir(out)) == ["keep.txt"]                    # cleaned on the way out
    (out / ".w.tmp-00000000").mkdir()                                 # as a SIGKILL leaves it
    save_weights(tiny_model, out / "w")
    assert sorted(os.listdir(out)) == ["keep.txt", "w"]


def test_a_foreign_folder_is_never_replaced(tiny_model, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a unimmad checkpoint; refusing"):
        save_weights(tiny_model, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"


def test_update_config_adds_keys_and_refuses_what_json_cannot_hold(tmp_path):
    import json as _json
    import math as _math
    import warnings as _warnings
    from unimmad import UniMMAD, UniMMADConfig
    from unimmad.engine.checkpoint import save_weights, update_config
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        folder = save_weights(UniMMAD(UniMMADConfig.tiny()), str(tmp_path / "w"))
    update_config(folder, {"thresholds": {"image": 0.5}})
    cfg = _json.load(open(tmp_path / "w" / "config.json"))
    assert cfg["thresholds"] == {"image": 0.5}
    before = open(tmp_path / "w" / "config.json").read()
    for bad in ({"thresholds": {"image": _math.nan}}, {"x": _math.inf}, {"x": object()}):
        with pytest.raises((ValueError, TypeError)):
            update_config(folder, bad)
        assert open(tmp_path / "w" / "config.json").read() == before      # untouched
