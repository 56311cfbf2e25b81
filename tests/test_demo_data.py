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
