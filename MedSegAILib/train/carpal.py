"""Training recipe of the carpal-bone U-Nets: DRRs of simulated hand/wrist phantoms, three pre-processing options.

Re-run (not in CI; about 45 minutes on 2 CPU cores)::

    python -m MedSegAILib.train.carpal --out /tmp/carpal-train --seed 0

Data. Every phantom (:func:`MedSegAILib.simulate.hand_phantom.simulate_hand`, one seed = one "patient") gives
``--views`` PA radiographs (:mod:`MedSegAILib.simulate.drr`: cone-beam projection of the HU volume with
Beer-Lambert attenuation, random source distance, detector pixel size (field of view 90-155 mm), in-plane
rotation, tilts, exposure, scatter, noise, blur and display curve) with their label maps (the longest bone path
along each ray; metacarpals are background). Training, validation and test phantoms have disjoint seed ranges
(:data:`SEEDS`); the validation phantoms pick the checkpoint only, the test phantoms are never seen here (they
are the benchmark's, ``bench/bench_carpal.py``).

Model. One 2-D U-Net per pre-processing option (``none``, ``global``, ``local``;
:mod:`MedSegAILib.tasks.carpal.preprocess`), the paper's family: 5 resolution levels, batch norm, leaky ReLU
(slope 0.3, as Keras' default the paper used), softmax over 10 bones + background, sized for CPU training
(16-256 channels instead of 64-1024). Loss: soft multi-class Dice over the ten bones (sums over batch and pixels,
as the paper) + cross-entropy. Adam with a cosine schedule by step (the paper's schedule was never applied).
Augmentation: random 160-pixel crops and horizontal mirroring (a left hand is a mirrored right hand; the labels
mirror with it), applied to the training batches only (the paper also augmented its validation data). All three
options get the same data, the same number of steps and the same seed, so their validation Dice compares the
pre-processing alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from MedSegAILib.train.common import file_logger, save_state

#: phantom seed ranges ("patients"): training, validation (checkpoint choice), test (benchmark only)
SEEDS = {"train": 10_000, "val": 20_000, "test": 30_000}
N_CLASSES = 11  # background + 10 bones
NET_SIZE = 256
NET_HP = {"in_channels": 1, "out_channels": N_CLASSES, "features": [16, 32, 64, 128, 256], "levels": 4,
          "norm": "batch", "act": "leaky_relu", "negative_slope": 0.3}


# ---------------------------------------------------------------------------------------------- data
def make_views(seed: int, n_views: int, size: int = NET_SIZE) -> list[dict[str, Any]]:
    """DRRs + label maps of phantom ``seed`` as plain arrays (``image`` float32 (H, W) in [0, 1], ``label``
    uint8 (H, W)), see :func:`MedSegAILib.simulate.wrist_xray.simulate_wrist_views`."""
    from MedSegAILib.simulate.wrist_xray import simulate_wrist_views

    return [{"image": v.image.array[0], "label": v.label.array[0], **{k: v.info[k] for k in ("seed", "pixel_mm", "side")}}
            for v in simulate_wrist_views(seed, n_views, size=size)]


def _views_star(a: tuple) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    return make_views(*a)


def generate(seeds: Sequence[int], n_views: int, workers: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    jobs = [(int(s), n_views) for s in seeds]
    views: list[dict[str, Any]] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            for i, v in enumerate(ex.map(_views_star, jobs, chunksize=2)):
                views += v
                if (i + 1) % 20 == 0:
                    log(f"  {i + 1}/{len(jobs)} phantoms, {time.monotonic() - t0:.0f}s")
    else:
        for i, j in enumerate(jobs):
            views += _views_star(j)
    log(f"generated {len(views)} views of {len(jobs)} phantoms in {time.monotonic() - t0:.0f}s")
    return views


def prepared(views: Sequence[dict[str, Any]], mode: str) -> np.ndarray:
    """Network inputs (N, 1, S, S) of ``views`` with pre-processing ``mode`` (the inference path's function)."""
    from MedSegAILib.tasks.carpal.preprocess import prepare_input

    return np.stack([prepare_input(v["image"], mode, NET_SIZE)[0] for v in views]).astype(np.float32)


# ---------------------------------------------------------------------------------------------- loss, metric
class DiceCELoss:
    """``1 - mean_c soft Dice_c`` over the bone classes (sums over batch and pixels, smooth 1) + cross-entropy.

    Soft Dice per class c: ``(2 sum y_c p_c + s) / (sum y_c + sum p_c + s)`` with softmax probabilities p and
    one-hot targets y; background is left out of the Dice term (it would dominate) and kept in the CE term. Bones
    absent from a batch keep their term (``empty="include"`` of :func:`MedSegAILib.train.losses.soft_dice_loss`)."""

    def __init__(self, ce_weight: float = 1.0, smooth: float = 1.0):
        self.ce_weight, self.smooth = ce_weight, smooth

    def __call__(self, logits: Any, target: Any) -> Any:
        import torch.nn.functional as F

        from MedSegAILib.train.losses import soft_dice_loss

        dice_loss = soft_dice_loss(logits, target, classes=range(1, logits.shape[1]), eps=self.smooth,
                                   batch_dice=True, empty="include")
        return dice_loss + self.ce_weight * F.cross_entropy(logits, target.long())


def predict_labels(net: Any, x: np.ndarray, batch: int = 8) -> np.ndarray:
    """Arg-max label maps (N, S, S) of network inputs ``x`` (N, 1, S, S)."""
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(x), batch):
            xb = torch.from_numpy(x[k:k + batch])
            out.append(net(xb).argmax(1).numpy().astype(np.uint8))
    return np.concatenate(out)


def per_bone_dice(pred: np.ndarray, ref: np.ndarray, bones: Sequence[int] = range(1, 11)) -> np.ndarray:
    """(N, len(bones)) Dice per image and bone on label maps; NaN where the bone is in neither map."""
    from MedSegAILib.metrics import dice

    out = np.full((len(pred), len(bones)), np.nan)
    for i, (p, r) in enumerate(zip(pred, ref)):
        for j, b in enumerate(bones):
            if (p == b).any() or (r == b).any():
                out[i, j] = dice(p == b, r == b)
    return out


# ---------------------------------------------------------------------------------------------- training
def batches(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, batch: int, steps: int, crop: int):
    import torch

    n, s = len(x), x.shape[-1]
    for _ in range(steps):
        idx = rng.integers(0, n, batch)
        xb = np.empty((batch, 1, crop, crop), np.float32)
        yb = np.empty((batch, crop, crop), np.int64)
        for b, i in enumerate(idx):
            r0, c0 = rng.integers(0, s - crop + 1, 2)
            xi, yi = x[i, :, r0:r0 + crop, c0:c0 + crop], y[i, r0:r0 + crop, c0:c0 + crop]
            if rng.random() < 0.5:
                xi, yi = xi[..., ::-1], yi[..., ::-1]
            xb[b], yb[b] = xi, yi
        yield torch.from_numpy(xb), torch.from_numpy(yb)


def build_net(seed: int, hp: Optional[dict[str, Any]] = None) -> Any:
    import torch

    from MedSegAILib import nets

    torch.manual_seed(seed)
    return nets.build("unet2d", **(hp or NET_HP))


def train_mode(mode: str, train_views, val_views, args, log) -> tuple[Any, dict[str, Any]]:
    """Train one U-Net with pre-processing ``mode`` for ``args.steps`` steps; returns it (best validation
    checkpoint) and its record."""
    import torch

    from MedSegAILib.train.loop import train

    x, y = prepared(train_views, mode), np.stack([v["label"] for v in train_views])
    xv, yv = prepared(val_views, mode), np.stack([v["label"] for v in val_views])
    net = build_net(args.seed, args.hp)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    total = args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s / total, 1)))))
    rng = np.random.default_rng([args.seed, 5])
    epochs = max(1, math.ceil(total / args.epoch_steps))

    def data():
        for b in batches(x, y, rng, args.batch, args.epoch_steps, args.crop):
            yield b
            sched.step()

    def val_metric(model) -> float:
        d = per_bone_dice(predict_labels(model, xv), yv)
        return float(np.nanmean(d))

    t0 = time.monotonic()
    res = train(net, data, DiceCELoss(), opt, val_metric=val_metric, epochs=epochs,
                log=lambda s: log(f"[{mode}] {s}"), grad_clip=5.0)
    d = per_bone_dice(predict_labels(net, xv), yv)
    rec = {"mode": mode, "best_epoch": res.best_epoch, "val_mean_dice": float(np.nanmean(d)),
           "val_per_bone_dice": [float(v) for v in np.nanmean(d, axis=0)], "steps": total,
           "minutes": (time.monotonic() - t0) / 60, "history": res.history_dicts()}
    return net, rec


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder: <mode>.safetensors, metrics.json, train.log")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="none,global,local")
    ap.add_argument("--n-train", type=int, default=160, help="training phantoms")
    ap.add_argument("--n-val", type=int, default=16, help="validation phantoms")
    ap.add_argument("--views", type=int, default=6, help="radiographs per training phantom")
    ap.add_argument("--val-views", type=int, default=2)
    ap.add_argument("--steps", type=int, default=700, help="optimiser steps per model (same for every mode)")
    ap.add_argument("--epoch-steps", type=int, default=70, help="steps between validations")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="", help="npz cache of the generated views (re-used when present)")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run (tests)")
    args = ap.parse_args(argv)
    args.hp = dict(NET_HP)
    if args.smoke:
        args.n_train, args.n_val, args.views, args.val_views = 2, 1, 1, 1
        args.steps, args.epoch_steps, args.batch, args.crop = 2, 1, 2, 64
        args.hp["features"] = [4, 8, 8, 8, 8]
    return args


def load_or_generate(args, log) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=True)
        log(f"views from cache {cache}")
        return list(z["train"]), list(z["val"])
    tr = generate(range(SEEDS["train"], SEEDS["train"] + args.n_train), args.views, args.workers, log)
    va = generate(range(SEEDS["val"], SEEDS["val"] + args.n_val), args.val_views, args.workers, log)
    if cache is not None:
        np.savez(cache, train=np.array(tr, dtype=object), val=np.array(va, dtype=object))
    return tr, va


def main(argv: Optional[list[str]] = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = file_logger(out / "train.log", time.monotonic())
    log(f"carpal recipe: {vars(args)}")
    train_views, val_views = load_or_generate(args, log)
    records = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        net, rec = train_mode(mode, train_views, val_views, args, log)
        save_state(net, out / f"{mode}.safetensors")
        records[mode] = rec
        log(f"[{mode}] validation mean per-bone Dice {rec['val_mean_dice']:.4f} ({rec['minutes']:.1f} min)")
    meta = {"recipe": "python -m MedSegAILib.train.carpal " + " ".join(sys.argv[1:] if argv is None else argv), "seeds": SEEDS,
            "n_train_phantoms": args.n_train, "n_val_phantoms": args.n_val, "views": args.views,
            "hyperparameters": args.hp,  "models": records}
    (out / "metrics.json").write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
