"""Benchmark: peak memory and time of tiled vs untiled SIM reconstruction (``predict_sim``).

    python bench/reconstruct_memory.py [--size 1024] [--hr-factor 2] [--tiles 512 256]
                                       [--overlaps 120 32] [--device auto|cpu|cuda] [--quick]

Reconstructs one random ``9 x size x size`` stack (default 9 x 1024 x 1024, ``hr_factor``
2, so a 2048 x 2048 HR emitter) with ``predict_sim_sync(model, frames, tile=..., overlap=...,
mc_samples=0, device=...)``, once untiled (``tile=None``) and once per valid combination of
``--tiles`` and ``--overlaps`` (LR pixels, always passed explicitly; combinations with
``tile <= 2 * overlap`` after rounding to multiples of ``2^depth`` are skipped). With the
default model an overlap of 120 leaves room for the blend margin that makes tiling exact
(``meta["tiling_exact"]``: receptive field plus PSF support), 32 does not (approximate
tiling, cheaper). The model is the default ``SimUQNet`` (``SimNetConfig()`` with
``hr_factor`` overridden), randomly initialised with a fixed seed: the memory and time of
a forward pass depend on the shapes only, not on the weights or on the pixel values, so no
trained checkpoint is needed. The input is uniform random in [0, 1) (seeded), i.e. already
"normalised".

Every configuration runs in a fresh subprocess (``--worker``), so peaks do not mix:

- CPU: peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) at the end
  minus the resident size after imports, model construction, one small warm-up
  reconstruction (64 x 64, so oneDNN/thread-pool start-up is not timed) and creation of the
  input stack (the input is held by the caller in any case). This is the extra host memory
  the reconstruction needs, output arrays included (``SimPrediction`` holds float32 maps
  of the emitter, the 9 patterns, their stds and ``rec``, all full size).
- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` at
  the same point (the model weights excluded); the RSS increase is recorded as well.

Also reported per configuration: wall time of the ``predict_sim_sync`` call (with its
``meta["timings"]`` split), the number of tiles, the effective tile/overlap and whether the
tiling is exact, and, for tiled runs, ``max |tiled - untiled|`` of the emitter over the
pixels farther than ``--border`` LR pixels (``f * border`` HR pixels) from the image edge,
in absolute (normalised) units and relative to the maximum of the untiled emitter there
(the maximum including the border band is in the JSON). Each subprocess saves its emitter
to a temporary ``.npy``; the parent compares them.

``--quick`` runs 9 x 256 x 256 with tiles 128 and 64 (overlap 16, approximate tiling).
Prints a table and writes ``bench/results/reconstruct_memory.json``
(``reconstruct_memory_quick.json`` with ``--quick``; or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, machine_info, resolve_devices, write_result
from napari_sim_uq.tasks.sim.net import SimNetConfig

MARK = "RESULT-JSON "
MiB = 2**20


def _rss_now() -> int:
    """Current resident set size in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(spec: dict) -> dict:
    from napari_sim_uq.tasks.sim.net import SimUQNet
    from napari_sim_uq.tasks.sim.predict import predict_sim_sync

    device = torch.device(spec["device"])
    size, f = spec["size"], spec["hr_factor"]
    torch.manual_seed(spec["seed"])
    model = SimUQNet(SimNetConfig(hr_factor=f)).to(device)
    kw = {"mc_samples": spec["mc_samples"], "device": device}
    # warm-up on a small stack: thread pools, oneDNN / cuDNN handles, allocator
    predict_sim_sync(model, np.zeros((9, 64, 64), np.float32), tile=None, overlap=0, **kw)
    frames = np.random.default_rng(spec["seed"]).random((9, size, size), dtype=np.float32)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    rss_base, maxrss_base = _rss_now(), _maxrss()

    c0, t0 = time.process_time(), time.perf_counter()
    pred = predict_sim_sync(model, frames, tile=spec["tile"], overlap=spec["overlap"], **kw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    maxrss = _maxrss()
    res = {
        "wall_s": wall,
        "cpu_s": cpu,  # process CPU time, all threads (wall >> cpu / threads: contention)
        "rss_baseline_bytes": rss_base,
        "maxrss_baseline_bytes": maxrss_base,
        "maxrss_bytes": maxrss,
        "peak_rss_increase_bytes": maxrss - rss_base,
        # ru_maxrss is a high-water mark: if the baseline already reached it, the
        # reconstruction's own peak is only known to be <= peak_rss_increase_bytes
        "rss_peak_exceeded_baseline": maxrss > maxrss_base,
        "input_bytes": frames.nbytes,
    }
    if device.type == "cuda":
        res["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device) - cuda_base
        res["cuda_baseline_bytes"] = cuda_base
    res["peak_bytes"] = (
        res["cuda_peak_bytes"] if device.type == "cuda" else res["peak_rss_increase_bytes"]
    )
    meta = pred.meta
    res.update(
        {
            "n_tiles": meta.get("n_tiles"),
            "effective_tile": meta.get("tile"),
            "effective_overlap": meta.get("overlap"),
            "blend_margin": meta.get("blend_margin"),
            "tiling_exact": meta.get("tiling_exact"),
            "receptive_radius": meta.get("receptive_radius"),
            "timings": meta.get("timings"),
            "emitter_shape": list(pred.emitter.shape),
        }
    )
    np.save(spec["emitter_path"], pred.emitter)
    return res


def run_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"worker exited with {proc.returncode}: " + " | ".join(tail)}


# --------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------


def compare(tiled: np.ndarray, ref: np.ndarray, band: int) -> dict:
    inner = (slice(band, -band or None), slice(band, -band or None)) if band else ...
    d = np.abs(tiled.astype(np.float64) - ref.astype(np.float64))
    ref_max = float(np.abs(ref[inner]).max())
    return {
        "max_abs_diff": float(d[inner].max()),
        "max_rel_diff": float(d[inner].max()) / ref_max if ref_max > 0 else float("nan"),
        "mean_abs_diff": float(d[inner].mean()),
        "max_abs_diff_incl_border": float(d.max()),
        "untiled_max": ref_max,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="9 x 256 x 256, tiles 128 and 64")
    ap.add_argument("--size", type=int, default=None, help="LR side in pixels (1024)")
    ap.add_argument("--hr-factor", type=int, default=2)
    ap.add_argument("--tiles", type=int, nargs="+", default=None, help="tile sizes (512 256)")
    ap.add_argument(
        "--overlaps", type=int, nargs="+", default=None, help="tile overlaps, LR px (120 32)"
    )
    ap.add_argument("--border", type=int, default=32, help="LR px excluded from the diff")
    ap.add_argument("--mc-samples", type=int, default=0)
    ap.add_argument(
        "--device",
        default="auto",
        help="auto (cpu, plus cuda when available), or a comma list such as cpu,cuda",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        res = worker(json.loads(args.worker))
        print(MARK + json.dumps(res), flush=True)
        return res

    size, tiles, overlaps = (256, [128, 64], [16]) if args.quick else (1024, [512, 256], [120, 32])
    size = args.size or size
    tiles = [t for t in (args.tiles or tiles) if t < size]
    overlaps = args.overlaps or overlaps
    f = args.hr_factor
    model_cfg = SimNetConfig(hr_factor=f)
    align = 2**model_cfg.depth
    configs, skipped = [(None, None)], []
    for tile in tiles:
        for ov in overlaps:
            # predict_sim rounds the tile down and the overlap up to multiples of 2^depth
            if tile // align * align > 2 * (-(-ov // align) * align):
                configs.append((tile, ov))
            else:
                skipped.append([tile, ov])
    devices = resolve_devices(args.device)
    env = machine_info(devices)
    out_path = args.out or RESULTS / (
        "reconstruct_memory_quick.json" if args.quick else "reconstruct_memory.json"
    )
    print(
        f"reconstruction memory, default SimUQNet (random init), 9 x {size} x {size}, "
        f"hr_factor {f}, tiles {tiles}, overlaps {overlaps}, mc_samples {args.mc_samples}, "
        f"devices {env['devices']}, torch {env['torch']}, {env['threads']} threads, "
        f"{env['cpu_model']}",
        flush=True,
    )

    rows = []
    with tempfile.TemporaryDirectory(prefix="reconstruct_memory_") as tmp:
        for device in devices:
            ref = None
            for tile, overlap in configs:
                name = "untiled" if tile is None else f"{tile}/{overlap}"
                path = Path(tmp) / f"emitter_{device.type}_{tile}_{overlap}.npy"
                spec = {
                    "device": str(device),
                    "size": size,
                    "hr_factor": f,
                    "tile": tile,
                    "overlap": overlap if tile is not None else 0,  # ignored untiled
                    "mc_samples": args.mc_samples,
                    "seed": args.seed,
                    "emitter_path": str(path),
                }
                t0 = time.perf_counter()
                res = run_worker(spec, args.timeout)
                row = {
                    "device": str(device),
                    "config": name,
                    "tile": tile,
                    "overlap": overlap,
                    "process_s": time.perf_counter() - t0,
                    **res,
                }
                if "error" not in res:
                    if tile is None:
                        ref = np.load(path)
                    elif ref is not None:
                        row.update(compare(np.load(path), ref, f * args.border))
                    path.unlink(missing_ok=True)
                rows.append(row)
                if "error" in res:
                    print(f"  {device} {name}: FAILED {res['error']}", flush=True)
                else:
                    diff = (
                        f", max |tiled - untiled| {row['max_abs_diff']:.3g}"
                        if "max_abs_diff" in row
                        else ""
                    )
                    print(
                        f"  {device} {name}: peak {row['peak_bytes'] / MiB:.0f} MiB, "
                        f"{row['wall_s']:.1f} s, {row['n_tiles']} tile(s), "
                        f"exact {row['tiling_exact']}{diff}",
                        flush=True,
                    )

    print()
    header = (
        f"{'device':>6} {'tile/ovl':>9} {'eff ovl':>7} {'tiles':>5} {'exact':>5} "
        f"{'peak [MiB]':>10} {'wall [s]':>8} {'cpu [s]':>7} {'max|diff|':>10} {'rel':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['device']:>6} {r['config']:>9}  failed: {r['error']}")
            continue
        ov = "-" if r["overlap"] is None else str(r["effective_overlap"])
        diff = (
            f"{r['max_abs_diff']:>10.3g} {r['max_rel_diff']:>9.2e}"
            if "max_abs_diff" in r
            else f"{'-':>10} {'-':>9}"
        )
        exact = "-" if r["overlap"] is None else ("yes" if r["tiling_exact"] else "no")
        print(
            f"{r['device']:>6} {r['config']:>9} {ov:>7} {r['n_tiles']:>5} {exact:>5} "
            f"{r['peak_bytes'] / MiB:>10.0f} {r['wall_s']:>8.1f} {r['cpu_s']:>7.1f} {diff}"
        )
    env["loadavg_end"] = list(os.getloadavg())
    result = {
        "benchmark": "reconstruct_memory",
        "quick": args.quick,
        "config": {
            "model": "SimNetConfig() defaults with hr_factor overridden, random init (seed)",
            "input": f"uniform random float32 stack 9 x {size} x {size}, seed {args.seed}",
            "size": size,
            "hr_factor": f,
            "model_config": model_cfg.to_dict(),
            "tiles": tiles,
            "overlaps": overlaps,
            "configs": [list(c) for c in configs],
            "skipped_tile_overlap": skipped,
            "border_lr_px": args.border,
            "mc_samples": args.mc_samples,
            "peak": "CPU: ru_maxrss minus RSS after imports, model, warm-up and input; "
            "CUDA: max_memory_allocated minus memory_allocated at that point; "
            "one fresh subprocess per configuration",
            "diff": "emitter, max |tiled - untiled| beyond border_lr_px * hr_factor HR px "
            "from the image edge",
        },
        "environment": env,
        "results": rows,
    }
    return write_result(out_path, result)


if __name__ == "__main__":
    main()
