"""Benchmark: how much a small field's reconstruction differs from the same region
reconstructed within the whole field, per padding mode (issue 11).

    python bench/small_input.py [--checkpoint example_data/sim_uq_demo_model.pt]
                                [--stack example_data/sim_stack.tif] [--sizes 4 8 16 24 32 48]

For each crop size ``s`` the stack is cut into a grid of ``s x s`` crops (at most 16, drawn
with a fixed seed). Each crop is reconstructed alone with ``predict_sim`` and compared with
the same region of the whole-stack reconstruction (no MC, untiled):

    difference = sum |crop result - whole result| / sum whole result

over all crops, for the emitter mean and its std. Padding modes: ``none`` (only the model's
own padding to a multiple of ``2^depth``, the behaviour before issue 11), and ``zero`` /
``reflect`` / ``replicate`` to the model's context (``model_context``: its training field
size; sizes below ``MIN_SIM_FIELD``, which ``predict_sim`` refuses, are measured too).
Normalisation: ``own`` fits the percentile normalisation on the crop (what a user who opens a
crop gets), ``whole`` uses the whole stack's (isolates the effect of context).

Prints a table and writes ``bench/results/small_input.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, machine_info
from napari_sim_uq.core.data.normalization import Normalization
from napari_sim_uq.core.io.tiff_io import read_image
from napari_sim_uq.tasks.sim import predict as inference
from napari_sim_uq.tasks.sim.predict import SmallInputWarning, predict_sim_sync
from napari_sim_uq.tasks.sim.reconstruct import load_sim_model, model_context

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "example_data/sim_uq_demo_model.pt"))
    ap.add_argument("--stack", default=str(ROOT / "example_data/sim_stack.tif"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 24, 32, 48])
    ap.add_argument("--max-crops", type=int, default=16)
    ap.add_argument("--out", default=str(RESULTS / "small_input.json"))
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    # measure below the refusal limit too: the numbers that justify it
    min_field, inference.MIN_SIM_FIELD = inference.MIN_SIM_FIELD, 1
    model, ck = load_sim_model(args.checkpoint)
    context = model_context(ck, model)
    mode = (ck.normalization or {}).get("mode", "percentile")
    raw = read_image(args.stack).data.astype(np.float32)
    f = model.hr_factor
    H, W = raw.shape[-2:]
    whole_norm = Normalization(mode=mode).fit(raw)

    def reconstruct(stack, norm, pad):
        x = norm.apply(stack).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallInputWarning)
            if pad == "none":
                p = predict_sim_sync(model, x)
            else:
                p = predict_sim_sync(model, x, context=context, pad_mode=pad)
        return p.emitter * norm.scale, p.emitter_std * norm.scale

    ref_e, ref_s = reconstruct(raw, whole_norm, "none")
    rows = []
    t0 = time.perf_counter()
    for size in args.sizes:
        pos = [(y, x) for y in range(0, H - size + 1, size) for x in range(0, W - size + 1, size)]
        if len(pos) > args.max_crops:
            pick = np.random.default_rng(0).choice(len(pos), args.max_crops, replace=False)
            pos = [pos[k] for k in sorted(pick)]
        for norm_kind in ("own", "whole"):
            for pad in ("none", "zero", "reflect", "replicate"):
                if size >= context and pad != "none":
                    continue  # nothing is padded
                num_e = num_s = den_e = den_s = 0.0
                for y, x in pos:
                    crop = raw[:, y : y + size, x : x + size]
                    norm = Normalization(mode=mode).fit(crop) if norm_kind == "own" else whole_norm
                    e, s = reconstruct(crop, norm, pad)
                    hr = (slice(f * y, f * (y + size)), slice(f * x, f * (x + size)))
                    num_e += float(np.abs(e - ref_e[hr]).sum())
                    den_e += float(ref_e[hr].sum())
                    num_s += float(np.abs(s - ref_s[hr]).sum())
                    den_s += float(ref_s[hr].sum())
                rows.append(
                    {
                        "size": size,
                        "normalisation": norm_kind,
                        "pad": pad,
                        "n_crops": len(pos),
                        "emitter_diff": num_e / den_e,
                        "std_diff": num_s / den_s,
                    }
                )
                r = rows[-1]
                print(
                    f"{size:5d}  {norm_kind:5s}  {pad:9s}  {r['n_crops']:3d}  "
                    f"{100 * r['emitter_diff']:8.1f} %  {100 * r['std_diff']:8.1f} %",
                    flush=True,
                )
    doc = {
        "benchmark": "small_input",
        "checkpoint": Path(args.checkpoint).name,
        "stack": Path(args.stack).name,
        "stack_shape": list(raw.shape),
        "context": context,
        "min_field": min_field,
        "receptive_radius": int(model.receptive_radius),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info([torch.device("cpu")]),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    print(" size  norm   pad        crops  emitter diff  std diff")
    main()
