"""Training recipe of the mpi-myocardium model (LV localizer + myocardium/cavity segmenter) on simulated SPECT.

    python -m MedSegAILib.train.mpi_myocardium --out MedSegAILib/weights/mpi-myocardium --seed 0 --minutes 30

* Data: :func:`MedSegAILib.simulate.spect.simulate_spect`, one simulated patient per seed. Training patients
  use seeds ``TRAIN_SEED_BASE * (seed + 1) + i``; validation patients ``VAL_SEED_BASE + i`` (never trained on);
  the benchmark and the tests use ``TEST_SEED_BASE + i`` (disjoint from both).
* Pre-processing: exactly the inference functions of :mod:`MedSegAILib.tasks.mpi_myocardium.preprocess`
  (same constants, written into the manifest ``input`` dict).
* Targets: class *volume fractions* on the network grid, computed from the analytic LV shape with sub-voxel
  supersampling (soft labels), so the network learns partial-volume-aware probabilities.
* Localizer: whole field of view at 8 mm -> P(LV = myocardium + cavity); random 48^3 (384 mm) crops.
* Segmenter: 48^3 box at 3 mm around the true LV centroid with +-4 voxels (12 mm) random shift (the
  localisation error), random flips / axis permutations, mild intensity scaling; 3 classes.
* Loss: soft-target cross-entropy + soft Dice (foreground classes). Adam, cosine learning-rate decay over
  the time budget, best epoch kept by validation Dice (localizer: by validation centre error).
* Output: ``localizer.safetensors``, ``segmenter.safetensors`` (float32 state dicts), ``metrics.json``
  (history, validation metrics, hyper-parameters, the pre-processing constants and the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MedSegAILib.simulate.spect import LVShape, simulate_spect
from MedSegAILib.tasks.mpi_myocardium import preprocess as pp
from MedSegAILib.metrics import dice
from MedSegAILib.train.common import CosineByTime, stepping as _stepping  # noqa: F401 (re-exported)

TRAIN_SEED_BASE = 1_000_000
VAL_SEED_BASE = 900_000_000
TEST_SEED_BASE = 950_000_000

LOCALIZER_HP: dict[str, Any] = {"in_channels": 1, "out_channels": 2, "features": [4, 8, 16, 32], "levels": 3,
                                "norm": "batch"}
SEGMENTER_HP: dict[str, Any] = {"in_channels": 1, "out_channels": 3, "features": [12, 24, 48, 96], "levels": 3,
                                "norm": "batch"}
#: the manifest ``input`` dict (pre-processing constants shared by training and inference)
INPUT_CONSTANTS: dict[str, Any] = pp.PreprocessConfig().to_mapping()

LOC_PATCH = 48
SEG_MARGIN = 4  # extra voxels per side of the stored segmenter box (random-shift augmentation)


# ---------------------------------------------------------------------------------------------- data
def make_case(seed: int, cfg_map: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Simulate one patient and pre-process it the way inference does (plus soft targets)."""
    cfg = pp.PreprocessConfig.from_mapping(cfg_map or INPUT_CONSTANTS)
    img, _, params = simulate_spect(seed)
    lv = LVShape.from_dict(params["lv"])
    centroid = np.asarray(params["lv_centroid_lps"])
    # localizer: whole FOV
    loc_x, loc_grid = pp.prepare_localizer_input(img, cfg)
    fr = lv.fractions(loc_grid, supersample=4)
    loc_y = fr[1] + fr[2]
    loc_c = np.asarray(Volume_index(loc_grid, centroid))
    # segmenter: enlarged box around the true centroid, stored un-normalised (normalised after cropping)
    shape = tuple(s + 2 * SEG_MARGIN for s in cfg.segmenter_shape)
    grid = pp.centred_grid(img, centroid, cfg.segmenter_spacing_mm, shape)
    src = img.geometry()
    raw = pp.resample_aligned(img.array, src, grid, 0.0)
    inside = pp.inside_fraction(src, grid) > 0.5
    ref = float(raw.max()) or 1.0
    seg_y = lv.fractions(grid, supersample=3)
    return {
        "seed": seed,
        "loc_x": loc_x[0].astype(np.float16),
        "loc_y": np.round(loc_y * 255).astype(np.uint8),
        "loc_center_kji": loc_c[::-1],
        "loc_grid": loc_grid.to_mapping(),
        "centroid": centroid,
        "seg_raw": (raw / ref).astype(np.float16),
        "seg_inside": inside,
        "seg_y": np.round(seg_y * 255).astype(np.uint8),
        "spacing": float(np.mean(img.spacing)),
    }


def Volume_index(grid, point):  # noqa: N802 - tiny helper
    from MedSegAILib.core.volume import Volume

    return Volume(np.zeros((1, 1, 1)), grid.spacing, grid.origin, grid.direction).lps_to_index(point)[0]


def _make_case_star(args):
    return make_case(*args)


def generate(seeds: list[int], workers: int, log) -> list[dict[str, Any]]:
    t = time.time()
    out: list[dict[str, Any]] = []
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            for i, case in enumerate(pool.imap(_make_case_star, [(s, INPUT_CONSTANTS) for s in seeds], chunksize=4)):
                out.append(case)
                if (i + 1) % 50 == 0:
                    log(f"  simulated {i + 1}/{len(seeds)} ({time.time() - t:.0f}s)")
    else:
        for s in seeds:
            out.append(make_case(s, INPUT_CONSTANTS))
    log(f"simulated {len(seeds)} cases in {time.time() - t:.0f}s")
    return out


# ---------------------------------------------------------------------------------------------- batches
def _augment(rng: np.random.Generator, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Same random flips and axis permutation on the last three axes of every array."""
    perm = rng.permutation(3)
    flips = rng.random(3) < 0.5
    out = []
    for a in arrays:
        lead = a.ndim - 3
        b = np.transpose(a, tuple(range(lead)) + tuple(lead + p for p in perm))
        for ax in range(3):
            if flips[ax]:
                b = np.flip(b, axis=lead + ax)
        out.append(np.ascontiguousarray(b))
    return out


def loc_batches(cases, rng, batch, steps):
    import torch

    p = LOC_PATCH
    for _ in range(steps):
        xs, ys = [], []
        for idx in rng.integers(0, len(cases), batch):
            c = cases[idx]
            x = c["loc_x"].astype(np.float32)
            y = c["loc_y"].astype(np.float32) / 255.0
            cen = np.asarray(c["loc_center_kji"])
            xo = np.zeros((p, p, p), np.float32)
            yo = np.zeros((p, p, p), np.float32)
            src_sl, dst_sl = [], []
            for ax in range(3):
                n = x.shape[ax]
                if n <= p:
                    start_dst = int(rng.integers(0, p - n + 1))
                    src_sl.append(slice(0, n))
                    dst_sl.append(slice(start_dst, start_dst + n))
                else:  # crop keeping the LV centre inside, at a random place
                    lo = int(np.clip(cen[ax] - p + 12, 0, n - p))
                    hi = int(np.clip(cen[ax] - 12, 0, n - p))
                    s = int(rng.integers(min(lo, hi), max(lo, hi) + 1))
                    src_sl.append(slice(s, s + p))
                    dst_sl.append(slice(0, p))
            xo[tuple(dst_sl)] = x[tuple(src_sl)]
            yo[tuple(dst_sl)] = y[tuple(src_sl)]
            xo, yo = _augment(rng, [xo, yo])
            xo = np.clip(xo * rng.uniform(0.85, 1.15), 0, None)
            xs.append(xo[None])
            ys.append(np.stack([1.0 - yo, yo]))
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def seg_crop(case, cfg: pp.PreprocessConfig, offset) -> tuple[np.ndarray, np.ndarray]:
    n = cfg.segmenter_shape
    sl = tuple(slice(int(o), int(o) + s) for o, s in zip(offset, n))
    raw = case["seg_raw"][sl].astype(np.float32)
    x = pp.normalise(raw, cfg, case["seg_inside"][sl])
    y = case["seg_y"][(slice(None),) + sl].astype(np.float32) / 255.0
    return x, y


def seg_batches(cases, cfg, rng, batch, steps):
    import torch

    for _ in range(steps):
        xs, ys = [], []
        for idx in rng.integers(0, len(cases), batch):
            off = rng.integers(0, 2 * SEG_MARGIN + 1, 3)
            x, y = seg_crop(cases[idx], cfg, off)
            x, y = _augment(rng, [x, y])
            x = np.clip(x * rng.uniform(0.85, 1.15), 0, cfg.normalise_clip)
            xs.append(x[None])
            ys.append(y)
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


# ---------------------------------------------------------------------------------------------- loss / metrics
def soft_dice_ce(logits, target, fg=(1,), dice_weight: float = 1.0):
    """Soft-target cross-entropy ``-mean sum_c t_c log p_c`` + ``dice_weight`` x (1 - soft Dice of the classes
    ``fg``, per sample, smooth 1, absent classes kept: :func:`MedSegAILib.train.losses.soft_dice_loss`)."""
    import torch

    from MedSegAILib.train.losses import soft_dice_loss

    logp = torch.log_softmax(logits, dim=1)
    ce = -(target * logp).sum(dim=1).mean()
    dice_loss = soft_dice_loss(logits, target, classes=fg, eps=1.0, batch_dice=False, empty="include")
    return ce + dice_weight * dice_loss


def seg_val_metric(cases, cfg):
    """Mean myocardium Dice (argmax vs plurality of the true fractions), central crop, network grid."""
    import torch

    def metric(model) -> float:
        ds_m = []
        for c in cases:
            x, y = seg_crop(c, cfg, (SEG_MARGIN,) * 3)
            out = model(torch.from_numpy(x[None, None]))[0].argmax(0).numpy()
            truth = y.argmax(0)
            ds_m.append(dice(out == 1, truth == 1))
        return float(np.mean(ds_m))

    return metric


def localizer_errors(model, cases, cfg) -> list[float]:
    import torch

    from MedSegAILib.core.volume import Geometry

    errs = []
    for c in cases:
        x = c["loc_x"].astype(np.float32)
        with torch.no_grad():
            prob = torch.softmax(model(torch.from_numpy(x[None, None])), dim=1)[0, 1].numpy()
        grid = Geometry.from_mapping(c["loc_grid"])
        loc = pp.localise_lv(prob, grid, cfg)
        errs.append(float(np.linalg.norm(loc.center_lps - c["centroid"])))
    return errs


# ---------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (weights, metrics.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=30.0, help="total wall-time budget (simulation + training)")
    ap.add_argument("--n-train", type=int, default=480)
    ap.add_argument("--n-val", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2, help="processes for the simulation")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--localizer-share", type=float, default=0.25, help="share of the training time for the localizer")
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    from MedSegAILib import nets
    from MedSegAILib.train.loop import train

    t_start = time.monotonic()
    budget = args.minutes * 60.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_f = open(out / "train.log", "a")

    def log(s: str) -> None:
        line = f"[{time.monotonic() - t_start:7.1f}s] {s}"
        print(line, flush=True)
        log_f.write(line + "\n")
        log_f.flush()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cfg = pp.PreprocessConfig.from_mapping(INPUT_CONSTANTS)
    train_seeds = [TRAIN_SEED_BASE * (args.seed + 1) + i for i in range(args.n_train)]
    val_seeds = [VAL_SEED_BASE + i for i in range(args.n_val)]
    log(f"command: {' '.join(sys.argv)}")
    log(f"simulating {len(train_seeds)} training + {len(val_seeds)} validation patients")
    torch.set_num_threads(1)
    train_cases = generate(train_seeds, args.workers, log)
    val_cases = generate(val_seeds, args.workers, log)
    torch.set_num_threads(args.threads)

    remaining = budget - (time.monotonic() - t_start) - 60.0
    loc_budget = max(60.0, remaining * args.localizer_share)
    seg_budget = max(120.0, remaining - loc_budget)

    # ---- localizer
    loc = nets.build("unet3d", **LOCALIZER_HP)
    opt = torch.optim.Adam(loc.parameters(), lr=3e-3)
    sched = CosineByTime(opt, 3e-3, loc_budget)
    log(f"localizer: {sum(p.numel() for p in loc.parameters())} parameters, budget {loc_budget:.0f}s")

    def loc_metric(model) -> float:
        return -float(np.mean(np.minimum(localizer_errors(model, val_cases, cfg), 50.0)))

    res_loc = train(loc, lambda: _stepping(loc_batches(train_cases, rng, 2, 50), sched),
                    lambda o, t: soft_dice_ce(o, t, fg=(1,)), opt, val_metric=loc_metric, epochs=10_000,
                    time_budget_s=loc_budget, log=lambda s: log("loc " + s))
    loc.eval()
    loc_errs = localizer_errors(loc, val_cases, cfg)
    log(f"localizer validation centre error: mean {np.mean(loc_errs):.1f} mm, max {np.max(loc_errs):.1f} mm")

    # ---- segmenter
    seg = nets.build("unet3d", **SEGMENTER_HP)
    opt = torch.optim.Adam(seg.parameters(), lr=3e-3)
    sched = CosineByTime(opt, 3e-3, seg_budget)
    log(f"segmenter: {sum(p.numel() for p in seg.parameters())} parameters, budget {seg_budget:.0f}s")
    res_seg = train(seg, lambda: _stepping(seg_batches(train_cases, cfg, rng, 2, 100), sched),
                    lambda o, t: soft_dice_ce(o, t, fg=(1, 2)), opt, val_metric=seg_val_metric(val_cases, cfg),
                    epochs=10_000, time_budget_s=seg_budget, log=lambda s: log("seg " + s))

    save_file({k: v.detach().contiguous() for k, v in loc.state_dict().items()}, str(out / "localizer.safetensors"))
    save_file({k: v.detach().contiguous() for k, v in seg.state_dict().items()}, str(out / "segmenter.safetensors"))
    metrics = {
        "command": "python -m MedSegAILib.train.mpi_myocardium " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed,
        "n_train": len(train_seeds),
        "n_val": len(val_seeds),
        "train_seeds": f"{train_seeds[0]}..{train_seeds[-1]}",
        "val_seeds": f"{val_seeds[0]}..{val_seeds[-1]}",
        "localizer_hyperparameters": LOCALIZER_HP,
        "segmenter_hyperparameters": SEGMENTER_HP,
        "input": INPUT_CONSTANTS,
        "localizer_val_center_error_mm": {"mean": float(np.mean(loc_errs)), "median": float(np.median(loc_errs)),
                                          "max": float(np.max(loc_errs))},
        "segmenter_val_dice_myocardium_network_grid": res_seg.best_metric,
        "segmenter_best_epoch": res_seg.best_epoch,
        "localizer_history": res_loc.history_dicts(),
        "segmenter_history": res_seg.history_dicts(),
        "wall_time_s": time.monotonic() - t_start,
        "torch_threads": args.threads,
        "torch_version": torch.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(f"done in {metrics['wall_time_s']:.0f}s; validation myocardium Dice (network grid) {res_seg.best_metric:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
