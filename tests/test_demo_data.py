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
