"""Training recipe of the learned parathyroid subtraction (NM-USNet re-implementation, with its bugs fixed).

    python -m MedSegAILib.train.parathyroid --out MedSegAILib/weights/parathyroid --seed 0 --folds 10 \\
        --fold-minutes 1.5 --final-minutes 18

* **Data.** :func:`MedSegAILib.simulate.planar_neck.simulate_neck`, one simulated patient per seed
  ``TRAIN_SEED_BASE + n`` (the held-out test seeds ``TEST_SEED_BASE + n`` are used only by benchmarks and
  tests). Per patient (drawn from its own seed): pixel size uniform in 1.6-3.0 mm, 0-3 adenomas with
  probabilities ``ADENOMA_COUNT_P``, and for 30 % of patients adenomas of at most 10 mm (else 5-20 mm; the
  simulator draws the sizes), so that small adenomas are slightly over-represented. Simulated with ``motion=False``: the
  recipe does *not* run the registration; instead every training sample gets a small random residual
  misregistration of the iodine channel (shift uniform in +-``--misreg-mm`` per axis, rotation +-``--misreg-deg``
  about the image centre, on the network grid) to mimic what a good registration leaves behind.
* **Pre-processing.** Exactly :func:`MedSegAILib.tasks.parathyroid.preprocess.to_network` (inputs) and
  :func:`~MedSegAILib.tasks.parathyroid.preprocess.target_to_network` (target = noise-free adenoma counts on the
  network grid / the Tc normaliser); constants written to the manifest ``input`` dict.
* **Generator.** ``unet2d`` (real skips), 2 inputs (normalised Tc, iodine), 1 output through a softplus:
  the target is in Tc-normaliser units and is non-negative but not bounded by 1 (a focus can be hotter than
  the 99.5th percentile of the smoothed Tc image), so the seed's sigmoid into [0, 1] would clip it. The head
  bias starts at -4 (softplus(-4) = 0.018) because almost every target pixel is 0.
* **Siamese.** ``siamese2d`` (bounded similarity, :mod:`MedSegAILib.nets.siamese`) is trained *first* as a
  pair scorer with BCE on the similarity: positives (truth, truth with noise / 1-px shift / blur / scale),
  negatives (truth vs another patient's truth, an adenoma removed, a focus added, a salivary-like blob added,
  the inverted image, a shift of 4-10 px, all-zero vs a focus). Then it is frozen (eval mode, no gradients to
  its weights).
* **Loss.** ``UncertaintyWeighting(2)([L_mse, L_sim])`` (:mod:`MedSegAILib.train.losses`): ``L_mse`` = MSE with
  the foreground (target > 5 % of its peak) weighted 5x (small foci are a few dozen of ~10^4 pixels);
  ``L_sim = mean(1 - similarity(y, y_hat))`` over the samples whose truth is not all zero (the similarity of an
  empty image carries no shape; the MSE covers those). The weights start balanced at the first batch's term
  values and learn 10x faster than the generator (``lr_scale``); they are reset for every fold.
* **Augmentation.** Random tiles (``--tile`` px) of the network grid, left/right flips of all channels
  together, Tc-and-target scaling x U(0.9, 1.1) (and iodine independently), the residual misregistration above.
  No Poisson re-noising (the simulator's images are already noisy).
* **Protocol.** 10-fold cross-validation split by patient (a seeded permutation cut into ``--folds`` parts; no
  patient is in two folds): per fold, a fresh generator and weighting train for ``--fold-minutes`` on the other
  folds and the held-out Pearson r is measured per study on the network grid (within the field of view),
  excluding studies whose truth is all zero (counted separately). Then the final model trains on all patients
  but a small internal validation split for ``--final-minutes`` with :func:`MedSegAILib.train.loop.train`
  (checkpoint on the validation Pearson r, cosine learning-rate decay by wall time).
* **Outputs.** ``generator.safetensors``, ``siamese.safetensors``, ``metrics.json``, ``train.log``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from scipy import ndimage

from MedSegAILib.tasks.parathyroid import preprocess as pp
from MedSegAILib.train.common import CosineByTime, file_logger, save_state, stepping

TRAIN_SEED_BASE = 2_000_000
TEST_SEED_BASE = 2_950_000_000
ADENOMA_COUNT_P = (0.15, 0.45, 0.25, 0.15)  #: P(0), P(1), P(2), P(3) adenomas
PIXEL_MM_RANGE = (1.6, 3.0)
SMALL_SHARE = 0.3

GENERATOR_HP: dict[str, Any] = {"in_channels": 2, "out_channels": 1, "features": [12, 24, 48, 96, 192], "levels": 4,
                                "norm": "batch", "act": "relu", "out_act": "softplus"}
SIAMESE_HP: dict[str, Any] = {"in_channels": 1, "features": [16, 32, 64, 64], "embedding": 64, "floor": 0.01,
                               "coords": False}
SMOKE_GENERATOR_HP: dict[str, Any] = {**GENERATOR_HP, "features": [4, 8, 16], "levels": 2}
SMOKE_SIAMESE_HP: dict[str, Any] = {**SIAMESE_HP, "features": [4, 8], "embedding": 8}
INPUT_CONSTANTS: dict[str, Any] = pp.PreprocessConfig().to_mapping()


# ---------------------------------------------------------------------------------------------- data
def case_parameters(seed: int) -> tuple[float, int, float]:
    """The patient's pixel size (mm), adenoma count and largest adenoma diameter allowed (mm), drawn from its own
    seed. A share ``SMALL_SHARE`` of patients only has adenomas of 5-10 mm (over-representing the hard, small
    ones); the others 5-20 mm (the simulator's default range)."""
    rng = np.random.default_rng([seed, 7])
    pixel = float(rng.uniform(*PIXEL_MM_RANGE))
    n_ad = int(rng.choice(len(ADENOMA_COUNT_P), p=ADENOMA_COUNT_P))
    max_d = 10.0 if rng.random() < SMALL_SHARE else 20.0
    return pixel, n_ad, max_d


def make_case(seed: int, cfg_map: Optional[dict[str, Any]] = None, matrix: int = 128) -> dict[str, Any]:
    """Simulate one patient (no motion) and pre-process it exactly as inference does (plus the target)."""
    from MedSegAILib.simulate.planar_neck import simulate_neck

    cfg = pp.PreprocessConfig.from_mapping(cfg_map or INPUT_CONSTANTS)
    pixel, n_ad, max_d = case_parameters(seed)
    st = simulate_neck(seed, matrix=matrix, pixel_mm=pixel, n_adenomas=n_ad, max_diameter_mm=max_d, motion=False)
    x, grid = pp.to_network(st.tc, st.iodine, cfg)
    y = pp.target_to_network(st.parathyroid, grid)
    return {"seed": int(seed), "pixel_mm": pixel, "n_adenomas": n_ad, "max_diameter_mm": max_d,
            "x": x.astype(np.float16), "y": y.astype(np.float16), "inside": grid.inside.astype(np.float16)}


def _make_case_star(args: tuple) -> dict[str, Any]:
    return make_case(*args)


def generate(seeds: Sequence[int], workers: int, log: Callable[[str], None], matrix: int = 128) -> list[dict[str, Any]]:
    t = time.monotonic()
    out: list[dict[str, Any]] = []
    jobs = [(int(s), INPUT_CONSTANTS, matrix) for s in seeds]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            for i, case in enumerate(pool.imap(_make_case_star, jobs, chunksize=8)):
                out.append(case)
                if (i + 1) % 250 == 0:
                    log(f"  simulated {i + 1}/{len(seeds)} ({time.monotonic() - t:.0f}s)")
    else:
        out = [make_case(*j) for j in jobs]
    log(f"simulated {len(seeds)} patients in {time.monotonic() - t:.0f}s")
    return out


def kfold_by_patient(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Seeded K-fold split of patient indices: a permutation cut into ``folds`` near-equal disjoint parts."""
    perm = np.random.default_rng([seed, 101]).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, folds)]


# ---------------------------------------------------------------------------------------------- augmentation
def misregister(img: np.ndarray, rng: np.random.Generator, shift_px: float, rot_deg: float) -> np.ndarray:
    """Rigidly move a 2-D image by a random residual misregistration (about its centre, linear interpolation)."""
    a = np.deg2rad(rng.uniform(-rot_deg, rot_deg))
    sh = rng.uniform(-shift_px, shift_px, 2)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = (np.asarray(img.shape, float) - 1) / 2.0
    offset = c - rot @ (c + sh)
    return ndimage.affine_transform(img, rot, offset=offset, order=1, mode="constant", cval=0.0)


def sample(case: dict[str, Any], rng: np.random.Generator, tile: int, misreg_px: float, misreg_deg: float,
           augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One training sample ``x (2, tile, tile)``, ``y (1, tile, tile)`` from a stored case."""
    x = case["x"].astype(np.float32)
    y = case["y"].astype(np.float32)
    h, w = y.shape
    r0 = int(rng.integers(0, h - tile + 1)) if h > tile else 0
    c0 = int(rng.integers(0, w - tile + 1)) if w > tile else 0
    if augment and (misreg_px > 0 or misreg_deg > 0):  # move the whole iodine image, then crop
        x = np.stack([x[0], misregister(x[1], rng, misreg_px, misreg_deg)])
    x = x[:, r0:r0 + tile, c0:c0 + tile]
    y = y[r0:r0 + tile, c0:c0 + tile]
    if augment:
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        s_tc, s_io = rng.uniform(0.9, 1.1, 2)
        x = np.stack([x[0] * s_tc, x[1] * s_io])
        y = y * s_tc
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y[None], np.float32)


def batches(cases: Sequence[dict[str, Any]], rng: np.random.Generator, batch: int, steps: int, tile: int,
            misreg_px: float, misreg_deg: float):
    import torch

    for _ in range(steps):
        xs, ys = zip(*(sample(cases[i], rng, tile, misreg_px, misreg_deg) for i in rng.integers(0, len(cases), batch)))
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


# ---------------------------------------------------------------------------------------------- Siamese pairs
def _blob(shape: tuple[int, int], rng: np.random.Generator, sigma: tuple[float, float], centre=None) -> np.ndarray:
    h, w = shape
    cy, cx = centre if centre is not None else (rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-0.5 * (((yy - cy) / sigma[0]) ** 2 + ((xx - cx) / sigma[1]) ** 2)).astype(np.float32)


def positive_of(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slightly perturbed copy: blur (sigma <= 0.8 px), +-1 px shift, scale 0.85-1.15, noise 3 % of the peak."""
    b = ndimage.gaussian_filter(a, rng.uniform(0.0, 0.8)) if rng.random() < 0.5 else a.copy()
    b = np.roll(b, tuple(int(v) for v in rng.integers(-1, 2, 2)), axis=(0, 1))
    peak = max(float(a.max()), 0.0)
    b = b * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.03 * peak + 1e-4, a.shape).astype(np.float32)
    return np.clip(b, 0.0, None).astype(np.float32)


def negative_of(a: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A different image the similarity must score low (see the module docstring)."""
    peak = float(a.max())
    h, w = a.shape
    kinds = ["other", "added", "salivary", "inverted", "shifted"]
    lab, n = ndimage.label(a > 0.05 * peak) if peak > 0 else (None, 0)
    if n >= 1:
        kinds.append("removed")
    if peak <= 0:
        kinds = ["focus", "other"] if float(other.max()) > 0 else ["focus"]
    kind = kinds[int(rng.integers(len(kinds)))]
    ref = peak if peak > 0 else 0.3
    if kind == "other" and float(other.max()) > 0 and not np.array_equal(other, a):
        return other
    if kind == "removed":
        k = int(rng.integers(1, n + 1))
        grown = ndimage.binary_dilation(lab == k, iterations=3)
        return np.where(grown, 0.0, a).astype(np.float32)
    if kind == "salivary":
        s = rng.uniform(4.0, 8.0)
        blob = _blob(a.shape, rng, (s * 1.5, s), (rng.uniform(0.05, 0.3) * h, rng.uniform(0.15, 0.85) * w))
        return (a + rng.uniform(0.5, 1.5) * ref * blob).astype(np.float32)
    if kind == "inverted":
        return (ref - a).astype(np.float32)
    if kind == "shifted":
        d = rng.integers(4, 11, 2) * rng.choice([-1, 1], 2)
        return np.roll(a, (int(d[0]), int(d[1])), axis=(0, 1))
    # "added" / "focus" / fallback: one more focus somewhere
    s = rng.uniform(1.5, 3.5)
    return (a + rng.uniform(0.4, 1.2) * ref * _blob(a.shape, rng, (s, s))).astype(np.float32)


def siamese_pairs(cases: Sequence[dict[str, Any]], rng: np.random.Generator, batch: int, tile: int):
    """A balanced batch ``(a, b, label)`` of tiles from the targets (label 1 = same, 0 = different)."""
    import torch

    a_s, b_s, lab = [], [], []
    for j in range(batch):
        c = cases[int(rng.integers(len(cases)))]
        o = cases[int(rng.integers(len(cases)))]
        _, ya = sample(c, rng, tile, 0.0, 0.0, augment=False)
        _, yo = sample(o, rng, tile, 0.0, 0.0, augment=False)
        a = ya[0]
        if j % 2 == 0:
            b, l = positive_of(a, rng), 1.0
        else:
            b, l = negative_of(a, yo[0], rng), 0.0
        if rng.random() < 0.5:
            a, b = b, a
        a_s.append(a[None])
        b_s.append(b[None])
        lab.append(l)
    return (torch.from_numpy(np.stack(a_s)), torch.from_numpy(np.stack(b_s)),
            torch.tensor(lab, dtype=torch.float32))


def train_siamese(net: Any, cases: Sequence[dict[str, Any]], rng: np.random.Generator, *, budget_s: float,
                  batch: int, tile: int, log: Callable[[str], None], max_steps: Optional[int] = None,
                  lr: float = 2e-3, warmup_s: Optional[float] = None) -> dict[str, Any]:
    """Pair-scorer pre-training (BCE on the bounded similarity), then the net is frozen (eval, no grad).
    ``warmup_s=0`` with a huge ``budget_s`` gives a constant learning rate (deterministic step-capped runs)."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = CosineByTime(opt, lr, budget_s, warmup_s=min(10.0, budget_s / 5) if warmup_s is None else warmup_s)
    t0 = time.monotonic()
    step, hist = 0, []
    net.train()
    while time.monotonic() - t0 < budget_s and (max_steps is None or step < max_steps):
        sched.step()
        a, b, lab = siamese_pairs(cases, rng, batch, tile)
        sim = net.similarity(a, b).clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(sim, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            log(f"siamese step {step}: BCE {np.mean(hist[-50:]):.4f}")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return {"steps": step, "final_bce": float(np.mean(hist[-20:])) if hist else None}


@np.errstate(all="ignore")
def siamese_check(net: Any, cases: Sequence[dict[str, Any]], tile: int, seed: int = 1, n: int = 64) -> dict[str, float]:
    """Mean similarity of (truth, truth), (truth, inverted), (truth, perturbed) and (truth, another negative) on
    tiles with a non-zero truth, and the pair accuracy at 0.5 (a sanity check written to the log)."""
    import torch

    rng = np.random.default_rng(seed)
    ys = [sample(c, rng, tile, 0.0, 0.0, augment=False)[1] for c in cases if float(c["y"].max()) > 0][:n]
    if not ys:
        return {}
    a = torch.from_numpy(np.stack(ys))
    inv = torch.from_numpy(np.stack([(y.max() - y) for y in ys]))
    pos = torch.from_numpy(np.stack([positive_of(y[0], rng)[None] for y in ys]))
    neg = torch.from_numpy(np.stack([negative_of(y[0], ys[(i + 1) % len(ys)][0], rng)[None] for i, y in enumerate(ys)]))
    with torch.no_grad():
        s_same, s_inv = net.similarity(a, a), net.similarity(a, inv)
        s_pos, s_neg = net.similarity(a, pos), net.similarity(a, neg)
    acc = 0.5 * (float((s_pos > 0.5).float().mean()) + float((s_neg < 0.5).float().mean()))
    return {"same": float(s_same.mean()), "inverted": float(s_inv.mean()), "positive": float(s_pos.mean()),
            "negative": float(s_neg.mean()), "pair_accuracy": acc}


# ---------------------------------------------------------------------------------------------- generator
class GeneratorLoss:
    """``UncertaintyWeighting([foreground-weighted MSE, 1 - siamese similarity])``; see the module docstring."""

    def __init__(self, siamese: Any, fg_weight: float = 4.0):
        from MedSegAILib.train.losses import UncertaintyWeighting

        self.siamese, self.fg_weight = siamese, fg_weight
        self.weighting = UncertaintyWeighting(2)
        self.initialised = False
        self.last: tuple[float, float] = (float("nan"), float("nan"))

    def terms(self, y_hat: Any, y: Any) -> tuple[Any, Any]:
        import torch

        from MedSegAILib.train.losses import foreground_weighted_mse

        mse = foreground_weighted_mse(y_hat, y, self.fg_weight)
        has = y.detach().flatten(1).amax(dim=1) > 0
        if bool(has.any()):
            sim = self.siamese.similarity(y[has], y_hat[has])
            l_sim = (1.0 - sim).mean()
        else:
            l_sim = mse.new_zeros(())
        return mse, l_sim

    def __call__(self, y_hat: Any, y: Any) -> Any:
        mse, l_sim = self.terms(y_hat, y)
        if not self.initialised:
            self.weighting.init_from([float(mse.detach()), max(float(l_sim.detach()), 1e-3)])
            self.initialised = True
        self.last = (float(mse.detach()), float(l_sim.detach()))
        return self.weighting([mse, l_sim])


def build_generator(hp: dict[str, Any], seed: int) -> Any:
    import torch

    from MedSegAILib import nets

    torch.manual_seed(seed)
    g = nets.build("unet2d", **hp)
    with torch.no_grad():
        g.head.bias.fill_(-4.0)
    return g


def predict(net: Any, cases: Sequence[dict[str, Any]], batch: int = 8) -> list[np.ndarray]:
    """Full-grid predictions (network grid, normaliser units) of stored cases, grouped by grid shape."""
    import torch

    out: list[Optional[np.ndarray]] = [None] * len(cases)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(cases):
        by_shape.setdefault(tuple(c["y"].shape), []).append(i)
    net.eval()
    with torch.no_grad():
        for idx in by_shape.values():
            for k in range(0, len(idx), batch):
                part = idx[k:k + batch]
                x = torch.from_numpy(np.stack([cases[i]["x"].astype(np.float32) for i in part]))
                y = net(x)[:, 0].numpy()
                for i, p in zip(part, y):
                    out[i] = p * cases[i]["inside"].astype(np.float32)
    return out  # type: ignore[return-value]


def study_pearson(net: Any, cases: Sequence[dict[str, Any]]) -> tuple[list[float], int]:
    """Per-study Pearson r on the network grid (within the field of view); studies with an all-zero truth are
    excluded and their number returned."""
    import torch

    from MedSegAILib.train.losses import pearson_r

    preds = predict(net, cases)
    rs: list[float] = []
    n_empty = 0
    for c, p in zip(cases, preds):
        r = float(pearson_r(torch.from_numpy(c["y"].astype(np.float32)[None]), torch.from_numpy(p[None]))[0])
        if np.isnan(r):
            n_empty += 1
        else:
            rs.append(r)
    return rs, n_empty


def train_generator(train_cases, siamese, args, budget_s: float, seed: int, log, val_cases=None,
                    hp: Optional[dict[str, Any]] = None) -> tuple[Any, GeneratorLoss, Any]:
    """One generator training run (fresh network, weighting and optimiser) with the generic loop."""
    import torch

    from MedSegAILib.train.loop import train

    gen = build_generator(hp or GENERATOR_HP, seed)
    loss = GeneratorLoss(siamese, fg_weight=args.fg_weight)
    opt = torch.optim.Adam([{"params": gen.parameters()},
                            {"params": loss.weighting.parameters(), "lr_scale": args.weight_lr_scale}], lr=args.lr)
    sched = CosineByTime(opt, args.lr, budget_s, warmup_s=min(20.0, budget_s / 6))
    rng = np.random.default_rng([seed, 3])
    misreg_px = args.misreg_mm / float(INPUT_CONSTANTS["pixel_mm"])

    def data():
        return stepping(batches(train_cases, rng, args.batch, args.epoch_steps, args.tile, misreg_px,
                                args.misreg_deg), sched)

    def val_metric(model) -> float:
        rs, _ = study_pearson(model, val_cases)
        return float(np.mean(rs)) if rs else 0.0

    def log_epoch(s: str) -> None:
        w = loss.weighting.weights().detach().numpy()
        log(f"{s}  mse {loss.last[0]:.2e} l_sim {loss.last[1]:.3f} weights [{w[0]:.3g}, {w[1]:.3g}]")

    max_epochs = args.max_steps // args.epoch_steps if args.max_steps else 100_000
    res = train(gen, data, loss, opt, val_metric=val_metric if val_cases else None, epochs=max(1, max_epochs),
                time_budget_s=budget_s, log=log_epoch, grad_clip=5.0)
    return gen, loss, res


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (weights, metrics.json, train.log)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--fold-minutes", type=float, default=1.5)
    ap.add_argument("--final-minutes", type=float, default=18.0)
    ap.add_argument("--siamese-minutes", type=float, default=1.5)
    ap.add_argument("--n-patients", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=64, help="internal validation patients of the final model")
    ap.add_argument("--fold-val-max", type=int, default=0, help="evaluate at most this many held-out patients "
                    "per fold (0 = all)")
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--tile", type=int, default=96, help="generator training tile (px)")
    ap.add_argument("--siamese-tile", type=int, default=64, help="Siamese pre-training tile (px)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epoch-steps", type=int, default=100, help="steps per epoch (validation after each)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-lr-scale", type=float, default=10.0)
    ap.add_argument("--fg-weight", type=float, default=4.0)
    ap.add_argument("--misreg-mm", type=float, default=1.5)
    ap.add_argument("--misreg-deg", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0, help="cap on generator steps per run (0 = time only)")
    ap.add_argument("--workers", type=int, default=2, help="processes for the simulation")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run (tests): few patients, tiny nets")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_patients, args.n_val, args.folds, args.matrix, args.tile, args.siamese_tile = 10, 2, 2, 64, 32, 32
        args.batch, args.epoch_steps, args.max_steps, args.workers = 2, 2, 2, 1
        args.fold_minutes, args.final_minutes, args.siamese_minutes = 0.05, 0.1, 0.05
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    import torch

    from MedSegAILib import nets

    t_start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = file_logger(out / "train.log", t_start)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen_hp = SMOKE_GENERATOR_HP if args.smoke else GENERATOR_HP
    sia_hp = SMOKE_SIAMESE_HP if args.smoke else SIAMESE_HP
    cmd = "python -m MedSegAILib.train.parathyroid " + " ".join(argv if argv is not None else sys.argv[1:])
    log(f"command: {cmd}")

    # ---- data
    seeds = [TRAIN_SEED_BASE + n for n in range(args.n_patients)]
    log(f"simulating {len(seeds)} patients (seeds {seeds[0]}..{seeds[-1]}), matrix {args.matrix}")
    cases = generate(seeds, args.workers, log, matrix=args.matrix)
    n_ad = np.bincount([c["n_adenomas"] for c in cases], minlength=4).tolist()
    log(f"adenoma counts 0/1/2/3: {n_ad}; grid sizes {sorted({c['y'].shape for c in cases})}")
    t_data = time.monotonic() - t_start

    # ---- Siamese (trained before the generator, then frozen)
    siamese = nets.build("siamese2d", **sia_hp)
    torch.manual_seed(args.seed)
    s_info = train_siamese(siamese, cases, np.random.default_rng([args.seed, 5]), budget_s=args.siamese_minutes * 60,
                           batch=16 if not args.smoke else 4, tile=args.siamese_tile, log=log,
                           max_steps=4 if args.smoke else None)
    s_check = siamese_check(siamese, cases, args.tile)
    log(f"siamese: {s_info}; check {s_check}")

    # ---- cross-validation
    folds = kfold_by_patient(len(cases), args.folds, args.seed)
    fold_records = []
    for k, held in enumerate(folds):
        held_set = set(held.tolist())
        tr = [c for i, c in enumerate(cases) if i not in held_set]
        te = [cases[i] for i in held]
        if args.fold_val_max:
            te = te[:args.fold_val_max]
        log(f"fold {k + 1}/{args.folds}: train {len(tr)}, held out {len(te)} patients")
        gen, loss, res = train_generator(tr, siamese, args, args.fold_minutes * 60, args.seed * 1000 + k,
                                         lambda s, k=k: log(f"fold {k + 1} {s}"), hp=gen_hp)
        rs, n_empty = study_pearson(gen, te)
        w = loss.weighting.weights().detach().numpy().tolist()
        rec = {"fold": k + 1, "n_train": len(tr), "n_heldout": len(te), "n_heldout_all_zero_truth": n_empty,
               "pearson_mean": float(np.mean(rs)) if rs else None,
               "pearson_median": float(np.median(rs)) if rs else None,
               "steps": res.history[-1].steps if res.history else 0, "uncertainty_weights": w}
        fold_records.append(rec)
        log(f"fold {k + 1}: held-out Pearson r {rec['pearson_mean']} over {len(rs)} studies "
            f"({n_empty} with all-zero truth excluded); steps {rec['steps']}; weights {w}")
    fold_r = [r["pearson_mean"] for r in fold_records if r["pearson_mean"] is not None]
    log(f"cross-validation: Pearson r {np.mean(fold_r):.4f} +- {np.std(fold_r, ddof=1) if len(fold_r) > 1 else 0:.4f}")

    # ---- final model
    perm = np.random.default_rng([args.seed, 11]).permutation(len(cases))
    val = [cases[i] for i in perm[:args.n_val]]
    trn = [cases[i] for i in perm[args.n_val:]]
    log(f"final model: train {len(trn)}, internal validation {len(val)} patients, {args.final_minutes} min")
    gen, loss, res = train_generator(trn, siamese, args, args.final_minutes * 60, args.seed * 1000 + 999,
                                     lambda s: log(f"final {s}"), val_cases=val, hp=gen_hp)
    rs, n_empty = study_pearson(gen, val)
    weights = loss.weighting.weights().detach().numpy().tolist()
    save_state(gen, out / "generator.safetensors")
    save_state(siamese, out / "siamese.safetensors")
    n_gen = sum(p.numel() for p in gen.parameters())
    n_sia = sum(p.numel() for p in siamese.parameters())
    metrics = {
        "command": cmd,
        "seed": args.seed,
        "n_patients": len(cases),
        "train_seeds": f"{seeds[0]}..{seeds[-1]}",
        "test_seed_base": TEST_SEED_BASE,
        "adenoma_count_histogram": n_ad,
        "pixel_mm_range": list(PIXEL_MM_RANGE),
        "generator_architecture": "unet2d",
        "generator_hyperparameters": gen_hp,
        "generator_parameters": int(n_gen),
        "siamese_architecture": "siamese2d",
        "siamese_hyperparameters": sia_hp,
        "siamese_parameters": int(n_sia),
        "input": INPUT_CONSTANTS,
        "siamese_training": s_info,
        "siamese_check": s_check,
        "cv_folds": fold_records,
        "cv_pearson_mean": float(np.mean(fold_r)) if fold_r else None,
        "cv_pearson_sd": float(np.std(fold_r, ddof=1)) if len(fold_r) > 1 else None,
        "final_val_pearson_mean": float(np.mean(rs)) if rs else None,
        "final_val_pearson_median": float(np.median(rs)) if rs else None,
        "final_val_n": len(rs),
        "final_val_n_all_zero_truth": n_empty,
        "final_best_epoch": res.best_epoch,
        "final_steps": res.history[-1].steps if res.history else 0,
        "final_uncertainty_weights": weights,
        "final_history": res.history_dicts(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "data_seconds": t_data,
        "wall_time_s": time.monotonic() - t_start,
        "torch_threads": args.threads,
        "torch_version": torch.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(f"done in {metrics['wall_time_s']:.0f}s; CV r {metrics['cv_pearson_mean']}, final validation r "
        f"{metrics['final_val_pearson_mean']} ; weights {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
