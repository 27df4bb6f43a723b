"""Benchmark of the parathyroid task on simulated dual-tracer studies: learned (NM-USNet) versus classical.

    python bench/bench_parathyroid.py --split test --cases 100 [--threads 2] [--json out.json]
    python bench/bench_parathyroid.py --split val --cases 100 --sweep      # choose the detection thresholds

Studies come from :func:`MedSegAILib.simulate.planar_neck.simulate_neck` with seeds disjoint from training:
``val`` = ``VAL_SEED_BASE + n`` (threshold selection only), ``test`` = ``TEST_SEED_BASE + n`` (reported numbers).
Each study is written as two planar NM DICOM files (with the tracer, frame time and injection headers), then,
timed together as "read to scene": both files are read, the pipeline (:func:`MedSegAILib.pipeline.segment`,
the same call as the CLI and Slicer) runs, and the result is written into a real MRML scene (slicer-core).

Reported:

* **Pearson r** between the generated parathyroid image and the simulator's true parathyroid-only image, on
  the sestamibi grid, per study with at least one adenoma (studies without one have an all-zero truth where r
  is undefined), also split by whether the study has an adenoma >= ``--min-diameter``, and pooled over all
  studies' pixels (the NM-USNet paper's metric: one r over the flattened batch). For the classical method the
  difference image ``Tc - k I`` is used (and clipped at 0).
* **Detection**: sensitivity for adenomas >= ``--min-diameter`` mm (8) and for all adenomas, false positives
  per study, with each method's own focus list (:func:`MedSegAILib.tasks.parathyroid.foci.match_foci`: a focus
  hits an adenoma when its centroid is inside the footprint or within 10 mm of its centre).
* **Salivary check**: studies where the top-ranked focus lies on a salivary gland although an adenoma >= 8 mm
  exists (must be 0).
* **Time** read-to-scene per study (median, max), the network forward time, and the first call (model load).

``--sweep`` runs with low thresholds, collects every candidate's score, and prints sensitivity / FP-per-study for
a range of thresholds; the chosen threshold (highest sensitivity with <= ``--max-fp`` FP/study) is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from MedSegAILib.train.parathyroid import TEST_SEED_BASE  # noqa: E402 - the recipe's held-out seeds, one definition

VAL_SEED_BASE = 2_900_000_000  #: threshold-selection studies: disjoint from training and from the test seeds


@dataclass
class _Found:
    """A reported focus, rebuilt from the result's point list (what the user sees)."""

    rank: int
    centroid_ij: tuple[float, float]
    score: float
    spacing: tuple[float, float]
    is_nuisance: bool = False


def _reported_foci(result, ref) -> list[_Found]:
    if not result.points:
        return []
    pts = result.points[0].points_lps
    scores = result.tables[0].column("Score")
    ij = ref.lps_to_index(np.asarray(pts, float).reshape(-1, 3))
    return [_Found(n + 1, (float(ij[n, 0]), float(ij[n, 1])), float(scores[n]), (ref.spacing[0], ref.spacing[1]))
            for n in range(len(pts))]


def _detection(foci, study, min_d: float):
    from MedSegAILib.tasks.parathyroid.foci import match_foci

    tp, fp, fn, det = match_foci(foci, study.adenoma_labels.array, study.adenomas, reference=study.tc)
    big = [a for a in det["adenomas"] if a["diameter_mm"] >= min_d]
    top_salivary = False
    if foci and big:
        ci, cj = foci[0].centroid_ij
        r, c = int(round(cj)), int(round(ci))
        sal = study.salivary_mask.array[0]
        top_salivary = bool(0 <= r < sal.shape[0] and 0 <= c < sal.shape[1] and sal[r, c])
    return {"tp": tp, "fp": fp, "fn": fn, "adenomas": det["adenomas"], "top_is_salivary": top_salivary}


def _summary(rows: list[dict], key: str, min_d: float) -> dict:
    ad = [a for r in rows for a in r[key]["adenomas"]]
    big = [a for a in ad if a["diameter_mm"] >= min_d]
    out = {
        "sensitivity_ge_min": float(np.mean([a["detected_by"] is not None for a in big])) if big else float("nan"),
        "n_adenomas_ge_min": len(big),
        "sensitivity_all": float(np.mean([a["detected_by"] is not None for a in ad])) if ad else float("nan"),
        "n_adenomas": len(ad),
        "fp_per_study": float(np.mean([r[key]["fp"] for r in rows])),
        "top_is_salivary": int(sum(r[key]["top_is_salivary"] for r in rows)),
    }
    for lo, hi in ((5, 8), (8, 12), (12, 16), (16, 20.01)):
        sel = [a for a in ad if lo <= a["diameter_mm"] < hi]
        out[f"sensitivity_{lo}-{int(hi)}mm"] = (float(np.mean([a["detected_by"] is not None for a in sel]))
                                                if sel else float("nan"))
    return out


def _sweep(rows: list[dict], key: str, thresholds, min_d: float, max_fp: float) -> tuple[list[dict], float]:
    """Sensitivity / FP per study when only foci with score >= t are kept (ranks re-assigned)."""
    from MedSegAILib.tasks.parathyroid.foci import match_foci

    table, chosen, best = [], None, (-1.0, 0.0)
    for t in thresholds:
        hits, n_big, fps = 0, 0, 0
        for r in rows:
            study = r["_study"]
            kept = [f for f in r[f"_{key}_foci"] if f.score >= t]
            for n, f in enumerate(kept, start=1):
                f.rank = n
            tp, fp, fn, det = match_foci(kept, study.adenoma_labels.array, study.adenomas, reference=study.tc)
            big = [a for a in det["adenomas"] if a["diameter_mm"] >= min_d]
            hits += sum(a["detected_by"] is not None for a in big)
            n_big += len(big)
            fps += fp
        sens, fp_rate = hits / max(n_big, 1), fps / len(rows)
        table.append({"threshold": float(t), "sensitivity_ge_min": sens, "fp_per_study": fp_rate})
        if fp_rate <= max_fp and (sens > best[0] or (sens == best[0] and fp_rate < best[1])):
            best, chosen = (sens, fp_rate), float(t)
    return table, (chosen if chosen is not None else float(thresholds[-1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("val", "test"), default="test")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="parathyroid-nmusnet")
    ap.add_argument("--min-diameter", type=float, default=8.0)
    ap.add_argument("--sweep", action="store_true", help="collect all candidates and choose thresholds")
    ap.add_argument("--max-fp", type=float, default=0.3, help="FP/study allowed when choosing a threshold")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    import slicer

    from MedSegAILib.core.io import read_volume
    from MedSegAILib.metrics import pearson
    from MedSegAILib.mrml.results import write_result
    from MedSegAILib.mrml.volumes import node_from_volume
    from MedSegAILib.pipeline import segment
    from MedSegAILib.simulate.dicom_nm import write_planar_nm_dicom
    from MedSegAILib.simulate.planar_neck import simulate_neck

    torch.set_num_threads(args.threads)
    base = VAL_SEED_BASE if args.split == "val" else TEST_SEED_BASE
    tmp = Path(tempfile.mkdtemp(prefix="bench_parathyroid_"))
    learned_params = {"max_foci": 10, "detection_threshold": 0.002} if args.sweep else {}
    classical_params = {"method": "classical", "max_foci": 10, **({"detection_threshold": 2.5} if args.sweep else {})}
    rows = []
    first_call = None
    print(f"{'case':>4} {'px':>4} {'aden (mm)':>16} {'r_learn':>7} {'r_class':>7} {'L tp/fp':>7} {'C tp/fp':>7} "
          f"{'e2e_s':>6} {'fwd_s':>6}")
    for n in range(args.first, args.first + args.cases):
        seed = base + n
        study = simulate_neck(seed)
        p_tc = write_planar_nm_dicom(study.tc, tmp / f"case{n}_tc.dcm", patient_id=f"SIM{n}")
        p_i = write_planar_nm_dicom(study.iodine, tmp / f"case{n}_i.dcm", patient_id=f"SIM{n}")
        t0 = time.perf_counter()
        tc, iod = read_volume(p_tc), read_volume(p_i)
        res = segment("parathyroid", {"sestamibi": tc, "iodine": iod}, model_id=args.model, device="cpu",
                      params=learned_params)
        scene = slicer.vtkMRMLScene()
        ref_node = node_from_volume(scene, tc, "Sestamibi")
        write_result(scene, res, ref_node)
        e2e = time.perf_counter() - t0
        if first_call is None:
            first_call = e2e
        res_c = segment("parathyroid", {"sestamibi": tc, "iodine": iod}, model_id=args.model, device="cpu",
                        params=classical_params)
        truth = study.parathyroid.array[0].astype(np.float64)
        maps = {m.name: m.volume.array[0].astype(np.float64) for m in res.maps}
        has = bool(study.adenomas) and truth.max() > 0
        r_learn = pearson(maps["Parathyroid image (NM-USNet)"], truth) if has else float("nan")
        r_class = pearson(maps["Subtraction (classical)"], truth) if has else float("nan")
        r_class_clip = pearson(np.clip(maps["Subtraction (classical)"], 0, None), truth) if has else float("nan")
        lf, cf = _reported_foci(res, tc), _reported_foci(res_c, tc)
        row = {
            "case": n, "seed": seed, "pixel_mm": float(study.tc.spacing[0]),
            "adenomas_mm": [round(a.diameter_mm, 1) for a in study.adenomas],
            "r_learned": r_learn, "r_classical": r_class, "r_classical_clipped": r_class_clip,
            "learned": _detection(lf, study, args.min_diameter),
            "classical": _detection(cf, study, args.min_diameter),
            "e2e_s": e2e, "forward_s": res.provenance["timings_s"].get("network_forward", float("nan")),
            "_study": study, "_learned_foci": lf, "_classical_foci": cf,
            "_pred": maps["Parathyroid image (NM-USNet)"].ravel(), "_pred_c": maps["Subtraction (classical)"].ravel(),
            "_truth": truth.ravel(),
        }
        rows.append(row)
        print(f"{n:4d} {row['pixel_mm']:4.1f} {str(row['adenomas_mm']):>16} {r_learn:7.3f} {r_class:7.3f} "
              f"{row['learned']['tp']:>3}/{row['learned']['fp']:<3} {row['classical']['tp']:>3}/"
              f"{row['classical']['fp']:<3} {e2e:6.2f} {row['forward_s']:6.3f}")

    with_adenoma = [r for r in rows if not np.isnan(r["r_learned"])]
    timing = [r["e2e_s"] for r in rows[1:]] or [rows[0]["e2e_s"]]
    summary = {
        "split": args.split, "cases": len(rows), "cases_with_adenoma": len(with_adenoma),
        "pearson_learned_mean": float(np.mean([r["r_learned"] for r in with_adenoma])),
        "pearson_learned_median": float(np.median([r["r_learned"] for r in with_adenoma])),
        "pearson_learned_min": float(np.min([r["r_learned"] for r in with_adenoma])),
        "pearson_learned_mean_if_adenoma_ge_min": float(np.mean(
            [r["r_learned"] for r in with_adenoma if max(r["adenomas_mm"]) >= args.min_diameter])),
        "pearson_learned_mean_if_only_smaller": float(np.mean(
            [r["r_learned"] for r in with_adenoma if max(r["adenomas_mm"]) < args.min_diameter] or [np.nan])),
        # the paper's metric: one r over the flattened batch (all studies' pixels together)
        "pearson_learned_pooled": pearson(np.concatenate([r["_pred"] for r in rows]),
                                          np.concatenate([r["_truth"] for r in rows])),
        "pearson_classical_pooled": pearson(np.concatenate([r["_pred_c"] for r in rows]),
                                            np.concatenate([r["_truth"] for r in rows])),
        "pearson_classical_mean": float(np.mean([r["r_classical"] for r in with_adenoma])),
        "pearson_classical_clipped_mean": float(np.mean([r["r_classical_clipped"] for r in with_adenoma])),
        "learned": _summary(rows, "learned", args.min_diameter),
        "classical": _summary(rows, "classical", args.min_diameter),
        "read_to_scene_s_median": float(np.median(timing)), "read_to_scene_s_max": float(np.max(timing)),
        "first_call_s_incl_model_load": float(first_call or 0.0),
        "network_forward_s_median": float(np.median([r["forward_s"] for r in rows])),
        "threads": args.threads,
    }
    if args.sweep:
        lt, l_choice = _sweep(rows, "learned", np.round(np.arange(0.01, 0.30, 0.005), 4), args.min_diameter,
                              args.max_fp)
        ct, c_choice = _sweep(rows, "classical", np.round(np.arange(3.0, 12.01, 0.25), 3), args.min_diameter,
                              args.max_fp)
        summary["sweep"] = {"learned": lt, "classical": ct, "chosen_learned": l_choice, "chosen_classical": c_choice,
                            "max_fp": args.max_fp}
        print("\nthreshold sweep (learned):")
        for r in lt[::2]:
            print(f"  t={r['threshold']:.3f}  sens>={args.min_diameter:g}mm {r['sensitivity_ge_min']:.3f}  "
                  f"FP/study {r['fp_per_study']:.2f}")
        print("threshold sweep (classical z):")
        for r in ct[::2]:
            print(f"  z={r['threshold']:.2f}  sens>={args.min_diameter:g}mm {r['sensitivity_ge_min']:.3f}  "
                  f"FP/study {r['fp_per_study']:.2f}")
        print(f"chosen: learned {l_choice}, classical z {c_choice} (<= {args.max_fp} FP/study)")
    print("\n" + json.dumps(summary, indent=2, default=float))
    if args.json:
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        Path(args.json).write_text(json.dumps({"summary": summary, "cases": clean}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
