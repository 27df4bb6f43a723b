"""The parotid training recipe's data rules: split by patient, labels onto other grids, mirroring swaps the sides,
the localiser's 8 mm pooling, and windows near the glands."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegAILib.core.volume import Geometry, Volume
from MedSegAILib.tasks.parotid import preprocess as pp
from MedSegAILib.train import parotid as recipe


def test_patient_of_groups_repeat_scans():
    assert recipe.patient_of("0522c0727a") == recipe.patient_of("0522c0727b") == "0522c0727"
    assert recipe.patient_of("TCGA-CV-A6K0") == "TCGA-CV-A6K0"


def test_split_is_by_patient_fixed_and_disjoint():
    scans = [{"scan": s, "patient": recipe.patient_of(s), "folders": {}} for s in
             ["0522c0727a", "0522c0727b"] + [f"P{i:03d}" for i in range(20)]]
    a, b = recipe.split_patients(scans), recipe.split_patients(list(reversed(scans)))
    assert a == b
    assert len(a["test"]) == recipe.N_TEST and len(a["val"]) == recipe.N_VAL
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert "0522c0727" in set().union(*sets)
    both = recipe.scans_of(scans, [recipe.patient_of("0522c0727a")])
    assert [s["scan"] for s in both] == ["0522c0727a", "0522c0727b"]


def test_split_of_the_real_data_keeps_test_patients_out_of_training(test_data):
    scans = recipe.list_scans(test_data / "headneck-oar-masks")
    split = recipe.split_patients(scans)
    assert len(scans) == 29 and len({s["patient"] for s in scans}) == 28
    assert not set(split["test"]) & set(split["train"]) and not set(split["val"]) & set(split["train"])
    assert all({"oncologist", "radiographer"} <= set(s["folders"]) for s in scans)


def test_labels_to_grid_keeps_each_gland_on_its_side():
    lab = Volume(np.zeros((20, 40, 60), np.uint8), (1.0, 1.0, 2.5), (-30.0, -20.0, 0.0))
    lab.array[5:15, 10:30, 5:20] = pp.RIGHT
    lab.array[5:15, 10:30, 40:55] = pp.LEFT
    g = recipe.box_grid(np.array([0.0, 0.0, 25.0]), (50.0, 30.0, 40.0), 1.0, recipe.rotation(np.random.default_rng(0)))
    out = recipe.labels_to_grid(lab, g)
    v = Volume(out, g.spacing, g.origin, g.direction)
    for side, sign in ((pp.RIGHT, -1), (pp.LEFT, 1)):
        idx = np.argwhere(out == side)
        assert len(idx) > 0
        x = v.index_to_lps(idx[:, ::-1].astype(float))[:, 0]
        assert np.all(np.sign(x) == sign)
    # volume preserved within partial-volume error
    ml = lambda a, vv: (a > 0).sum() * vv  # noqa: E731
    assert ml(out, 1.0) == pytest.approx(ml(lab.array, 2.5), rel=0.1)


def test_batches_mirror_with_swapped_sides_and_window_hu():
    rng = np.random.default_rng(1)
    hu = np.full((16, 32, 32), -100, np.int16)
    y = np.zeros((16, 32, 32), np.uint8)
    hu[4:12, 8:24, 2:10], y[4:12, 8:24, 2:10] = 40, pp.RIGHT  # right gland at low i (patient's right)
    seen_mirrored = False
    # whole-array windows (p_fg = 0 and window = array: no shift), so only the mirroring moves the gland
    for x, t in recipe.batches([{"hu": hu, "y": y}], "hu", "y", (16, 32, 32), 1, 30, rng, 0.0, (0, 0, 0)):
        x, t = x.numpy()[0, 0], t.numpy()[0]
        assert 0.0 <= x.min() and x.max() <= 1.0
        side = np.unique(t[t > 0])
        assert len(side) == 1
        low_i = np.argwhere(t > 0)[:, 2].mean() < 16
        assert (side[0] == pp.RIGHT) == low_i  # after mirroring the gland is at high i and called LEFT
        seen_mirrored |= not low_i
    assert seen_mirrored


def test_localizer_pooling_matches_the_task_grid():
    g4 = Geometry((16, 16, 32), (4.0, 4.0, 4.0), (10.0, 20.0, 30.0), np.eye(3))
    hu = np.arange(np.prod(g4.shape), dtype=np.float32).reshape(g4.shape)
    pooled = pp.block_mean(hu, 2)
    assert pooled.shape == (8, 8, 16) and pooled[0, 0, 0] == pytest.approx(hu[:2, :2, :2].mean())
    g8 = pp.pooled_grid(g4, 2)
    assert g8.spacing == (8.0, 8.0, 8.0)
    assert np.allclose(g8.origin, np.asarray(g4.origin) + 2.0)  # the centre of the first 2x2x2 block
    lab = np.zeros(g4.shape, np.uint8)
    lab[0:2, 0:2, 0:2].flat[:3] = pp.LEFT  # 3 of 8: kept
    lab[0:2, 0:2, 2:4].flat[:2] = pp.RIGHT  # 2 of 8: background
    out = pp.pooled_labels(lab, 2)
    assert out[0, 0, 0] == pp.LEFT and out[0, 0, 1] == 0
