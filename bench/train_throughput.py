"""Benchmark: training and inference throughput (samples/s) of the default SIM network.

    python bench/train_throughput.py [--device auto|cpu|cuda|cpu,cuda] [--batch-size 4]
                                     [--quick]

One training step is exactly what ``train_sim_job`` (``training/sim_train.py``) does per
batch: ``model(x, check_input=False)``, ``SimLoss(out, x, batch)`` (raw-frame Gaussian NLL
with the exact variance propagation through the forward model, learnable camera noise, and
for ``supervised`` the NLL terms against emitter / light-pattern ground truth), ``zero_grad``,
``backward``, ``clip_grad_norm_(1.0)`` and an Adam step over the model and loss parameters.
Inference is one eval-mode forward pass of the network under ``torch.no_grad()`` (no loss,
no variance propagation, no MC dropout).

Model: ``SimNetConfig()`` (the defaults: base 32 channels, depth 3, PSF 15 x 15, all
uncertainty heads, background) with ``hr_factor`` set to 2 and 6. Default case: batch 4,
80 x 80 LR frames (HR 160 x 160 and 480 x 480), 9 frames.

Inputs are synthetic: ``x`` is uniform random in [0, 1), ``emitter_gt`` ``(B, 1, fH, fW)``
uniform in [0, 1) and ``lp_gt`` ``(B, 9, fH, fW)`` uniform in [0, 2), i.e. shaped and
keyed like the batches of ``SimStackDataset`` (``"x"``, ``"emitter_gt"``, ``"lp_gt"``).
The cost of every layer and of the variance propagation depends only on the shapes, not on
the values, so random data time the same as real data. Data loading is not included.

Timing: ``--warmup`` steps (excluded), then ``--repeats`` timed steps; the reported
samples/s is ``batch / median(step time)``. The per-phase medians (forward, loss,
backward + clip + optimiser step) come from timestamps inside the same steps; on CUDA
``torch.cuda.synchronize()`` is called before every timestamp (the loss synchronises
anyway when it reads its terms). The median process CPU time of a step (``step_cpu_s``, all
threads) and the load average are recorded as well: on a shared machine a wall time well
above ``step_cpu_s / threads`` means the benchmark was waiting for cores. CPU is always
measured; CUDA too with ``--device auto``
(the default) when a GPU is visible. ``--quick`` runs a small smoke case (32 x 32 LR,
batch 2). Prints a table and writes ``bench/results/train_throughput.json``
(``train_throughput_quick.json`` with ``--quick``; or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from _common import RESULTS, machine_info, resolve_devices, write_result
from napari_sim_uq.core.nn.modes import count_parameters
from napari_sim_uq.tasks.sim.loss import SimLoss, SimLossConfig
from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet

MODES = ("self-supervised", "supervised")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(batch: int, lr: int, f: int, frames: int, device, seed: int = 0) -> dict:
    """Random tensors keyed and shaped like a ``SimStackDataset`` batch (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    b = {
        "x": torch.rand(batch, frames, lr, lr, generator=g),
        "emitter_gt": torch.rand(batch, 1, f * lr, f * lr, generator=g),
        "lp_gt": 2.0 * torch.rand(batch, frames, f * lr, f * lr, generator=g),
    }
    return {k: v.to(device) for k, v in b.items()}


def bench_train(model, criterion, batch, device, warmup, repeats, grad_clip=1.0) -> dict:
    """Time full training steps (see the module docstring); returns per-step phase times."""
    params = list(model.parameters()) + list(criterion.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    model.train()
    criterion.train()
    x = batch["x"]
    phases = {"forward": [], "loss": [], "backward_step": [], "step": [], "step_cpu": []}
    for i in range(warmup + repeats):
        sync(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = model(x, check_input=False)
        sync(device)
        t1 = time.perf_counter()
        res = criterion(out, x, batch)
        sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        res.total.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sync(device)
        t3 = time.perf_counter()
        c3 = time.process_time()
        if i >= warmup:
            phases["forward"].append(t1 - t0)
            phases["loss"].append(t2 - t1)
            phases["backward_step"].append(t3 - t2)
            phases["step"].append(t3 - t0)
            phases["step_cpu"].append(c3 - c0)
    return phases


def bench_infer(model, x, device, warmup, repeats) -> list[float]:
    """Time eval-mode forward passes under ``no_grad``."""
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync(device)
            t0 = time.perf_counter()
            model(x, check_input=False)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    ap.add_argument(
        "--device",
        default="auto",
        help="auto (cpu, plus cuda when available), or a comma list such as cpu,cuda",
    )
    ap.add_argument("--batch-size", type=int, default=None, help="samples per step (4)")
    ap.add_argument("--lr-size", type=int, default=None, help="LR frame side in pixels (80)")
    ap.add_argument("--hr-factors", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per case")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per case (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)

    if args.quick:
        batch_size, lr, warmup, repeats = 2, 32, 1, 2
    else:
        batch_size, lr, warmup, repeats = 4, 80, args.warmup, args.repeats
    batch_size = args.batch_size or batch_size
    lr = args.lr_size or lr
    devices = resolve_devices(args.device)
    env = machine_info(devices)
    out_path = args.out or RESULTS / (
        "train_throughput_quick.json" if args.quick else "train_throughput.json"
    )
    print(
        f"training throughput, default SimUQNet, batch {batch_size}, LR {lr}x{lr}, "
        f"hr_factors {args.hr_factors}, devices {env['devices']}, torch {env['torch']}, "
        f"{env['threads']} threads, {env['cpu_model']}",
        flush=True,
    )

    rows = []
    for device in devices:
        for f in args.hr_factors:
            torch.manual_seed(args.seed)
            cfg = SimNetConfig(hr_factor=f)
            model = SimUQNet(cfg).to(device)
            n_params = count_parameters(model)
            batch = make_batch(batch_size, lr, f, cfg.n_frames, device, args.seed)
            for mode in MODES:
                loss_cfg = SimLossConfig(supervised=mode == "supervised")
                criterion = SimLoss(loss_cfg, f).to(device)
                # fresh weights per mode, so both modes time the same starting point
                model.load_state_dict(SimUQNet(cfg).state_dict())
                ph = bench_train(model, criterion, batch, device, warmup, repeats)
                med = {k: statistics.median(v) for k, v in ph.items()}
                row = {
                    "device": str(device),
                    "hr_factor": f,
                    "mode": mode,
                    "batch": batch_size,
                    "lr_size": [lr, lr],
                    "hr_size": [f * lr, f * lr],
                    "n_params": n_params,
                    "train_samples_per_s": batch_size / med["step"],
                    "step_s": med["step"],
                    "forward_s": med["forward"],
                    "loss_s": med["loss"],
                    "backward_step_s": med["backward_step"],
                    "step_cpu_s": med["step_cpu"],
                    "times_s": ph,
                }
                if device.type == "cuda":
                    row["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                rows.append(row)
                print(
                    f"  {device} f={f} {mode}: {row['train_samples_per_s']:.2f} samples/s "
                    f"(step {med['step']:.3f} s: forward {med['forward']:.3f}, loss "
                    f"{med['loss']:.3f}, backward+step {med['backward_step']:.3f})",
                    flush=True,
                )
            times = bench_infer(model, batch["x"], device, warmup, repeats)
            t_inf = statistics.median(times)
            for r in rows:
                if r["device"] == str(device) and r["hr_factor"] == f:
                    r["infer_samples_per_s"] = batch_size / t_inf
                    r["infer_s"] = t_inf
                    r["infer_times_s"] = times
            print(f"  {device} f={f} inference: {batch_size / t_inf:.2f} samples/s", flush=True)
            del model, batch, criterion
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print()
    header = (
        f"{'device':>6} {'f':>2} {'HR':>7} {'mode':>15} {'train/s':>8} {'step [s]':>8} "
        f"{'cpu [s]':>7} {'fwd':>6} {'loss':>6} {'bwd+opt':>7} {'infer/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['device']:>6} {r['hr_factor']:>2} {r['hr_size'][0]:>7} {r['mode']:>15} "
            f"{r['train_samples_per_s']:>8.2f} {r['step_s']:>8.3f} "
            f"{r['step_cpu_s']:>7.3f} {r['forward_s']:>6.3f} "
            f"{r['loss_s']:>6.3f} {r['backward_step_s']:>7.3f} {r['infer_samples_per_s']:>8.2f}"
        )
    env["loadavg_end"] = list(os.getloadavg())
    result = {
        "benchmark": "train_throughput",
        "quick": args.quick,
        "config": {
            "model": "SimNetConfig() defaults with hr_factor overridden",
            "model_config": SimNetConfig().to_dict(),
            "batch": batch_size,
            "lr_size": [lr, lr],
            "frames": 9,
            "hr_factors": args.hr_factors,
            "loss": "SimLossConfig() defaults; supervised adds emitter_gt / lp_gt NLL terms",
            "optimizer": "Adam lr 1e-3, clip_grad_norm_ 1.0",
            "inputs": "synthetic uniform random tensors shaped like SimStackDataset batches",
            "warmup_steps": warmup,
            "timed_steps": repeats,
            "timing": "samples/s = batch / median wall time of one step after warm-up; "
            "inference = eval forward under no_grad",
        },
        "environment": env,
        "results": rows,
    }
    return write_result(out_path, result)


if __name__ == "__main__":
    main()
