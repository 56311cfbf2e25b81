"""What an overlay picture holds (``unimmad.engine.visualize.save_overlay``), read from the
matplotlib figure as it is saved: one panel per modality, the map, the ground-truth panel
only where the truth is known, the texts and colours the module docstring promises, the
colour bar of the class scale, and the predicted-mask contours."""
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from unimmad.engine.visualize import CMAP, save_overlay  # noqa: E402

REC = {"threshold": 0.3, "low": 0.1, "high": 0.9}


@pytest.fixture
def saved(monkeypatch):
    """The figures save_overlay writes, kept for inspection."""
    figs = []
    real = Figure.savefig

    def keep(self, *a, **k):
        figs.append(self)
        return real(self, *a, **k)
    monkeypatch.setattr(Figure, "savefig", keep)
    return figs


def _mods(n=2, size=8):
    rng = np.random.default_rng(0)
    return [(f"m{i}", rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for i in range(n)]


def _panels(fig):
    """The image panels (colour bar axes left out), left to right."""
    return [ax for ax in fig.axes if ax.get_images()]


def _lines(fig):
    """The figure texts below the title (matplotlib lists the title among them)."""
    return [t for t in fig.texts if t is not fig._suptitle]


def _amap(size=8):
    a = np.full((size, size), 0.2)
    a[2:5, 3:6] = 0.7
    return a


def test_panels_titles_and_the_class_colour_bar(tmp_path, saved):
    pred = _amap() > 0.3
    gt = np.zeros((8, 8), bool)
    gt[2:6, 3:6] = True
    path = save_overlay(str(tmp_path / "a" / "x.png"), _mods(2), _amap(), pixel_record=REC,
                        pred_mask=pred, gt_mask=gt, gt_label=1, title="cls · file",
                        prediction="predicted ANOMALOUS · score 0.83")
    assert path == str(tmp_path / "a" / "x.png") and (tmp_path / "a" / "x.png").stat().st_size > 0
    (fig,) = saved
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == [
        "m0 · predicted defect pixels outlined", "m1 · predicted defect pixels outlined",
        "anomaly map", "ground truth: defect (outlined)"]
    # modality panels show the images; the map panel shows the normalised map in CMAP on
    # [0, 1] over the gray first modality
    for ax, (_, img) in zip(panels, _mods(2)):
        assert np.array_equal(ax.get_images()[0].get_array(), img)
    gray, heat = panels[2].get_images()
    np.testing.assert_allclose(gray.get_array(), _mods(2)[0][1].mean(axis=2))
    assert gray.get_cmap().name == "gray" and heat.get_cmap().name == CMAP
    assert heat.get_clim() == (0.0, 1.0) and heat.get_alpha() == pytest.approx(0.55)
    np.testing.assert_allclose(heat.get_array(), np.where(_amap() > 0.3, 0.5 + 0.5 * (0.4 / 0.6),
                                                          0.5 * (0.1 / 0.2)))
    # predicted contours on every modality and the map; the truth outlined in its panel
    for ax in panels[:3]:
        assert len(ax.collections) == 1
    assert len(panels[3].collections) == 1 and len(panels[3].get_images()) == 2
    bar = [ax for ax in fig.axes if ax not in panels]
    assert len(bar) == 1
    labels = [t.get_text() for t in bar[0].get_yticklabels()]
    assert labels == ["0\n(raw 0.1)", "0.5 threshold\n(raw 0.3)", "1\n(raw 0.9)"]
    assert bar[0].get_ylabel() == "normalised map (class scale)"
    # title first line, prediction in red underneath
    assert fig._suptitle.get_text() == "cls · file"
    (pred_text,) = _lines(fig)
    assert pred_text.get_text() == "predicted ANOMALOUS · score 0.83"
    assert matplotlib.colors.to_hex(pred_text.get_color()) == matplotlib.colors.to_hex("firebrick")
    for ax in fig.axes[:0] + panels:
        assert not ax.axison


@pytest.mark.parametrize("gt_mask, gt_label, title", [
    (None, 1, "ground truth: defect (no mask)"),
    (None, 0, "ground truth: good (no defect)"),
    (np.zeros((8, 8), bool), 0, "ground truth: good (no defect)"),
])
def test_ground_truth_panel_says_what_is_known(tmp_path, saved, gt_mask, gt_label, title):
    save_overlay(str(tmp_path / "x.png"), _mods(1), _amap(), scale=(0.0, 1.0),
                 gt_mask=gt_mask, gt_label=gt_label, title="t")
    (fig,) = saved
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["m0", "anomaly map", title]
    assert len(panels[2].get_images()) == 1 and not panels[2].collections
    assert fig._suptitle.get_text() == "t" and not _lines(fig)
    heat = panels[1].get_images()[1]
    assert heat.get_clim() == (0.0, 1.0)
    np.testing.assert_allclose(heat.get_array(), _amap())          # raw map on the raw scale
    bar = [ax for ax in fig.axes if ax not in panels][0]
    assert bar.get_ylabel() == "raw map (1 − cosine), no stored scale"


def test_no_truth_no_panel_and_prediction_colours(tmp_path, saved):
    save_overlay(str(tmp_path / "x.png"), _mods(3), _amap(), scale=(0.1, 0.8),
                 title="t", prediction="predicted NORMAL · score 0.1",
                 pred_mask=np.zeros((8, 8), bool))
    save_overlay(str(tmp_path / "y.png"), _mods(1), _amap(), scale=(0.1, 0.8),
                 title="t", prediction="score 0.5")
    save_overlay(str(tmp_path / "z.png"), _mods(1), _amap(), scale=(0.1, 0.8))
    first, second, third = saved
    panels = _panels(first)
    assert [ax.get_title() for ax in panels] == ["m0", "m1", "m2", "anomaly map"]
    assert all(not ax.collections for ax in panels)          # an empty mask draws no contour
    assert panels[3].get_images()[1].get_clim() == (0.1, 0.8)
    assert matplotlib.colors.to_hex(_lines(first)[0].get_color()) == \
        matplotlib.colors.to_hex("darkgreen")
    assert matplotlib.colors.to_hex(_lines(second)[0].get_color()) == matplotlib.colors.to_hex("black")
    assert third._suptitle is None and not _lines(third)
    assert len(_panels(third)) == 2


def test_full_mask_draws_no_contour_and_bad_calls_are_refused(tmp_path, saved):
    save_overlay(str(tmp_path / "x.png"), _mods(1), _amap(), scale=(0.0, 1.0),
                 pred_mask=np.ones((8, 8), bool))
    (fig,) = saved
    assert all(not ax.collections for ax in _panels(fig))
    assert _panels(fig)[0].get_title() == "m0 · predicted defect pixels outlined"
    with pytest.raises(ValueError, match="at least one modality"):
        save_overlay(str(tmp_path / "y.png"), [], _amap(), scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="low < high"):
        save_overlay(str(tmp_path / "y.png"), _mods(1), _amap(), scale=(1.0, 1.0))


@pytest.mark.parametrize("prediction, colour", [
    ("predicted ANOMALOUS · score 0.9", "firebrick"), ("predicted NORMAL · score 0.1", "darkgreen"),
    ("score 0.5", "black")])
def test_a_prediction_without_title_is_the_title_in_its_colour(tmp_path, saved, prediction,
                                                               colour):
    save_overlay(str(tmp_path / "x.png"), _mods(1), _amap(), scale=(0.0, 1.0),
                 prediction=prediction)
    (fig,) = saved
    assert fig._suptitle.get_text() == prediction and not _lines(fig)
    assert matplotlib.colors.to_hex(fig._suptitle.get_color()) == matplotlib.colors.to_hex(colour)


@pytest.mark.parametrize("lo, hi, stretched", [(-0.04, 0.9, False), (-0.06, 0.9, True),
                                               (0.1, 1.04, False), (0.1, 1.06, True)])
def test_display_keeps_photos_and_stretches_what_leaves_the_photo_range(lo, hi, stretched):
    """A slot is shown as a photo (un-normalised, clamped to [0, 1]) unless its
    un-normalised values leave [−0.05, 1.05]; then its own range is stretched to [0, 255]."""
    import torch

    from unimmad.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
    from unimmad.engine.visualize import display_image
    photo = torch.linspace(lo, hi, 3 * 4 * 5).reshape(3, 4, 5)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    slot = (photo - mean) / std
    out = display_image(slot)
    if stretched:
        assert out.min() == 0 and out.max() == 255
    else:
        want = (photo.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        assert np.abs(out.astype(int) - want.astype(int)).max() <= 1

