"""Benchmark of the LNHG generator (segmentation branch) on the held-out LIDC crops, nodule centre given.

    python bench/bench_lung_segmentation.py --weights /work/train/generator [--splits val,test] [--json out.json]
                                            [--threads 1] [--max 0]

Cases: the ``val`` and ``test`` patients of :func:`MedSegAILib.train.lidc.split_by_patient` (``test``: never
trained on and never used to choose anything; ``val`` chose the checkpoint and the threshold, so it is
optimistic). For each crop, on its ORIGINAL grid:

* centre = the consensus-mask centroid (the "given" nodule position);
* generator: :func:`MedSegAILib.tasks.lung_nodule.segmentation.segment_region` (the task's code path: CT box ->
  working grid -> generator -> nodule image back on the crop grid, outside the crop = -1000 HU), then
  ``image > tau`` (tau from ``generator.json``, chosen on val) and the 26-connected component at the centre
  (or the nearest within 5 mm);
* baseline: ``HU > -500`` and the component at the centre (the same component rule);
* Dice vs the consensus mask; mean over crops, overall and per size group (equivalent diameter of the mask:
  <6, 6-10, 10-20, >=20 mm) and texture group (ggo / part-solid / solid, :func:`MedSegAILib.train.lidc.texture_group`);
* time per nodule of the generator path (segment_region + threshold + component), with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASELINE_HU = -500.0


def load_generator(folder: str | os.PathLike):
    """The generator of ``folder/generator.safetensors`` built with ``folder/generator.json``'s
    hyper-parameters; returns (module in eval mode, config dict)."""
    from safetensors.torch import load_file

    from MedSegAILib.nets import build

    folder = Path(folder)
    cfg = json.loads((folder / "generator.json").read_text())
    g = build(cfg.get("architecture", "lnhg_generator3d"), **cfg["hyperparameters"])
    g.load_state_dict(load_file(str(folder / "generator.safetensors")))
    return g.eval(), cfg


def dice(a: np.ndarray, b: np.ndarray) -> float:
    from MedSegAILib.metrics import dice as _d

    return _d(a, b)


def evaluate_case(generator, cfg: dict, ct, mask) -> dict:
    """Generator and baseline Dice of one crop (original grid) and the generator path's time."""
    from MedSegAILib.tasks.lung_nodule.segmentation import (component_at, mask_centre_kji,
                                                            mask_from_nodule_image, segment_region)

    ref = np.asarray(mask.array) > 0
    ckji = mask_centre_kji(ref)
    centre_lps = ct.index_to_lps(ckji[::-1])[0]
    box = tuple(cfg.get("box_mm_xyz", (36.0, 36.0, 32.0)))
    t = time.perf_counter()
    img = segment_region(generator, ct, centre_lps, box)
    full = np.zeros(ct.shape, np.float32)
    lo = img.meta["index_lo"]
    sk, sj, si = img.shape
    full[lo[2]:lo[2] + sk, lo[1]:lo[1] + sj, lo[0]:lo[0] + si] = img.array
    seg = component_at(mask_from_nodule_image(full, cfg["tau"]), ckji, ct.spacing)
    dt = time.perf_counter() - t
    base = component_at(np.asarray(ct.array) > BASELINE_HU, ckji, ct.spacing)
    return {"dice": dice(seg, ref), "baseline_dice": dice(base, ref), "seconds": dt}


def summarise(rows: list[dict]) -> dict:
    from MedSegAILib.train.lidc import SIZE_GROUPS, TEXTURE_GROUPS

    def agg(sel: list[dict]) -> dict:
        if not sel:
            return {"n": 0}
        return {"n": len(sel), "dice": float(np.mean([r["dice"] for r in sel])),
                "dice_median": float(np.median([r["dice"] for r in sel])),
                "baseline_dice": float(np.mean([r["baseline_dice"] for r in sel])),
                "seconds_mean": float(np.mean([r["seconds"] for r in sel]))}

    out = {}
    for split in sorted({r["split"] for r in rows}):
        rs = [r for r in rows if r["split"] == split]
        out[split] = {"all": agg(rs),
                      "size": {g: agg([r for r in rs if r["size_group"] == g]) for g in SIZE_GROUPS},
                      "texture": {g: agg([r for r in rs if r["texture_group"] == g]) for g in TEXTURE_GROUPS}}
    return out


def print_table(summary: dict) -> None:
    print(f"{'split':6s} {'group':14s} {'n':>4s} {'gen Dice':>9s} {'median':>7s} {'HU>-500':>8s} {'s/nodule':>9s}")
    for split, s in summary.items():
        lines = [("all", s["all"])] + [(f"size {g}", v) for g, v in s["size"].items()] + \
                [(f"tex {g}", v) for g, v in s["texture"].items()]
        for name, v in lines:
            if not v["n"]:
                print(f"{split:6s} {name:14s} {0:4d}")
                continue
            print(f"{split:6s} {name:14s} {v['n']:4d} {v['dice']:9.3f} {v['dice_median']:7.3f} "
                  f"{v['baseline_dice']:8.3f} {v['seconds_mean']:9.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="folder with generator.safetensors + generator.json")
    ap.add_argument("--data", default=os.path.join(os.environ.get("MEDSEGAI_TEST_DATA", "/work/shared/data"),
                                                   "lidc-nodule-vois"))
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max", type=int, default=0, help="at most N crops per split (0: all)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from MedSegAILib.train.lidc import equivalent_diameter_mm, list_cases, load_case, size_group, split_by_patient

    gen, cfg = load_generator(args.weights)
    split = split_by_patient(list_cases(args.data))
    rows = []
    for name in args.splits.split(","):
        cases = split[name][:args.max] if args.max else split[name]
        for c in cases:
            ct, mask = load_case(c)
            r = evaluate_case(gen, cfg, ct, mask)
            r.update(split=name, name=c["name"], size_group=size_group(equivalent_diameter_mm(mask)),
                     texture_group=c["texture_group"], d_eq_mm=equivalent_diameter_mm(mask))
            rows.append(r)
    summary = summarise(rows)
    print(f"generator {args.weights} (tau {cfg['tau']}, box {cfg.get('box_mm_xyz')} mm, {args.threads} thread(s))")
    print_table(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": str(args.weights), "tau": cfg["tau"],
                                               "threads": args.threads, "summary": summary, "cases": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
