"""Training recipe of the parotid networks: synthetic CT built on real head-and-neck anatomy.

Re-run (not in CI; about 70 minutes on 2 CPU cores; the data cache is re-used when present)::

    python -m MedSegAILib.train.parotid --out /tmp/parotid-train --cache /tmp/parotid-cache.npz

Data. ``headneck-oar-masks`` (real organ masks of 28 patients by two annotators each, see the data README) are
split **by patient** (:func:`split_patients`: a fixed hash order; ``test`` patients belong to the benchmark only,
``val`` patients choose checkpoints, ``train`` patients are the only ones whose anatomy is trained on). For each
scan and annotator, :func:`MedSegAILib.simulate.headneck_ct.synth_ct` paints a CT on that annotator's masks (drawn
tissue densities, texture, body habitus, bone, airway, muscles, teeth/streaks, partial volume, noise), and the
labels are that annotator's parotids (1 right, 2 left). Each synthetic CT gives

* a **segmenter sample**: a 192 x 160 x 112 mm box around the glands (random offset up to +-15 mm) on a 1 mm grid
  whose axes are the patient axes turned by a small random head rotation (yaw +-10 deg, pitch/roll +-5 deg:
  patients are not perfectly straight in the scanner), HU kept as int16;
* a **localiser sample**: the whole field of view on the 4 mm patient-aligned grid (the task's own
  :func:`~MedSegAILib.tasks.parotid.preprocess.to_grid`).

A real CT of the abdomen (``ct-fixtures/example_ct.nii.gz``) is added to the localiser's samples as a negative
(no parotid anywhere).

Training. Segmenter: 128 x 128 x 64 windows, two thirds centred near a gland (+-40 mm), one third anywhere in the
box; left-right mirroring with the labels swapped (the anatomy is nearly symmetric; mirroring without the swap
would teach the network to ignore the side); a mild HU scale/offset. Loss ``0.7 soft Dice (glands) + 0.3 focal
(gamma 1, alpha 0.3/0.35/0.35)`` (:class:`MedSegAILib.train.losses.HybridDiceFocalLoss`), Adam, cosine learning
rate by step. Checkpoint: the best **validation Dice** alone, evaluated every ``--epoch-steps`` steps -- the
paper's rule (save only when Dice *and* loss improve in the same epoch) can stop saving for good.
Localiser: a small plain U-Net on random 48 x 64 x 64 crops at 4 mm, same loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Geometry, Volume
from MedSegAILib.tasks.parotid import preprocess as pp
from MedSegAILib.train.common import file_logger, save_state

CFG = pp.ParotidConfig()
#: patients per split; the rest train
N_TEST, N_VAL = 8, 4
#: segmenter sample box (x, y, z mm) around the glands
BOX_MM = (192.0, 160.0, 112.0)
SEGMENTER_HP = {
    "resunet3d": {"in_channels": 1, "out_channels": 3, "features": [8, 16, 32, 64, 128], "levels": 4,
                  "norm": "layer", "act": "leaky_relu", "negative_slope": 0.01},
    "cbam_unet3d": {"in_channels": 1, "out_channels": 3, "features": [8, 16, 32, 64, 128], "levels": 4,
                    "norm": "instance", "act": "leaky_relu", "negative_slope": 0.01, "cbam_reduction": 8,
                    "cbam_min_hidden": 4, "cbam_kernel": 7},
}
LOCALIZER_HP = {"in_channels": 1, "out_channels": 3, "features": [8, 16, 32, 32], "levels": 3,
                "norm": "batch", "act": "relu"}


# ---------------------------------------------------------------------------------------------- cases
def patient_of(scan: str) -> str:
    """``0522c0727a`` and ``0522c0727b`` are two scans of one patient."""
    return re.sub(r"(?<=\d)[a-z]$", "", scan)


def list_scans(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every scan of ``headneck-oar-masks`` with its patient and per-annotator mask folders."""
    root = Path(root)
    out = []
    for split in sorted(p for p in root.iterdir() if p.is_dir()):
        annotators = sorted(p.name for p in split.iterdir() if p.is_dir())
        if not annotators:
            continue
        for scan in sorted(p.name for p in (split / annotators[0]).iterdir() if p.is_dir()):
            folders = {a: str(split / a / scan / "segmentations") for a in annotators
                       if (split / a / scan / "segmentations").is_dir()}
            out.append({"scan": scan, "patient": patient_of(scan), "folders": folders})
    if not out:
        raise FileNotFoundError(f"no scans under {root}")
    return out


def split_patients(scans: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Patients ordered by the SHA-1 of their id: the first ``N_TEST`` are test, the next ``N_VAL`` validation, the
    rest training. Fixed by the data alone (no seed), so the benchmark and the recipe always agree."""
    patients = sorted({s["patient"] for s in scans}, key=lambda p: hashlib.sha1(p.encode()).hexdigest())
    return {"test": patients[:N_TEST], "val": patients[N_TEST:N_TEST + N_VAL], "train": patients[N_TEST + N_VAL:]}


def scans_of(scans: Sequence[dict[str, Any]], patients: Sequence[str]) -> list[dict[str, Any]]:
    keep = set(patients)
    return [s for s in scans if s["patient"] in keep]


# ---------------------------------------------------------------------------------------------- samples
def rotation(rng: np.random.Generator, yaw_deg: float = 10.0, tilt_deg: float = 5.0) -> np.ndarray:
    """A small head rotation (columns = rotated patient axes in LPS)."""
    a, b, c = np.deg2rad([rng.uniform(-yaw_deg, yaw_deg), rng.uniform(-tilt_deg, tilt_deg),
                          rng.uniform(-tilt_deg, tilt_deg)])
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


def box_grid(centre: np.ndarray, size_mm: Sequence[float], spacing: float, direction: np.ndarray) -> Geometry:
    n = np.round(np.asarray(size_mm, float) / spacing).astype(int)
    origin = np.asarray(centre, float) - direction @ ((n - 1) / 2.0 * spacing)
    return Geometry(tuple(int(v) for v in n[::-1]), (spacing,) * 3, tuple(origin.tolist()), direction.copy())


def labels_to_grid(lab: Volume, grid: Geometry) -> np.ndarray:
    """Label map onto ``grid`` by linear interpolation of each gland's indicator (> 0.5), which keeps thin parts
    that nearest-neighbour sampling of a 2.5 mm slice stack would make stair-cased."""
    out = np.zeros(grid.shape, np.uint8)
    for side in (pp.RIGHT, pp.LEFT):
        ind = lab.with_array((lab.array == side).astype(np.float32))
        out[pp.to_grid(ind, grid, default=0.0, antialias=False) > 0.5] = side
    return out


def make_sample(folder: str, seed: int) -> dict[str, Any]:
    """One synthetic CT on the masks in ``folder`` -> its segmenter box and localiser volume (see module doc)."""
    import torch

    from MedSegAILib.simulate.headneck_ct import parotid_labelmap, read_organ_masks, synth_ct

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    masks = read_organ_masks(folder)
    ct, info = synth_ct(masks, rng)
    lab = parotid_labelmap(masks)
    pts = np.argwhere(lab.array > 0)
    centre = lab.index_to_lps(pts.mean(0)[::-1][None])[0] + rng.uniform(-15, 15, 3)
    grid = box_grid(centre, BOX_MM, CFG.spacing_mm, rotation(rng))
    hu = np.round(pp.to_grid(ct, grid, antialias=False)).astype(np.int16)
    y = labels_to_grid(lab, grid)
    lo, hi = pp.box_of(ct)
    lhu_f, lgrid = pp.localizer_hu(ct, CFG)
    lhu = np.round(lhu_f).astype(np.int16)
    ly = labels_to_grid(lab, lgrid)
    return {"folder": folder, "seed": seed, "hu": hu, "y": y, "loc_hu": lhu, "loc_y": ly,
            "ml": [float((lab.array == s).sum() * lab.voxel_volume_mm3 / 1000) for s in (1, 2)]}


def _sample_star(a: tuple) -> dict[str, Any]:
    return make_sample(*a)


def generate(jobs: Sequence[tuple[str, int]], workers: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    t0 = time.monotonic()
    if workers <= 1:
        it = map(_sample_star, jobs)
    else:
        ex = ProcessPoolExecutor(workers)
        it = ex.map(_sample_star, jobs)
    for i, s in enumerate(it):
        out.append(s)
        if (i + 1) % 10 == 0 or i + 1 == len(jobs):
            log(f"  {i + 1}/{len(jobs)} synthetic CTs ({time.monotonic() - t0:.0f} s)")
    return out


def negative_localizer_samples(data_root: Optional[str]) -> list[dict[str, Any]]:
    """Real CT without a head and neck (the abdomen fixture), all background, for the localiser."""
    if not data_root:
        return []
    p = Path(data_root) / "ct-fixtures" / "example_ct.nii.gz"
    if not p.exists():
        return []
    from MedSegAILib.core.io import read_volume

    hu, g = pp.localizer_hu(read_volume(p), CFG)
    return [{"loc_hu": np.round(hu).astype(np.int16), "loc_y": np.zeros(g.shape, np.uint8), "negative": str(p)}]


def pooled_localizer_samples(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The localiser's 8 mm inputs from the cached 4 mm volumes (the task's :func:`pp.block_mean`)."""
    return [{"loc_hu": pp.block_mean(s["loc_hu"], CFG.localizer_pool),
             "loc_y": pp.pooled_labels(s["loc_y"], CFG.localizer_pool)} for s in samples]


# ---------------------------------------------------------------------------------------------- batches
def _crop(arr: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """``arr[start:start+size]`` with out-of-range parts filled (so boxes smaller than a window still work)."""
    out = np.full(tuple(size), fill, arr.dtype)
    src = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, arr.shape))
    dst = tuple(slice(a.start - s, a.stop - s) for a, s in zip(src, start))
    out[dst] = arr[src]
    return out


def random_window(y: np.ndarray, size: Sequence[int], rng: np.random.Generator, p_fg: float,
                  jitter_vox: Sequence[int]) -> list[int]:
    """Start of a window: with probability ``p_fg`` centred near a random voxel of a random gland."""
    shape = np.asarray(y.shape)
    size = np.asarray(size)
    if rng.random() < p_fg and y.any():
        sides = [s for s in (1, 2) if (y == s).any()]
        idx = np.argwhere(y == rng.choice(sides))
        c = idx[rng.integers(len(idx))] + rng.integers(-np.asarray(jitter_vox), np.asarray(jitter_vox) + 1)
        start = c - size // 2
    else:
        start = np.array([rng.integers(min(0, d - n), max(0, d - n) + 1) for d, n in zip(shape, size)])
    return [int(v) for v in start]


def batches(samples: Sequence[dict[str, Any]], hu_key: str, y_key: str, size: Sequence[int], batch: int,
            steps: int, rng: np.random.Generator, p_fg: float, jitter_vox: Sequence[int]):
    """``steps`` batches of windowed HU crops and labels with mirroring (labels swapped) and HU scale/offset."""
    import torch

    for _ in range(steps):
        xb = np.empty((batch, 1) + tuple(size), np.float32)
        yb = np.empty((batch,) + tuple(size), np.int64)
        for b in range(batch):
            s = samples[rng.integers(len(samples))]
            start = random_window(s[y_key], size, rng, p_fg, jitter_vox)
            hu = _crop(s[hu_key], start, size, pp.AIR_HU).astype(np.float32)
            y = _crop(s[y_key], start, size, 0)
            hu = hu * rng.uniform(0.96, 1.04) + rng.uniform(-15.0, 15.0)
            if rng.random() < 0.5:  # mirror left-right, swap the sides
                hu, y = hu[..., ::-1], y[..., ::-1]
                y = np.where(y == 1, 2, np.where(y == 2, 1, 0))
            xb[b, 0] = pp.window(hu, CFG)
            yb[b] = y
        yield torch.from_numpy(xb), torch.from_numpy(yb)


# ---------------------------------------------------------------------------------------------- validation
def gland_dice(pred: np.ndarray, ref: np.ndarray) -> list[float]:
    from MedSegAILib.metrics import dice

    return [dice(pred == s, ref == s) for s in (1, 2)]


def predict_box(net: Any, hu: np.ndarray, size: Sequence[int], overlap: float = 0.25) -> np.ndarray:
    """Arg-max labels of a whole sample box by the engine's sliding windows (the task's inference code)."""
    import torch

    from MedSegAILib.engine.inference import sliding_window_inference
    from MedSegAILib.tasks.base import RunContext

    ctx = RunContext(device=torch.device("cpu"))
    x = pp.window(hu.astype(np.float32), CFG)[None]
    probs = sliding_window_inference(net, x, size, ctx=ctx, overlap=overlap, batch_size=1, activation="softmax",
                                     patch_multiple=16)
    return np.argmax(probs, axis=0).astype(np.uint8)


def validation_windows(samples: Sequence[dict[str, Any]], size: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One window per gland per validation sample, centred on the gland (fixed, so every evaluation compares
    like with like and costs two forward passes per sample)."""
    out = []
    for s in samples:
        for side in (1, 2):
            idx = np.argwhere(s["y"] == side)
            if idx.size == 0:
                continue
            start = [int(v) for v in np.round(idx.mean(0)).astype(int) - np.asarray(size) // 2]
            out.append((_crop(s["hu"], start, size, pp.AIR_HU), _crop(s["y"], start, size, 0)))
    return out


# ---------------------------------------------------------------------------------------------- training
def train_network(name: str, arch: str, hp: dict[str, Any], train_s: Sequence[dict], val_windows, *, hu_key: str,
                  y_key: str, size: Sequence[int], jitter_vox: Sequence[int], args, log) -> tuple[Any, dict]:
    import torch

    from MedSegAILib import nets
    from MedSegAILib.train.loop import train
    from MedSegAILib.train.losses import HybridDiceFocalLoss

    torch.manual_seed(args.seed)
    net = nets.build(arch, **hp)
    if args.init:  # continue from an earlier run's weights (a second, documented training stage)
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(Path(args.init) / f"{name}.safetensors")))
        log(f"[{name}] initialised from {Path(args.init) / f'{name}.safetensors'}")
    fmt = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)  # oneDNN's fast layout for 3-D convolutions on the CPU (same weights)
    n_par = sum(p.numel() for p in net.parameters())
    steps = args.loc_steps if name == "localizer" else args.steps
    batch = args.loc_batch if name == "localizer" else args.batch
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    rng = np.random.default_rng([args.seed, len(name)])
    loss_fn = HybridDiceFocalLoss()
    minutes = args.loc_minutes if name == "localizer" else args.minutes
    if minutes:  # a wall-clock budget: cosine by elapsed time, as many steps as fit (recorded)
        from MedSegAILib.train.common import CosineByTime

        budget_s: Optional[float] = 60.0 * minutes
        time_sched = CosineByTime(opt, args.lr, budget_s, warmup_s=30.0)
        epochs = 10_000

        def step_lr() -> None:
            time_sched.step()
    else:  # a step budget: cosine by step
        budget_s = None
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / 50) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1)))))
        epochs = max(1, math.ceil(steps / args.epoch_steps))

        def step_lr() -> None:
            sched.step()

    def data():
        for x, y in batches(train_s, hu_key, y_key, size, batch, args.epoch_steps, rng, 0.67, jitter_vox):
            step_lr()
            yield x.contiguous(memory_format=fmt), y

    def val_metric(model) -> float:
        """Dice of parotid tissue (either gland) in the validation windows: the task takes the sides from the
        patient's geometry (:mod:`MedSegAILib.tasks.parotid.postprocess`), so what the checkpoint must be good at
        is finding the glands; the per-side Dice is logged beside it."""
        from MedSegAILib.metrics import dice

        d, per_side = [], []
        for hu, y in val_windows:
            x = torch.from_numpy(pp.window(hu.astype(np.float32), CFG)[None, None]).contiguous(memory_format=fmt)
            pred = model(x).argmax(1)[0].numpy()
            d.append(dice(pred > 0, y > 0))
            per_side.append(np.mean(gland_dice(pred, y)))
        log(f"[{name}]   validation: parotid Dice {np.mean(d):.4f}, per-side Dice {np.mean(per_side):.4f}")
        return float(np.mean(d))

    t0 = time.monotonic()
    log(f"[{name}] {arch} {hp} ({n_par / 1e6:.2f} M parameters), {steps} steps of batch {batch}")
    res = train(net, data, loss_fn, opt, val_metric=val_metric, epochs=epochs, grad_clip=5.0,
                time_budget_s=budget_s, log=lambda s: log(f"[{name}] {s}"))
    steps = res.history[-1].steps if (minutes and res.history) else steps  # cumulative count
    rec = {"architecture": arch, "hyperparameters": hp, "parameters": int(n_par), "steps": steps, "batch": batch,
           "best_epoch": res.best_epoch, "val_window_dice": float(res.best_metric),
           "minutes": (time.monotonic() - t0) / 60, "history": res.history_dicts()}
    log(f"[{name}] best validation window Dice {res.best_metric:.4f} at epoch {res.best_epoch} "
        f"({rec['minutes']:.1f} min)")
    return net, rec


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder: *.safetensors, metrics.json, train.log")
    ap.add_argument("--data", default=os.environ.get("MEDSEGAI_TEST_DATA", "../shared/data"),
                    help="the shared data folder (holds headneck-oar-masks/ and ct-fixtures/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", type=int, default=3, help="synthetic CTs per training scan and annotator")
    ap.add_argument("--networks", default="localizer,resunet3d,cbam_unet3d")
    ap.add_argument("--steps", type=int, default=900, help="segmenter optimiser steps")
    ap.add_argument("--loc-steps", type=int, default=1200, help="localiser optimiser steps")
    ap.add_argument("--epoch-steps", type=int, default=100, help="steps between validations")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="segmenter wall-clock budget (cosine learning rate by time); overrides --steps")
    ap.add_argument("--loc-minutes", type=float, default=0.0, help="localiser wall-clock budget; overrides --loc-steps")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--train-patch", default="48,96,96",
                    help="segmenter training window k,j,i (voxels); validation and inference use the 64x128x128 "
                         "window of the method (the networks are fully convolutional)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                    help="keep the default memory layout (channels-last 3-D is ~1.7x faster on the CPU)")
    ap.add_argument("--loc-batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (the paper's 0.001)")
    ap.add_argument("--init", default="", help="folder with <network>.safetensors to start from (continue training)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="", help="npz cache of the synthetic samples (re-used when present)")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run (tests)")
    args = ap.parse_args(argv)
    args.hp = {k: dict(v) for k, v in SEGMENTER_HP.items()}
    args.loc_hp = dict(LOCALIZER_HP)
    if args.smoke:
        args.variants, args.steps, args.loc_steps, args.epoch_steps, args.batch, args.loc_batch = 1, 2, 2, 1, 1, 2
        for hp in args.hp.values():
            hp["features"] = [2, 4, 4, 4, 4]
        args.loc_hp["features"] = [2, 4, 4, 4, 4]
    return args


def load_or_generate(args, log) -> tuple[list[dict], list[dict], dict]:
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=True)
        log(f"samples from cache {cache}")
        return list(z["train"]), list(z["val"]), json.loads(str(z["split"]))
    scans = list_scans(Path(args.data) / "headneck-oar-masks")
    split = split_patients(scans)
    train_scans, val_scans = scans_of(scans, split["train"]), scans_of(scans, split["val"])
    if args.smoke:
        train_scans, val_scans = train_scans[:1], val_scans[:1]
    jobs = [(f, args.seed * 1_000_003 + 1000 * i + 10 * a + v)
            for i, s in enumerate(train_scans) for a, f in enumerate(sorted(s["folders"].values()))
            for v in range(args.variants)]
    vjobs = [(s["folders"][sorted(s["folders"])[0]], 7_000_000 + i) for i, s in enumerate(val_scans)]
    log(f"split: {json.dumps(split)}; {len(jobs)} training and {len(vjobs)} validation synthetic CTs")
    tr = generate(jobs, args.workers, log)
    va = generate(vjobs, args.workers, log)
    if cache is not None and not args.smoke:
        np.savez(cache, train=np.array(tr, dtype=object), val=np.array(va, dtype=object), split=json.dumps(split))
    return tr, va, split


def main(argv: Optional[list[str]] = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = file_logger(out / "train.log", time.monotonic())
    log(f"parotid recipe: {vars(args)}")
    tr, va, split = load_or_generate(args, log)
    records: dict[str, Any] = {}
    wanted = [n.strip() for n in args.networks.split(",") if n.strip()]
    loc_size = CFG.localizer_patch if not args.smoke else (16, 16, 16)
    seg_size = tuple(int(v) for v in args.train_patch.split(",")) if not args.smoke else (16, 32, 32)
    val_size = CFG.patch if not args.smoke else (16, 32, 32)
    if "localizer" in wanted:
        loc_train = pooled_localizer_samples(tr + negative_localizer_samples(args.data))
        loc_val = []
        for s in pooled_localizer_samples(va):
            loc_val += validation_windows([{"hu": s["loc_hu"], "y": s["loc_y"]}], loc_size)
        net, rec = train_network("localizer", "unet3d", args.loc_hp, loc_train, loc_val, hu_key="loc_hu",
                                 y_key="loc_y", size=loc_size, jitter_vox=(3, 4, 4), args=args, log=log)
        save_state(net, out / "localizer.safetensors")
        records["localizer"] = rec
    vw = validation_windows(va, val_size)
    for arch in ("resunet3d", "cbam_unet3d"):
        if arch not in wanted:
            continue
        net, rec = train_network(arch, arch, args.hp[arch], tr, vw, hu_key="hu", y_key="y", size=seg_size,
                                 jitter_vox=(20, 40, 40), args=args, log=log)
        save_state(net, out / f"{arch}.safetensors")
        records[arch] = rec
    meta = {"recipe": "python -m MedSegAILib.train.parotid " + " ".join(sys.argv[1:] if argv is None else argv),
            "split": split, "n_train_samples": len(tr), "n_val_samples": len(va), "variants": args.variants,
            "config": CFG.to_mapping(), "box_mm": BOX_MM, "networks": records}
    old = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    meta["networks"] = {**old.get("networks", {}), **records}  # one run per network may share the folder
    (out / "metrics.json").write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
