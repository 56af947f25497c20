"""MC-dropout sampling of the 2D U-Net: batched chunks (core ``mc_tiled_predict``) against a
Python loop of single forward passes; wall time, CPU time and peak memory per chunk size.

    python bench/mc_sampling.py                      # 512 x 512, T = 30, default U-Net
    python bench/mc_sampling.py --threads 1 --repeats 2
    python bench/mc_sampling.py --quick              # tiny sizes, for a smoke run

Configurations: ``loop`` (T single forward passes of the untiled image in a Python loop,
merged with the same running moments as the core) and ``batched`` with
``mc_batch = 1, 4, 8, 16`` (the chunk option: at most that many samples per forward pass),
untiled and with 256-pixel tiles (overlap 32, as ``predict_2d``). The model is the default
``AE2DConfig()`` U-Net with random weights (time and memory depend on the shapes only); the
input is a synth2d image. Every configuration runs in a fresh subprocess: a warm-up of one
full-size forward pass at the configuration's batch size, then ``--repeats`` timed runs of
all T samples (median reported). Peak memory: on CPU the growth of the resident set over
the run (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` before
each run, minus ``VmRSS`` at its start); on CUDA ``torch.cuda.max_memory_allocated()``
above the allocation at the start. The loop and the batched untiled run also save their
mean and MC std maps; the parent checks that both estimate the same distribution
(per-pixel z of the difference of the two means, ratio of the std maps).

``--why`` (on by default, off with ``--quick``) times one forward pass per sample against
the batch size at a smaller size for 1 and 2 torch threads and both memory layouts, and
profiles where the time goes (convolutions against element-wise operations).

Prints a table and writes ``bench/results/mc_sampling.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_result

MARK = "RESULT-JSON "
MiB = 2**20


# --------------------------------------------------------------------------------------
# memory probes (Linux)
# --------------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the peak resident set size (``VmHWM``) to the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# worker: one configuration in a fresh process
# --------------------------------------------------------------------------------------


def _model(spec: dict):
    from napari_sim_uq.tasks.ae2d.net import AE2DConfig, build_model

    torch.manual_seed(spec["seed"])
    return build_model(AE2DConfig.from_dict(spec["model"])).to(spec["device"])


def _image(spec: dict) -> np.ndarray:
    from napari_sim_uq.tasks.ae2d.synth2d import generate_image

    return generate_image(spec["size"], (spec["seed"], 7), "mixed")


def _loop(model, x: np.ndarray, n: int, device) -> tuple[dict, dict]:
    """``n`` single MC-dropout forward passes in a Python loop (running moments)."""
    from napari_sim_uq.core.nn.modes import mc_dropout_mode
    from napari_sim_uq.core.uq.moments import RunningMoments

    xt = torch.as_tensor(x, dtype=torch.float32)[None, None].to(device)
    mean, alea = RunningMoments(track_var=True), RunningMoments(track_var=False)
    modes = mc_dropout_mode(model)
    try:
        with torch.no_grad():
            for _ in range(n):
                out = model(xt)
                mean.update(out.mean.float())
                if out.logvar is not None:
                    alea.update(out.var.float())
    finally:
        modes.restore()
    arrays = {"mean": mean.mean.cpu().numpy()[0], "mean_epi_var": mean.variance().cpu().numpy()[0]}
    if alea.count:
        arrays["mean_alea_var"] = alea.mean.cpu().numpy()[0]
    return arrays, {"n_tiles": 1}


def _batched(model, x: np.ndarray, n: int, device, spec: dict) -> tuple[dict, dict]:
    from napari_sim_uq.core.events import run
    from napari_sim_uq.core.uq.predict import mc_tiled_predict

    def pass_fn(xb):
        out = model(xb)
        return {"mean": (out.mean, out.var)}

    arrays, meta = run(
        mc_tiled_predict(
            pass_fn,
            x,
            model=model,
            multiple=model.multiple,
            tile=spec["tile"],
            overlap=spec["overlap"] if spec["tile"] else None,
            mc_samples=n,
            mc_batch=spec["chunk"],
            seed=spec["seed"],
            device=device,
        )
    )
    return {k: v[0] for k, v in arrays.items()}, meta


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(spec: dict) -> dict:
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    model = _model(spec)
    img = _image(spec)
    n = spec["samples"]
    # warm-up: one full-size forward pass at this configuration's batch size (thread pools,
    # oneDNN primitives for these shapes, allocator)
    from napari_sim_uq.core.nn.modes import mc_dropout_mode

    side = spec["tile"] if spec["tile"] and spec["tile"] < spec["size"] else spec["size"]
    batch = 1 if spec["method"] == "loop" else min(spec["chunk"], n)
    modes = mc_dropout_mode(model)
    with torch.no_grad():
        model(torch.zeros(batch, 1, side, side, device=device))
    modes.restore()
    _sync(device)

    runs = []
    arrays: dict = {}
    meta: dict = {}
    for _ in range(spec["repeats"]):
        arrays = meta = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            cuda0 = torch.cuda.memory_allocated(device)
        hwm_reset = _reset_hwm()
        rss0 = _status_kib("VmRSS")
        hwm0 = _status_kib("VmHWM")
        c0, t0 = time.process_time(), time.perf_counter()
        if spec["method"] == "loop":
            arrays, meta = _loop(model, img, n, device)
        else:
            arrays, meta = _batched(model, img, n, device, spec)
        _sync(device)
        r = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        hwm = _status_kib("VmHWM")
        if rss0 is not None and hwm is not None:
            r["rss_peak_increase_bytes"] = (hwm - rss0) * 1024
            # without a reset, VmHWM may predate the run (then only an upper bound)
            r["hwm_reset"] = hwm_reset
            r["hwm_exceeded_start"] = hwm > hwm0
        if device.type == "cuda":
            r["cuda_peak_increase_bytes"] = torch.cuda.max_memory_allocated(device) - cuda0
        runs.append(r)
    walls = [r["wall_s"] for r in runs]
    key = "cuda_peak_increase_bytes" if device.type == "cuda" else "rss_peak_increase_bytes"
    peaks = [r[key] for r in runs if key in r]
    res = {
        "runs": runs,
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "peak_bytes": max(peaks) if peaks else None,
        "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "VmHWM - VmRSS",
        "n_tiles": meta.get("n_tiles"),
        "threads": torch.get_num_threads(),
    }
    if spec.get("save"):
        np.savez(
            spec["save"],
            mean=arrays["mean"],
            epi_var=arrays["mean_epi_var"],
        )
    return res


def why_worker(spec: dict) -> dict:
    """Per-sample forward time against batch size, layout; profile of one pass."""
    from torch.profiler import ProfilerActivity, profile

    from napari_sim_uq.core.nn.modes import mc_dropout_mode

    torch.set_num_threads(int(spec["threads"]))
    model = _model(spec)
    mc_dropout_mode(model)
    s = spec["size"]
    x = torch.as_tensor(_image(spec))[None, None]
    rows = []
    with torch.no_grad():
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model.to(memory_format=fmt)
            for b in spec["batches"]:
                xb = x.expand(b, -1, -1, -1).contiguous(memory_format=fmt)
                model(xb)  # warm-up
                ts = []
                for _ in range(spec["repeats"]):
                    t0 = time.perf_counter()
                    model(xb)
                    ts.append(time.perf_counter() - t0)
                rows.append(
                    {
                        "layout": layout,
                        "batch": b,
                        "s_per_sample": statistics.median(ts) / b,
                        "times_s": ts,
                    }
                )
        model.to(memory_format=torch.contiguous_format)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    conv = other = 0.0
    top = []
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total
        if "conv" in ev.key:
            conv += t
        else:
            other += t
        top.append((t, ev.key))
    top.sort(reverse=True)
    return {
        "threads": torch.get_num_threads(),
        "size": s,
        "rows": rows,
        "profile_batch1": {
            "conv_fraction": conv / (conv + other) if conv + other else None,
            "top_ops": [{"op": k, "self_cpu_ms": t / 1e3} for t, k in top[:8]],
        },
    }


def check_worker(spec: dict) -> dict:
    """``reps`` independent T-sample estimates each, batched (core ``seed``) and loop
    (``torch.manual_seed``), on a small image: per-estimate image means of the mean map and
    of the MC std map, compared by two-sample tests (independent replicates, so the p-values
    are valid although the pixels of one estimate are strongly correlated). The seeds are
    drawn by ``np.random.SeedSequence``: with blocks of consecutive integer seeds the
    replicate means of one block scattered more than independent draws would (p < 0.05 in
    two of four such runs, none with drawn seeds)."""
    from scipy import stats

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    model = _model(spec)
    img = _image(spec)
    n = spec["samples"]
    summ: dict[str, dict[str, list]] = {"batched": {"m": [], "s": []}, "loop": {"m": [], "s": []}}
    maps: dict[str, list] = {"batched": [], "loop": []}
    seeds = np.random.SeedSequence([spec["seed"], 424242]).generate_state(2 * spec["reps"])
    for k in range(spec["reps"]):
        a, _ = _batched(model, img, n, device, dict(spec, seed=int(seeds[2 * k])))
        torch.manual_seed(int(seeds[2 * k + 1]))
        b, _ = _loop(model, img, n, device)
        for name, arr in (("batched", a), ("loop", b)):
            summ[name]["m"].append(float(arr["mean"].mean()))
            sd = np.sqrt(arr["mean_epi_var"].astype(np.float64) * n / (n - 1))
            summ[name]["s"].append(float(sd.mean()))
            maps[name].append(sd.ravel())
    out = {"size": spec["size"], "samples": n, "reps": spec["reps"], "chunk": spec["chunk"]}

    def corr(a, b) -> float:
        return float(np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=False)]))

    # how alike two std maps are: between two estimates of one method (replicates i and
    # i + 1) and across the methods (replicate i of each); same distribution: all alike
    sb, sl = maps["batched"], maps["loop"]
    out["std_map_corr"] = {
        "batched_vs_batched": corr(sb[:-1], sb[1:]),
        "loop_vs_loop": corr(sl[:-1], sl[1:]),
        "batched_vs_loop": corr(sb, sl),
    }
    for key, what in (("m", "image mean of the MC mean"), ("s", "image mean of the MC std")):
        xa, xb = np.array(summ["batched"][key]), np.array(summ["loop"][key])
        out[key] = {
            "what": what,
            "batched_mean": float(xa.mean()),
            "batched_sd": float(xa.std(ddof=1)),
            "loop_mean": float(xb.mean()),
            "loop_sd": float(xb.std(ddof=1)),
            "welch_p": float(stats.ttest_ind(xa, xb, equal_var=False).pvalue),
            "ks_p": float(stats.ks_2samp(xa, xb).pvalue),
        }
    return out


def run_worker(spec: dict, timeout: float, flag: str = "--worker") -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), flag, json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            out = json.loads(line[len(MARK) :])
            out["process_wall_s"] = time.perf_counter() - t0
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"worker exited with {proc.returncode}: " + " | ".join(tail)}


# --------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------


def same_distribution(a_path: Path, b_path: Path, n: int, border: int) -> dict:
    """Do two T-sample MC estimates come from the same distribution? Per pixel,
    ``z = (m_a - m_b) / sqrt((v_a + v_b) / T)`` is about standard normal if they do
    (mean 0, std ~1, ~5 % beyond 1.96); the std maps should agree (ratio ~1, high
    correlation). Border pixels (``border``) are left out."""
    a, b = np.load(a_path), np.load(b_path)
    inner = (slice(border, -border or None),) * 2 if border else (slice(None),) * 2
    ma, mb = a["mean"][inner].astype(np.float64), b["mean"][inner].astype(np.float64)
    # unbiased variances (the core stores ddof=0)
    va = a["epi_var"][inner].astype(np.float64) * n / (n - 1)
    vb = b["epi_var"][inner].astype(np.float64) * n / (n - 1)
    z = (ma - mb) / np.sqrt(np.maximum((va + vb) / n, 1e-30))
    sa, sb = np.sqrt(va), np.sqrt(vb)
    return {
        "z_mean": float(z.mean()),
        "z_std": float(z.std()),
        "frac_abs_z_gt_1.96": float((np.abs(z) > 1.96).mean()),
        "std_ratio_mean": float(sa.mean() / sb.mean()),
        "std_ratio_median": float(np.median(sa / np.maximum(sb, 1e-30))),
        "std_corr": float(np.corrcoef(sa.ravel(), sb.ravel())[0, 1]),
        "mean_of_std": [float(sa.mean()), float(sb.mean())],
        "note": "z ~ N(0, 1) per pixel if both estimate the same distribution; with T "
        "samples the estimated variances make |z| slightly heavier-tailed (t-like)",
    }


def _fmt_mib(b) -> str:
    return "-" if b is None else f"{b / MiB:.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--why-worker", help=argparse.SUPPRESS)
    ap.add_argument("--check-worker", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=512, help="image side (pixels)")
    ap.add_argument("--samples", type=int, default=30, help="MC samples T")
    ap.add_argument("--chunks", default="1,4,8,16", help="mc_batch values")
    ap.add_argument("--tiles", default="none,256", help="tile sizes ('none': untiled)")
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--why", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--why-size", type=int, default=256)
    ap.add_argument("--check-size", type=int, default=32, help="image of the replicate check")
    ap.add_argument("--check-reps", type=int, default=150, help="replicates per method")
    ap.add_argument("--timeout", type=float, default=3600, help="per configuration (s)")
    ap.add_argument(
        "--check-only",
        action="store_true",
        help="only the replicate check (writes mc_sampling_check.json unless --out)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--out", type=Path, default=None, help="JSON path")
    args = ap.parse_args(argv)

    if args.worker:
        print(MARK + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.check_worker:
        print(MARK + json.dumps(check_worker(json.loads(args.check_worker))), flush=True)
        return 0
    if args.why_worker:
        print(MARK + json.dumps(why_worker(json.loads(args.why_worker))), flush=True)
        return 0

    model_cfg: dict = {}
    if args.quick:
        args.size, args.samples, args.repeats = 64, 4, 1
        args.check_size, args.check_reps = 32, 4
        args.chunks, args.tiles, args.overlap = "1,4", "none,32", 8
        model_cfg = {"base_channels": 8, "depth": 2}
    from napari_sim_uq.tasks.ae2d.net import AE2DConfig

    model_cfg = AE2DConfig.from_dict(model_cfg).to_dict()
    chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    tiles = [None if t.strip().lower() == "none" else int(t) for t in args.tiles.split(",")]
    why = (not args.quick) if args.why is None else args.why
    name = "mc_sampling_check" if args.check_only else "mc_sampling"
    out_path = args.out or RESULTS / (name + ("_quick.json" if args.quick else ".json"))
    if args.check_only:
        why = False
    device = torch.device(args.device)
    machine = machine_info([device])  # load average at the start
    base = {
        "size": args.size,
        "samples": args.samples,
        "seed": 0,
        "model": model_cfg,
        "device": args.device,
        "repeats": args.repeats,
        "threads": args.threads or None,
        "overlap": args.overlap,
    }
    configs = [{"method": "loop", "tile": None, "chunk": 1}]
    configs += [{"method": "batched", "tile": t, "chunk": c} for t in tiles for c in chunks]
    if args.check_only:
        configs = []
    ref_chunk = 8 if 8 in chunks else max(chunks)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        saves = {}
        for cfg in configs:
            spec = dict(base, **cfg)
            if cfg["tile"] is None and cfg["chunk"] in (1, ref_chunk):
                saves[(cfg["method"], cfg["chunk"])] = spec["save"] = str(
                    Path(tmp) / f"{cfg['method']}_{cfg['chunk']}.npz"
                )
            load0 = os.getloadavg()[0]
            res = run_worker(spec, args.timeout)
            row = dict(cfg, **res, loadavg_1min=[load0, os.getloadavg()[0]])
            rows.append(row)
            label = "loop" if cfg["method"] == "loop" else f"chunk {cfg['chunk']}"
            print(
                f"{label:>9} tile={cfg['tile']}: "
                + (
                    res["error"]
                    if "error" in res
                    else f"{res['wall_s']:.2f} s, peak {_fmt_mib(res['peak_bytes'])} MiB"
                ),
                flush=True,
            )
        checks = {}
        border = 0 if args.quick else 16
        for key in (("batched", ref_chunk), ("batched", 1)):
            if ("loop", 1) in saves and key in saves and Path(saves[key]).exists():
                checks[f"{key[0]} chunk {key[1]} vs loop"] = same_distribution(
                    Path(saves[key]), Path(saves[("loop", 1)]), args.samples, border
                )

    replicate = run_worker(
        dict(base, size=args.check_size, reps=args.check_reps, chunk=ref_chunk, tile=None),
        args.timeout,
        "--check-worker",
    )
    print(f"replicate check: {replicate.get('error') or 'done'}", flush=True)

    loop_wall = next((r["wall_s"] for r in rows if r["method"] == "loop" and "wall_s" in r), None)
    for r in rows:
        if loop_wall and "wall_s" in r:
            r["speedup_vs_loop"] = loop_wall / r["wall_s"]

    why_res = []
    if why:
        for th in (1, 2):
            spec = dict(
                base,
                size=args.why_size,
                threads=th,
                batches=[1, 8],
                repeats=2,
            )
            res = run_worker(spec, args.timeout, "--why-worker")
            why_res.append(res)
            print(f"why threads={th}: {res.get('error') or 'done'}", flush=True)

    print()
    print(
        f"{'method':>8} {'tile':>6} {'chunk':>6} {'tiles':>6} {'wall [s]':>9} {'CPU [s]':>8} "
        f"{'speedup':>8} {'peak [MiB]':>11} {'load':>10}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['method']:>8} {r['tile']!s:>6} {r['chunk']:>6}  {r['error']}")
            continue
        tile = "-" if r["tile"] is None else str(r["tile"])
        chunk = "-" if r["method"] == "loop" else str(r["chunk"])
        print(
            f"{r['method']:>8} {tile:>6} {chunk:>6} {r['n_tiles']:>6} {r['wall_s']:>9.2f} "
            f"{r['cpu_s']:>8.2f} {r.get('speedup_vs_loop', float('nan')):>8.2f} "
            f"{_fmt_mib(r['peak_bytes']):>11} "
            f"{r['loadavg_1min'][0]:>4.1f}-{r['loadavg_1min'][1]:<4.1f}"
        )
    for name, c in checks.items():
        print(
            f"{name}: z mean {c['z_mean']:+.3f}, z std {c['z_std']:.3f}, "
            f"|z|>1.96 {100 * c['frac_abs_z_gt_1.96']:.1f} %, std ratio {c['std_ratio_mean']:.3f}, "
            f"std corr {c['std_corr']:.3f}"
        )
    if "error" not in replicate:
        for key in ("m", "s"):
            c = replicate[key]
            print(
                f"{replicate['reps']} x {replicate['reps']} independent estimates "
                f"({replicate['size']} px, T={replicate['samples']}), {c['what']}: batched "
                f"{c['batched_mean']:.5f} +- {c['batched_sd']:.5f}, loop {c['loop_mean']:.5f} "
                f"+- {c['loop_sd']:.5f}, Welch p={c['welch_p']:.2f}, KS p={c['ks_p']:.2f}"
            )
        sc = replicate["std_map_corr"]
        print(
            "correlation of the std maps of two estimates: batched-batched "
            f"{sc['batched_vs_batched']:.2f}, loop-loop {sc['loop_vs_loop']:.2f}, "
            f"batched-loop {sc['batched_vs_loop']:.2f}"
        )
    for w in why_res:
        if "error" in w:
            continue
        parts = ", ".join(
            f"{r['layout']} b={r['batch']}: {r['s_per_sample']:.3f}" for r in w["rows"]
        )
        conv = w["profile_batch1"]["conv_fraction"]
        print(
            f"why, {w['size']} px, {w['threads']} thread(s), s/sample: {parts}; "
            f"convolutions {100 * conv:.0f} % of one pass"
        )
    result = {
        "benchmark": "mc_sampling",
        "machine": machine,
        "loadavg_end": list(os.getloadavg()),
        "settings": dict(base, chunks=chunks, tiles=tiles, ref_chunk=ref_chunk),
        "rows": rows,
        "same_distribution": checks,
        "replicate_check": replicate,
        "why": why_res,
    }
    write_result(out_path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
