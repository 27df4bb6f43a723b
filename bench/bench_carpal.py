"""Benchmark of the carpal task on DRRs of held-out hand phantoms: per-bone Dice of the three pre-processing
options, and the end-to-end time of a radiograph.

    python bench/bench_carpal.py --phantoms 40 --views 2 [--threads 2] [--json out.json]
    python bench/bench_carpal.py --speed 10 --phantoms 0            # timing only

Phantoms: :func:`MedSegAILib.simulate.wrist_xray.simulate_wrist_views` with the recipe's TEST seeds
(``MedSegAILib.train.carpal.SEEDS["test"] + n``), disjoint from the training and validation phantoms. Each
radiograph goes through the task exactly as a user's does (:func:`MedSegAILib.pipeline.segment`: polarity check,
the model's own pre-processing, network with mirror averaging, probabilities back to the image grid, arg-max,
largest component per bone) and the label map is compared with the projected phantom labels.

Reported:

* **Dice per bone** (a real per-class Dice on label maps, computed per radiograph where the bone is in the truth
  or the prediction, then averaged over radiographs), the **mean over the ten bones**, and the share of
  radiographs where a bone present in the truth (>= 20 pixels) was missed entirely; one row per model.
* **Robustness** (default model): inverted (white-background) radiographs, Dice after the task's polarity decision;
  20 non-wrist images (noise, smooth fields, ramps, planar neck scintigrams): how many get no bones reported.
* **Time** of one radiograph end to end (``--speed N`` radiographs) through the command-line path
  (:func:`MedSegAILib.cli.run_segment`: read a 16-bit PNG, segment, write .seg.nrrd, label map, CSV, markups
  and overlay PNG), at the network's size (256 x 256) and at a clinical size (2048 x 2048, 0.125 mm pixels),
  plus the task's own time (read to label map, no file writing) for the clinical size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from MedSegAILib.train.carpal import SEEDS  # noqa: E402 - the recipe's held-out seeds, one definition

MODELS = ("carpal-unet2d-none", "carpal-unet2d-global", "carpal-unet2d-local")


def dice_table(models: list[str], phantoms: int, views: int, device: str) -> dict:
    from MedSegAILib.pipeline import segment
    from MedSegAILib.simulate.wrist_xray import simulate_wrist_views
    from MedSegAILib.tasks.carpal import BONES
    from MedSegAILib.train.carpal import per_bone_dice

    cases = []
    t0 = time.perf_counter()
    for n in range(phantoms):
        cases += simulate_wrist_views(SEEDS["test"] + n, views)
    print(f"{len(cases)} radiographs of {phantoms} held-out phantoms simulated in {time.perf_counter() - t0:.0f} s")
    out = {}
    for model in models:
        preds, refs, t_run = [], [], []
        for c in cases:
            t1 = time.perf_counter()
            res = segment("carpal", {"image": c.image}, model_id=model, device=device)
            t_run.append(time.perf_counter() - t1)
            preds.append(res.labelmap.array[0])
            refs.append(c.label.array[0])
        d = per_bone_dice(np.stack(preds), np.stack(refs))
        missed = [float(np.mean([(r == v).sum() >= 20 and not (p == v).any() for p, r in zip(preds, refs)]))
                  for v, *_ in BONES]
        per_bone = {name: float(np.nanmean(d[:, i])) for i, (_v, name, *_r) in enumerate(BONES)}
        out[model] = {"mean_dice": float(np.nanmean(list(per_bone.values()))), "per_bone": per_bone,
                      "per_image_mean": float(np.nanmean(np.nanmean(d, axis=1))),
                      "min_image_mean": float(np.nanmin(np.nanmean(d, axis=1))),
                      "missed_fraction": dict(zip([b[1] for b in BONES], missed)),
                      "median_task_s": float(np.median(t_run)), "n_images": len(cases)}
    names = [b[1] for b in BONES]
    print("\nDice per bone (held-out phantoms; mean over radiographs)")
    print(f"{'model':24s} " + " ".join(f"{n[:9]:>9s}" for n in names) + f" {'MEAN':>7s}")
    for model, r in out.items():
        print(f"{model:24s} " + " ".join(f"{r['per_bone'][n]:9.3f}" for n in names) + f" {r['mean_dice']:7.3f}")
    return out


def robustness(model: str, phantoms: int, device: str) -> dict:
    """Inverted radiographs (white background): Dice after the task's polarity decision; non-wrist images (noise,
    smooth fields, ramps, planar neck scintigrams): how many are reported as showing no carpal bones."""
    from MedSegAILib.core.volume import Volume
    from MedSegAILib.pipeline import segment
    from MedSegAILib.simulate.planar_neck import simulate_neck
    from MedSegAILib.simulate.wrist_xray import simulate_wrist_views
    from MedSegAILib.train.carpal import per_bone_dice

    d_inv, inverted_note = [], 0
    for n in range(phantoms):
        v = simulate_wrist_views(SEEDS["test"] + n, 1)[0]
        res = segment("carpal", {"image": v.image.with_array(1.0 - v.image.array)}, model_id=model, device=device)
        d_inv.append(float(np.nanmean(per_bone_dice(res.labelmap.array, v.label.array))))
        inverted_note += any("invert" in m for m in res.messages)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    negatives = []
    for k in range(5):
        negatives += [rng.random((256, 256)),
                      0.4 + 0.2 * np.sin(xx / rng.uniform(20, 60)) * np.cos(yy / rng.uniform(20, 60))
                      + 0.02 * rng.standard_normal((256, 256)),
                      np.cos(rng.uniform(0, np.pi)) * xx / 255 + np.sin(rng.uniform(0, np.pi)) * yy / 255,
                      simulate_neck(100 + k).tc.array[0]]
    rejected = 0
    for img in negatives:
        res = segment("carpal", {"image": Volume(np.asarray(img, np.float32)[None], (0.4, 0.4, 1.0),
                                                 meta={"modality": "DX"})}, model_id=model, device=device)
        rejected += not res.labels
    out = {"inverted_mean_dice": float(np.mean(d_inv)), "inverted_min_dice": float(np.min(d_inv)),
           "inverted_detected": inverted_note, "inverted_n": phantoms,
           "non_wrist_rejected": rejected, "non_wrist_n": len(negatives)}
    print(f"\nRobustness ({model}): inverted radiographs mean Dice {out['inverted_mean_dice']:.3f} (min "
          f"{out['inverted_min_dice']:.3f}), inversion noted in {inverted_note}/{phantoms}; non-wrist images with no "
          f"bones reported: {rejected}/{len(negatives)}")
    return out


def speed(model: str, n: int, device: str) -> dict:
    import SimpleITK as sitk

    from MedSegAILib.cli import run_segment
    from MedSegAILib.core.volume import Volume
    from MedSegAILib.pipeline import segment
    from MedSegAILib.simulate.wrist_xray import simulate_wrist_views
    from MedSegAILib.tasks.registry import get_task

    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (256, 2048):
            t_cli, t_task = [], []
            for k in range(n):
                v = simulate_wrist_views(SEEDS["test"] + 1000 + k, 1)[0]
                img = v.image.array[0]
                if size != img.shape[0]:
                    import torch

                    img = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=(size, size),
                                                          mode="bilinear", align_corners=False)[0, 0].numpy()
                png = Path(tmp) / f"wrist_{size}_{k}.png"
                sitk.WriteImage(sitk.GetImageFromArray((np.clip(img, 0, 1) * 65535).astype(np.uint16)), str(png))
                t0 = time.perf_counter()
                run_segment("carpal", [str(png)], str(Path(tmp) / f"out_{size}_{k}"), model_id=model, device=device,
                            quiet=True)
                t_cli.append(time.perf_counter() - t0)
                if size == 2048:
                    t0 = time.perf_counter()
                    vol: Volume = get_task("carpal").read_input("image", str(png))
                    segment("carpal", {"image": vol}, model_id=model, device=device)
                    t_task.append(time.perf_counter() - t0)
            res[f"cli_{size}_median_s"] = float(np.median(t_cli[1:] if len(t_cli) > 1 else t_cli))
            res[f"cli_{size}_max_s"] = float(np.max(t_cli[1:] if len(t_cli) > 1 else t_cli))
            res[f"cli_{size}_first_s"] = float(t_cli[0])
            if t_task:
                res["task_2048_median_s"] = float(np.median(t_task))
    print(f"\nTime per radiograph ({model}, {n} each; first call of the process excluded from median/max):")
    for k, v in res.items():
        print(f"  {k:24s} {v:.3f} s")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--phantoms", type=int, default=40)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--speed", type=int, default=6, help="radiographs per size for the timing (0: none)")
    ap.add_argument("--speed-model", default="", help="model of the timing and robustness runs (default: the task's)")
    ap.add_argument("--robustness", type=int, default=20, help="inverted held-out radiographs (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out: dict = {"phantoms": args.phantoms, "views": args.views, "seeds_from": SEEDS["test"]}
    if args.phantoms:
        out["dice"] = dice_table(models, args.phantoms, args.views, args.device)
    if args.robustness:
        from MedSegAILib.tasks.carpal import CarpalTask

        out["robustness"] = robustness(args.speed_model or CarpalTask.default_model, args.robustness, args.device)
    if args.speed:
        from MedSegAILib.tasks.carpal import CarpalTask

        out["speed"] = speed(args.speed_model or CarpalTask.default_model, args.speed, args.device)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
