"""Speed and memory of the two parotid networks on CPU: one training step and one inference forward.

One training step = forward + backward + Adam update of a batch of one 64x128x128 patch (the (N, 1, D, H, W) =
(1, 1, 64, 128, 128) input of the method, 1 mm voxels) with the hybrid Dice + focal loss; one inference forward =
the same patch in eval mode without autograd. Every configuration runs in a fresh subprocess so that its peak
resident memory (``ru_maxrss``: imports + weights + optimiser state + activations kept for backward) is its own.
Times are wall-clock seconds after one warm-up call: the minimum (least disturbed by other jobs on a shared
machine) and the median of ``--repeats`` calls, plus the process CPU time of a call (user + system, all threads;
with one thread on an otherwise idle core it equals the wall time, so it shows how much of a slow wall time is
contention). The 1-minute load average at the start of each configuration is printed with it.

    python bench/bench_parotid_nets.py [--threads 1,2] [--repeats 3] [--features 8,12] [--tuned] [--batch 1]

``--tuned`` runs the networks and the input in ``torch.channels_last_3d`` memory format (oneDNN's fast layout
for 3-D convolutions) and keeps freed memory in the process (``MALLOC_MMAP_MAX_=0``,
``MALLOC_TRIM_THRESHOLD_`` large: glibc otherwise returns every >32 MB activation to the kernel and page-faults
it back, zero-filled, at the next step -- seconds of system time per step). Both are settings of the training
process, not of the network.

The training budget is ~25 min per network on 2 CPU cores, so a step should take ~1-2 s (about 1000 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATCH = (64, 128, 128)


def widths(f0: int) -> list[int]:
    return [f0 * 2**i for i in range(5)]


def measure(arch: str, f0: int, threads: int, repeats: int, channels_last: bool = False, batch: int = 1,
            extra: dict | None = None) -> dict:
    import torch

    from MedSegAILib import nets
    from MedSegAILib.train.losses import HybridDiceFocalLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    net = nets.build(arch, features=widths(f0), levels=4, **(extra or {}))
    n_par = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = HybridDiceFocalLoss()
    x = torch.rand((batch, 1) + PATCH)
    y = torch.zeros((batch,) + PATCH, dtype=torch.long)
    y[:, 20:44, 30:70, 20:50] = 1  # two "glands" so both Dice terms are active
    y[:, 20:44, 30:70, 78:108] = 2
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    def timed(fn) -> tuple[list[float], list[float]]:
        wall, cpu = [], []
        for i in range(repeats + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if i:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        return wall, cpu

    load = os.getloadavg()[0]
    net.train()
    t_train, c_train = timed(step)
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    net.eval()
    with torch.no_grad():
        t_inf, c_inf = timed(lambda: net(x))
    return {"arch": arch, "features": widths(f0), "threads": threads, "params": n_par, "batch": batch,
            "channels_last": channels_last, "extra": extra or {},
            "train_step_min_s": min(t_train), "train_step_median_s": statistics.median(t_train),
            "train_step_cpu_s": statistics.median(c_train), "infer_min_s": min(t_inf),
            "infer_median_s": statistics.median(t_inf), "infer_cpu_s": statistics.median(c_inf), "load_1min": load,
            "rss_after_import_mb": rss0, "peak_rss_mb": rss_train}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--features", default="8,12", help="first-level widths f0 (levels 4: f0 .. 16 f0)")
    ap.add_argument("--archs", default="resunet3d,cbam_unet3d")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tuned", action="store_true", help="channels_last_3d + no malloc trimming (see above)")
    ap.add_argument("--hp", default="{}", help="extra builder hyper-parameters as JSON, e.g. '{\"cbam_kernel\": 5}'")
    ap.add_argument("--one", nargs=3, metavar=("ARCH", "F0", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    extra = json.loads(args.hp)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), int(args.one[2]), args.repeats, args.tuned,
                                 args.batch, extra)))
        return 0
    import torch

    env = dict(os.environ)
    if args.tuned:
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 40))
    print(f"torch {torch.__version__}; input ({args.batch}, 1) + {PATCH}; {'tuned' if args.tuned else 'default'} "
          f"settings; extra {extra}; {args.repeats} calls after 1 warm-up; seconds: min / median wall (CPU)")
    print("| network | features | params | threads | train step (s) | inference (s) | peak RSS (MB) | load |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        for f0 in (int(v) for v in args.features.split(",")):
            for th in (int(v) for v in args.threads.split(",")):
                cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--batch", str(args.batch),
                       "--hp", args.hp, "--one", arch, str(f0), str(th)] + (["--tuned"] if args.tuned else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {arch} | {r['features']} | {r['params']:,} | {th} | {r['train_step_min_s']:.2f} / "
                      f"{r['train_step_median_s']:.2f} ({r['train_step_cpu_s']:.2f}) | {r['infer_min_s']:.2f} / "
                      f"{r['infer_median_s']:.2f} ({r['infer_cpu_s']:.2f}) | {r['peak_rss_mb']:.0f} | "
                      f"{r['load_1min']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
