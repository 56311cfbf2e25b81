"""What the readers return for each stored pixel format, against values written by hand:
8-bit RGB / gray / palette / alpha, 16-bit PNG, 32-bit integer and float TIFF, masks with
colour or alpha channels, raw depth with channels, NIfTI volumes with trailing axes."""
import numpy as np
import pytest
from PIL import Image

from unimmad.data import io


def _save(tmp_path, name, img):
    p = tmp_path / name
    img.save(p)
    return p


def test_8bit_rgb_and_gray_scale_by_255(tmp_path):
    rgb = np.array([[[0, 128, 255], [10, 20, 30]]], np.uint8)
    a = io.read_image(_save(tmp_path, "c.png", Image.fromarray(rgb)))
    assert a.dtype == np.float32 and a.shape == (1, 2, 3)
    np.testing.assert_allclose(a, rgb / 255.0, rtol=0, atol=1e-7)
    gray = np.array([[0, 51], [102, 255]], np.uint8)
    g = io.read_image(_save(tmp_path, "g.png", Image.fromarray(gray)))
    assert g.shape == (2, 2, 3)
    for c in range(3):                                   # gray replicated to 3 channels
        np.testing.assert_allclose(g[..., c], gray / 255.0, atol=1e-7)


def test_alpha_is_dropped_and_palette_expanded(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    a = io.read_image(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    np.testing.assert_allclose(a[..., 0], 200 / 255.0, atol=1e-7)
    np.testing.assert_allclose(a[..., 1:], 0.0)
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    p = io.read_image(_save(tmp_path, "p.png", pal))
    np.testing.assert_allclose(p[0, 1] * 255.0, [40, 50, 60], atol=1e-4)


def test_16bit_png_scales_by_65535(tmp_path):
    v = np.array([[0, 1000], [32768, 65535]], np.uint16)
    a = io.read_image(_save(tmp_path, "d.png", Image.fromarray(v)))
    assert a.shape == (2, 2, 3)
    np.testing.assert_allclose(a[..., 0], v / 65535.0, rtol=1e-6)
    np.testing.assert_allclose(a[..., 2], a[..., 0])


@pytest.mark.parametrize("peak, scale", [(200, 255.0), (40000, 65535.0)])
def test_32bit_integer_tiff_scales_by_its_range(tmp_path, peak, scale):
    v = np.array([[0, peak // 2], [peak, 3]], np.int32)
    a = io.read_image(_save(tmp_path, "i.tif", Image.fromarray(v)))
    np.testing.assert_allclose(a[..., 1], v / scale, rtol=1e-6)


def test_float_tiff_is_clipped_to_unit_range(tmp_path):
    v = np.array([[-0.5, 0.25], [0.75, 3.0]], np.float32)
    a = io.read_image(_save(tmp_path, "f.tif", Image.fromarray(v, "F")))
    np.testing.assert_allclose(a[..., 0], [[0.0, 0.25], [0.75, 1.0]])


def test_raw_gray_keeps_values_and_takes_the_first_channel(tmp_path):
    v = np.array([[0, 1000], [32768, 65535]], np.uint16)
    raw = io.read_gray_raw(_save(tmp_path, "d.png", Image.fromarray(v)))
    assert raw.dtype == np.uint16 and (raw == v).all()
    rgb = np.stack([np.full((2, 3), 9, np.uint8), np.zeros((2, 3), np.uint8),
                    np.ones((2, 3), np.uint8)], -1)
    r = io.read_gray_raw(_save(tmp_path, "c.png", Image.fromarray(rgb)))
    assert r.shape == (2, 3) and (r == 9).all()


def test_mask_any_colour_channel_counts_and_alpha_does_not(tmp_path):
    m = np.zeros((2, 3, 4), np.uint8)
    m[0, 0, 1] = 255          # green only: defect
    m[1, 2, 3] = 255          # alpha only: not defect
    got = io.read_mask(_save(tmp_path, "m.png", Image.fromarray(m, "RGBA")))
    assert got.dtype == bool and got.tolist() == [[True, False, False], [False, False, False]]
    g = np.array([[0, 100], [128, 255]], np.uint8)
    p = _save(tmp_path, "g.png", Image.fromarray(g))
    assert io.read_mask(p).tolist() == [[False, True], [True, True]]
    assert io.read_mask(p, threshold=127).tolist() == [[False, False], [True, True]]


def test_nifti_slice_of_a_volume_with_trailing_axes(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.arange(4 * 5 * 3 * 2, dtype=np.float32).reshape(4, 5, 3, 2)
    p = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    s = io.read_nifti_slice(p, 1)                       # axis 2, first of the trailing axis
    assert s.shape == (4, 5)
    np.testing.assert_array_equal(s, vol[:, :, 1, 0])
    s0 = io.read_nifti_slice(p, 3, axis=0)
    np.testing.assert_array_equal(s0, vol[3, :, :, 0])
