"""Fine-tuning on a shifted domain, myocardium task: held-out Dice before and after, time and memory.

    python bench/bench_finetune_mpi.py [--cases 10] [--heldout 20] [--minutes 8] [--threads 2] [--json F]

Shifted domain: simulated myocardial-perfusion SPECT from another camera and count level than the starter model
was trained on — system resolution 20 mm FWHM (training 10-16), reconstruction filter 12 mm (4-9) and 60 counts
per mL (300-3000): blurrier and noisier. ``--cases`` studies (seeds 7000000...) are the user's corrected cases
(the simulator's truth as the corrected masks); ``--heldout`` other studies (seeds 7100000...) are never seen.

Both models run through the task's full path (``pipeline.segment``: localiser, segmenter, post-processing) on
the held-out native grids; Dice of the myocardium and cavity vs the truth. The fine-tuning is
``finetune.engine.finetune`` + ``finetune.publish.publish`` into a temporary user model folder (the GUI's and the
CLI's path); the published model is loaded back from that folder for the "after" numbers. The peer in the same
run is the base model's segmentation time per study. Peak RSS from ``getrusage`` (the whole process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHIFT = {"system_fwhm_mm": 20.0, "filter_fwhm_mm": 12.0, "counts_per_ml": 60.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--heldout", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=8.0, help="fine-tuning time budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="bench/results/finetune_mpi.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ["MEDSEGAI_MODEL_DIR"] = tempfile.mkdtemp(prefix="medsegai-bench-models-")
    from MedSegAILib.finetune.data import Case
    from MedSegAILib.finetune.engine import FinetuneOptions, finetune
    from MedSegAILib.finetune.publish import publish
    from MedSegAILib.metrics import dice
    from MedSegAILib.pipeline import segment
    from MedSegAILib.simulate.spect import simulate_spect

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"shift": SHIFT, "cases": args.cases, "heldout": args.heldout, "minutes": args.minutes,
                    "threads": args.threads}

    def save() -> None:
        out.write_text(json.dumps(report, indent=1, default=float))

    t0 = time.perf_counter()
    train_cases = []
    for i in range(args.cases):
        img, lab, _ = simulate_spect(7_000_000 + i, acquisition=SHIFT)
        train_cases.append(Case(f"study{i:02d}", f"patient{i:02d}", {"image": img}, lab))
    held = [simulate_spect(7_100_000 + i, acquisition=SHIFT)[:2] for i in range(args.heldout)]
    report["simulate_s"] = time.perf_counter() - t0

    def evaluate(model_id: str | None, key: str) -> None:
        rows, secs = [], []
        for img, lab in held:
            t = time.perf_counter()
            res = segment("mpi-myocardium", {"image": img}, model_id=model_id, device="cpu")
            secs.append(time.perf_counter() - t)
            p = res.labelmap.array
            rows.append({"dice_myocardium": dice(p == 1, lab.array == 1), "dice_cavity": dice(p == 2, lab.array == 2)})
        report[key] = {
            "dice_myocardium_mean": float(np.mean([r["dice_myocardium"] for r in rows])),
            "dice_myocardium_median": float(np.median([r["dice_myocardium"] for r in rows])),
            "dice_cavity_mean": float(np.mean([r["dice_cavity"] for r in rows])),
            "seconds_per_study": float(np.mean(secs)), "per_case": rows}
        print(f"{key}: myocardium Dice {report[key]['dice_myocardium_mean']:.3f} (median "
              f"{report[key]['dice_myocardium_median']:.3f}), cavity {report[key]['dice_cavity_mean']:.3f}, "
              f"{report[key]['seconds_per_study']:.1f} s/study", flush=True)
        save()

    evaluate(None, "before")
    t = time.perf_counter()
    run = finetune("mpi-myocardium", train_cases,
                   options=FinetuneOptions(epochs=1000, minutes=args.minutes, val_share=0.2, patience=10),
                   log=lambda s: print(s, flush=True))
    spec = publish(run, "bench-shifted", keep_if_worse=True)
    report["finetune"] = {"seconds": time.perf_counter() - t, "model": spec.key, "summary": run.summary(),
                          "validation_dice_before": run.dice_before, "validation_dice_after": run.dice_after,
                          "epochs": len(run.history), "stopped_by": run.stopped_by,
                          "peak_rss_mb_after_finetune": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(run.summary(), flush=True)
    save()
    evaluate(spec.key, "after")
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["total_s"] = time.perf_counter() - t0
    save()
    print(f"fine-tune {report['finetune']['seconds']:.0f} s, peak RSS {report['peak_rss_mb']:.0f} MB; "
          f"held-out myocardium Dice {report['before']['dice_myocardium_mean']:.3f} -> "
          f"{report['after']['dice_myocardium_mean']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
