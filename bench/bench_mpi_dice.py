"""Dice benchmark of the shipped mpi-myocardium model on held-out simulated SPECT volumes.

    python bench/bench_mpi_dice.py --cases 40 [--threads 2] [--json out.json] [--model mpi-myocardium-unet3d]

Each case is simulated with a seed ``TEST_SEED_BASE + 1000 + i`` (disjoint from the training seeds and the
validation seeds of the recipe), written to a NIfTI file, read back, segmented through the full
:meth:`MyocardiumSPECTTask.run` path (localizer, segmenter, mapping back to the input grid, post-processing,
quantification, polar map) and the label map written to disk. Dice of the myocardium and of the cavity is
computed on the *native* input grid against the simulator's supersampled ground truth.

Prints per-case lines and a summary stratified by voxel size, with the network forward time (the
``network_forward`` timer of the inference engine) and the end-to-end time (read + run + write).
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

from MedSegAILib.metrics import dice  # noqa: E402

BINS = [(2.0, 3.0), (3.0, 4.0), (4.0, 5.0), (5.0, 6.0), (6.0, 7.01)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--first", type=int, default=0, help="index of the first case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="mpi-myocardium-unet3d")
    ap.add_argument("--json", default=None, help="write per-case results and the summary here")
    ap.add_argument("--no-io", action="store_true", help="skip the NIfTI write/read round trip")
    args = ap.parse_args(argv)

    import torch

    from MedSegAILib.core.io import read_volume, write_volume
    from MedSegAILib.engine.progress import CancelToken, Progress
    from MedSegAILib.simulate.spect import simulate_spect
    from MedSegAILib.tasks.base import RunContext
    from MedSegAILib.tasks.mpi_myocardium import MyocardiumParameters, MyocardiumSPECTTask
    from MedSegAILib.train.mpi_myocardium import TEST_SEED_BASE
    from MedSegAILib.zoo.registry import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, "cpu")
    task = MyocardiumSPECTTask()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_mpi_"))
    print(f"{'case':>4} {'seed':>10} {'voxel':>6} {'shape':>13} {'obl':>3} {'fov_mm':>6} {'myo':>6} {'cav':>6} "
          f"{'fwd_s':>6} {'run_s':>6} {'e2e_s':>6}  notes")
    for n in range(args.first, args.first + args.cases):
        seed = TEST_SEED_BASE + 1000 + n
        img, truth, p = simulate_spect(seed)
        t0 = time.perf_counter()
        if not args.no_io:
            path = tmp / f"case{n}.nii.gz"
            write_volume(img, path)
            t0 = time.perf_counter()
            vol = read_volume(path, modality="NM")
        else:
            vol = img
        ctx = RunContext(device=torch.device("cpu"), progress=Progress(), cancel=CancelToken())
        t1 = time.perf_counter()
        res = task.run({"image": vol}, MyocardiumParameters(), model, ctx)
        t2 = time.perf_counter()
        if not args.no_io:
            write_volume(res.labelmap, tmp / f"case{n}_labels.nii.gz")
        t3 = time.perf_counter()
        assert res.labelmap.same_geometry(img, atol=1e-3)
        lab = res.labelmap.array
        row = {
            "case": n,
            "seed": seed,
            "voxel_mm": float(np.mean(img.spacing)),
            "shape": list(img.shape),
            "oblique": bool(p["oblique"]),
            "fov_mm": float(max(np.asarray(img.size_ijk) * np.asarray(img.spacing))),
            "liver_level": p["liver_level"],
            "defects": len(p["defects"]),
            "dice_myocardium": dice(lab == 1, truth.array == 1),
            "dice_cavity": dice(lab == 2, truth.array == 2),
            "forward_s": float(ctx.timings.get("network_forward", float("nan"))),
            "run_s": t2 - t1,
            "end_to_end_s": t3 - t0,
            "messages": res.messages,
        }
        rows.append(row)
        print(f"{n:4d} {seed:10d} {row['voxel_mm']:6.2f} {str(tuple(img.shape)):>13} {int(row['oblique']):3d} "
              f"{row['fov_mm']:6.0f} {row['dice_myocardium']:6.3f} {row['dice_cavity']:6.3f} {row['forward_s']:6.3f} "
              f"{row['run_s']:6.3f} {row['end_to_end_s']:6.3f}  {'; '.join(m[:50] for m in res.messages)}", flush=True)

    def stats(sel):
        dm = np.array([r["dice_myocardium"] for r in sel])
        dc = np.array([r["dice_cavity"] for r in sel])
        return {
            "n": len(sel),
            "dice_myocardium_mean": float(dm.mean()), "dice_myocardium_median": float(np.median(dm)),
            "dice_myocardium_min": float(dm.min()),
            "dice_cavity_mean": float(dc.mean()), "dice_cavity_median": float(np.median(dc)),
            "dice_cavity_min": float(dc.min()),
        }

    summary = {"all": stats(rows), "by_voxel_mm": {}}
    for lo, hi in BINS:
        sel = [r for r in rows if lo <= r["voxel_mm"] < hi]
        if sel:
            summary["by_voxel_mm"][f"{lo:g}-{min(hi, 7):g}"] = stats(sel)
    obl = [r for r in rows if r["oblique"]]
    if obl:
        summary["oblique"] = stats(obl)
    fwd = np.array([r["forward_s"] for r in rows])
    run = np.array([r["run_s"] for r in rows])
    e2e = np.array([r["end_to_end_s"] for r in rows])
    summary["timing_s"] = {
        "threads": args.threads,
        "forward_mean": float(fwd.mean()), "forward_max": float(fwd.max()),
        "run_mean": float(run.mean()), "run_max": float(run.max()),
        "end_to_end_mean": float(e2e.mean()), "end_to_end_median": float(np.median(e2e)),
        "end_to_end_max": float(e2e.max()),
    }
    a = summary["all"]
    print()
    print(f"ALL n={a['n']}: myocardium Dice mean {a['dice_myocardium_mean']:.4f} median {a['dice_myocardium_median']:.4f} "
          f"min {a['dice_myocardium_min']:.4f} | cavity mean {a['dice_cavity_mean']:.4f} median "
          f"{a['dice_cavity_median']:.4f} min {a['dice_cavity_min']:.4f}")
    for k, s in summary["by_voxel_mm"].items():
        print(f"  voxel {k:>5} mm n={s['n']:3d}: myo mean {s['dice_myocardium_mean']:.4f} min {s['dice_myocardium_min']:.4f}"
              f" | cav mean {s['dice_cavity_mean']:.4f} min {s['dice_cavity_min']:.4f}")
    if obl:
        s = summary["oblique"]
        print(f"  oblique      n={s['n']:3d}: myo mean {s['dice_myocardium_mean']:.4f} min {s['dice_myocardium_min']:.4f}")
    t = summary["timing_s"]
    print(f"timing ({args.threads} threads): forward mean {t['forward_mean']:.3f}s max {t['forward_max']:.3f}s | "
          f"Task.run mean {t['run_mean']:.3f}s max {t['run_max']:.3f}s | end-to-end (read+run+write) mean "
          f"{t['end_to_end_mean']:.3f}s median {t['end_to_end_median']:.3f}s max {t['end_to_end_max']:.3f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
