import pytest

from unimmad.flops import cmoe_gflop

LEVELS = ((256, 64), (512, 32), (1024, 16))


@pytest.mark.parametrize("form, total", [("reference", 98.4), ("collapsed", 73.8),
                                         ("folded", 44.9)])
def test_spec_totals_per_unit(form, total):
    # SPEC §2.4: 98.4 / 73.8 / 44.9 GFLOP per unit for the three levels
    assert sum(cmoe_gflop(c, s, form=form) for c, s in LEVELS) == pytest.approx(total, abs=0.06)


def test_dynamic_part_of_level1():
    # PERFORMANCE.md: level-1 dynamic convolutions are 56.4 GFLOP (reference) vs 18.8
    # (folded); folding also removes the three 512→256 post convs
    post = 3 * 2 * 512 * 256 * 4096 / 1e9
    diff = cmoe_gflop(256, 64) - cmoe_gflop(256, 64, form="folded")
    assert diff == pytest.approx(56.4 - 18.8 + post, abs=0.05)


def test_units_and_samples_scale():
    assert cmoe_gflop(256, 64, units=4) == pytest.approx(4 * cmoe_gflop(256, 64))
    assert cmoe_gflop(256, 64, units=4, samples=2) < cmoe_gflop(256, 64, units=4)
    with pytest.raises(ValueError):
        cmoe_gflop(256, 64, form="grouped")
