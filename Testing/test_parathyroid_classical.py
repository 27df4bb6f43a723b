"""Classical half of the parathyroid task: acquisition corrections, registration, robust subtraction, foci.

Ground truth comes from the planar neck simulator (known motion, true scale factor, adenoma footprints) and from
small synthetic images whose answer is known analytically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.metrics import dice
from MedSegAILib.simulate.planar_neck import PLANAR_DIRECTION, apply_motion, simulate_neck
from MedSegAILib.tasks.parathyroid import acquisition as acq
from MedSegAILib.tasks.parathyroid import foci as fo
from MedSegAILib.tasks.parathyroid import subtraction as sb
from MedSegAILib.tasks.parathyroid.registration import register_iodine


def _k_on_tc_grid(study) -> float:
    """The simulator's ideal k is per native pixel; on the Tc grid the iodine counts scale with the pixel area."""
    return study.true_scale * (study.iodine.spacing[0] * study.iodine.spacing[1]) / (
        study.tc.spacing[0] * study.tc.spacing[1])


def _registration_error_mm(study, result) -> float:
    """Largest error (mm) of the recovered map over a 60 x 60 mm grid of points around the thyroid centre."""
    tc = study.tc
    c = np.asarray(study.motion["center_lps"], float)
    pts = np.array([c + np.array([dx, 0.0, dz]) for dx in (-30, 0, 30) for dz in (-30, 0, 30)])
    moved = apply_motion(pts, study.motion)
    u0, v0 = tc.origin[0], -tc.origin[2]  # the simulator's FOVs share their centre: both frames coincide
    src = np.column_stack([pts[:, 0] - u0, -pts[:, 2] - v0, np.ones(len(pts))])
    dst = np.column_stack([moved[:, 0] - u0, -moved[:, 2] - v0])
    return float(np.abs((src @ result.matrix_2d.T)[:, :2] - dst).max())


# ---------------------------------------------------------------------------------------------- acquisition
def test_frame_rate_factor_matches_the_decay_integral():
    info = acq.AcquisitionInfo(half_life_s=6.0067 * 3600, frame_duration_s=900.0)
    f, text = acq.frame_rate_factor(info)
    lam = math.log(2) / info.half_life_s
    t = np.linspace(0, 900.0, 200001)
    counts_per_unit_rate = np.trapezoid(np.exp(-lam * t), t)  # counts from a source of rate 1 at the frame start
    assert f * counts_per_unit_rate == pytest.approx(1.0, rel=1e-8)
    assert f > 1 / 900.0  # decay during the frame: more than the plain average rate
    assert "decay" in text


def test_corrections_degrade_gracefully_when_unknown():
    nothing = acq.acquisition_info(Volume(np.ones((1, 4, 4))))
    corr = acq.count_rate_correction(nothing, nothing)
    assert corr.tc_factor == 1.0 and corr.iodine_factor == 1.0
    assert corr.notes and all("frame duration" in n for n in corr.notes[:2])
    only_time = acq.acquisition_info(Volume(np.ones((1, 4, 4)), meta={"frame_duration_s": 300.0}))
    assert acq.count_rate_correction(only_time, nothing).tc_factor == pytest.approx(1 / 300.0)
    # half-life from the radionuclide name when the header has none
    named = acq.acquisition_info(Volume(np.ones((1, 4, 4)), meta={"radionuclide": "I-123", "frame_duration_s": 600}))
    assert named.half_life_s == pytest.approx(acq.HALF_LIFE_S["I-123"])
    assert acq.count_rate_correction(named, named).corrections[0].endswith("decay during the frame")


def test_rate_corrected_scale_is_the_physical_uptake_ratio():
    """After the corrections k compares count rates at each frame start: the simulator's gains without frame time."""
    st = simulate_neck(3, noise=False)
    info_tc, info_i = acq.acquisition_info(st.tc), acq.acquisition_info(st.iodine)
    corr = acq.count_rate_correction(info_tc, info_i)
    p = st.params
    lam_tc, lam_i = math.log(2) / info_tc.half_life_s, math.log(2) / info_i.half_life_s
    rate_tc = p["sensitivity_tc"] * p["tc"]["injected_MBq"] * math.exp(-lam_tc * p["tc"]["acquisition_start_s"])
    rate_i = (p["sensitivity_iodine"] * p["iodine"]["injected_MBq"]
              * math.exp(-lam_i * p["iodine"]["acquisition_start_s"]))
    expected = rate_tc * p["pixel_mm"] ** 2 / (rate_i * p["iodine_pixel_mm"] ** 2)
    assert corr.rate_scale(st.true_scale) == pytest.approx(expected, rel=1e-9)
    assert corr.both_rates


def test_late_decay_factor():
    early = acq.AcquisitionInfo(radionuclide="Tc-99m", half_life_s=21624.12, acquisition_start_s=900.0)
    late = acq.AcquisitionInfo(radionuclide="Tc-99m", half_life_s=21624.12, acquisition_start_s=900.0 + 7200.0)
    assert acq.late_decay_factor(early, late) == pytest.approx(2 ** (7200 / 21624.12))
    assert acq.late_decay_factor(early, acq.AcquisitionInfo()) is None


@pytest.mark.parametrize("meta, kind, nuclide", [
    ({"tracer": "Tc99m Sestamibi"}, "sestamibi", "Tc-99m"),
    ({"tracer": "Tc-99m MIBI"}, "sestamibi", "Tc-99m"),
    ({"tracer": "Cardiolite", "radionuclide": "^99m^Technetium"}, "sestamibi", "Tc-99m"),
    ({"radionuclide": "^99m^Technetium"}, "sestamibi", "Tc-99m"),
    ({"tracer": "Sodium Iodide I-123"}, "iodine", "I-123"),
    ({"radionuclide": "Iodine-123"}, "iodine", "I-123"),
    ({"tracer": "123I"}, "iodine", "I-123"),
    ({"tracer": "I-123 MIBG"}, None, "I-123"),
    ({"tracer": "Tc-99m pertechnetate"}, None, "Tc-99m"),
    ({"tracer": "F-18 FDG"}, None, None),
    ({}, None, None),
])
def test_tracer_kind(meta, kind, nuclide):
    vol = Volume(np.ones((1, 4, 4)), meta=meta)
    assert acq.tracer_kind(vol) == kind
    assert acq.radionuclide_of(vol) == nuclide


def test_simulator_tracers_are_recognised():
    st = simulate_neck(1)
    assert acq.tracer_kind(st.tc) == "sestamibi" and acq.tracer_kind(st.iodine) == "iodine"


# ---------------------------------------------------------------------------------------------- registration
def test_registration_recovers_simulated_motion():
    rot_err, pos_err = [], []
    for seed in range(10):
        kw = {"iodine_pixel_mm": 2.4, "iodine_matrix": 110} if seed % 3 == 2 else {}
        st = simulate_neck(seed, **kw)
        res = register_iodine(st.tc, st.iodine)
        assert res.ok, (seed, res.flags)
        assert res.iodine_on_tc.same_geometry(st.tc)
        pos_err.append(_registration_error_mm(st, res))
        rot_err.append(abs(res.rotation_deg - st.motion["rotation_deg"]))
    assert max(pos_err) < 1.5, pos_err
    assert max(rot_err) < 1.5, rot_err


def test_registration_preserves_counts_across_grids():
    st = simulate_neck(4, motion=False, noise=False, iodine_pixel_mm=1.7, iodine_matrix=180)
    res = register_iodine(st.tc, st.iodine, mode="none")
    # the iodine FOV covers the Tc FOV: counts of the thyroid region are preserved by the area rescaling
    thy = ndimage.binary_dilation(st.thyroid_mask.array[0] > 0, iterations=6)
    same_grid = simulate_neck(4, motion=False, noise=False).iodine.array[0]
    assert res.iodine_on_tc.array[0][thy].sum() == pytest.approx(same_grid[thy].sum(), rel=0.01)


def test_translation_mode_and_flipped_input():
    st = simulate_neck(5, motion={"dx_mm": 4.0, "dy_mm": -3.0, "rotation_deg": 0.0})
    res = register_iodine(st.tc, st.iodine, mode="translation")
    assert res.rotation_deg == 0.0
    assert _registration_error_mm(st, res) < 1.5
    # the same iodine image stored flipped left-right (mirrored array and direction): same anatomy, flagged
    io = st.iodine
    flipped_dir = io.direction.copy()
    flipped_dir[:, 0] *= -1
    far_corner = io.index_to_lps([io.size_ijk[0] - 1, 0, 0])[0]
    flipped = Volume(io.array[:, :, ::-1].copy(), io.spacing, far_corner, flipped_dir, dict(io.meta))
    res_f = register_iodine(st.tc, flipped, mode="translation")
    assert any("flipped left-right" in f for f in res_f.flags) and not res_f.ok
    assert np.allclose(res_f.iodine_on_tc.array, res.iodine_on_tc.array, atol=1e-3 * float(io.array.max()))
    # an iodine image without orientation (e.g. a PNG: identity direction) is taken in display convention
    plain = Volume(io.array.copy(), io.spacing, (0.0, 0.0, 0.0), np.eye(3), dict(io.meta))
    res_p = register_iodine(st.tc, plain, mode="translation")
    assert any("different orientations" in f for f in res_p.flags) and not res_p.ok
    assert _registration_error_mm(st, res_p) < 1.5


def test_absurd_offsets_are_flagged():
    st = simulate_neck(3, motion={"dx_mm": 60.0, "dy_mm": -30.0, "rotation_deg": 0.0})
    res = register_iodine(st.tc, st.iodine)
    assert not res.ok and any("moved the 123I image by" in f for f in res.flags)
    # an iodine image that shows something else entirely (here: the upside-down study) is flagged too
    wrong = st.iodine.with_array(st.iodine.array[:, ::-1, :].copy())
    res_w = register_iodine(st.tc, wrong)
    assert not res_w.ok and res_w.flags


def test_registration_refuses_unusable_images():
    st = simulate_neck(0)
    with pytest.raises(InputError, match="constant"):
        register_iodine(st.tc, st.iodine.with_array(np.zeros_like(st.iodine.array)))
    with pytest.raises(InputError, match="mode"):
        register_iodine(st.tc, st.iodine, mode="affine")


# ---------------------------------------------------------------------------------------------- subtraction
def test_thyroid_mask_matches_truth():
    scores = []
    for seed in range(8):
        st = simulate_neck(seed, motion=False)
        mask = sb.thyroid_mask_from_iodine(st.iodine.array[0], st.tc.spacing[:2])
        scores.append(dice(mask, st.thyroid_mask.array[0] > 0))
    assert min(scores) > 0.75, scores
    assert not sb.thyroid_mask_from_iodine(np.zeros((32, 32)), (2.0, 2.0)).any()


def _adenoma_over_thyroid(study, thyroid: np.ndarray) -> bool:
    lab = study.adenoma_labels.array[0]
    return any(a.diameter_mm >= 10 and (thyroid & (lab == a.label)).sum() >= 0.3 * max((lab == a.label).sum(), 1)
               for a in study.adenomas)


def test_scale_factor_is_robust_to_adenomas_over_the_thyroid():
    robust_err, naive_err, overlap_robust, overlap_naive = [], [], [], []
    for seed in range(20):
        st = simulate_neck(seed, motion=False)
        tc, io = st.tc.array[0], st.iodine.array[0]
        thyroid = sb.thyroid_mask_from_iodine(io, st.tc.spacing[:2])
        k_true = _k_on_tc_grid(st)
        robust = sb.estimate_scale(tc, io, thyroid)
        naive = sb.estimate_scale(tc, io, thyroid, robust=False, match_resolution=False)
        robust_err.append(robust.k / k_true - 1)
        naive_err.append(naive.k / k_true - 1)
        if _adenoma_over_thyroid(st, thyroid):
            overlap_robust.append(abs(robust.k / k_true - 1))
            overlap_naive.append(abs(naive.k / k_true - 1))
        assert robust.k_low <= robust.k <= robust.k_high
    assert np.median(np.abs(robust_err)) < 0.05, robust_err
    assert len(overlap_robust) >= 4
    # the naive fit explains the adenoma's extra counts with a larger k; the robust one does not
    assert np.median(overlap_naive) > 2 * np.median(overlap_robust), (overlap_naive, overlap_robust)
    assert np.median(overlap_robust) < 0.05


def test_scale_factor_refuses_a_missing_thyroid():
    with pytest.raises(InputError, match="thyroid"):
        sb.estimate_scale(np.ones((32, 32)), np.ones((32, 32)), np.zeros((32, 32), bool))


def test_significance_variance_formula_on_pure_poisson_images():
    """Tc and I Poisson with Tc mean = k I mean: Z must be N(0, 1) everywhere, borders included."""
    rng = np.random.default_rng(7)
    k = 0.4
    zs = []
    for _ in range(6):
        io = rng.poisson(150.0, (96, 96)).astype(float)
        tc = rng.poisson(60.0, (96, 96)).astype(float)
        _, z = sb.classical_subtraction(tc, io, k, spacing=(2.0, 2.0), smooth_fwhm_mm=8.0, match_sigma_px=0.0)
        zs.append(z)
    z = np.stack(zs)
    assert abs(float(z.mean())) < 0.1
    assert float(z.std()) == pytest.approx(1.0, abs=0.12)
    border = np.concatenate([z[:, :, :3].ravel(), z[:, :, -3:].ravel(), z[:, :3, :].ravel(), z[:, -3:, :].ravel()])
    assert float(border.std()) == pytest.approx(1.0, abs=0.2)


def test_significance_is_standard_normal_on_the_thyroid_bed_without_adenoma():
    for seed in (1, 2, 6, 9):
        st = simulate_neck(seed, n_adenomas=0)
        res = register_iodine(st.tc, st.iodine)
        tc, io, sp = st.tc.array[0], res.iodine_on_tc.array[0], st.tc.spacing[:2]
        scale = sb.estimate_scale(tc, io, sb.thyroid_mask_from_iodine(io, sp))
        diff, z = sb.classical_subtraction(tc, io, scale, spacing=sp)
        bed = ndimage.binary_dilation(st.thyroid_mask.array[0] > 0, iterations=int(round(10 / sp[0])))
        assert abs(float(z[bed].mean())) < 0.5, seed
        assert 0.7 < float(z[bed].std()) < 1.3, seed
        assert diff.dtype == np.float32 and (diff < 0).any()  # negative values are kept


def test_significance_peaks_on_a_12_mm_adenoma():
    for seed in (0, 7):
        st = simulate_neck(seed, n_adenomas=1, min_diameter_mm=12.0, max_diameter_mm=12.0, salivary=False,
                           heart=False)
        res = register_iodine(st.tc, st.iodine)
        tc, io, sp = st.tc.array[0], res.iodine_on_tc.array[0], st.tc.spacing[:2]
        scale = sb.estimate_scale(tc, io, sb.thyroid_mask_from_iodine(io, sp))
        _, z = sb.classical_subtraction(tc, io, scale, spacing=sp)
        peak = np.unravel_index(int(np.argmax(z)), z.shape)
        footprint = ndimage.binary_dilation(st.adenoma_labels.array[0] > 0, iterations=2)
        assert footprint[peak], seed
        assert z[peak] > 8.0


# ---------------------------------------------------------------------------------------------- foci (synthetic)
def _blob(shape, centre_rc, sigma_px, amp):
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    return amp * np.exp(-0.5 * ((rr - centre_rc[0]) ** 2 + (cc - centre_rc[1]) ** 2) / sigma_px ** 2)


def test_detect_foci_ranks_measures_and_labels_on_synthetic_images():
    shape, sp = (128, 128), (2.0, 2.0)
    thyroid = np.zeros(shape, bool)
    thyroid[60:80, 44:56] = True
    thyroid[60:80, 72:84] = True
    ev = (_blob(shape, (82, 50), 3.0, 20.0) + _blob(shape, (70, 100), 3.0, 12.0)  # bed focus, lateral ectopic
          + _blob(shape, (20, 40), 8.0, 40.0) + _blob(shape, (20, 88), 8.0, 38.0)  # paired salivary glands
          + _blob(shape, (125, 90), 14.0, 30.0))  # large structure at the inferior border: heart
    tc = 100.0 + 5.0 * ev
    found = fo.detect_foci(ev, sp, thyroid_mask=thyroid, tc_image=tc, threshold=5.0)
    kinds = [f.kind for f in found]
    assert kinds[:2] == ["candidate", "candidate"]
    assert kinds.count(fo.PROBABLE_SALIVARY) == 2 and kinds.count(fo.PROBABLE_MYOCARDIUM) == 1
    first, second = found[0], found[1]
    assert first.rank == 1 and second.rank == 2
    assert first.peak_ij == (50, 82) and first.location == "thyroid bed"
    assert second.location == "ectopic"
    assert first.centroid_ij[0] == pytest.approx(50, abs=0.2) and first.centroid_ij[1] == pytest.approx(82, abs=0.2)
    # the 50 % region of a Gaussian blob is a disc of radius sigma sqrt(2 ln 2)
    r_mm = 3.0 * math.sqrt(2 * math.log(2)) * 2.0
    assert first.equivalent_diameter_mm == pytest.approx(2 * r_mm, rel=0.12)
    assert first.contrast_to_bed > 1.2
    labels = fo.focus_masks(found, shape)
    assert set(np.unique(labels)) == set(range(len(found) + 1))
    assert labels[82, 50] == 1
    # the learned image: same geometry but nothing demoted, only flagged
    learned = fo.detect_foci(ev, sp, thyroid_mask=thyroid, tc_image=tc, threshold=5.0, classical=False)
    assert learned[0].score == pytest.approx(40.0, rel=0.01) and learned[0].kind == "candidate"
    assert any("possible salivary gland" in fl for fl in learned[0].flags)


def test_superior_direction_comes_from_the_geometry():
    """The same scene stored upside down (j axis pointing superior) gives the same classification."""
    shape, sp = (128, 128), (2.0, 2.0)
    thyroid = np.zeros(shape, bool)
    thyroid[60:80, 44:84] = True
    ev = _blob(shape, (20, 40), 8.0, 40.0) + _blob(shape, (20, 88), 8.0, 38.0) + _blob(shape, (85, 60), 3.0, 10.0)
    ref = Volume(np.zeros((1,) + shape), (2.0, 2.0, 1.0), direction=PLANAR_DIRECTION)
    up = fo.detect_foci(ev, sp, thyroid_mask=thyroid, threshold=5.0, reference=ref)
    flipped_dir = PLANAR_DIRECTION.copy()
    flipped_dir[:, 1] *= -1
    ref_f = Volume(np.zeros((1,) + shape), (2.0, 2.0, 1.0), direction=flipped_dir)
    down = fo.detect_foci(ev[::-1].copy(), sp, thyroid_mask=thyroid[::-1].copy(), threshold=5.0, reference=ref_f)
    assert [f.kind for f in up] == [f.kind for f in down]
    assert up[0].kind == "candidate" and up[0].score == pytest.approx(10.0, rel=0.01)


def test_match_foci_counts():
    shape = (64, 64)
    lab = np.zeros(shape, np.uint8)
    lab[10:16, 10:16] = 1
    lab[40:46, 40:46] = 2
    adenomas = [{"label": 1, "diameter_mm": 12.0, "ectopic": False, "center_lps": [0, 0, 0]},
                {"label": 2, "diameter_mm": 12.0, "ectopic": True, "center_lps": [0, 0, 0]}]
    ev = _blob(shape, (13, 13), 1.2, 10.0) + _blob(shape, (13, 17), 1.2, 9.0) + _blob(shape, (30, 55), 1.2, 8.0)
    found = fo.detect_foci(ev, (2.0, 2.0), thyroid_mask=None, threshold=3.0, min_diameter_mm=1.0)
    tp, fp, fn, details = fo.match_foci(found, lab, adenomas, tolerance_mm=10.0)
    assert (tp, fp, fn) == (1, 2, 1)  # one adenoma hit (once), its neighbour and the far blob are FPs
    assert details["adenomas"][0]["detected_by"] == 1 and details["adenomas"][1]["detected_by"] is None


# ---------------------------------------------------------------------------------------------- the whole path
def _classical(study):
    res = register_iodine(study.tc, study.iodine)
    tc, io, sp = study.tc.array[0], res.iodine_on_tc.array[0], study.tc.spacing[:2]
    thyroid = sb.thyroid_mask_from_iodine(io, sp)
    scale = sb.estimate_scale(tc, io, thyroid)
    _, z = sb.classical_subtraction(tc, io, scale, spacing=sp)
    return fo.detect_foci(z, sp, thyroid_mask=thyroid, tc_image=tc, threshold=fo.CLASSICAL_Z_THRESHOLD,
                          reference=study.tc)


@pytest.fixture(scope="module")
def classical_runs():
    runs = []
    for seed in range(1000, 1030):
        st = simulate_neck(seed)
        runs.append((st, _classical(st)))
    return runs


def test_classical_detection_sensitivity_and_false_positives(classical_runs):
    hits, fps = [], []
    for st, found in classical_runs:
        tp, fp, fn, details = fo.match_foci(found, st.adenoma_labels.array[0], st.adenomas, reference=st.tc)
        fps.append(fp)
        hits += [a["detected_by"] is not None for a in details["adenomas"] if a["diameter_mm"] >= 10.0]
    assert len(hits) >= 20
    assert np.mean(hits) >= 0.8, np.mean(hits)
    assert np.mean(fps) <= 1.0, fps


def test_salivary_glands_never_rank_first(classical_runs):
    checked, top_is_adenoma = 0, []
    for st, found in classical_runs:
        tiers = [f.tier for f in found]
        assert tiers == sorted(tiers)  # candidates, then doubtful foci, then probable salivary gland / myocardium
        candidates = [f for f in found if not f.is_nuisance]
        if not candidates or not any(a.diameter_mm >= 8.0 for a in st.adenomas):
            continue
        checked += 1
        salivary = st.salivary_mask.array[0] > 0
        assert found[0] is candidates[0]
        assert float(salivary[found[0].mask].mean()) < 0.3, st.params["seed"]
        top_is_adenoma.append(bool(st.adenoma_labels.array[0][found[0].mask].any()))
    assert checked >= 15
    assert np.mean(top_is_adenoma) >= 0.8, top_is_adenoma
