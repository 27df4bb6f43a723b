"""Training recipe of the LNHG nodule-image generator (WGAN-GP) on the real LIDC nodule crops.

Run (CPU, one thread; the working-grid cache is built on first use, ~15 s)::

    python -m MedSegAILib.train.lung_generator --out DIR --cache FILE --minutes 45 --threads 1

Data. ``lidc-nodule-vois`` (794 crops, 445 patients; :mod:`MedSegAILib.train.lidc`), split by patient
(:func:`~MedSegAILib.train.lidc.split_by_patient`: train / val / test, no patient on two sides). Only ``train``
crops are trained on; ``val`` chooses the checkpoint and the threshold; ``test`` belongs to the benchmark.
Everything happens on the working grid (x, y, z = 0.75, 0.75, 1.0 mm, the crop's orientation).

Samples. Patches of 32 x 48 x 48 voxels (z, y, x; 32 x 36 x 36 mm) centred on the consensus-mask centroid plus a
uniform shift of +-6 mm per axis; the crops are small (median 8 x 41 x 41 working voxels), so everything outside
a crop is padded with **-1000 HU (air)**, also in validation and in the benchmark (same box, same padding).
Augmentation: random flips in x and y, random 90-degree in-plane rotations (x and y spacings are equal), HU
``hu * s + o`` with ``s ~ U(0.95, 1.05)``, ``o ~ U(-30, 30)``. Input ``x = (clip(HU, -1000, 500) + 1000) / 1000``;
target nodule image ``y = x * mask`` (the input's density inside the nodule, 0 elsewhere).

Losses (WGAN-GP with the seed's bugs fixed: the generator gets the CT and the critic's "real" is the target
nodule image; validation never steps an optimiser; the learning rate is set in ``param_groups``; nothing is
modified in place). With ``z = G.residual(x) + x`` (pre-activation) and ``G(x) = ReLU(z)``:

* critic (conditional, :class:`~MedSegAILib.nets.lnhg.LNHGCritic3D`):
  ``L_D = E[D(x, G(x))] - E[D(x, y)] + 10 * E[(||grad D(x, yhat)|| - 1)^2]``, ``yhat = eps y + (1 - eps) G(x)``,
  ``eps ~ U(0, 1)`` per sample. ``n_critic`` = 1 critic step per generator step (default; the seed intended 5,
  which would make a CPU step ~2x slower; the reconstruction terms below carry most of the learning signal and
  the gradient penalty keeps even a lightly trained critic 1-Lipschitz, so more generator steps buy more here).
* generator: ``L_G = MSE(G(x), y) + L1(G(x), y) + w_dice * (1 - softDice(sigmoid((z - tau_s)/s), mask))
  - 0.1 * E[D(x, G(x))]`` with ``tau_s = 0.05``, ``s = 0.01`` and ``w_dice = 1``. The soft Dice replaces the seed's
  VGG19 perceptual term (no ImageNet weights here, and a 2-D ImageNet net is a poor judge of 3-D CT): it asks for
  exactly the nodule's support and, computed on the **pre-ReLU** ``z``, it still has gradient where the ReLU
  output is 0 (a voxel wrongly set to 0 gets no gradient from the MSE/L1 of the ReLU output; this is the
  seed design's blind spot).

Optimisers: Adam (lr 2e-4 for both, betas (0.5, 0.9)), learning rate by wall time with
:class:`~MedSegAILib.train.common.CosineByTime` (decays to 2 % at the end of the budget).

Validation every ``--val-every`` seconds: on every val crop, the same 32 x 48 x 48 box around the mask centre
(no shift, no augmentation), the nodule image thresholded at each ``tau`` of :data:`TAUS`, the 26-connected
component at the centre (:func:`~MedSegAILib.tasks.lung_nodule.segmentation.component_at`), Dice vs the
consensus mask on the working grid. The score is the mean Dice at the best tau; the checkpoint with the best
score is written (``generator.safetensors`` + ``generator.json`` with the hyper-parameters, tau and box), with
``train_log.txt`` and ``history.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from MedSegAILib.train.common import CosineByTime, file_logger, save_state

PATCH = (32, 48, 48)  # z, y, x voxels at the working grid
SHIFT_MM = 6.0
TAUS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
GEN_HP = {"features": [8, 16, 32], "blocks": [0, 1, 2], "norm": "group", "groups": 4, "negative_slope": 0.01}
CRITIC_HP = {"features": [16, 32, 64], "in_channels": 2, "negative_slope": 0.2}
SOFT_TAU, SOFT_S = 0.05, 0.01


# ---------------------------------------------------------------------------------------------- samples
def centre_kji(case: dict[str, Any]) -> np.ndarray:
    """Consensus-mask centroid (k, j, i) on the working grid (the array centre for an empty mask)."""
    m = case["mask"].array
    if m.any():
        return np.argwhere(m > 0).mean(0)
    return (np.asarray(m.shape) - 1) / 2.0


def extract(arr: np.ndarray, centre: Sequence[float], size: Sequence[int], fill: float) -> np.ndarray:
    """The ``size`` box of ``arr`` whose centre is nearest ``centre`` (k, j, i), padded with ``fill``."""
    start = [int(round(c - (s - 1) / 2.0)) for c, s in zip(centre, size)]
    out = np.full(tuple(size), fill, dtype=arr.dtype)
    src, dst = [], []
    for a, (st, s, n) in enumerate(zip(start, size, arr.shape)):
        lo, hi = max(st, 0), min(st + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def to_work(hu: np.ndarray) -> np.ndarray:
    return ((np.clip(hu.astype(np.float32), -1000.0, 500.0) + 1000.0) / 1000.0).astype(np.float32)


def sample(case: dict[str, Any], rng: np.random.Generator, patch: Sequence[int] = PATCH,
           augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One (x, mask) patch pair (float32 working scale, uint8), see the module docstring."""
    c = centre_kji(case)
    if augment:
        sp = np.asarray(case["hu"].spacing[::-1])  # (sk, sj, si)
        c = c + rng.uniform(-SHIFT_MM, SHIFT_MM, 3) / sp
    hu = extract(case["hu"].array, c, patch, -1000).astype(np.float32)
    m = extract(case["mask"].array, c, patch, 0)
    if augment:
        hu, m = augment_pair(hu, m, rng)
    return np.ascontiguousarray(to_work(hu)), np.ascontiguousarray(m)


def augment_pair(hu: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HU ``hu * s + o`` (s ~ U(0.95, 1.05), o ~ U(-30, 30)), random x and y flips, a random 90-degree in-plane turn
    (when the patch is square in-plane), applied alike to the CT patch and its mask."""
    hu = hu * rng.uniform(0.95, 1.05) + rng.uniform(-30.0, 30.0)
    if rng.random() < 0.5:
        hu, m = hu[:, :, ::-1], m[:, :, ::-1]
    if rng.random() < 0.5:
        hu, m = hu[:, ::-1, :], m[:, ::-1, :]
    k = int(rng.integers(4))
    if k and hu.shape[1] == hu.shape[2]:
        hu, m = np.rot90(hu, k, axes=(1, 2)), np.rot90(m, k, axes=(1, 2))
    return hu, m


def batch(cases: Sequence[dict[str, Any]], rng: np.random.Generator, n: int, patch: Sequence[int] = PATCH):
    import torch

    idx = rng.integers(len(cases), size=n)
    xs, ms = zip(*(sample(cases[i], rng, patch) for i in idx))
    x = torch.from_numpy(np.stack(xs))[:, None]
    m = torch.from_numpy(np.stack(ms).astype(np.float32))[:, None]
    return x, m


# ---------------------------------------------------------------------------------------------- whole-scan windows
def scan_windows(lidc_dir: str, split: str, n_scans: int, rng: np.random.Generator, per_nodule: int = 3,
                 negatives: int = 24, patch: Sequence[int] = PATCH, log=print) -> list[dict[str, Any]]:
    """Windows of a real chest CT with real ``split`` nodules blended in (:mod:`MedSegAILib.simulate.lung_scans`),
    on the working grid: ``per_nodule`` windows around each nodule (centre shifted by up to +-6 mm) and
    ``negatives`` windows centred on random lung voxels, half of them on the lung border (pleura, chest wall,
    mediastinum, diaphragm) -- the anatomy the crops never show. Target = every nodule voxel in the window (often
    none). Returns ``[{"hu": int16 (z, y, x), "mask": uint8, "nodule": bool}]``."""
    from scipy import ndimage

    from MedSegAILib.core.resample import resample_volume
    from MedSegAILib.simulate import lung_scans
    from MedSegAILib.tasks.lung_nodule.segmentation import working_box

    size_mm = (patch[2] * 0.75, patch[1] * 0.75, patch[0] * 1.0)
    out: list[dict[str, Any]] = []
    for s in range(n_scans):
        mirror = bool(s % 2)
        ct, labels, infos = lung_scans.scan_with_nodules(lidc_dir, split, int(rng.integers(4, 9)),
                                                         seed=int(rng.integers(1 << 30)), mirror=mirror)
        lung = lung_scans._base()[1]
        lung = lung_scans.mirror_lr(lung) if mirror else lung
        ctf = ct.with_array(np.asarray(ct.array, np.float32))
        labf = labels.with_array((np.asarray(labels.array) > 0).astype(np.float32))
        la = np.asarray(lung.array) > 0
        border = la & ~ndimage.binary_erosion(la, iterations=2)
        centres = [np.asarray(i["centre_lps"], float) + rng.uniform(-6, 6, 3) for i in infos for _ in range(per_nodule)]
        for n in range(negatives):
            pool = np.argwhere(border if n % 2 else la)
            k, j, i = pool[int(rng.integers(len(pool)))]
            centres.append(ct.index_to_lps(np.array([[i, j, k]], float))[0])
        for c in centres:
            grid = working_box(ct, c, size_mm)
            hu = resample_volume(ctf, reference=grid, interpolation="linear", default_value=-1000.0).array
            m = resample_volume(labf, reference=grid, interpolation="linear", default_value=0.0).array >= 0.5
            out.append({"hu": np.clip(np.rint(hu), -1024, 3000).astype(np.int16), "mask": m.astype(np.uint8),
                        "nodule": bool(m.any())})
        log(f"scan windows: scan {s + 1}/{n_scans} ({split}), {len(infos)} nodules, {len(out)} windows so far")
    return out


def window_sample(w: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A scan window with the crops' augmentation (flips, 90-degree turns, HU scale/offset)."""
    hu, m = augment_pair(w["hu"].astype(np.float32), w["mask"], rng)
    return np.ascontiguousarray(to_work(hu)), np.ascontiguousarray(m)


def mixed_batch(cases: Sequence[dict[str, Any]], windows: Sequence[dict[str, Any]], rng: np.random.Generator, n: int):
    """Half crops, half whole-scan windows (all crops when there are no windows)."""
    import torch

    if not windows:
        return batch(cases, rng, n)
    n_w = n // 2
    items = [sample(cases[int(i)], rng) for i in rng.integers(len(cases), size=n - n_w)]
    items += [window_sample(windows[int(i)], rng) for i in rng.integers(len(windows), size=n_w)]
    xs, ms = zip(*items)
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ms).astype(np.float32))[:, None]


def window_false_positive_rate(generator, windows: Sequence[dict[str, Any]], tau: float, min_mm3: float = 30.0
                               ) -> float:
    """Share of nodule-free windows where the generator outputs a component of at least ``min_mm3``."""
    from scipy import ndimage

    from MedSegAILib.tasks.lung_nodule.segmentation import run_generator

    neg = [w for w in windows if not w["nodule"]]
    if not neg:
        return 0.0
    generator.eval()
    bad = 0
    for w in neg:
        img = run_generator(generator, to_work(w["hu"]))
        lab, n = ndimage.label(img > tau)
        if n and ndimage.sum_labels(np.ones_like(lab), lab, np.arange(1, n + 1)).max() * 0.5625 >= min_mm3:
            bad += 1
    generator.train()
    return bad / len(neg)


# ---------------------------------------------------------------------------------------------- losses
def soft_dice_loss(z, mask, tau: float = SOFT_TAU, s: float = SOFT_S):
    """``1 - (2 sum(p m) + 1) / (sum p + sum m + 1)`` per sample, mean; ``p = sigmoid((z - tau) / s)``."""
    import torch

    p = torch.sigmoid((z - tau) / s).flatten(1)
    m = mask.flatten(1)
    return (1 - (2 * (p * m).sum(1) + 1) / (p.sum(1) + m.sum(1) + 1)).mean()


def critic_loss(critic, x, real, fake, gp_weight: float = 10.0):
    """``E[D(x, fake)] - E[D(x, real)] + gp_weight * GP``; returns (loss, wasserstein estimate, gp)."""
    from MedSegAILib.nets.lnhg import gradient_penalty

    w = critic(x, real).mean() - critic(x, fake).mean()
    gp = gradient_penalty(critic, x, real, fake)
    return -w + gp_weight * gp, w, gp


def generator_loss(critic, x, mask, z, adv_weight: float = 0.1, dice_weight: float = 1.0):
    """See the module docstring; returns (loss, dict of the terms)."""
    import torch

    fake = torch.relu(z)
    y = x * mask
    mse = torch.mean((fake - y) ** 2)
    l1 = torch.mean(torch.abs(fake - y))
    dl = soft_dice_loss(z, mask)
    adv = -critic(x, fake).mean()
    loss = mse + l1 + dice_weight * dl + adv_weight * adv
    return loss, {"mse": mse.item(), "l1": l1.item(), "dice": dl.item(), "adv": adv.item()}


# ---------------------------------------------------------------------------------------------- validation
def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    t = int(a.sum()) + int(b.sum())
    return 1.0 if t == 0 else 2.0 * int((a & b).sum()) / t


def validate(generator, cases: Sequence[dict[str, Any]], taus: Sequence[float] = TAUS,
             patch: Sequence[int] = PATCH) -> dict[str, Any]:
    """Mean Dice per tau on the working grid (box = ``patch`` at the mask centre, component at the centre)."""
    from MedSegAILib.tasks.lung_nodule.segmentation import component_at, run_generator

    generator.eval()
    scores = np.zeros((len(cases), len(taus)))
    centre = (np.asarray(patch) - 1) / 2.0
    for n, c in enumerate(cases):
        ck = centre_kji(c)
        x = to_work(extract(c["hu"].array, ck, patch, -1000))
        m = extract(c["mask"].array, ck, patch, 0) > 0
        img = run_generator(generator, x)
        for t, tau in enumerate(taus):
            comp = component_at(img > tau, centre, c["hu"].spacing)
            scores[n, t] = dice(comp, m)
    generator.train()
    mean = scores.mean(0)
    best = int(np.argmax(mean))
    return {"dice_by_tau": {str(t): float(v) for t, v in zip(taus, mean)}, "tau": float(taus[best]),
            "dice": float(mean[best])}


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", required=True, help="working-grid .npz (built from --data when missing)")
    ap.add_argument("--data", default=os.path.join(os.environ.get("MEDSEGAI_TEST_DATA", "/work/shared/data"),
                                                   "lidc-nodule-vois"))
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n-critic", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--val-every", type=float, default=240.0, help="seconds between validations")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many generator steps (0: time only)")
    ap.add_argument("--max-cases", type=int, default=0, help="use only the first N train/val crops (smoke runs)")
    ap.add_argument("--gen-hp", default="", help="JSON overriding the generator hyper-parameters")
    ap.add_argument("--critic-hp", default="", help="JSON overriding the critic hyper-parameters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adv-weight", type=float, default=0.1, help="weight of the adversarial term (seed: 0.1)")
    ap.add_argument("--init", default="", help="folder of an earlier run to continue from (generator, critic)")
    ap.add_argument("--scan-windows", type=int, default=0,
                    help="also train on windows of N chest CTs with blended train-split nodules (half of each batch); "
                         "2 val-split scans then score false positives on nodule-free windows")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    from MedSegAILib.nets.lnhg import build_lnhg_critic3d, build_lnhg_generator3d, parameter_count
    from MedSegAILib.train.lidc import cached_or_build, split_by_patient

    t0 = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = file_logger(out / "train_log.txt", t0)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cases = cached_or_build(args.data, args.cache, log)
    split = split_by_patient(cases)
    train_c, val_c = split["train"], split["val"]
    if args.max_cases:
        train_c, val_c = train_c[:args.max_cases], val_c[:args.max_cases]
    log(f"crops: train {len(train_c)}, val {len(val_c)}, test {len(split['test'])} (test unused here)")
    ghp = {**GEN_HP, **(json.loads(args.gen_hp) if args.gen_hp else {})}
    chp = {**CRITIC_HP, **(json.loads(args.critic_hp) if args.critic_hp else {})}
    G, D = build_lnhg_generator3d(**ghp), build_lnhg_critic3d(**chp)
    if args.init:  # continue an earlier run (a second cosine cycle): its generator, and its critic when saved
        from safetensors.torch import load_file

        G.load_state_dict(load_file(os.path.join(args.init, "generator.safetensors")))
        if os.path.isfile(os.path.join(args.init, "critic.safetensors")):
            D.load_state_dict(load_file(os.path.join(args.init, "critic.safetensors")))
        log(f"initialised from {args.init}")
    log(f"generator {parameter_count(G)} params {ghp}; critic {parameter_count(D)} params {chp}")
    windows: list[dict[str, Any]] = []
    val_windows: list[dict[str, Any]] = []
    if args.scan_windows:
        windows = scan_windows(args.data, "train", args.scan_windows, rng, log=log)
        val_windows = scan_windows(args.data, "val", 2, np.random.default_rng(args.seed + 7), per_nodule=1,
                                   negatives=30, log=log)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.9))
    budget = args.minutes * 60.0 - (time.monotonic() - t0)
    sch_g = CosineByTime(opt_g, args.lr, max(budget, 1.0))
    sch_d = CosineByTime(opt_d, args.lr, max(budget, 1.0))
    history: list[dict[str, Any]] = []
    best = {"dice": -1.0}
    config = {"architecture": "lnhg_generator3d", "hyperparameters": ghp, "patch_zyx": list(PATCH),
              "box_mm_xyz": [PATCH[2] * 0.75, PATCH[1] * 0.75, PATCH[0] * 1.0], "work_spacing": [0.75, 0.75, 1.0],
              "intensity": "(clip(HU,-1000,500)+1000)/1000", "critic": chp, "n_critic": args.n_critic}

    def evaluate(step: int) -> None:
        tv = time.monotonic()
        r = validate(G, val_c)
        r["crop_dice"] = r["dice"]
        if val_windows:  # checkpoint score: crop Dice, discounted by false positives on nodule-free scan windows
            r["window_fp_rate"] = window_false_positive_rate(G, val_windows, r["tau"])
            r["dice"] = r["crop_dice"] * (1.0 - 0.5 * r["window_fp_rate"])
        r.update(step=step, t=time.monotonic() - t0, val_s=time.monotonic() - tv)
        history.append(r)
        mark = ""
        if r["dice"] > best["dice"]:
            best.update(r)
            save_state(G, out / "generator.safetensors")
            save_state(D, out / "critic.safetensors")
            (out / "generator.json").write_text(json.dumps({**config, "tau": r["tau"], "val_dice": r["dice"],
                                                            "step": step}, indent=1))
            mark = "  * saved"
        (out / "history.json").write_text(json.dumps(history, indent=1))
        log(f"val step {step}: score {r['dice']:.4f} (crop dice {r['crop_dice']:.4f}, window FP rate "
            f"{r.get('window_fp_rate', float('nan')):.3f}) at tau {r['tau']} ({r['val_s']:.1f}s){mark}")

    step, last_val, acc = 0, time.monotonic(), []
    end = t0 + args.minutes * 60.0
    G.train()
    D.train()
    while True:
        if args.steps and step >= args.steps:
            break
        if not args.steps and time.monotonic() > end - 5:
            break
        ts = time.monotonic()
        sch_g.step()
        sch_d.step()
        for _ in range(max(1, args.n_critic)):
            x, m = mixed_batch(train_c, windows, rng, args.batch)
            with torch.no_grad():
                fake = G(x)
            ld, w, gp = critic_loss(D, x, x * m, fake)
            opt_d.zero_grad(set_to_none=True)
            ld.backward()
            opt_d.step()
        x, m = mixed_batch(train_c, windows, rng, args.batch)
        for p in D.parameters():
            p.requires_grad_(False)
        z = G.residual(x) + x
        lg, terms = generator_loss(D, x, m, z, adv_weight=args.adv_weight)
        opt_g.zero_grad(set_to_none=True)
        lg.backward()
        opt_g.step()
        for p in D.parameters():
            p.requires_grad_(True)
        step += 1
        acc.append([ld.item(), w.item(), gp.item(), lg.item(), terms["mse"], terms["l1"], terms["dice"],
                    terms["adv"], time.monotonic() - ts])
        if step % 25 == 0 or step == args.steps or step <= 2:
            a = np.mean(acc, 0)
            acc = []
            log(f"step {step}: L_D {a[0]:.4f} W {a[1]:.4f} GP {a[2]:.4f} | L_G {a[3]:.4f} mse {a[4]:.4f} "
                f"l1 {a[5]:.4f} softdice {a[6]:.4f} adv {a[7]:.3f} | {a[8]:.2f} s/step lr {opt_g.param_groups[0]['lr']:.2e}")
        if time.monotonic() - last_val > args.val_every:
            evaluate(step)
            last_val = time.monotonic()
    evaluate(step)
    log(f"done: {step} steps, best val dice {best['dice']:.4f} at tau {best.get('tau')} (step {best.get('step')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
