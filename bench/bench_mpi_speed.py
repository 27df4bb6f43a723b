"""End-to-end speed of the mpi-myocardium task: read a file, segment, write every output.

Prints, per simulated case, the wall time of each stage and the network's own forward time, so the overhead around
the network is visible; the peer measured in the same run is the network forward itself (ratio total / forward).
The target (issue 2) is <= 2 s per volume end to end on 2 CPU cores.

    python bench/bench_mpi_speed.py --cases 6 [--device cpu] [--threads 2] [--no-overlay]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-overlay", action="store_true", help="skip the overlay PNG (as `--no-overlay` in the CLI)")
    ap.add_argument("--seed", type=int, default=900_000)
    args = ap.parse_args()

    t_import = time.perf_counter()
    import torch

    from MedSegAILib.core.io import read_volume, write_volume
    from MedSegAILib.outputs import write_result_files
    from MedSegAILib.pipeline import segment
    from MedSegAILib.simulate.spect import simulate_spect

    import slicer  # noqa: F401  (the .seg.nrrd writer's MRML classes; imported once like the CLI does)

    t_import = time.perf_counter() - t_import
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"library imports {t_import:.2f} s (once per process, not counted per case)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = []
        for n in range(args.cases):
            image, _, params = simulate_spect(args.seed + n)
            path = write_volume(image, tmp / f"case{n}.nii.gz")
            cases.append((path, image))
        # warm-up: model load + first-call allocations (reported separately)
        t0 = time.perf_counter()
        segment("mpi-myocardium", {"image": read_volume(cases[0][0])}, device=args.device)
        warm = time.perf_counter() - t0
        print(f"warm-up (model load, checksum, first call): {warm:.2f} s\n")
        print(f"{'case':>5} {'shape':>16} {'spacing':>8} {'read':>6} {'segment':>8} {'forward':>8} {'write':>6} "
              f"{'total':>6} {'total/fwd':>9}")
        for n, (path, image) in enumerate(cases):
            t0 = time.perf_counter()
            vol = read_volume(path)
            t1 = time.perf_counter()
            result = segment("mpi-myocardium", {"image": vol}, device=args.device)
            t2 = time.perf_counter()
            write_result_files(result, tmp / f"out{n}", path.name.split(".")[0],
                               image=None if args.no_overlay else vol)
            t3 = time.perf_counter()
            fwd = result.provenance["timings_s"].get("network_forward", float("nan"))
            total = t3 - t0
            rows.append((total, fwd, t2 - t1))
            print(f"{n:>5} {str(vol.shape):>16} {vol.spacing[0]:>8.2f} {t1 - t0:>6.2f} {t2 - t1:>8.2f} {fwd:>8.3f} "
                  f"{t3 - t2:>6.2f} {total:>6.2f} {total / fwd:>9.1f}")
    totals = [r[0] for r in rows]
    fwds = [r[1] for r in rows]
    print(f"\nmedian end-to-end {statistics.median(totals):.2f} s (max {max(totals):.2f} s); median network forward "
          f"{statistics.median(fwds):.3f} s; overhead ratio total/forward {statistics.median(totals) / statistics.median(fwds):.1f}")
    print(f"target <= 2 s per volume: {'MET' if max(totals) <= 2.0 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
