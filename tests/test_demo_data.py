"""The generated demo datasets have the documented geometry: defects are ellipses of the
stated radii, masks match the painted pixels, normal items carry no defect."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from unimmad.engine.demo import make_demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_data(str(tmp_path_factory.mktemp("demo")), size=64, train_per_class=2,
                          test_good=2, test_bad=6)


def _png(path):
    return np.asarray(Image.open(path), np.float64)


def test_scan_defects_are_ellipses_of_radii_8_to_15_percent(demo):
    lab = os.path.join(demo["scan"], "test", "Ungood", "label")
    img = os.path.join(demo["scan"], "test", "Ungood", "img")
    names = sorted(os.listdir(lab))
    assert len(names) == 6
    for n in names:
        mask = _png(os.path.join(lab, n)) > 127
        frac = mask.mean()
        # an ellipse of radii ry, rx in [0.08, 0.15] of the side covers π·ry·rx of it
        assert math.pi * 0.08 ** 2 * 0.8 <= frac <= math.pi * 0.15 ** 2 * 1.2, (n, frac)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert (rows[-1] - rows[0] + 1) <= 2 * 0.15 * 64 + 2 and (cols[-1] - cols[0] + 1) <= 2 * 0.15 * 64 + 2
        pic = _png(os.path.join(img, n))
        assert np.allclose(pic[mask], 0.95 * 255, atol=1.0)       # the defect is painted bright


def test_good_items_have_no_defect_label(demo):
    assert os.listdir(os.path.join(demo["scan"], "test")) and \
        not os.path.exists(os.path.join(demo["scan"], "test", "good", "label"))
    for split in ("train", "test"):
        good = os.path.join(demo["scan"], split, "good", "img")
        assert len(os.listdir(good)) == 2


def _xyz(demo, cls, split, kind, i=0):
    import tifffile
    return tifffile.imread(os.path.join(demo["mvtec3d"], cls, split, kind, "xyz",
                                        f"{i:03d}.tiff")).astype(np.float64)


def test_tile_is_a_slab_tilted_up_towards_x_and_y_and_dents_go_in_by_0_2(demo):
    """``tile``: the square |x − ½|, |y − ½| < 0.4 of the side, height 1 + 0.05·x + 0.03·y
    (x, y in units of the side, noise σ = 0.001); a dent lowers its mask by 0.2."""
    xyz = _xyz(demo, "tile", "train", "good")
    valid = np.any(xyz != 0, axis=-1)
    n = xyz.shape[0]
    c = (np.arange(n) + 0.0) / n
    square = (np.abs(c[:, None] - 0.5) < 0.4) & (np.abs(c[None, :] - 0.5) < 0.4)
    assert np.array_equal(valid, square)
    x, y, z = xyz[valid].T
    np.testing.assert_allclose(x, np.broadcast_to(c[None, :], (n, n))[valid], atol=1e-6)
    np.testing.assert_allclose(y, np.broadcast_to(c[:, None], (n, n))[valid], atol=1e-6)
    coef = np.linalg.lstsq(np.stack([np.ones_like(x), x, y], 1), z, rcond=None)[0]
    np.testing.assert_allclose(coef, [1.0, 0.05, 0.03], atol=2e-3)
    dent = _xyz(demo, "tile", "test", "dent")
    mask = _png(os.path.join(demo["mvtec3d"], "tile", "test", "dent", "gt", "000.png")) > 127
    assert mask.any() and not (mask & ~square).any()
    plane = 1.0 + 0.05 * dent[..., 0] + 0.03 * dent[..., 1]
    np.testing.assert_allclose((dent[..., 2] - plane)[mask], -0.2, atol=0.006)
    np.testing.assert_allclose((dent[..., 2] - plane)[square & ~mask], 0.0, atol=0.006)


def test_plate_is_a_disc_on_a_dome_of_height_0_15(demo):
    """``plate``: the disc r < 0.42 of the side, height 1 + 0.15·sqrt(1 − (r / 0.42)²)."""
    xyz = _xyz(demo, "plate", "train", "good")
    valid = np.any(xyz != 0, axis=-1)
    n = xyz.shape[0]
    c = np.arange(n) / n
    r = np.sqrt((c[:, None] - 0.5) ** 2 + (c[None, :] - 0.5) ** 2)
    assert np.array_equal(valid, r < 0.42)
    want = 1.0 + 0.15 * np.sqrt(np.clip(1 - (r / 0.42) ** 2, 0, None))
    np.testing.assert_allclose(xyz[..., 2][valid], want[valid], atol=0.006)


def _count(folder):
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


def test_file_counts_per_split_and_kind(demo):
    """2 training items per class; the test split: 2 good, then test_bad = 6 defects,
    ceil-half colour blobs and half dents for the 3-D classes, 6 lesions for the scan."""
    for cls in ("plate", "tile"):
        root = os.path.join(demo["mvtec3d"], cls)
        assert sorted(os.listdir(root)) == ["test", "train"]
        assert os.listdir(os.path.join(root, "train")) == ["good"]
        assert _count(os.path.join(root, "train", "good", "rgb")) == 2
        assert _count(os.path.join(root, "train", "good", "xyz")) == 2
        assert not os.path.exists(os.path.join(root, "train", "good", "gt"))
        assert sorted(os.listdir(os.path.join(root, "test"))) == ["color", "dent", "good"]
        for kind, n in (("good", 2), ("color", 3), ("dent", 3)):
            for sub in ("rgb", "xyz", "gt"):
                names = sorted(os.listdir(os.path.join(root, "test", kind, sub)))
                ext = ".tiff" if sub == "xyz" else ".png"
                assert names == [f"{i:03d}{ext}" for i in range(n)], (cls, kind, sub)
    assert _count(os.path.join(demo["scan"], "test", "good", "img")) == 2
    assert _count(os.path.join(demo["scan"], "test", "Ungood", "img")) == 6


def test_odd_defect_counts_give_the_extra_one_to_colour(tmp_path):
    paths = make_demo_data(str(tmp_path), size=32, train_per_class=1, test_good=1, test_bad=3)
    t = os.path.join(paths["mvtec3d"], "plate", "test")
    assert _count(os.path.join(t, "color", "rgb")) == 2 and _count(os.path.join(t, "dent", "rgb")) == 1
    assert _count(os.path.join(t, "good", "rgb")) == 1


def test_3d_defects_are_ellipses_of_radii_12_to_22_percent_at_most(demo):
    # the objects' defects: ellipses of radii ry, rx in [0.12, 0.22] of the side, cut to
    # the object's valid points (so only the upper bounds hold for every mask)
    for cls in ("plate", "tile"):
        for kind in ("color", "dent"):
            gt = os.path.join(demo["mvtec3d"], cls, "test", kind, "gt")
            for n in sorted(os.listdir(gt)):
                mask = _png(os.path.join(gt, n)) > 127
                assert 0 < mask.mean() <= math.pi * 0.22 ** 2 * 1.1, (cls, kind, n)
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                side = 2 * 0.22 * 64 + 1
                assert rows[-1] - rows[0] + 1 <= side and cols[-1] - cols[0] + 1 <= side


def test_3d_defects_paint_what_their_masks_say(demo):
    """Colour blobs: inside the mask the colour is u·(1, 0.2, 0.2) + (0, 0.6, 0) for one
    random u ∈ [0, 1]³ (greenish, one colour per blob); outside, the normal object.  Dents
    darken the photo by 0.7 inside the mask.  Good items' masks are empty; every mask lies
    on the object (inside its valid points)."""
    for cls in ("plate", "tile"):
        t = os.path.join(demo["mvtec3d"], cls, "test")
        for i in range(3):
            rgb = _png(os.path.join(t, "color", "rgb", f"{i:03d}.png")) / 255
            mask = _png(os.path.join(t, "color", "gt", f"{i:03d}.png")) > 127
            assert mask.sum() > 20
            blob = rgb[mask]
            assert np.ptp(blob, axis=0).max() <= 0.05                     # one colour + noise
            c = blob.mean(0)
            assert 0.6 - 0.04 <= c[1] <= 0.8 + 0.04 and c[2] <= 0.2 + 0.04 and c[0] <= 1.0
            valid = np.any(_xyz(demo, cls, "test", "color", i) != 0, axis=-1)
            assert not (mask & ~valid).any()
            out = rgb[valid & ~mask]
            assert out[:, 2].min() >= 0.25           # the object's shading (blobs have B <= 0.24)
        for i in range(3):
            mask = _png(os.path.join(t, "dent", "gt", f"{i:03d}.png")) > 127
            rgb = _png(os.path.join(t, "dent", "rgb", f"{i:03d}.png")) / 255
            valid = np.any(_xyz(demo, cls, "test", "dent", i) != 0, axis=-1)
            assert mask.any() and not (mask & ~valid).any()
            ratio = rgb[mask].mean() / rgb[valid & ~mask].mean()
            assert 0.6 < ratio < 0.8, ratio
        for i in range(2):
            assert not (_png(os.path.join(t, "good", "gt", f"{i:03d}.png")) > 0).any()


def test_scan_is_rings_inside_r_045_and_flat_outside(demo):
    """The scan: 0.4 + 0.25·cos(2π·5·r + φ) inside r < 0.45 of the side, 0.4 outside
    (noise σ = 0.01)."""
    img = _png(os.path.join(demo["scan"], "train", "good", "img", "000.png")) / 255
    n = img.shape[0]
    c = np.arange(n) / n
    r = np.sqrt((c[:, None] - 0.5) ** 2 + (c[None, :] - 0.5) ** 2)
    outside = r >= 0.45
    assert abs(img[outside].mean() - 0.4) < 0.01 and img[outside].std() < 0.02
    inside = img[r < 0.45]
    assert inside.min() < 0.2 and inside.max() > 0.6                  # ring amplitude 0.25
    phases = np.linspace(0, 0.5, 51)
    err = [np.abs(img[~outside] - (0.4 + 0.25 * np.cos(2 * np.pi * 5 * r[~outside] + ph))).mean()
           for ph in phases]
    assert min(err) < 0.012                                            # noise and rounding
