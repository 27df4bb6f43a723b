"""The parathyroid task end to end: inputs checks, both methods, geometry, files, and a real MRML scene."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.pipeline import segment
from MedSegAILib.simulate.planar_neck import simulate_neck
from MedSegAILib.tasks.parathyroid.foci import match_foci

CLASSICAL = {"method": "classical"}


@pytest.fixture(scope="module")
def study():
    return simulate_neck(20261123, n_adenomas=1, min_diameter_mm=14.0, max_diameter_mm=14.0, salivary=True)


def _run(study, params=None, **inputs):
    ins = {"sestamibi": study.tc, "iodine": study.iodine, **inputs}
    return segment("parathyroid", ins, device="cpu", params=params or CLASSICAL)


def _top_hits_adenoma(result, study) -> bool:
    pts = result.points[0].points_lps
    ij = study.tc.lps_to_index(pts)[0]
    centre = study.tc.lps_to_index(study.adenomas[0].center_lps.reshape(1, 3))[0]
    return float(np.hypot(*(ij[:2] - centre[:2]) * np.asarray(study.tc.spacing[:2]))) < 10.0


# ---------------------------------------------------------------------------------------------- results
def test_classical_finds_the_adenoma_on_the_reference_grid(study):
    res = _run(study)
    assert res.labelmap.same_geometry(study.tc)
    assert all(m.volume.same_geometry(study.tc) for m in res.maps)
    assert res.labels and res.labels[0].name == "Parathyroid focus 1"
    assert _top_hits_adenoma(res, study)
    # the segment of focus 1 overlaps the true footprint
    seg, truth = res.labelmap.array == 1, study.adenoma_labels.array == 1
    assert (seg & truth).sum() > 0.5 * truth.sum()
    # the scale factor is the simulator's ideal one within 10 %
    assert abs(res.provenance["scale_factor"] / study.true_scale - 1) < 0.10
    names = [t.name for t in res.tables]
    assert names == ["Parathyroid foci", "Subtraction quality"]
    assert res.tables[0].column("Location")[0] in ("thyroid bed", "ectopic")
    assert res.pictures and res.pictures[0].png[:8] == b"\x89PNG\r\n\x1a\n"


def test_salivary_glands_are_not_reported_as_parathyroid_candidates():
    hits = 0
    for seed in range(30, 38):
        s = simulate_neck(seed, n_adenomas=1, min_diameter_mm=10.0, max_diameter_mm=16.0)
        res = _run(s)
        sal = s.salivary_mask.array[0]
        for lps in (res.points[0].points_lps if res.points else []):
            i, j, _ = np.round(s.tc.lps_to_index(lps.reshape(1, 3))[0]).astype(int)
            assert not sal[j, i], f"seed {seed}: a salivary gland was reported as a parathyroid focus"
        hits += bool(res.points) and _top_hits_adenoma(res, s)
    assert hits >= 6, f"the top focus was the adenoma in only {hits}/8 studies"


def test_no_adenoma_is_a_valid_result_with_a_clear_message():
    s = simulate_neck(41, n_adenomas=0, salivary=False, heart=False)
    res = _run(s, {"method": "classical", "detection_threshold": 8.0})
    assert res.labelmap.array.max() == 0
    assert any("No candidate parathyroid focus" in m for m in res.messages)


def test_registration_recovers_motion_and_flags_a_gross_misplacement(study):
    res = _run(study)
    assert res.provenance["registration"]["ok"]
    moved = study.iodine.with_array(np.roll(study.iodine.array, 40, axis=2))  # ~100 mm sideways
    res2 = segment("parathyroid", {"sestamibi": study.tc, "iodine": moved}, device="cpu", params=CLASSICAL)
    flagged = (not res2.provenance["registration"]["ok"]) or any("egistration" in m for m in res2.messages)
    assert flagged, "a 100 mm misplacement went unflagged"


def test_late_image_gives_retention(study):
    s = simulate_neck(20261123, n_adenomas=1, min_diameter_mm=14.0, max_diameter_mm=14.0, late=True)
    res = _run(s, sestamibi_late=s.tc_late)
    col = [c.name for c in res.tables[0].columns]
    assert "Retention late/early" in col
    retention = res.tables[0].column("Retention late/early")[0]
    thyroid_retention = s.params["tc_late"]["retention"]["thyroid"]  # the simulator's truth
    assert 0.5 < retention < 1.3
    assert retention > thyroid_retention


def test_left_right_follow_the_geometry(study):
    """The same anatomy stored with columns running to the patient's RIGHT: the focus keeps its RAS position."""
    flip = study.tc.direction.copy()
    flip[:, 0] *= -1
    width = (study.tc.size_ijk[0] - 1) * study.tc.spacing[0]
    origin = study.tc.origin + study.tc.direction[:, 0] * width
    tc2 = Volume(study.tc.array[:, :, ::-1].copy(), study.tc.spacing, origin, flip, dict(study.tc.meta))
    io2 = Volume(study.iodine.array[:, :, ::-1].copy(), study.iodine.spacing,
                 study.iodine.origin + study.iodine.direction[:, 0] * width, flip, dict(study.iodine.meta))
    a = _run(study).points[0].points_lps[0]
    b = segment("parathyroid", {"sestamibi": tc2, "iodine": io2}, device="cpu", params=CLASSICAL).points[0].points_lps[0]
    assert np.allclose(a, b, atol=1.0)


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_second_image(study):
    with pytest.raises(InputError, match="two images"):
        segment("parathyroid", {"sestamibi": study.tc}, device="cpu", params=CLASSICAL)


def test_same_tracer_and_swapped_images(study):
    with pytest.raises(InputError, match="Both images are 99mTc"):
        segment("parathyroid", {"sestamibi": study.tc, "iodine": study.tc}, device="cpu", params=CLASSICAL)
    with pytest.raises(InputError, match="swapped"):
        segment("parathyroid", {"sestamibi": study.iodine, "iodine": study.tc}, device="cpu", params=CLASSICAL)


def test_a_volume_where_a_planar_image_is_expected(study):
    vol = Volume(np.repeat(study.tc.array, 12, axis=0), study.tc.spacing, study.tc.origin, study.tc.direction,
                 dict(study.tc.meta))
    with pytest.raises(InputError, match="planar"):
        segment("parathyroid", {"sestamibi": vol, "iodine": study.iodine}, device="cpu", params=CLASSICAL)


def test_all_zero_and_very_different_fields_of_view(study):
    with pytest.raises(InputError, match="constant"):
        segment("parathyroid", {"sestamibi": study.tc, "iodine": study.iodine.with_array(study.iodine.array * 0)},
                device="cpu", params=CLASSICAL)
    big = Volume(study.iodine.array, tuple(s * 3 for s in study.iodine.spacing[:2]) + (1.0,), study.iodine.origin,
                 study.iodine.direction, dict(study.iodine.meta))
    with pytest.raises(InputError, match="fields of view"):
        segment("parathyroid", {"sestamibi": study.tc, "iodine": big}, device="cpu", params=CLASSICAL)


def test_no_thyroid_on_the_iodine_image(study):
    rng = np.random.default_rng(0)
    flat = study.iodine.with_array(rng.poisson(5.0, study.iodine.array.shape).astype(np.float32))
    with pytest.raises(InputError):
        segment("parathyroid", {"sestamibi": study.tc, "iodine": flat}, device="cpu", params=CLASSICAL)


# ---------------------------------------------------------------------------------------------- front ends
def test_cli_writes_every_output(study, tmp_path):
    from MedSegAILib.cli import main
    from MedSegAILib.core.io import read_volume, write_volume

    p_tc, p_i = tmp_path / "tc.nrrd", tmp_path / "iodine.nrrd"
    write_volume(study.tc, p_tc)
    write_volume(study.iodine, p_i)
    out = tmp_path / "out"
    rc = main(["segment", "--task", "parathyroid", str(p_tc), str(p_i), "-o", str(out), "-q",
               "--param", "method=classical"])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    for expected in ("tc.seg.nrrd", "tc.parathyroid-foci.csv", "tc.subtraction-quality.csv",
                     "tc.parathyroid-foci.mrk.json", "tc.subtraction.png", "tc.overlay.png",
                     "tc.subtraction-classical.nrrd", "tc.significance-z.nrrd"):
        assert expected in names, f"{expected} missing from {names}"
    mrk = json.loads((out / "tc.parathyroid-foci.mrk.json").read_text())
    assert mrk["markups"][0]["coordinateSystem"] == "LPS" and mrk["markups"][0]["controlPoints"]
    sub = read_volume(out / "tc.subtraction-classical.nrrd")
    assert sub.same_geometry(study.tc, atol=1e-3)


def test_result_into_a_real_mrml_scene(study):
    slicer = pytest.importorskip("slicer")
    from MedSegAILib.mrml.results import write_result
    from MedSegAILib.mrml.volumes import node_from_volume

    res = _run(study)
    scene = slicer.vtkMRMLScene()
    ref = node_from_volume(scene, study.tc, "Sestamibi")
    nodes = write_result(scene, res, ref)
    seg = nodes.segmentation.GetSegmentation()
    assert seg.GetNumberOfSegments() == len(res.labels) >= 1
    assert seg.GetNthSegment(0).GetName() == "Parathyroid focus 1"
    assert len(nodes.maps) == len(res.maps) and len(nodes.tables) == 2 and len(nodes.points) == 1
    p = np.zeros(3)
    nodes.points[0].GetNthControlPointPosition(0, p)
    assert np.allclose(p, res.points[0].points_lps[0] * np.array([-1, -1, 1]), atol=1e-3)


def test_benchmark_matching_counts_a_miss_and_a_false_positive(study):
    from MedSegAILib.tasks.parathyroid import foci as F

    f = F.Focus(rank=1, peak_ij=(0, 0), centroid_ij=(2.0, 2.0), area_mm2=10, equivalent_diameter_mm=4, peak=1,
                mean=1, contrast_to_bed=1, score=1, location="ectopic", spacing=tuple(study.tc.spacing[:2]))
    tp, fp, fn, _ = match_foci([f], study.adenoma_labels.array, study.adenomas, reference=study.tc)
    assert (tp, fp, fn) == (0, 1, 1)


# ---------------------------------------------------------------------------------------------- the shipped model
def test_learned_method_with_the_shipped_model(study):
    """NM-USNet (the default method, model from the zoo): the parathyroid image correlates with the truth and the
    top focus is the adenoma; the classical images are produced beside it."""
    from MedSegAILib.metrics import pearson

    res = segment("parathyroid", {"sestamibi": study.tc, "iodine": study.iodine}, device="cpu")
    assert res.provenance["model_id"] == "parathyroid-nmusnet" and res.provenance["method"] == "learned"
    maps = {m.name: m.volume for m in res.maps}
    learned = maps["Parathyroid image (NM-USNet)"]
    assert learned.same_geometry(study.tc)
    r = pearson(learned.array[0], study.parathyroid.array[0])
    assert r > 0.9, f"Pearson r {r:.3f} with the true parathyroid image"
    assert r > pearson(np.clip(maps["Subtraction (classical)"].array[0], 0, None), study.parathyroid.array[0])
    # in sestamibi counts per pixel (not in network units): the adenoma's counts within a factor 1.6
    from scipy import ndimage

    truth = study.parathyroid.array[0]
    near = ndimage.binary_dilation(truth > 0.02 * truth.max(), iterations=3)
    ratio = float(learned.array[0][near].sum() / truth[near].sum())
    assert 1 / 1.6 < ratio < 1.6, f"predicted / true adenoma counts = {ratio:.2f}"
    assert _top_hits_adenoma(res, study)


def test_learned_method_ignores_salivary_glands_and_heart():
    """A study without adenoma but with salivary glands and heart: the learned image stays near zero there."""
    s = simulate_neck(43, n_adenomas=0, salivary=True, heart=True)
    res = segment("parathyroid", {"sestamibi": s.tc, "iodine": s.iodine}, device="cpu")
    learned = next(m.volume for m in res.maps if m.name.startswith("Parathyroid image"))
    sal = s.salivary_mask.array[0] > 0
    assert sal.any()
    assert learned.array[0][sal].mean() < 0.05 * s.tc.array[0][sal].mean()
    for lps in (res.points[0].points_lps if res.points else []):
        i, j, _ = np.round(s.tc.lps_to_index(lps.reshape(1, 3))[0]).astype(int)
        assert not sal[j, i], "a salivary gland was reported as a parathyroid focus"
