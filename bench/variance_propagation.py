"""Benchmark: exact SIM variance propagation with FFT convolutions vs direct convolutions.

All paths compute the same quantity, ``propagate_variance`` (DESIGN.md section 4: the
correlation-correct binning rule with uncertain emitter, patterns and PSF):

- ``fft``: ``conv="fft"`` (rfft2, minimal padding, one inverse transform evaluated only at
  the camera pixels);
- ``direct``: ``conv="direct"``, full linear convolutions with torch ``conv2d`` (flipped
  kernel), then sampled at the camera pixels: "the same computed with direct convolution";
- ``direct strided``: ``conv="direct_strided"``, ``conv2d`` evaluated only at the camera
  pixels (``stride = f``), the fastest direct variant (``f^2`` less work than ``direct``).

Default (full) case: batch 8, 9 frames, HR 480 x 480, hr_factor 2, one Gaussian PSF per
sample of 31 and 49 px. ``--quick`` runs a small smoke case. Prints a table and writes JSON
to ``bench/results/variance_propagation.json`` (``..._tuned_malloc.json`` with
``--tune-malloc``; or ``--out``).

"max rel diff" is ``max |v_fft - v_direct| / max |v_direct|``; "max pointwise rel" is
``max |v_fft - v_direct| / v_direct`` over pixels with ``v_direct > 1e-3 max(v_direct)``.

On CPU with glibc, large temporaries are returned to the OS after every call and their
pages are faulted in again on the next one; on this kind of machine that costs more than
the arithmetic of the FFT path. ``--tune-malloc`` sets ``mallopt(M_TOP_PAD, 1 GiB)`` so
freed memory is kept and reused (what a long-running training process effectively sees);
the setting is recorded in the JSON. GPUs are unaffected (caching allocator).
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import write_result
from napari_sim_uq.tasks.sim.physics import gaussian_psf, illumination_patterns, propagate_variance

BACKENDS = ("fft", "direct", "direct_strided")


def make_inputs(batch, frames, size, ksize, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    emitter = torch.rand(batch, 1, size, size, generator=g)
    var_emitter = (0.3 * emitter) ** 2
    n_angles = 3
    n_phases = frames // n_angles
    pats = illumination_patterns(
        (size, size),
        n_angles,
        n_phases,
        period=torch.linspace(4.0, 6.0, batch),
        modulation=0.8,
    )
    var_patterns = 0.01 * torch.rand(batch, frames, size, size, generator=g)
    sigmas = torch.linspace(ksize / 10, ksize / 7, batch)
    psf = gaussian_psf(sigmas, ksize)
    var_psf = (0.2 * psf) ** 2
    tensors = [emitter, pats, psf, var_emitter, var_patterns, var_psf]
    return [t.to(device=device, dtype=torch.float32) for t in tensors]


def run(inputs, f, conv):
    emitter, pats, psf, ve, vl, vh = inputs
    with torch.no_grad():
        return propagate_variance(
            emitter, pats, psf, f, var_emitter=ve, var_patterns=vl, var_psf=vh, conv=conv
        )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats, device):
    times = []
    out = None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return out, times


def tune_malloc() -> str:
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_top_pad = -2
        ok = libc.mallopt(m_top_pad, 1 << 30)
    except (OSError, AttributeError):
        return "unavailable (not glibc)"
    return "mallopt(M_TOP_PAD, 1 GiB)" if ok == 1 else "mallopt failed"


def rel_diffs(v, ref):
    diff = (v.double() - ref.double()).abs()
    ref = ref.double()
    mask = ref > 1e-3 * ref.max()
    return float(diff.max() / ref.abs().max()), float((diff[mask] / ref[mask]).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of the FFT path")
    ap.add_argument(
        "--direct-repeats",
        type=int,
        default=3,
        help="timed repeats of the direct paths (use 1 when they are slow)",
    )
    ap.add_argument("--tune-malloc", action="store_true", help="keep freed memory (glibc)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)

    malloc = tune_malloc() if args.tune_malloc else "default"
    if args.quick:
        batch, frames, size, ksizes, hr_factor = 2, 9, 96, [9, 15], 2
    else:
        batch, frames, size, ksizes, hr_factor = 8, 9, 480, [31, 49], 2
    device = torch.device(args.device)
    stem = "variance_propagation" + ("_tuned_malloc" if args.tune_malloc else "")
    out_path = args.out or Path(__file__).parent / "results" / f"{stem}.json"

    print(
        f"variance propagation, batch {batch}, {frames} frames, HR {size}x{size}, "
        f"hr_factor {hr_factor}, device {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, malloc {malloc}",
        flush=True,
    )
    rows = []
    for k in ksizes:
        inputs = make_inputs(batch, frames, size, k, device)
        outs, times = {}, {}
        for conv in BACKENDS:
            run(inputs, hr_factor, conv)  # warm-up (FFT plans, allocator, oneDNN)
            reps = args.repeats if conv == "fft" else args.direct_repeats
            outs[conv], times[conv] = timed(
                lambda inputs=inputs, conv=conv: run(inputs, hr_factor, conv), reps, device
            )
            print(f"  psf {k}: {conv} median {statistics.median(times[conv]):.3f} s", flush=True)
        med = {c: statistics.median(t) for c, t in times.items()}
        max_rel, pointwise = rel_diffs(outs["fft"], outs["direct"])
        max_rel_s, _ = rel_diffs(outs["direct_strided"], outs["direct"])
        rows.append(
            {
                "psf_size": k,
                "fft_s": med["fft"],
                "direct_s": med["direct"],
                "direct_strided_s": med["direct_strided"],
                "speedup_vs_direct": med["direct"] / med["fft"],
                "speedup_vs_direct_strided": med["direct_strided"] / med["fft"],
                "max_rel_diff": max_rel,
                "max_pointwise_rel_diff": pointwise,
                "max_rel_diff_strided_vs_direct": max_rel_s,
                "times_s": times,
            }
        )

    header = (
        f"{'PSF':>4} {'FFT [s]':>8} {'direct [s]':>10} {'ratio':>7} {'strided [s]':>11} "
        f"{'ratio':>7} {'max rel diff':>12} {'max pointwise':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['psf_size']:>4} {r['fft_s']:>8.3f} {r['direct_s']:>10.3f} "
            f"{r['speedup_vs_direct']:>6.1f}x {r['direct_strided_s']:>11.3f} "
            f"{r['speedup_vs_direct_strided']:>6.1f}x {r['max_rel_diff']:>12.2e} "
            f"{r['max_pointwise_rel_diff']:>13.2e}"
        )
    result = {
        "benchmark": "variance_propagation",
        "quick": args.quick,
        "config": {
            "batch": batch,
            "frames": frames,
            "hr_size": [size, size],
            "hr_factor": hr_factor,
            "psf_sizes": ksizes,
            "psf": "one Gaussian per sample, with per-pixel variance",
            "uncertain": ["emitter", "patterns", "psf"],
            "fft_repeats": args.repeats,
            "direct_repeats": args.direct_repeats,
            "timing": "median wall time of one propagate_variance call, after one warm-up",
        },
        "environment": {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "malloc": malloc,
        },
        "results": rows,
    }
    return write_result(out_path, result)


if __name__ == "__main__":
    main()
