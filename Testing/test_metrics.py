"""Metrics: per-structure overlap, distances in millimetres, correlation, agreement."""

import numpy as np
import pytest

from MedSegAILib.metrics import bland_altman, dice, hausdorff95, iou, pearson


def test_dice_and_iou_on_known_overlaps():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[:, :, :4] = True  # 400 voxels
    b[:, :, 2:6] = True  # 400 voxels, 200 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(200 / 600)
    assert dice(a, a) == 1.0 and dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError):
        dice(a, a[:5])


def test_hausdorff_uses_the_spacing():
    a = np.zeros((20, 20, 20), bool)
    a[5:15, 5:15, 5:15] = True
    b = np.roll(a, 2, axis=0)  # shifted by 2 voxels along k
    assert hausdorff95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff95(a, np.zeros_like(a), (1, 1, 1)) == float("inf")


def test_pearson_and_bland_altman():
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert np.isnan(pearson(x, np.ones(10)))
    ba = bland_altman([10, 12, 14], [9, 11, 13])
    assert ba["bias"] == pytest.approx(1.0) and ba["sd"] == pytest.approx(0.0) and ba["n"] == 3
