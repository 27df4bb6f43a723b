"""Evaluation of segmentations against references (:mod:`MedSegAILib.evaluation`, ``medsegai evaluate``).

Every number is checked against a value known by construction: hand-counted overlaps, analytic sphere geometry,
boxes whose faces lie on both grids of a resampling, a hand-computed Bland–Altman; plus the inter-annotator
agreement of the real head-and-neck masks (MEDSEGAI_TEST_DATA).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from MedSegAILib import cli
from MedSegAILib.core.io import write_volume
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.evaluation import (
    EMPTY_BOTH,
    EMPTY_PRED,
    MISSING_PRED,
    OK,
    EvaluationReport,
    case_key,
    evaluate_folders,
    evaluate_pair,
    match_structures,
    name_key,
    pair_cases,
    read_case_labels,
)
from MedSegAILib.tasks.base import ANATOMICAL_STRUCTURE, LEFT, RIGHT, CodedTerm, LabelInfo, ScalarMap, TaskResult

from MedSegAILib.tasks.parotid import LEFT_PAROTID, PAROTID, RIGHT_PAROTID  # noqa: E402 - the task's own labels

LABELS = [RIGHT_PAROTID, LEFT_PAROTID]


def _vol(arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Volume:
    return Volume(np.asarray(arr), spacing, origin)


def _two_glands(shape=(12, 16, 20), shift: int = 0) -> np.ndarray:
    """Label map [k, j, i]: right gland (1) at low x (patient's right in LPS), left gland (2) at high x."""
    lab = np.zeros(shape, np.uint8)
    lab[3:8, 4:10, 2 + shift:7 + shift] = 1
    lab[3:8, 4:10, 12 + shift:17 + shift] = 2
    return lab


# ---------------------------------------------------------------------------------------------- names
def test_name_rule_sides_and_generic_words():
    left = name_key("Left parotid gland")
    assert left.side == "left" and left.words == {"parotid"}
    for n in ("Parotid-Lt", "Parotid_Lt", "parotid left", "ParotidLt", "PAROTID_L", "parotid (lt)"):
        assert name_key(n) == left, n
    for n in ("Parotid-Rt", "Parotid_R", "right parotid", "ParotidRight"):
        assert name_key(n) == name_key("Right parotid gland") and name_key(n).side == "right", n
    assert name_key("Parotid").side is None
    assert name_key("Parotid left right").side == "conflict"
    # the side may come from the label's terminology modifier when its name has none
    assert name_key("Parotid gland", LEFT) == left


def test_left_is_never_matched_to_right_and_ambiguity_is_reported():
    assert match_structures(["Parotid-Rt", "Brainstem"], LABELS) == {1: "Parotid-Rt"}  # left stays unmatched
    assert match_structures(["Parotid", "Parotid both"], LABELS) == {}  # no side: no match
    assert match_structures(["Parotid_Lt", "Parotid-Rt"], LABELS) == {1: "Parotid-Rt", 2: "Parotid_Lt"}
    with pytest.raises(InputError, match="Parotid-Lt.*Parotid_L|Parotid_L.*Parotid-Lt"):
        match_structures(["Parotid-Lt", "Parotid_L", "Parotid-Rt"], LABELS, "case 7")
    # an exact name wins over a token match
    assert match_structures(["left parotid gland", "Parotid-Lt"], LABELS)[2] == "left parotid gland"


def test_case_keys():
    assert case_key("case01_seg") == case_key("Case01") == case_key("case01-labels") == "case01"
    assert case_key("0522c0727a") != case_key("0522c0727b")


# ---------------------------------------------------------------------------------------------- metrics
def test_dice_iou_volumes_exact_on_hand_made_maps():
    ref = np.zeros((4, 5, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[1, 1, 0:6] = 1  # 6 voxels
    pred[1, 1, 2:6] = 1  # 4 voxels, all inside: overlap 4
    pred[2, 2, 0:4] = 1  # 4 more outside: |P| = 8
    ref[3, 0:5, 0] = 2  # 5 voxels
    pred[3, 0:3, 0] = 2  # 3 voxels inside
    m = evaluate_pair(_vol(pred, (2.0, 1.0, 0.5)), _vol(ref, (2.0, 1.0, 0.5)), LABELS, case="hand")
    r, lf = m.structure(1), m.structure("Left parotid gland")
    assert r.status == lf.status == OK and not m.resampled
    assert r.dice == pytest.approx(2 * 4 / (8 + 6)) and r.iou == pytest.approx(4 / 10)
    assert lf.dice == pytest.approx(2 * 3 / (3 + 5)) and lf.iou == pytest.approx(3 / 5)
    # 1 mm^3 voxels: 8 and 6 voxels -> 0.008 and 0.006 mL
    assert r.volume_pred_ml == pytest.approx(0.008) and r.volume_ref_ml == pytest.approx(0.006)
    assert r.volume_diff_ml == pytest.approx(0.002)


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 0.5), (0.5, 0.5, 1.0)])
def test_hd95_and_dice_of_shifted_spheres_match_geometry(spacing):
    """Spheres of radius R shifted by d along x (the i axis). Surface points are uniform in cos(theta) on a sphere,
    so the 95th percentile of the symmetric surface distance is sqrt(R^2 + d^2 + 1.8 R d) - R (= 2.767 mm for R = 10,
    d = 3), and the Dice is the lens volume pi (4R + d)(2R - d)^2 / 12 over the sphere volume (0.7767)."""
    R, d = 10.0, 3.0
    sp = np.asarray(spacing)
    shape = tuple(int(40 / s) for s in sp[::-1])  # [k, j, i] covering 40 mm
    centres = (np.indices(shape).transpose(1, 2, 3, 0) + 0.5) * sp[::-1]  # voxel centres, [k, j, i] mm
    a = (((centres - [20, 20, 20 - d / 2]) ** 2).sum(-1) <= R * R).astype(np.uint8)
    b = (((centres - [20, 20, 20 + d / 2]) ** 2).sum(-1) <= R * R).astype(np.uint8) * 2
    labs = [LabelInfo(1, "Ball", (1, 0, 0), ANATOMICAL_STRUCTURE, PAROTID)]
    m = evaluate_pair(_vol(a, spacing), _vol(np.where(b > 0, 1, 0).astype(np.uint8), spacing), labs)
    s = m.structure("Ball")
    assert s.hd95_mm == pytest.approx(math.sqrt(R * R + d * d + 1.8 * R * d) - R, abs=0.1)
    assert s.dice == pytest.approx(math.pi * (4 * R + d) * (2 * R - d) ** 2 / 12 / (4 / 3 * math.pi * R**3), abs=0.005)
    assert s.volume_ref_ml == pytest.approx(4 / 3 * math.pi * R**3 / 1000, rel=0.01)


def test_empty_structures_are_reported_not_averaged():
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1  # right gland only in the reference
    pred = np.zeros_like(ref)  # nothing predicted; left gland absent from both
    m = evaluate_pair(_vol(pred), _vol(ref), LABELS, case="c1")
    r, lf = m.structure(1), m.structure(2)
    assert r.status == EMPTY_PRED and r.dice == 0.0 and r.iou == 0.0 and r.hd95_mm == math.inf
    assert lf.status == EMPTY_BOTH and lf.dice is None and lf.iou is None and lf.hd95_mm is None
    good = evaluate_pair(_vol(ref), _vol(ref), LABELS, case="c2")
    report = EvaluationReport(LABELS, [m, good])
    rows = {(row.structure, row.metric): row for row in report.summary()}
    # right: Dice 0 and 1 both counted -> mean 0.5; HD95 only the finite one (0 mm), 1 excluded
    assert rows[("Right parotid gland", "Dice")].n == 2 and rows[("Right parotid gland", "Dice")].mean == 0.5
    assert rows[("Right parotid gland", "HD95")].n == 1 and rows[("Right parotid gland", "HD95")].excluded == 1
    # left: empty in both cases -> nothing counted (no silent Dice 1.0)
    assert rows[("Left parotid gland", "Dice")].n == 0 and rows[("Left parotid gland", "Dice")].mean is None
    assert rows[("Left parotid gland", "Dice")].excluded == 2
    assert report.bland_altman()["Left parotid gland"] is None
    per_case = report.tables()[0].to_csv()
    assert "empty in both" in per_case and "inf" in per_case
    json.dumps(report.to_json(), allow_nan=False)  # inf/NaN never reach the JSON


def test_bland_altman_matches_hand_calculation():
    """Voxels of 10 x 10 x 10 mm = 1 mL: volumes are voxel counts. Right gland pred (10, 12, 9) vs ref (11, 10, 9):
    differences (-1, 2, 0): bias 1/3, SD sqrt(42/18) = 1.52753, limits 1/3 -/+ 1.96 SD."""
    cases = []
    for n, (p, r) in enumerate([(10, 11), (12, 10), (9, 9)]):
        pred = np.zeros((4, 5, 5), np.uint8)
        ref = np.zeros_like(pred)
        pred.reshape(-1)[:p] = 1
        ref.reshape(-1)[:r] = 1
        pred[3, 4, 4] = ref[3, 4, 4] = 2
        cases.append(evaluate_pair(_vol(pred, (10, 10, 10)), _vol(ref, (10, 10, 10)), LABELS, case=f"c{n}"))
    report = EvaluationReport(LABELS, cases)
    ba = report.bland_altman()["Right parotid gland"]
    sd = math.sqrt(((-1 - 1 / 3) ** 2 + (2 - 1 / 3) ** 2 + (0 - 1 / 3) ** 2) / 2)
    assert sd == pytest.approx(1.5275252)
    assert ba["n"] == 3 and ba["bias"] == pytest.approx(1 / 3) and ba["sd"] == pytest.approx(sd)
    assert ba["lower"] == pytest.approx(1 / 3 - 1.96 * sd) and ba["upper"] == pytest.approx(1 / 3 + 1.96 * sd)
    left = report.bland_altman()["Left parotid gland"]
    assert left["bias"] == 0.0 and left["sd"] == 0.0
    plot = report.bland_altman_plot()
    xs, ys = plot.series["Right parotid gland"]
    assert sorted(ys) == [-1, 0, 2] and sorted(xs) == [9, 10.5, 11]
    assert plot.series["Right parotid gland bias"][1] == [pytest.approx(1 / 3)] * 2
    assert plot.style_of("Right parotid gland") == "scatter" and plot.style_of("Right parotid gland bias") == "line"
    assert plot.style_of("Right parotid gland +1.96 SD") == "dashed"
    table = report.tables()[2]
    assert table.column("Bias")[0] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------- grids
def _box(spacing: float, shape_n: int, x0: float, x1: float) -> Volume:
    """A box 10..30 mm in y and z and x0..x1 mm in x on a grid of ``spacing`` mm covering 0..40 mm."""
    n = shape_n
    c = (np.arange(n) + 0.5) * spacing
    inx = (c >= x0) & (c <= x1)
    iny = (c >= 10) & (c <= 30)
    arr = (iny[:, None, None] & iny[None, :, None] & inx[None, None, :]).astype(np.uint8) * 2
    return _vol(arr, (spacing,) * 3, (spacing / 2,) * 3)


def test_prediction_on_a_2mm_grid_is_resampled_onto_the_1mm_reference():
    """Both grids cover 0..40 mm and every box face lies on a voxel face of both, so nearest-neighbour resampling is
    exact: boxes x 12..32 (pred) and 10..30 (ref) overlap 18 of 20 mm -> Dice 0.9, IoU 18/22."""
    ref = _box(1.0, 40, 10, 30)
    pred = _box(2.0, 20, 12, 32)
    m = evaluate_pair(pred, ref, LABELS, case="grids")
    s = m.structure(2)
    assert m.resampled and m.coverage == 1.0
    assert any("resampled" in n and "2 x 2 x 2 mm" in n for n in m.notes)
    assert s.dice == pytest.approx(0.9) and s.iou == pytest.approx(18 / 22)
    assert s.volume_pred_ml == pytest.approx(8.0) and s.volume_ref_ml == pytest.approx(8.0)
    same = evaluate_pair(_box(2.0, 20, 10, 30), ref, LABELS, case="same")
    assert same.structure(2).dice == 1.0 and same.structure(2).hd95_mm == 0.0


def test_grids_without_overlap_are_an_error_not_dice_zero(tmp_path):
    ref = _box(1.0, 40, 10, 30)
    far = Volume(ref.array, ref.spacing, (500.0, 0.0, 0.0))
    with pytest.raises(InputError, match="do not overlap"):
        evaluate_pair(far, ref, LABELS, case="far")
    # in a folder evaluation the case fails with that message and the other cases are still evaluated
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    write_volume(far, tmp_path / "p" / "a.nii.gz")
    write_volume(ref, tmp_path / "r" / "a.nii.gz")
    write_volume(ref, tmp_path / "p" / "b.nii.gz")
    write_volume(ref, tmp_path / "r" / "b.nii.gz")
    report = evaluate_folders(tmp_path / "p", tmp_path / "r", LABELS)
    assert [c.case for c in report.cases] == ["b"] and "do not overlap" in report.failed["a"]


# ---------------------------------------------------------------------------------------------- input forms
def _result(lab: Volume, extras: bool = False) -> TaskResult:
    res = TaskResult("parotid", lab, list(LABELS))
    if extras:
        res.maps.append(ScalarMap("Uncertainty", lab.with_array(lab.array.astype(np.float32) / 2)))
    return res


def test_three_input_forms_give_the_same_label_map(tmp_path):
    pytest.importorskip("slicer")
    from MedSegAILib.mrml.segfile import write_seg_nrrd

    lab = _vol(_two_glands(), (0.9, 1.1, 2.5), (-20.0, 5.0, 40.0))
    write_volume(lab, tmp_path / "labelmap.nii.gz")
    write_seg_nrrd(_result(lab), tmp_path / "ours.seg.nrrd")  # the project's own writer
    masks = tmp_path / "case" / "segmentations"
    masks.mkdir(parents=True)
    write_volume(lab.with_array((lab.array == 1).astype(np.uint8)), masks / "Parotid-Rt.nrrd")
    write_volume(lab.with_array((lab.array == 2).astype(np.uint8)), masks / "Parotid_Lt.nrrd")
    write_volume(lab.with_array(np.zeros(lab.shape, np.uint8)), masks / "Brainstem.nrrd")
    forms = [tmp_path / "labelmap.nii.gz", tmp_path / "ours.seg.nrrd", tmp_path / "case", masks]
    for path in forms:
        got = read_case_labels(path, LABELS)
        assert got.same_geometry(lab, 1e-4), path
        assert np.array_equal(got.array, lab.array), path
        assert got.meta["missing_labels"] == [], path
    assert read_case_labels(tmp_path / "case", LABELS).meta["structure_names"] == {1: "Parotid-Rt", 2: "Parotid_Lt"}


def test_multi_layer_seg_nrrd_and_swapped_names(tmp_path):
    """A Slicer segmentation with overlapping segments on two layers (vector NRRD), the left gland listed first
    and both with label value 1: names, not order or values, decide which label each is."""
    slicer = pytest.importorskip("slicer")
    from MedSegAILib.mrml.segfile import write_seg_nrrd
    from MedSegAILib.mrml.segmentations import BINARY_LABELMAP, oriented_image

    ref = _vol(_two_glands(), (1.0, 1.0, 2.0))
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.GetSegmentation().SetSourceRepresentationName(BINARY_LABELMAP)
    left = (ref.array == 2).astype(np.uint8)
    right = (ref.array == 1).astype(np.uint8)
    left[3:5, 4:6, 2:4] = 1  # 8 voxels inside the right gland: the segments overlap, so Slicer needs two layers
    for name, arr in (("Parotid_L", left), ("Parotid R", right)):
        seg = slicer.vtkSegment()
        seg.SetName(name)
        seg.SetLabelValue(1)
        seg.AddRepresentation(BINARY_LABELMAP, oriented_image(arr, ref.ijk_to_ras()))
        node.GetSegmentation().AddSegment(seg, name)
    path = write_seg_nrrd(node, tmp_path / "layers.seg.nrrd", ref)
    got = read_case_labels(path, LABELS)
    # labels are filled in label order, the later one winning where they overlap
    assert np.count_nonzero(got.array == 1) == right.sum() - 8 and np.count_nonzero(got.array == 2) == left.sum()
    assert any("8 voxels" in n and "overlap" in n for n in got.meta["read_notes"])
    assert got.meta["structure_names"] == {1: "Parotid R", 2: "Parotid_L"}


def test_missing_structure_is_not_taken_for_empty(tmp_path):
    ref = tmp_path / "ref" / "c1" / "segmentations"
    ref.mkdir(parents=True)
    lab = _vol(_two_glands())
    write_volume(lab.with_array((lab.array == 1).astype(np.uint8)), ref / "Parotid-Rt.nrrd")
    write_volume(lab.with_array((lab.array == 2).astype(np.uint8)), ref / "Parotid-Lt.nrrd")
    pred = tmp_path / "pred" / "c1"
    pred.mkdir(parents=True)
    # the prediction has the right gland and a left-side mask of another organ, but no left parotid
    write_volume(lab.with_array((lab.array == 1).astype(np.uint8)), pred / "Parotid-Rt.nrrd")
    write_volume(lab.with_array((lab.array == 1).astype(np.uint8)), pred / "Submandibular-Lt.nrrd")
    report = evaluate_folders(tmp_path / "pred", tmp_path / "ref", LABELS)
    (case,) = report.cases
    assert case.structure(1).status == OK and case.structure(1).dice == 1.0
    assert case.structure(2).status == MISSING_PRED and case.structure(2).dice is None
    assert any("Left parotid gland" in n and "not evaluated" in n for n in case.notes)
    # no structure of the labels at all -> that case fails with the names it found
    bad = tmp_path / "bad" / "c1"
    bad.mkdir(parents=True)
    write_volume(lab.with_array((lab.array > 0).astype(np.uint8)), bad / "Brainstem.nrrd")
    write_volume(lab.with_array((lab.array > 0).astype(np.uint8)), bad / "Mandible.nrrd")
    report = evaluate_folders(tmp_path / "bad", tmp_path / "ref", LABELS)
    assert "Brainstem, Mandible" in report.failed["c1"] and "Left parotid gland" in report.failed["c1"]


def test_our_outputs_as_predictions_and_unpaired_cases(tmp_path):
    pytest.importorskip("slicer")
    from MedSegAILib.outputs import write_result_files

    ref_dir, flat, nested = tmp_path / "ref", tmp_path / "flat", tmp_path / "nested"
    ref_dir.mkdir()
    truth = _two_glands()
    for n, case in enumerate(["case01", "case02", "case03"]):
        write_volume(_vol(truth), ref_dir / f"{case}_seg.nii.gz")
    for n, case in enumerate(["case01", "case02", "case04"]):
        pred = _vol(_two_glands(shift=n))  # shift n voxels along x
        write_result_files(_result(pred, extras=True), flat, case)  # .seg.nrrd, .labels.nii.gz/.json, .uncertainty.nrrd
        write_result_files(_result(pred), nested / case, "image")
    assert (flat / "case01.uncertainty.nrrd").is_file() and (flat / "case01.labels.nii.gz").is_file()
    pairing = pair_cases(flat, ref_dir)
    assert [p[0] for p in pairing.pairs] == ["case01_seg", "case02_seg"]
    assert all(p[1].kind == "seg.nrrd" for p in pairing.pairs)  # not the label map, not the scalar map
    assert pairing.only_pred == ["case04"] and pairing.only_ref == ["case03_seg"]
    for folder in (flat, nested):
        report = evaluate_folders(folder, ref_dir, LABELS)
        d = [c.structure(2).dice for c in report.cases]
        # a 5-voxel-wide gland shifted by 1 voxel: overlap 4 of 5 columns -> Dice 0.8
        assert d == [1.0, pytest.approx(0.8)], folder
        assert report.only_pred == ["case04"] and report.only_ref == ["case03_seg"]
    with pytest.raises(InputError, match="No case pairs.*case04"):
        evaluate_folders(flat, _make_dir(tmp_path / "other", "zzz.nii.gz", truth), LABELS)


def _make_dir(folder: Path, name: str, arr: np.ndarray) -> Path:
    folder.mkdir()
    write_volume(_vol(arr), folder / name)
    return folder


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end(tmp_path, capsys):
    pred, ref, out = tmp_path / "pred", tmp_path / "ref", tmp_path / "out"
    pred.mkdir()
    ref.mkdir()
    for n in range(3):
        write_volume(_vol(_two_glands()), ref / f"p{n}.nii.gz")
        write_volume(_vol(_two_glands(shift=n % 2)), pred / f"p{n}.nii.gz")
    args = ["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(out),
            "--labels", "1=Right parotid gland", "2=Left parotid gland"]
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert "Left parotid gland" in stdout and "3 case(s) evaluated" in stdout
    names = sorted(os.listdir(out))
    assert names == sorted(["metrics_per_case.csv", "metrics_summary.csv", "bland_altman.csv", "evaluation.json",
                            "bland_altman.png"])
    png = (out / "bland_altman.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    data = json.loads((out / "evaluation.json").read_text())
    dice = [c["structures"][1]["dice"] for c in data["cases"]]
    assert dice == [1.0, pytest.approx(0.8), 1.0]
    assert data["summary"][0]["structure"] == "Right parotid gland" and data["summary"][0]["n"] == 3
    assert (out / "metrics_per_case.csv").read_text().count("\n") == 1 + 3 * 2
    # existing files are kept unless --overwrite
    assert cli.main(args) == 2 and "already exist" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite", "-q"]) == 0
    # a case without prediction: a warning, and an error only with --strict
    write_volume(_vol(_two_glands()), ref / "p9.nii.gz")
    assert cli.main(args + ["--overwrite", "-q"]) == 0 and "no prediction for 1 case(s): p9" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite", "-q", "--strict"]) == 2
    assert json.loads((out / "evaluation.json").read_text())["pairing"]["only_reference"] == ["p9"]
    # no pair -> non-zero with the names found on each side
    empty_ref = tmp_path / "r2"
    empty_ref.mkdir()
    write_volume(_vol(_two_glands()), empty_ref / "other.nii.gz")
    assert cli.main(["evaluate", "--pred", str(pred), "--ref", str(empty_ref), "--labels", "1=A right"]) == 2
    err = capsys.readouterr().err
    assert "No case pairs" in err and "other" in err and "p0" in err
    # --task: the labels of a task, a subset by name
    assert cli.main(["evaluate", "--task", "mpi-myocardium", "--labels", "Left ventricle cavity", "--pred",
                     str(pred), "--ref", str(ref), "-q"]) == 0
    assert cli.main(["evaluate", "--task", "mpi-myocardium", "--labels", "Liver", "--pred", str(pred), "--ref",
                     str(ref)]) == 2


def test_plot_styles_reach_png_and_slicer_plot_nodes():
    from MedSegAILib.viz import plot_png

    cases = [evaluate_pair(_vol(_two_glands(shift=s)), _vol(_two_glands()), LABELS, case=str(s)) for s in (0, 1, 2)]
    plot = EvaluationReport(LABELS, cases).bland_altman_plot()
    assert plot_png(plot).startswith(b"\x89PNG")
    slicer = pytest.importorskip("slicer")
    from MedSegAILib.mrml.extras import write_plot

    _, _, series = write_plot(slicer.vtkMRMLScene(), plot, "BA")
    styles = {s.GetName(): (s.GetLineStyle(), s.GetMarkerStyle()) for s in series}
    S = slicer.vtkMRMLPlotSeriesNode
    assert styles["Left parotid gland"] == (S.LineStyleNone, S.MarkerStyleCircle)
    assert styles["Left parotid gland bias"] == (S.LineStyleSolid, S.MarkerStyleNone)
    assert styles["Left parotid gland -1.96 SD"] == (S.LineStyleDash, S.MarkerStyleNone)


# ---------------------------------------------------------------------------------------------- real data
def test_real_annotators_agree_like_the_paper(test_data, tmp_path):
    """Oncologist vs radiographer on two real scans (head-and-neck OAR masks): the human inter-observer agreement,
    left-parotid Dice about 0.83 (data README)."""
    root = (test_data / "headneck-oar-masks" / "validation").resolve()
    scans = ["0522c0014", "0522c0576"]
    for who in ("oncologist", "radiographer"):
        (tmp_path / who).mkdir()
        for s in scans:
            os.symlink(root / who / s, tmp_path / who / s)  # two scans only; nothing is copied
    labels = [LabelInfo(1, "Right parotid gland", (1, 0, 0), ANATOMICAL_STRUCTURE, PAROTID),
              LabelInfo(2, "Left parotid gland", (0, 0, 1), ANATOMICAL_STRUCTURE, PAROTID)]
    report = evaluate_folders(tmp_path / "oncologist", tmp_path / "radiographer", labels)
    assert [c.case for c in report.cases] == scans and not report.failed
    for c in report.cases:
        left, right = c.structure("Left parotid gland"), c.structure("Right parotid gland")
        assert left.status == right.status == OK and not c.resampled
        assert 0.78 <= left.dice <= 0.90, (c.case, left.dice)
        assert 0.75 <= right.dice <= 0.95, (c.case, right.dice)
        assert 2.0 <= left.hd95_mm <= 10.0
        assert 10.0 <= left.volume_ref_ml <= 40.0  # an adult parotid gland: 15-35 mL
    # the masks really are the glands at the patient's left: larger LPS x than the right gland
    onc = read_case_labels(tmp_path / "oncologist" / scans[0], labels)
    xs = {v: onc.index_to_lps(np.argwhere(onc.array == v)[:, ::-1].mean(axis=0))[0][0] for v in (1, 2)}
    assert xs[2] > xs[1] + 50
