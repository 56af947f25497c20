"""Generator speed: samples/s of the synthetic SIM generator on this machine.

    python bench/generate.py [--n-samples 24] [--quick]

Prints a table (one row per hr_factor x workers) and writes bench/results/generate.json.
Default case: 80 x 80 raw frames, hr_factor 6 (480 x 480 HR grid), 9 frames.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from napari_sim_uq.core.events import run
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset, generate_sample

RESULTS = Path(__file__).resolve().parent / "results"


def stage_times(cfg: SynthConfig, repeats: int = 2) -> dict:
    """Time one in-memory sample (no file writing), best of ``repeats``."""
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        generate_sample(cfg, seed=0, index=i)
        best = min(best, time.perf_counter() - t0)
    return {"in_memory_s_per_sample": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-samples", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = ap.parse_args(argv)
    cases = [(6, 1), (6, 2), (3, 2), (2, 2)] if not args.quick else [(2, 1), (2, 2)]
    lr = (80, 80) if not args.quick else (32, 32)
    n = args.n_samples if not args.quick else 2
    rows = []
    for f, workers in cases:
        cfg = SynthConfig(lr_size=lr, hr_factor=f)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run(generate_dataset(Path(tmp) / "d", n, cfg, seed=0, workers=workers))
            dt = time.perf_counter() - t0
        row = {
            "lr_size": list(lr),
            "hr_factor": f,
            "workers": workers,
            "n_samples": n,
            "seconds": dt,
            "samples_per_s": n / dt,
        }
        row.update(stage_times(cfg))
        rows.append(row)
        print(f"f={f} workers={workers}: {row['samples_per_s']:.2f} samples/s", flush=True)
    print()
    print(
        f"{'LR size':>9} {'f':>3} {'HR size':>9} {'workers':>8} {'samples/s':>10} "
        f"{'s/sample (1 proc, no I/O)':>26}"
    )
    for r in rows:
        hr = f"{r['lr_size'][0] * r['hr_factor']}x{r['lr_size'][1] * r['hr_factor']}"
        print(
            f"{r['lr_size'][0]}x{r['lr_size'][1]:<6} {r['hr_factor']:>3} {hr:>9} "
            f"{r['workers']:>8} {r['samples_per_s']:>10.2f} "
            f"{r['in_memory_s_per_sample']:>26.3f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("generate_quick.json" if args.quick else "generate.json")
    out.write_text(
        json.dumps(
            {
                "benchmark": "generate",
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
