"""Every progress bar of the library: what it counts, whether it is drawn (``progress``
switches: ``True`` draws, ``False`` hides, ``None`` leaves it to tqdm, i.e. only on a
terminal) and, for the bars of loops that repeat (epochs, timed calls, evaluation
batches, dataset scans), that they are cleared when done instead of piling up in a log.

tqdm is replaced by a recorder, so the tests see the arguments each bar was opened with.
"""
import sys
import types

import numpy as np
import pytest
import torch
import tqdm
import tqdm.auto

from engine_cases import SyntheticSet


class _Bar:
    """Stands in for ``tqdm.tqdm``: records its arguments, iterates what it wraps."""
    opened = []

    def __init__(self, iterable=None, **kw):
        self.iterable = iterable
        self.kw = kw
        _Bar.opened.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):        # update, close, set_postfix, write, ...
        return lambda *a, **k: None


@pytest.fixture
def bars(monkeypatch):
    import unimmad.bench.sections as sections
    import unimmad.bench.timing as timing
    import unimmad.data.base as base
    import unimmad.metrics.accumulator as accumulator
    import unimmad.metrics.report as report
    _Bar.opened = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)          # imported inside the functions
    monkeypatch.setattr(tqdm, "tqdm", _Bar)
    for mod in (sections, timing, base, accumulator, report):
        monkeypatch.setattr(mod, "tqdm", _Bar)
    return _Bar.opened


def _one(bars, desc):
    found = [b for b in bars if b.kw.get("desc") == desc]
    assert len(found) == 1, [b.kw.get("desc") for b in bars]
    return found[0].kw


@pytest.mark.parametrize("show", [True, False])
def test_timed_calls_bar(bars, show):
    from unimmad.bench.timing import time_calls
    times, out = time_calls(lambda: 7, torch.device("cpu"), 2, 3, "lbl", show)
    assert len(times) == 3 and out == 7
    kw = _one(bars, "lbl")
    assert (kw["total"], kw["disable"], kw["leave"], kw["file"]) == (5, not show, False,
                                                                     sys.stderr)


def test_interleaved_run_of_no_jobs_is_refused(bars):
    # (the rounds bar itself: tests/test_cli.py's interleaved run)
    from unimmad.bench.sections import run_interleaved
    with pytest.raises(ValueError, match="run_interleaved: no jobs"):
        run_interleaved("train", [], warmup=2, iters=3)


@pytest.mark.parametrize("progress, disable", [(None, None), (True, False), (False, True)])
def test_dataset_scan_bar(bars, progress, disable):
    from unimmad.data.base import AnomalyDataset
    items = list(AnomalyDataset._bar(types.SimpleNamespace(progress=progress), [1, 2], "scan",
                                     total=2))
    assert items == [1, 2]
    kw = _one(bars, "scan")
    assert (kw["total"], kw["disable"], kw["leave"]) == (2, disable, False)


@pytest.mark.parametrize("progress, disable", [(True, None), (False, True)])
def test_evaluation_batches_bar(bars, progress, disable):
    from unimmad import UniMMAD, UniMMADConfig
    from unimmad.engine.evaluate import predict_batches
    cfg = UniMMADConfig.tiny()
    torch.manual_seed(0)
    got = list(predict_batches(UniMMAD(cfg), SyntheticSet(n=3, size=cfg.image_size),
                               batch_size=2, progress=progress))
    assert [b["images"].shape[0] for b, _, _ in got] == [2, 1]
    kw = _one(bars, "evaluate")
    assert (kw["unit"], kw["disable"], kw["leave"], kw["file"]) == ("batch", disable, False,
                                                                    sys.stderr)


@pytest.mark.parametrize("progress", [True, False])
def test_training_epoch_bar(bars, progress, tmp_path):
    import warnings

    from unimmad import UniMMAD, UniMMADConfig
    from unimmad.engine import TrainConfig, Trainer
    cfg = UniMMADConfig.tiny()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(UniMMAD(cfg), SyntheticSet(n=2, size=cfg.image_size),
                          TrainConfig(epochs=1, batch_size=2, out_dir=str(tmp_path),
                                      progress=progress, device="cpu", accelerate=False))
        trainer.fit()
    kw = _one(bars, "epoch 1/1")
    assert (kw["disable"], kw["leave"], kw["file"]) == (not progress, False, sys.stderr)


@pytest.mark.parametrize("progress, disable", [(None, None), (True, False), (False, True)])
def test_metric_bars(bars, progress, disable):
    from unimmad.metrics import compute
    from unimmad.metrics.report import Evaluator
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8))
    masks = np.zeros((3, 8, 8), bool)
    masks[2, 2:4, 2:4] = True
    compute([0.1, 0.2, 0.9], [0, 0, 1], maps, masks, progress=progress)
    kw = _one(bars, "pixel metrics")
    assert (kw["total"], kw["unit"], kw["disable"]) == (3, "img", disable)
    ev = Evaluator(pixel_bins=None)
    ev.update([0.1, 0.2, 0.9], [0, 0, 1], ["a_x", "a_x", "a_x"])
    ev.compute(progress=progress)
    kw = _one(bars, "metrics")
    assert (kw["unit"], kw["disable"]) == ("class", disable)


@pytest.mark.parametrize("progress, disable", [(True, None), (False, True)])
def test_prediction_items_bar(bars, progress, disable, tmp_path):
    from PIL import Image

    from unimmad import UniMMAD, UniMMADConfig
    from unimmad.engine.predict import predict_files
    cfg = UniMMADConfig.tiny()
    torch.manual_seed(0)
    img = tmp_path / "a.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(img)
    with pytest.warns(UserWarning, match="no thresholds stored"):   # an untrained model
        rows = predict_files(UniMMAD(cfg), [[str(img)], [str(img)]], str(tmp_path / "out"),
                             progress=progress, overlays=False)
    assert len(rows) == 2
    kw = _one(bars, "predict")
    assert (kw["total"], kw["unit"], kw["disable"], kw["file"]) == (2, "item", disable,
                                                                    sys.stderr)

