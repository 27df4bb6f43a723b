"""The learned half of the parathyroid task: bounded Siamese similarity, the losses (uncertainty weighting,
per-image Pearson r), the shared pre-processing, and an end-to-end smoke run of the training recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from MedSegAILib import nets  # noqa: E402
from MedSegAILib.core.volume import Volume  # noqa: E402
from MedSegAILib.errors import InputError  # noqa: E402
from MedSegAILib.metrics import pearson  # noqa: E402
from MedSegAILib.tasks.parathyroid import preprocess as pp  # noqa: E402
from MedSegAILib.train import parathyroid as recipe  # noqa: E402
from MedSegAILib.train.losses import UncertaintyWeighting, foreground_weighted_mse, pearson_r  # noqa: E402

PLANAR_DIR = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # columns: i = +x (L), j = -z (inferior), k = +y


# ---------------------------------------------------------------------------------------------- Siamese
def _blobs(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """Synthetic 'truth' images: 1-3 Gaussian foci, peaks 0.1-1 (Tc-normaliser units)."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((n, size, size), np.float32)
    for k in range(n):
        for _ in range(int(rng.integers(1, 4))):
            c = rng.uniform(6, size - 6, 2)
            s = rng.uniform(1.2, 3.0)
            out[k] += rng.uniform(0.1, 1.0) * np.exp(-0.5 * ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / s**2)
    return out


def test_siamese_similarity_bounded_symmetric_identity_and_zero_safe():
    torch.manual_seed(0)
    net = nets.build("siamese2d", features=[4, 8], embedding=8).eval()
    rng = np.random.default_rng(0)
    a = torch.from_numpy(_blobs(rng, 6)[:, None])
    b = torch.from_numpy(rng.uniform(-1, 3, (6, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        s_ab, s_ba, s_aa = net.similarity(a, b), net.similarity(b, a), net.similarity(a, a)
        zero = torch.zeros(2, 1, 32, 32)
        s_z = net.similarity(zero, zero)
        s_za = net.similarity(zero, a[:2])
    assert s_ab.shape == (6,)
    assert torch.all((s_ab >= 0) & (s_ab <= 1))
    torch.testing.assert_close(s_ab, s_ba)
    torch.testing.assert_close(s_aa, torch.ones(6), atol=1e-5, rtol=0)
    assert torch.isfinite(s_z).all() and torch.isfinite(s_za).all()
    torch.testing.assert_close(s_z, torch.ones(2), atol=1e-5, rtol=0)
    # gradients through an all-zero prediction are finite too
    y_hat = torch.zeros(2, 1, 32, 32, requires_grad=True)
    (1 - net.similarity(a[:2], y_hat)).mean().backward()
    assert torch.isfinite(y_hat.grad).all()


def test_trained_siamese_loss_does_not_reward_the_inverted_image():
    """The seed's pixel-wise L_sim = mean|y - (1 - y_hat)| is minimised by the inverted image; after a few
    deterministic training steps on tiny images, L_sim = 1 - similarity must prefer the truth itself."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    cases = [{"x": np.zeros((2, 32, 32), np.float16), "y": y.astype(np.float16), "inside": np.ones((32, 32), np.float16)}
             for y in _blobs(rng, 40)]
    net = nets.build("siamese2d", features=[8, 16], embedding=16)
    recipe.train_siamese(net, cases, np.random.default_rng(2), budget_s=1e9, batch=16, tile=32,
                         log=lambda s: None, max_steps=60, lr=5e-3, warmup_s=0.0)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training  # frozen
    y = torch.from_numpy(_blobs(np.random.default_rng(3), 16)[:, None])
    with torch.no_grad():
        l_same = 1 - net.similarity(y, y)
        l_inv = 1 - net.similarity(y, 1 - y)
        l_other = 1 - net.similarity(y, torch.roll(y, 8, dims=0))
    seed_l_sim_same = (y - (1 - y)).abs().mean(dim=(1, 2, 3))
    seed_l_sim_inv = (y - (1 - (1 - y))).abs().mean(dim=(1, 2, 3))
    assert torch.all(seed_l_sim_inv < seed_l_sim_same)  # the seed's bug, reproduced
    assert torch.all(l_same < 1e-5)
    assert torch.all(l_inv > l_same + 0.2), l_inv  # L_sim(y, y) < L_sim(y, 1 - y), for every image
    assert float(l_inv.mean()) > 0.5
    assert torch.all(l_other > l_same)
    check = recipe.siamese_check(net, cases, 32)
    assert check["same"] > 0.999 and check["inverted"] < 0.5


# ---------------------------------------------------------------------------------------------- losses
def _adam_on_weighting(loss_of, steps: int = 200) -> list[torch.Tensor]:
    torch.manual_seed(0)
    uw = UncertaintyWeighting(2)
    pred = torch.nn.Parameter(torch.tensor([2.0]))
    opt = torch.optim.Adam([pred, *uw.parameters()], lr=0.01)
    hist = []
    for _ in range(steps):
        opt.zero_grad()
        uw(loss_of(pred)).backward()
        opt.step()
        hist.append(uw.weights().detach().clone())
    return hist


@pytest.mark.parametrize("constant", [0.0, 3.0])
def test_uncertainty_weights_stay_finite_and_positive(constant):
    hist = _adam_on_weighting(lambda p: [(p - 1.0).pow(2).sum(), torch.tensor(constant)])
    w = torch.stack(hist)
    assert torch.isfinite(w).all() and bool((w > 0).all())
    assert float(w.max()) <= 0.5 * np.exp(10.0) + 1e-3  # the documented bound
    if constant == 3.0:
        # the constant term's weight moves towards 1 / (2 * 3) (its optimum), never collapsing
        assert 0.1 < float(w[-1, 1]) < 0.5


def test_seed_alpha_beta_weighting_degenerates():
    """The seed's alpha/(alpha+beta) with unconstrained alpha, beta at lr 0.01: within 200 Adam steps on the
    same losses a weight leaves [0, 1] (the failure the bounded weighting avoids)."""
    ab = torch.nn.Parameter(torch.tensor([0.5, 0.5]))
    opt = torch.optim.Adam([ab], lr=0.01)
    degenerate = False
    for _ in range(200):
        opt.zero_grad()
        a, b = ab[0], ab[1]
        loss = a / (a + b) * torch.tensor(0.0) + b / (a + b) * torch.tensor(3.0)
        loss.backward()
        opt.step()
        with torch.no_grad():
            wa = float(ab[0] / ab.sum())
        degenerate |= not (0.0 <= wa <= 1.0) or not np.isfinite(wa)
    assert degenerate


def test_uncertainty_weighting_init_from_balances_terms():
    uw = UncertaintyWeighting(2)
    uw.init_from([1e-3, 0.2])
    w = uw.weights().detach().numpy()
    np.testing.assert_allclose(w * np.array([1e-3, 0.2]), [0.5, 0.5], rtol=1e-4)


def test_pearson_r_batched_matches_library_and_excludes_empty_truth():
    rng = np.random.default_rng(4)
    y = rng.random((4, 1, 8, 8)).astype(np.float32)
    y[2] = 0.0
    y_hat = (y + 0.3 * rng.random(y.shape)).astype(np.float32)
    y_hat[3] = 0.7  # constant prediction of a non-empty truth: 0, not excluded
    r = pearson_r(torch.from_numpy(y), torch.from_numpy(y_hat))
    assert r.shape == (4,)
    for k in (0, 1):
        assert abs(float(r[k]) - pearson(y[k], y_hat[k])) < 1e-5
    assert np.isnan(float(r[2])) and float(r[3]) == 0.0
    assert float(pearson_r(torch.from_numpy(y[:1]), torch.from_numpy(-y[:1]))[0]) == pytest.approx(-1.0, abs=1e-6)


def test_foreground_weighted_mse():
    y = torch.zeros(2, 1, 4, 4)
    y[0, 0, 1, 1] = 1.0
    y_hat = torch.zeros_like(y)
    # only the foreground pixel is wrong, by 1: (1 + 4) * 1 / 32 pixels
    assert float(foreground_weighted_mse(y_hat, y, fg_weight=4.0)) == pytest.approx(5.0 / 32)
    assert float(foreground_weighted_mse(y + 0.5, y + 0.5, fg_weight=4.0)) == 0.0


# ---------------------------------------------------------------------------------------------- pre-processing
def _planar(arr: np.ndarray, pixel: float) -> Volume:
    return Volume(arr[None].astype(np.float32), (pixel, pixel, 1.0), (-100.0, 0.0, 90.0), PLANAR_DIR)


def _smooth_phantom(n: int, pixel: float) -> np.ndarray:
    """Noise-free neck-like image in mm: two thyroid lobes, a focus, background."""
    yy, xx = (np.mgrid[0:n, 0:n] - (n - 1) / 2.0) * pixel
    img = 5.0 + 0 * xx
    for cx in (-18.0, 18.0):
        img += 100.0 * np.exp(-0.5 * (((xx - cx) / 8.0) ** 2 + ((yy - 5.0) / 16.0) ** 2))
    img += 60.0 * np.exp(-0.5 * (((xx - 10.0) ** 2 + (yy - 30.0) ** 2) / 4.0**2))
    return img


@pytest.mark.parametrize("pixel", [1.6, 2.0, 2.4, 3.0])
def test_round_trip_tc_network_tc(pixel):
    n = 100
    tc = _planar(_smooth_phantom(n, pixel), pixel)
    iod = tc.with_array(0.5 * tc.array)
    cfg = pp.PreprocessConfig()
    x, grid = pp.to_network(tc, iod, cfg)
    assert x.dtype == np.float32 and x.shape[0] == 2 and x.shape[1:] == grid.shape
    assert all(s % pp.GRID_MULTIPLE == 0 and s >= cfg.size for s in grid.shape)
    assert grid.geometry.spacing[:2] == (2.0, 2.0)
    back = pp.from_network(x[0], grid, tc)
    assert back.shape == tc.shape and back.dtype == np.float32
    assert tc.same_geometry(tc.with_array(back))
    assert pearson(back, tc.array) > 0.99
    # count-density units (no area rescaling): the background level and the total counts come back
    np.testing.assert_allclose(back[0, 5:15, 5:15], 5.0, rtol=1e-3)
    assert float(back[0, 10:90, 10:90].sum()) == pytest.approx(float(tc.array[0, 10:90, 10:90].sum()), rel=0.01)
    # each channel by its own normaliser, so both normalised channels peak alike
    assert abs(float(x[0].max()) - float(x[1].max())) < 1e-4
    # training targets: the same map, through the Tc normaliser
    y = pp.target_to_network(tc, grid)
    np.testing.assert_allclose(y, x[0], atol=1e-5)


def test_normaliser_is_robust_to_a_hot_pixel_and_empty_images():
    img = _smooth_phantom(64, 2.0)
    ref = pp.global_normaliser(img, (2.0, 2.0), pp.PreprocessConfig())
    hot = img.copy()
    hot[10, 10] = 10 * img.max()  # a hot pixel ten times the thyroid: a max-normaliser would be 10x off
    assert pp.global_normaliser(hot, (2.0, 2.0), pp.PreprocessConfig()) == pytest.approx(ref, rel=0.02)
    assert pp.global_normaliser(np.zeros((8, 8)), (2.0, 2.0), pp.PreprocessConfig()) == 1.0
    cfg = pp.PreprocessConfig.from_mapping({"pixel_mm": 2.5, "size": 64, "modality": "NM"})
    assert cfg.pixel_mm == 2.5 and cfg.size == 64 and pp.PreprocessConfig.from_mapping(cfg.to_mapping()) == cfg


def test_to_network_rejects_unregistered_or_bad_input():
    tc = _planar(_smooth_phantom(64, 2.0), 2.0)
    other = _planar(_smooth_phantom(64, 2.2), 2.2)
    with pytest.raises(InputError, match="registered"):
        pp.to_network(tc, other, pp.PreprocessConfig())
    bad = tc.with_array(np.where(np.arange(64) == 3, np.nan, tc.array))
    with pytest.raises(InputError, match="NaN"):
        pp.to_network(bad, tc, pp.PreprocessConfig())
    with pytest.raises(InputError, match="planar"):
        pp.to_network(Volume(np.zeros((3, 8, 8))), Volume(np.zeros((3, 8, 8))), pp.PreprocessConfig())


# ---------------------------------------------------------------------------------------------- recipe
def test_kfold_by_patient_is_a_seeded_partition():
    folds = recipe.kfold_by_patient(53, 10, seed=0)
    allv = np.concatenate(folds)
    assert len(folds) == 10 and sorted(allv.tolist()) == list(range(53))
    assert all(5 <= len(f) <= 6 for f in folds)
    again = recipe.kfold_by_patient(53, 10, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))


def test_misregistration_is_small():
    img = np.zeros((64, 64), np.float32)
    img[30:34, 28:32] = 1.0
    rng = np.random.default_rng(0)
    for _ in range(10):
        moved = recipe.misregister(img, rng, shift_px=0.75, rot_deg=1.0)
        c0 = np.array(np.nonzero(img)).mean(axis=1)
        w = moved / moved.sum()
        c1 = np.array([(w.sum(axis=1) * np.arange(64)).sum(), (w.sum(axis=0) * np.arange(64)).sum()])
        assert np.linalg.norm(c1 - c0) < 0.75 * np.sqrt(2) + 0.6


def test_recipe_smoke_end_to_end(tmp_path):
    from safetensors.torch import load_file

    assert recipe.main(["--out", str(tmp_path), "--smoke"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert len(m["cv_folds"]) == 2 and all(-1 <= f["pearson_mean"] <= 1 for f in m["cv_folds"])
    assert m["input"] == pp.PreprocessConfig().to_mapping()
    assert all(w > 0 for w in m["final_uncertainty_weights"])
    gen = nets.build("unet2d", **m["generator_hyperparameters"])
    gen.load_state_dict(load_file(str(tmp_path / "generator.safetensors")))
    sia = nets.build("siamese2d", **m["siamese_hyperparameters"])
    sia.load_state_dict(load_file(str(tmp_path / "siamese.safetensors")))
    assert (tmp_path / "train.log").read_text().count("fold") >= 2
    # seeds of the training pool never reach the held-out test range
    lo, hi = (int(v) for v in m["train_seeds"].split(".."))
    assert hi < recipe.TEST_SEED_BASE
