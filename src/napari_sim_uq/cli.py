"""The ``sim-uq`` command line (also ``python -m napari_sim_uq``).

Thin by design: each sub-command parses its options and drives an operation from the
core package; errors the user can fix are printed as one clear line (exit status 2),
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_sim_uq._version import __version__

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# sub-command name -> (help, add_arguments, run)
_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator registering ``run(args)`` as sub-command ``name``."""

    def wrap(run: Callable[[argparse.Namespace], int | None]):
        _COMMANDS[name] = (help, add_arguments, run)
        return run

    return wrap


# --------------------------------------------------------------------------- info


def _info_args(p: argparse.ArgumentParser) -> None:
    pass


@command("info", "show versions and the compute devices available", _info_args)
def _info(args: argparse.Namespace) -> int:
    from importlib import metadata

    print(f"napari-sim-uq {__version__}")
    for dist in ("torch", "napari", "npe2", "numpy", "tifffile"):
        try:
            print(f"  {dist:<9} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            print(f"  {dist:<9} not installed")
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    print(f"  devices   {', '.join(devices)} (CPU threads: {torch.get_num_threads()})")
    return 0


# --------------------------------------------------------------------------- sample


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("sim-uq-sample"),
        help="folder to write the sample files to (default: %(default)s)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace sample files that already exist in --out-dir",
    )
    p.add_argument(
        "--view", action="store_true", help="open the files in a napari viewer (needs a display)"
    )


@command(
    "sample",
    "write the sample SIM stack and 2D image, and open them with the plugin's reader",
    _sample_args,
)
def _sample(args: argparse.Namespace) -> int:
    from napari_sim_uq.tasks.sim.samples import write_example_data

    paths = write_example_data(args.out_dir, overwrite=args.overwrite)
    print(f"wrote {len(paths)} files to {args.out_dir}/")
    # Read them back through the plugin manifest, exactly as napari does (no Qt needed).
    from npe2 import PluginManager, io_utils

    PluginManager.instance().discover()
    for p in paths:
        layers = io_utils.read([str(p)], plugin_name="napari-sim-uq", stack=False)
        for data, kwargs, ltype in layers:
            print(
                f"  {p.name:<18} -> {ltype} layer {kwargs['name']!r}: shape {data.shape} "
                f"{data.dtype}, axes {kwargs.get('axis_labels')}, "
                f"scale {tuple(round(s, 4) for s in kwargs['scale'])}"
            )
    print(f"open them in napari with:  napari --plugin napari-sim-uq {args.out_dir}/sim_stack.tif")
    if args.view:
        import napari

        viewer = napari.Viewer()
        for p in paths:
            viewer.open(str(p), plugin="napari-sim-uq")
        napari.run()
    return 0


# --------------------------------------------------------------------------- generate


def _generate_args(p: argparse.ArgumentParser) -> None:
    from napari_sim_uq.core.config import add_config_arguments
    from napari_sim_uq.tasks.sim.synth import SynthConfig

    p.add_argument("--out-dir", type=Path, required=True, help="dataset folder")
    p.add_argument("--n-samples", type=int, required=True, help="number of samples")
    # the generator's parameters: flags, defaults, choices and ranges from SynthConfig
    add_config_arguments(p, SynthConfig)
    p.add_argument(
        "--match",
        metavar="STACK",
        default=None,
        help="make data like this raw SIM stack: its pattern period, orientation and "
        "modulation, PSF width, background, read noise and photons are estimated and replace "
        "those options (one fixed instrument; --lr-size and --hr-factor are kept); the "
        "estimates go to OUT_DIR/match_report.json",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--split", default="train", help="folder prefix: train, val, test... (default: %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel processes (default: number of CPU cores)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing split of the same name in --out-dir",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "generate",
    "generate a synthetic heteroscedastic SIM dataset with ground truth and noise maps",
    _generate_args,
)
def _generate(args: argparse.Namespace) -> int:
    import time

    from napari_sim_uq.core.config import config_from_args
    from napari_sim_uq.core.errors import InputError
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset

    if len(args.lr_size) not in (1, 2):
        raise InputError(f"--lr-size takes H or H W, got {args.lr_size}")
    cfg = config_from_args(SynthConfig, args)
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    if args.match:
        cfg = _matched_config(args.match, cfg, args.out_dir)
    t0 = time.perf_counter()
    result = run_with_progress(
        generate_dataset(
            args.out_dir,
            args.n_samples,
            cfg,
            seed=args.seed,
            split=args.split,
            workers=args.workers,
            overwrite=args.overwrite,
        ),
        disable=args.quiet,
    )
    dt = time.perf_counter() - t0
    print(
        f"wrote {result['n_samples']} samples ({args.split}) to {args.out_dir}/ in "
        f"{dt:.1f} s ({result['n_samples'] / dt:.2f} samples/s); parameters in "
        f"{result['dataset_json']}"
    )
    return 0


def _matched_config(stack: str, cfg, out_dir: Path):
    """``cfg`` with the optics and intensities of ``stack`` (``generate --match``)."""
    import json

    import numpy as np

    from napari_sim_uq.core.io.tiff_io import atomic_write, read_image
    from napari_sim_uq.tasks.sim.classical.match import match_synth_config

    rec = read_image(stack)
    a = rec.layout.angles or cfg.n_angles
    p = rec.layout.phases or cfg.n_phases
    matched, report = match_synth_config(
        np.asarray(rec.data), a, p, base=cfg, lr_size=cfg.lr_size, hr_factor=cfg.hr_factor
    )
    print(
        f"matched {stack}: period {report['periods_raw_px'][0]:.3f} raw px, modulation "
        f"{np.mean(report['modulation']):.2f}, PSF sigma {report['psf_sigma_raw_px']:.2f} raw "
        f"px, background {report['background']:.1f}, read noise {report['read_noise']:.2f}, "
        f"photons {report['photons']:.0f}"
    )
    for note in report["notes"]:
        print(f"note: {note}")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"stack": str(stack), **report}, indent=2)
    atomic_write(
        out_dir / "match_report.json", lambda tmp: Path(tmp).write_text(text), overwrite=True
    )
    return matched


# --------------------------------------------------------------------------- train


#: TrainConfig fields shown in the "loss" and "debug output" groups of ``train --help``.
_TRAIN_LOSS_FIELDS = ("camera_init",)
_TRAIN_DEBUG_FIELDS = ("debug_every_epochs", "debug_samples")
#: TrainConfig fields the command line requires (their dataclass defaults are not used).
_TRAIN_REQUIRED = ("train_glob", "ckpt_dir")


def _train_args(p: argparse.ArgumentParser) -> None:
    # every option but --quiet is a field of TrainConfig, SimNetConfig or SimLossConfig:
    # flags, defaults, help, choices and ranges come from the dataclasses' field metadata
    from napari_sim_uq.core.config import add_config_arguments
    from napari_sim_uq.tasks.sim.loss import SimLossConfig
    from napari_sim_uq.tasks.sim.net import SimNetConfig
    from napari_sim_uq.tasks.sim.train import TrainConfig

    add_config_arguments(
        p,
        TrainConfig,
        exclude=_TRAIN_LOSS_FIELDS + _TRAIN_DEBUG_FIELDS,
        required=_TRAIN_REQUIRED,
    )
    add_config_arguments(p.add_argument_group("model"), SimNetConfig)
    lo = p.add_argument_group("loss")
    add_config_arguments(lo, SimLossConfig)
    add_config_arguments(lo, TrainConfig, include=_TRAIN_LOSS_FIELDS)
    add_config_arguments(
        p.add_argument_group("debug output"), TrainConfig, include=_TRAIN_DEBUG_FIELDS
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=1,
        metavar="N",
        help="train a deep ensemble of N networks (seeds SEED ... SEED+N-1, in "
        "CKPT_DIR/member_<i>/) and write their combination to CKPT_DIR/ensemble.pt: the "
        "members' spread is the epistemic uncertainty (default: %(default)s, one network)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_config(args: argparse.Namespace):
    """The TrainConfig of parsed ``train`` options (model and loss as dicts of the options
    given on the command line, as the training job expects)."""
    from napari_sim_uq.core.config import config_from_args, config_values_from_args
    from napari_sim_uq.tasks.sim.loss import SimLossConfig
    from napari_sim_uq.tasks.sim.net import SimNetConfig
    from napari_sim_uq.tasks.sim.train import TrainConfig

    return config_from_args(
        TrainConfig,
        args,
        ckpt_dir=str(Path(args.ckpt_dir)),
        model=config_values_from_args(SimNetConfig, args),
        loss=config_values_from_args(SimLossConfig, args),
    )


@command(
    "train",
    "train the SIM uncertainty network (self-supervised on raw stacks, or "
    "--supervised with ground truth); works under torchrun for several GPUs",
    _train_args,
)
def _train(args: argparse.Namespace) -> int:
    import os

    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.sim.train import train_sim_job

    cfg = _train_config(args)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if args.ensemble != 1:
        return _train_ensemble(cfg, args.ensemble, quiet=args.quiet or not rank0, rank0=rank0)
    result = run_with_progress(train_sim_job(cfg), disable=args.quiet or not rank0)
    if rank0:
        last = result["history"][-1] if result["history"] else {}
        shown = {
            k: round(v, 4)
            for k, v in last.items()
            if k in ("train_loss", "val_loss", "val_raw_zms", "val_raw_cov95")
        }
        print(
            f"trained {result['epochs_done']} epochs ({result['steps']} steps) on "
            f"{result['device']} x{result['world_size']} in {result['seconds']:.1f} s; "
            f"last epoch: {shown}"
        )
        print(
            f"checkpoints: {result['latest']}, {result['best']}; metrics: "
            f"{Path(result['ckpt_dir']) / 'metrics.csv'}"
        )
        if args.debug_every_epochs:
            print(f"debug folders: {Path(result['ckpt_dir']) / 'debug_samples'}/epoch_XXX/")
    return 0


def _train_ensemble(cfg, n: int, *, quiet: bool, rank0: bool) -> int:
    """``train --ensemble N``: N members with seeds seed + i, then their combination."""
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.sim.ensemble import train_sim_ensemble_job

    result = run_with_progress(train_sim_ensemble_job(cfg, n), disable=quiet)
    if rank0:
        for i, r in enumerate(result["members"]):
            print(f"ensemble member {i + 1}/{n} (seed {int(cfg.seed) + i}) -> {r['ckpt_dir']}")
        out = result["ensemble"]
        print(f"ensemble of {n} members: {out} (calibrate it: sim-uq calibrate --checkpoint {out})")
    return 0


# --------------------------------------------------------------------------- ensemble


def _ensemble_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        type=Path,
        help="SIM checkpoints of one architecture trained on the same data (e.g. with "
        "different --seed), at least 2",
    )
    p.add_argument("--out", type=Path, required=True, help="the ensemble checkpoint to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


@command(
    "ensemble",
    "combine SIM checkpoints into a deep ensemble (the members' spread is the epistemic "
    "uncertainty); calibrate the result before use",
    _ensemble_args,
)
def _ensemble(args: argparse.Namespace) -> int:
    from napari_sim_uq.tasks.sim.ensemble import combine_sim_checkpoints

    out = combine_sim_checkpoints(args.checkpoints, args.out, overwrite=args.overwrite)
    n = len(args.checkpoints)
    print(f"wrote {out} ({n} members); next: sim-uq calibrate --checkpoint {out}")
    return 0


# --------------------------------------------------------------------------- plot-metrics


def _plot_metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "csv", type=Path, help="the metrics.csv of a training run (CKPT_DIR/metrics.csv)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG to write (default: metrics.png next to the CSV; replaced if it exists)",
    )


@command(
    "plot-metrics",
    "draw the loss and calibration curves of a training run (metrics.csv) as a PNG",
    _plot_metrics_args,
)
def _plot_metrics(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.plots import plot_metrics_csv

    path = plot_metrics_csv(args.csv, args.out)
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- reconstruct


def _reconstruct_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a trained model (best.pt)")
    p.add_argument("--input", required=True, help="a raw stack, or a glob of them (quoted)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument(
        "--mc-samples",
        type=int,
        default=0,
        help="MC-dropout samples for the epistemic part (default: 0 = off)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile size in raw pixels, bounds memory on large images (default: whole image)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="tile overlap in raw pixels (default: the smallest overlap for which tiling "
        "gives exactly the whole-image result)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--quiet", action="store_true")


@command(
    "reconstruct",
    "reconstruct raw SIM stacks with a trained model: emitter, light "
    "patterns, PSF and their std maps",
    _reconstruct_args,
)
def _reconstruct(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.data.loaders import resolve_files
    from napari_sim_uq.core.errors import InputError
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.core.io.tiff_io import read_image
    from napari_sim_uq.tasks.sim.reconstruct import reconstruct_sim_job, write_reconstruction

    if args.mc_samples < 0:
        raise InputError(f"--mc-samples must be >= 0, got {args.mc_samples}")
    files = resolve_files(args.input)
    for path in files:
        rec_in = read_image(path)
        rec = run_with_progress(
            reconstruct_sim_job(
                rec_in,
                args.checkpoint,
                mc_samples=args.mc_samples,
                tile=args.tile,
                overlap=args.overlap,
                device=args.device,
            ),
            disable=args.quiet,
        )
        written = write_reconstruction(
            rec,
            args.out_dir,
            Path(path).stem,
            scale_lr=rec_in.scale[-2:],
            translate_lr=rec_in.translate[-2:],
            overwrite=args.overwrite,
        )
        print(
            f"{path}: wrote {len(written)} files to {args.out_dir}/ "
            f"(mean emitter std {float(rec.arrays['emitter_std'].mean()):.4g})"
        )
        check = rec.metadata.get("self_check") or {}
        if check.get("message"):
            print(f"{path}: {check['message']}")
    return 0


def _wiener_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="a raw stack, or a glob of them (quoted)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument(
        "--hr-factor", type=int, default=2, help="output grid factor per axis (default: 2)"
    )
    p.add_argument("--wiener", type=float, default=0.1, help="Wiener parameter w (default: 0.1)")
    p.add_argument(
        "--psf-sigma",
        type=float,
        default=None,
        help="Gaussian PSF std in raw pixels (default: estimated from the data)",
    )
    p.add_argument(
        "--period-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="searched fringe periods in raw pixels (default: 2.1-8)",
    )
    p.add_argument(
        "--binning",
        type=int,
        default=None,
        help="pixel model: the synthetic generator's HR factor (default: a camera pixel)",
    )
    p.add_argument("--angles", type=int, default=3)
    p.add_argument("--phases", type=int, default=3)
    p.add_argument("--overwrite", action="store_true", help="replace existing results")


@command(
    "wiener",
    "classical SIM without a model: estimate the illumination (wave vectors, phases, "
    "modulation, PSF width) from each raw stack and reconstruct it with a generalised "
    "Wiener filter",
    _wiener_args,
)
def _wiener(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from napari_sim_uq.core.data.loaders import resolve_files
    from napari_sim_uq.core.io.outputs import hr_scale_translate
    from napari_sim_uq.core.io.tiff_io import atomic_write, read_image, write_image
    from napari_sim_uq.tasks.sim.classical.wiener import wiener_sim_array

    files = resolve_files(args.input)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in files:
        rec_in = read_image(path, angles=args.angles, phases=args.phases)
        res = wiener_sim_array(
            np.asarray(rec_in.data),
            hr_factor=args.hr_factor,
            n_angles=args.angles,
            n_phases=args.phases,
            psf_sigma=args.psf_sigma,
            binning=args.binning,
            wiener=args.wiener,
            period_range=args.period_range,
        )
        stem = Path(path).stem
        sc, tr = hr_scale_translate(rec_in.scale[-2:], rec_in.translate[-2:], args.hr_factor)
        out = args.out_dir / f"{stem}_wiener.tif"
        write_image(
            out,
            res.image,
            name=f"{stem} Wiener SIM",
            scale=sc,
            translate=tr,
            metadata={"sim_uq": {"wiener": res.params}},
            overwrite=args.overwrite,
        )
        doc = {"wiener": res.params, "patterns": res.estimate.to_dict()}
        text = json.dumps(doc, indent=2)
        atomic_write(
            args.out_dir / f"{stem}_patterns.json",
            lambda tmp, text=text: Path(tmp).write_text(text),
            overwrite=args.overwrite,
        )
        est = res.estimate
        print(
            f"{path}: wrote {out.name} and {stem}_patterns.json; periods "
            + ", ".join(f"{v:.3f}" for v in est.periods)
            + " raw px, modulation "
            + ", ".join(f"{v:.2f}" for v in est.modulation)
            + f", PSF sigma {est.psf_sigma:.2f} raw px"
        )
    return 0


# --------------------------------------------------------------------------- evaluate, calibrate


def _eval_common_args(p: argparse.ArgumentParser, split: str, several: bool = False) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a trained model (best.pt)")
    p.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="dataset folder with <split>/ raw stacks and <split>_gt/ ground truth",
    )
    if several:
        p.add_argument(
            "--split",
            nargs="+",
            default=[split],
            help="split folder(s) to evaluate, each reported on its own (e.g. test "
            "test_shifted; with several, results go to OUT_DIR/<split>/) (default: test)",
        )
    else:
        p.add_argument("--split", default=split, help="split folder to use (default: %(default)s)")
    p.add_argument(
        "--mc-samples",
        type=int,
        default=0,
        help="MC-dropout samples for the epistemic part (default: 0 = off)",
    )
    p.add_argument("--tile", type=int, default=None, help="tile size in raw pixels")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument(
        "--max-samples", type=int, default=None, help="use only the first N stacks of the split"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    _eval_common_args(p, "test", several=True)
    p.add_argument(
        "--no-wiener",
        action="store_true",
        help="skip the classical Wiener SIM baseline (it estimates the illumination of "
        "every stack)",
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="writes metrics.json and calibration_curves.png here",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing results")


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


@command(
    "evaluate",
    "evaluate a checkpoint on a dataset split: image quality against the ground truth "
    "(and a widefield baseline) and calibration of the predicted uncertainties",
    _evaluate_args,
)
def _evaluate(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.sim.evaluate import evaluate_sim_job

    splits = list(dict.fromkeys(args.split))
    for split in splits:
        out = args.out_dir if len(splits) == 1 else args.out_dir / split
        doc = run_with_progress(
            evaluate_sim_job(
                args.checkpoint,
                args.data_dir,
                split,
                out,
                mc_samples=args.mc_samples,
                tile=args.tile,
                device=args.device,
                max_samples=args.max_samples,
                overwrite=args.overwrite,
                wiener=not args.no_wiener,
            ),
            disable=args.quiet,
        )
        _print_evaluation(doc)
    return 0


def _print_evaluation(doc: dict) -> None:
    iq, cal = doc["image_quality"], doc["calibration"]
    scales = ", ".join(f"{k} {v:.4g}" for k, v in doc["sigma_scale"]["applied"].items())
    emap = (cal.get("emitter") or {}).get("sigma_map_applied")
    print(
        f"{doc['split']}: {doc['n_samples']} stacks, mc_samples={doc['mc_samples']}, "
        f"sigma scale: {scales}" + (f"; emitter sigma map: {emap}" if emap else "")
    )
    print(f"{'':<10} {'PSNR dB':>8} {'SSIM':>6} {'ZMS':>8} {'cov95':>6} {'Spearman':>8}")
    for name in ("emitter", "widefield", "lp", "raw"):
        q = iq.get(name) or {}
        c = cal.get(name) or {}
        if not q and not c.get("available"):
            continue
        print(
            f"{name:<10} {_fmt(q.get('psnr'), '.2f'):>8} {_fmt(q.get('ssim')):>6} "
            f"{_fmt(c.get('zms'), '.3g'):>8} {_fmt(c.get('cov95')):>6} "
            f"{_fmt(c.get('spearman')):>8}"
        )
    if "wiener_n" in iq:
        same = iq["wiener_same_stacks"]
        print(
            f"{'wiener':<10} {_fmt(iq['wiener'].get('psnr'), '.2f'):>8} "
            f"{_fmt(iq['wiener'].get('ssim')):>6}   (classical SIM on {iq['wiener_n']} "
            f"stacks; illumination not estimable on {iq['wiener_failed']}; on the same "
            f"stacks widefield {_fmt(same['widefield_psnr'], '.2f')}, emitter "
            f"{_fmt(same['emitter_psnr'], '.2f')} dB)"
        )
        lpp = iq.get("lp_parametric") or {}
        if lpp.get("psnr") is not None:
            print(
                f"{'lp (param)':<10} {_fmt(lpp['psnr'], '.2f'):>8} {_fmt(lpp.get('ssim')):>6} "
                f"{_fmt(lpp.get('zms'), '.3g'):>8} {_fmt(lpp.get('cov95')):>6}   (light "
                "patterns from the same estimates; std from the parameters' noise)"
            )
    em = cal.get("emitter") or {}
    if em.get("by_std_decile"):
        print("emitter " + _conditional_line(em))
    sc = doc.get("self_check") or {}
    if sc.get("n_stacks"):
        lo, hi = sc["range"]
        print(
            f"raw-domain self-check: {sc['n_flagged']} of {sc['n_stacks']} stacks flagged "
            f"(raw ZMS outside [{lo:.3g}, {hi:.3g}] or residual correlation > "
            f"{sc['rho_max']:.3g}; median raw ZMS {_fmt(sc['raw_zms_median'], '.3g')})"
        )
    for note in doc["notes"]:
        print(f"note: {note}")
    print(f"metrics: {doc['files']['metrics']}")


def _conditional_line(table: dict) -> str:
    """ZMS range over std deciles and per intensity class, one line."""
    dec = [r["zms"] for r in table["by_std_decile"] if r.get("zms") is not None]
    by = table.get("by_intensity") or {}
    classes = ", ".join(
        f"{k} {_fmt((by.get(k) or {}).get('zms'), '.3g')}"
        for k in ("background", "structure", "dim", "mid", "bright")
        if k in by
    )
    return f"ZMS per std decile {min(dec):.3g}..{max(dec):.3g}; per intensity: {classes}"


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    _eval_common_args(p, "val")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write a calibrated copy to this new file instead of updating --checkpoint",
    )
    p.add_argument(
        "--quantities",
        default=None,
        help="comma-separated subset of emitter,lp,raw (default: all the data allow)",
    )
    p.add_argument(
        "--method",
        choices=("scale", "map", "map-intensity"),
        default="map-intensity",
        help="scale: one sigma scale per quantity; map: plus a monotone map of the emitter "
        "std per std quantile; map-intensity: one such map per class of the predicted "
        "emitter intensity (default: %(default)s)",
    )
    p.add_argument("--n-bins", type=int, default=10, help="std bins per map (default: %(default)s)")


@command(
    "calibrate",
    "fit the sigma scale s = sqrt(mean(r^2/sigma^2)) per quantity on held-out data, and "
    "a monotone emitter sigma map per predicted-intensity class, and store them in the "
    "checkpoint",
    _calibrate_args,
)
def _calibrate(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.sim.evaluate import calibrate_sim_job

    quantities = None
    if args.quantities is not None:
        quantities = [q.strip() for q in args.quantities.split(",") if q.strip()]
    res = run_with_progress(
        calibrate_sim_job(
            args.checkpoint,
            args.data_dir,
            args.split,
            mc_samples=args.mc_samples,
            tile=args.tile,
            device=args.device,
            max_samples=args.max_samples,
            quantities=quantities,
            out=args.out,
            method=args.method,
            n_bins=args.n_bins,
        ),
        disable=args.quiet,
    )
    print(f"{res['split']}: {res['n_samples']} stacks, mc_samples={res['mc_samples']}")
    print(
        f"{'':<8} {'old s':>8} {'new s':>8} {'ZMS before':>10} {'ZMS after':>9} "
        f"{'cov95 before':>12} {'cov95 after':>11}"
    )
    for q, s in res["fitted"].items():
        old = res["previous_sigma_scale"].get(q, 1.0)
        b, a = res["before"][q], res["after"][q]
        print(
            f"{q:<8} {old:>8.4g} {s:>8.4g} {_fmt(b['zms'], '.4g'):>10} "
            f"{_fmt(a['zms'], '.4g'):>9} {_fmt(b['cov95']):>12} {_fmt(a['cov95']):>11}"
        )
    cond = res.get("emitter_conditional") or {}
    for name, label in (("scale_only", "scale only"), ("map", "with the map")):
        if cond.get(name):
            print(f"emitter, {label} (in-sample): " + _conditional_line(cond[name]))
    for note in res["notes"]:
        print(f"note: {note}")
    stored = "sigma scale" + (" and emitter sigma map" if res.get("sigma_map") else "")
    print(f"{stored} stored in {res['written']}")
    return 0


# --------------------------------------------------------------------------- demo


def _demo_args(p: argparse.ArgumentParser) -> None:
    from napari_sim_uq.tasks.sim.demo import DemoConfig

    d = DemoConfig()
    p.add_argument(
        "--out-dir", type=Path, default=Path(d.out_dir), help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--train-minutes",
        type=float,
        default=d.train_minutes,
        help="training time budget; it stops between epochs (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="at most this many epochs")
    p.add_argument("--n-train", type=int, default=d.n_train, help="training stacks to generate")
    p.add_argument("--n-val", type=int, default=d.n_val, help="validation stacks (model selection)")
    p.add_argument(
        "--n-calib", type=int, default=d.n_calib, help="held-out stacks for the sigma scale"
    )
    p.add_argument("--n-test", type=int, default=d.n_test, help="held-out test stacks")
    p.add_argument(
        "--n-shifted",
        type=int,
        default=d.n_shifted,
        help="held-out stacks made with other optics (Airy PSF, thin structures) to show "
        "the uncertainty off the training distribution; 0 = none",
    )
    p.add_argument(
        "--structure-weight",
        type=float,
        default=d.structure_weight,
        help="extra weight of structure pixels in the supervised emitter NLL "
        "(default: %(default)s; 0 = plain NLL)",
    )
    p.add_argument(
        "--self-supervised",
        action="store_true",
        help="train on the raw stacks only: one instrument for the whole dataset, the "
        "light patterns and PSF estimated from the raw data (--patterns estimated); the "
        "ground truth only calibrates and measures",
    )
    p.add_argument(
        "--patterns",
        choices=("network", "estimated"),
        default=d.patterns,
        help="optics of the forward model: the network's heads, or (also implied by "
        "--self-supervised) one instrument for the whole dataset whose estimated patterns "
        "and PSF the model uses (default: %(default)s)",
    )
    p.add_argument("--size", type=int, default=d.lr_size, help="raw frame size in pixels")
    p.add_argument("--hr-factor", type=int, default=d.hr_factor)
    p.add_argument("--mc-samples", type=int, default=d.mc_samples)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or mps")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@command(
    "demo",
    "the whole workflow in minutes: generate data, train, calibrate, evaluate on held-out "
    "data, reconstruct, and draw a summary figure",
    _demo_args,
)
def _demo(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.sim.demo import DemoConfig, demo_job

    cfg = DemoConfig(
        out_dir=str(args.out_dir),
        train_minutes=args.train_minutes,
        epochs=args.epochs,
        n_train=args.n_train,
        n_val=args.n_val,
        n_calib=args.n_calib,
        n_test=args.n_test,
        n_shifted=args.n_shifted,
        structure_weight=args.structure_weight,
        self_supervised=args.self_supervised,
        patterns=args.patterns,
        lr_size=args.size,
        hr_factor=args.hr_factor,
        mc_samples=args.mc_samples,
        device=args.device,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    res = run_with_progress(demo_job(cfg), disable=args.quiet)
    t = res["timings"]
    mode = "self-supervised" if args.self_supervised else "supervised"
    print(
        f"demo ({mode}, patterns {cfg.patterns if not args.self_supervised else 'estimated'}) "
        f"finished in {t['total_s'] / 60:.1f} min on {res['device']} "
        f"({res['epochs_trained']} epochs of training)"
    )
    for key in ("test", "test_shifted"):
        dg = res.get(key)
        if not dg:
            continue
        lo_hi = dg["emitter_zms_by_std_decile"] or [None, None]
        by = dg["emitter_zms_by_intensity"] or {}
        print(
            f"  {key + ':':<14} emitter PSNR {_fmt(dg['emitter_psnr'], '.2f')} dB (widefield "
            f"{_fmt(dg['widefield_psnr'], '.2f')}), ZMS {_fmt(dg['emitter_zms'], '.3g')} "
            f"(std deciles {_fmt(lo_hi[0], '.3g')}..{_fmt(lo_hi[1], '.3g')}; background "
            f"{_fmt(by.get('background'), '.3g')}, structure {_fmt(by.get('structure'), '.3g')}), "
            f"cov95 {_fmt(dg['emitter_cov95'])}, Spearman {_fmt(dg['emitter_spearman'], '.2f')}; "
            f"self-check flags {_fmt(dg['self_check_fraction_flagged'], '.0%')} of the stacks"
        )
        print(
            f"  {'':<14} emitter after the affine fit the baselines get "
            f"{_fmt(dg.get('emitter_psnr_affine'), '.2f')} dB; light patterns PSNR "
            f"{_fmt(dg.get('lp_psnr'), '.2f')} dB, ZMS {_fmt(dg.get('lp_zms'), '.3g')}; raw ZMS "
            f"{_fmt(dg.get('raw_zms'), '.3g')}"
        )
        if dg.get("wiener_n"):
            print(
                f"  {'':<14} classical Wiener SIM {_fmt(dg['wiener_psnr'], '.2f')} dB on the "
                f"{dg['wiener_n']} of {dg['n_samples']} stacks whose illumination could be "
                f"estimated (widefield {_fmt(dg['wiener_widefield_psnr'], '.2f')} dB on them)"
            )
    print(f"  summary figure   {res['summary']}")
    print(f"  test metrics     {res['evaluation']}")
    print(f"  reconstruction   {Path(res['reconstruction'][0]).parent}/")
    print(f"  model            {res['checkpoint']}")
    print(f"  data             {res['data']}/")
    print(
        f"open in napari:    napari --plugin napari-sim-uq {res['reconstruction'][0]} "
        f"{Path(res['data']) / 'test'}/*.tif"
    )
    return 0


# --------------------------------------------------------------------------- 2D tasks


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")


def _generate_2d_args(p: argparse.ArgumentParser) -> None:
    # choices come from the generator's own tables (typed once)
    from napari_sim_uq.tasks.ae2d.synth2d import ANOMALY_KINDS, DTYPES, IMAGE_KINDS

    p.add_argument("--out-dir", type=Path, required=True, help="dataset folder")
    p.add_argument("--n-train", type=int, default=32, help="training images (default: 32)")
    p.add_argument("--n-val", type=int, default=8, help="validation images (default: 8)")
    p.add_argument("--n-test", type=int, default=8, help="test images (default: 8)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.add_argument(
        "--kind",
        default=IMAGE_KINDS[0],
        choices=IMAGE_KINDS,
        help=f"structures: {', '.join(IMAGE_KINDS)} (default: %(default)s)",
    )
    p.add_argument(
        "--background",
        type=float,
        default=0.1,
        help="mean level of a smooth autofluorescence background, as a fraction of the "
        "brightest structure (0: none; default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        default=DTYPES[0],
        choices=DTYPES,
        help="stored data type (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--anomalies",
        action="store_true",
        help="also write the test images with one inserted anomaly each to "
        "OUT_DIR/anomaly/abnormal (masks in OUT_DIR/anomaly/masks), for `sim-uq anomaly`",
    )
    p.add_argument(
        "--anomaly-kind",
        default="random",
        choices=(*ANOMALY_KINDS, "random"),
        help="kind of inserted anomaly (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")


@command(
    "generate-2d",
    "generate clean synthetic 2D fluorescence-like images (train/val/test), optionally with "
    "an anomaly set",
    _generate_2d_args,
)
def _generate_2d(args: argparse.Namespace) -> int:
    import time

    from napari_sim_uq.core.errors import InputError
    from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d

    if args.anomalies and args.n_test < 1:
        raise InputError("--anomalies inserts anomalies into the test images: give --n-test >= 1")
    t0 = time.perf_counter()
    files = generate_dataset_2d(
        args.out_dir,
        args.n_train,
        args.n_val,
        args.n_test,
        size=args.size,
        seed=args.seed,
        overwrite=args.overwrite,
        kind=args.kind,
        dtype=args.dtype,
        background=args.background,
    )
    extra = ""
    if args.anomalies:
        from napari_sim_uq.tasks.ae2d.demo import write_anomaly_set

        anomaly = args.out_dir / "anomaly"
        write_anomaly_set(
            files["test"], anomaly, seed=args.seed, kind=args.anomaly_kind, overwrite=args.overwrite
        )
        extra = f"; {len(files['test'])} abnormal images in {anomaly / 'abnormal'}/"
    counts = ", ".join(f"{len(v)} {k}" for k, v in files.items())
    print(f"wrote {counts} images to {args.out_dir}/ in {time.perf_counter() - t0:.1f} s{extra}")
    return 0


#: Train2DConfig fields the command line requires (their dataclass defaults are not used).
_TRAIN_2D_REQUIRED = ("data_dir",)


def _train_2d_args(p: argparse.ArgumentParser) -> None:
    # options from the field metadata of Train2DConfig (data, loop) and AE2DConfig (network)
    from napari_sim_uq.core.config import add_config_arguments
    from napari_sim_uq.tasks.ae2d.net import AE2DConfig
    from napari_sim_uq.tasks.ae2d.train import Train2DConfig

    add_config_arguments(p, Train2DConfig, required=_TRAIN_2D_REQUIRED)
    add_config_arguments(p.add_argument_group("model"), AE2DConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_2d_config(args: argparse.Namespace):
    """The Train2DConfig of parsed ``train-2d`` options (the network as a dict of
    AE2DConfig values, as the training job expects)."""
    from napari_sim_uq.core.config import config_from_args, config_values_from_args
    from napari_sim_uq.tasks.ae2d.net import AE2DConfig
    from napari_sim_uq.tasks.ae2d.train import Train2DConfig

    return config_from_args(
        Train2DConfig,
        args,
        ckpt_dir=str(Path(args.ckpt_dir)),
        model=config_values_from_args(AE2DConfig, args),
    )


@command(
    "train-2d",
    "train a 2D autoencoder with uncertainty (MC dropout and/or a variance head) to undo "
    "degradations (--degrade) or, with --degrade none, to reconstruct its input",
    _train_2d_args,
)
def _train_2d(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.ae2d.train import train_2d_job

    cfg = _train_2d_config(args)
    result = run_with_progress(train_2d_job(cfg), disable=args.quiet)
    _print_training(result, ("train_loss", "val_loss", "val_mse", "val_zms"))
    return 0


def _print_training(result: dict, keys: tuple[str, ...]) -> None:
    """The summary lines of a training command: epochs, time, the last epoch's ``keys``
    and where the checkpoints are."""
    last = result["history"][-1] if result["history"] else {}
    shown = {k: round(v, 4) for k, v in last.items() if k in keys}
    print(
        f"trained {result['epochs_done']} epochs ({result['steps']} steps) on "
        f"{result['device']} in {result['seconds']:.1f} s; last epoch: {shown}"
    )
    best = result["best"] or result["latest"]
    print(
        f"checkpoints: {result['latest']}, {best}; metrics: "
        f"{Path(result['ckpt_dir']) / 'metrics.csv'}"
    )


# --------------------------------------------------------------------------- VAE posterior


def _train_vae_args(p: argparse.ArgumentParser) -> None:
    from napari_sim_uq.core.config import add_config_arguments
    from napari_sim_uq.tasks.vae2d.net import VAEConfig
    from napari_sim_uq.tasks.vae2d.train import TrainVAEConfig

    add_config_arguments(p, TrainVAEConfig, required=("data_dir",))
    add_config_arguments(p.add_argument_group("model"), VAEConfig, include=("channels", "depth"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "train-vae",
    "train the VAE of the posterior reconstruction on clean images (its patch size is the "
    "tile size of `sim-uq posterior`)",
    _train_vae_args,
)
def _train_vae(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.config import config_from_args, config_values_from_args
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.vae2d.net import VAEConfig
    from napari_sim_uq.tasks.vae2d.train import TrainVAEConfig, train_vae_job

    cfg = config_from_args(
        TrainVAEConfig,
        args,
        ckpt_dir=str(Path(args.ckpt_dir)),
        model={
            k: v
            for k, v in config_values_from_args(VAEConfig, args).items()
            if k in ("channels", "depth")
        },
    )
    result = run_with_progress(train_vae_job(cfg), disable=args.quiet)
    _print_training(result, ("train_loss", "val_loss", "val_recon_rmse", "train_sigma_dec"))
    return 0


def _calibrate_vae_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a VAE (train-vae: best.pt)")
    p.add_argument(
        "--data-dir",
        required=True,
        help="held-out clean images (a folder or a quoted glob), not the training images",
    )
    p.add_argument(
        "--n-windows",
        type=int,
        default=48,
        help="corrupted windows to calibrate on (default: %(default)s)",
    )
    p.add_argument(
        "--n-starts", type=int, default=10, help="optimiser starts (default: %(default)s)"
    )
    p.add_argument(
        "--n-samples", type=int, default=64, help="posterior samples (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="windows, masks and noise seed")
    _device_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "calibrate-vae",
    "fit the posterior std calibration of a VAE on corrupted windows of held-out clean "
    "images (one scale for observed pixels, one per distance bin for missing ones) and store "
    "it in the checkpoint",
    _calibrate_vae_args,
)
def _calibrate_vae(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.vae2d.calibrate import calibrate_vae_job

    t = run_with_progress(
        calibrate_vae_job(
            args.checkpoint,
            args.data_dir,
            n_windows=args.n_windows,
            seed=args.seed,
            device=args.device,
            n_starts=args.n_starts,
            n_samples=args.n_samples,
        ),
        disable=args.quiet,
    )
    edges = [0, *t["distance_edges"]]
    names = ["observed"] + [
        f"missing {a:g}-{b:g} px" for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    names.append(f"missing > {edges[-1]:g} px")
    rows = "; ".join(
        f"{n} x{s[0]:.2f} / x{s[1]:.2f}" for n, s in zip(names, t["scales"], strict=True)
    )
    print(
        f"std scales (background / structure) stored in {args.checkpoint}: {rows}; chi^2 "
        f"per observed pixel at the MAP {t['chi2_at_map_mean']:.3f}"
    )
    return 0


def _posterior_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a VAE (train-vae: best.pt)")
    p.add_argument("--input", type=Path, required=True, help="the corrupted image (TIFF/PNG)")
    p.add_argument(
        "--mask",
        type=Path,
        default=None,
        help="observed pixels (TIFF/PNG of the image's size, nonzero = observed); NaN pixels "
        "of the image are missing too",
    )
    p.add_argument(
        "--noise-sigma",
        type=float,
        default=None,
        help="noise std in the image's units (default: estimated from the image)",
    )
    p.add_argument(
        "--n-samples", type=int, default=64, help="posterior samples (default: %(default)s)"
    )
    p.add_argument(
        "--n-starts", type=int, default=10, help="optimiser starts per tile (default: %(default)s)"
    )
    p.add_argument(
        "--overlap", type=int, default=16, help="tile overlap in pixels (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="starts and samples seed")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for the results")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    _device_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "posterior",
    "posterior reconstruction of a corrupted (masked and/or noisy) image with a VAE: MAP, "
    "posterior mean and std, samples, modes and their weights",
    _posterior_args,
)
def _posterior(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.vae2d.outputs import posterior_files_job

    doc = run_with_progress(
        posterior_files_job(
            args.input,
            args.checkpoint,
            args.out_dir,
            mask=args.mask,
            noise_sigma=args.noise_sigma,
            n_samples=args.n_samples,
            n_starts=args.n_starts,
            overlap=args.overlap,
            seed=args.seed,
            device=args.device,
            overwrite=args.overwrite,
        ),
        disable=args.quiet,
    )
    w = doc["mode_weights"]
    modes = (
        f"{len(w)} mode(s), weights {', '.join(f'{v:.3f}' for v in w)}"
        if w is not None
        else f"{doc['n_tiles']} tiles, modes per tile {min(doc['modes_per_tile'])}-"
        f"{max(doc['modes_per_tile'])}"
    )
    t = doc["timings"]
    print(
        f"{modes}; noise std {doc['noise_sigma']:.4g} "
        f"({'estimated' if doc['noise_sigma_estimated'] else 'given'}); chi^2 per observed "
        f"pixel at the MAP {doc['chi2_per_observed_pixel_at_map']:.3f}; "
        f"{t['total_s']:.1f} s (optimisation {t['optimisation_s']:.1f}, Hessians "
        f"{t['hessians_s']:.1f}, sampling {t['sampling_s']:.1f})"
    )
    for w in doc.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(f"results, summary.png and posterior.json in {args.out_dir}/")
    return 0


# --------------------------------------------------------------------------- masked autoencoder


def _train_mae_args(p: argparse.ArgumentParser) -> None:
    from napari_sim_uq.core.config import add_config_arguments
    from napari_sim_uq.tasks.mae2d.net import MAEConfig
    from napari_sim_uq.tasks.mae2d.train import TrainMAEConfig

    add_config_arguments(p, TrainMAEConfig, required=("data_dir",))
    add_config_arguments(p.add_argument_group("model"), MAEConfig, include=_MAE_MODEL_OPTIONS)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


#: MAEConfig fields offered by `sim-uq train-mae` (the others are TrainMAEConfig fields)
_MAE_MODEL_OPTIONS = (
    "mlp_ratio",
    "head_dim",
    "decoder_dim",
    "decoder_depth",
    "decoder_heads",
    "dropout",
    "steps",
    "alpha",
    "beta",
)


@command(
    "train-mae",
    "train a masked autoencoder (--block vit: MAE, --block energy: Energy Transformer) to "
    "reconstruct hidden patches of clean images",
    _train_mae_args,
)
def _train_mae(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.config import config_from_args, config_values_from_args
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.mae2d.net import MAEConfig
    from napari_sim_uq.tasks.mae2d.train import TrainMAEConfig, train_mae_job

    model = config_values_from_args(MAEConfig, args)
    cfg = config_from_args(
        TrainMAEConfig,
        args,
        ckpt_dir=str(Path(args.ckpt_dir)),
        model={k: v for k, v in model.items() if k in _MAE_MODEL_OPTIONS},
    )
    result = run_with_progress(train_mae_job(cfg), disable=args.quiet)
    _print_training(result, ("train_loss", "val_loss", "val_psnr_masked"))
    return 0


def _sigma_map_args(p: argparse.ArgumentParser, default: str) -> None:
    """--method / --n-bins / --n-classes of the 2D tasks' calibrate commands."""
    p.add_argument(
        "--method",
        default=default,
        choices=("scale", "map", "map-intensity"),
        help="scale: one factor s = sqrt(mean(r^2/sigma^2)); map: that factor and a "
        "monotone per-quantile map of sigma; map-intensity: one such map per class of "
        "the predicted intensity (default: %(default)s)",
    )
    p.add_argument(
        "--n-bins", type=int, default=10, help="bins of sigma per map (default: %(default)s)"
    )
    p.add_argument(
        "--n-classes",
        type=int,
        default=5,
        help="equal-count classes of the predicted intensity for --method map-intensity "
        "(default: %(default)s)",
    )


def _calibrate_mae_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="a masked autoencoder (train-mae: best.pt)"
    )
    p.add_argument(
        "--data-dir",
        required=True,
        help="held-out clean images (a folder or a quoted glob), not the training images",
    )
    p.add_argument(
        "--mask-ratio",
        type=float,
        default=None,
        help="fraction of tokens hidden (default: the training ratio)",
    )
    p.add_argument(
        "--num-samples", type=int, default=16, help="stochastic passes (default: %(default)s)"
    )
    _sigma_map_args(p, "map-intensity")
    p.add_argument("--seed", type=int, default=0, help="masks and passes seed")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    _device_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "calibrate-mae",
    "fit the std calibration of a masked autoencoder on hidden pixels of held-out clean "
    "images (a scale and a monotone map of sigma per predicted-intensity class) and store "
    "it in the checkpoint",
    _calibrate_mae_args,
)
def _calibrate_mae(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.mae2d.calibrate import calibrate_mae_job

    t = run_with_progress(
        calibrate_mae_job(
            args.checkpoint,
            args.data_dir,
            mask_ratio=args.mask_ratio,
            num_samples=args.num_samples,
            seed=args.seed,
            device=args.device,
            max_images=args.max_images,
            method=args.method,
            n_bins=args.n_bins,
            n_classes=args.n_classes,
        ),
        disable=args.quiet,
    )
    b, a = t["before"]["pooled"], t["after"]["pooled"]
    print(
        f"sigma scale {t['sigma_scale']['mean']:.4g}"
        + (" and a sigma map" if t["sigma_map"] else "")
        + f" stored in {args.checkpoint} "
        f"({t['n_pixels']} hidden pixels of {t['n_images']} images); ZMS {b['zms']:.3f} -> "
        f"{a['zms']:.3f}, cov95 {b['cov95']:.3f} -> {a['cov95']:.3f}; by intensity after: "
        f"{_tertiles(t['after'])}"
    )
    return 0


def _inpaint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="a masked autoencoder (train-mae: best.pt)"
    )
    p.add_argument("--input", type=Path, required=True, help="the image (TIFF/PNG)")
    hide = p.add_mutually_exclusive_group()
    hide.add_argument(
        "--mask",
        type=Path,
        default=None,
        help="observed pixels (TIFF/PNG of the image's size, nonzero = observed); NaN pixels "
        "of the image are missing too",
    )
    hide.add_argument(
        "--mask-ratio",
        type=float,
        default=None,
        help="hide this fraction of the tokens at random (a test: the image is the truth)",
    )
    p.add_argument(
        "--reference", type=Path, default=None, help="the true image, for metrics (optional)"
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=16,
        help="stochastic passes for the mean and std (1: one deterministic pass, no std; "
        "default: %(default)s)",
    )
    p.add_argument(
        "--drop-visible",
        type=float,
        default=0.25,
        help="each pass also hides this fraction of the visible tokens (default: %(default)s)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="average the mean over the 8 rotations / reflections of every tile (8 passes "
        "instead of 1 for the mean; measured +0.1 to +0.5 dB, docs/method-mae.md)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also report biharmonic inpainting's PSNR (needs the truth)",
    )
    p.add_argument("--seed", type=int, default=0, help="mask and passes seed")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for the results")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    _device_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "inpaint",
    "masked reconstruction of an image with a masked autoencoder: the reconstruction, its std "
    "over stochastic passes, and metrics when the truth is known",
    _inpaint_args,
)
def _inpaint(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.mae2d.outputs import inpaint_files_job

    doc = run_with_progress(
        inpaint_files_job(
            args.input,
            args.checkpoint,
            args.out_dir,
            mask=args.mask,
            mask_ratio=args.mask_ratio,
            reference=args.reference,
            num_samples=args.num_samples,
            drop_visible=args.drop_visible,
            augment=args.augment,
            baseline=args.baseline,
            seed=args.seed,
            device=args.device,
            overwrite=args.overwrite,
        ),
        disable=args.quiet,
    )
    line = (
        f"{doc['n_missing']} missing pixels ({100 * doc['fraction_missing']:.1f} %), "
        f"{doc['tiles']} tiles, {doc['seconds']:.1f} s"
    )
    m = doc.get("metrics")
    if m:
        line += f"; hidden pixels: PSNR {_fmt(m['psnr_missing'], '.2f')} dB"
        if "psnr_missing_biharmonic" in m:
            line += f" (biharmonic {_fmt(m['psnr_missing_biharmonic'], '.2f')} dB)"
        if "zms_missing" in m:
            line += (
                f", ZMS {_fmt(m['zms_missing'], '.3f')}, cov95 "
                f"{_fmt(m['coverage95_missing'], '.3f')}"
            )
    elif args.baseline:
        print("note: --baseline needs the truth (--mask-ratio or --reference)", file=sys.stderr)
    print(line)
    print(f"results, panels.png and metrics.json in {args.out_dir}/")
    return 0


def _calibrate_2d_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a 2D model (best.pt)")
    p.add_argument(
        "--data-dir",
        required=True,
        help="held-out clean images (a folder or a quoted glob), e.g. DATA/val",
    )
    p.add_argument(
        "--mc-samples", type=int, default=30, help="MC-dropout samples (default: %(default)s)"
    )
    p.add_argument(
        "--degrade",
        default=None,
        help="degradation applied to the clean images (default: the one the model was "
        "trained with)",
    )
    _sigma_map_args(p, "scale")
    p.add_argument("--seed", type=int, default=0, help="degradation and dropout seed")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    _device_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _tertiles(table: dict) -> str:
    return ", ".join(f"{k} {_fmt(v['zms'], '.3g')}" for k, v in table["by_intensity"].items())


@command(
    "calibrate-2d",
    "fit the std calibration of a 2D model on held-out clean images (a scale, or a monotone "
    "map of sigma) and store it in the checkpoint",
    _calibrate_2d_args,
)
def _calibrate_2d(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.ae2d.calibrate import calibrate_2d_job

    res = run_with_progress(
        calibrate_2d_job(
            args.checkpoint,
            args.data_dir,
            mc_samples=args.mc_samples,
            degrade=args.degrade,
            seed=args.seed,
            method=args.method,
            device=args.device,
            n_bins=args.n_bins,
            n_classes=args.n_classes,
            max_images=args.max_images,
        ),
        disable=args.quiet,
    )
    print(
        f"{res['n_images']} images ({res['n_pixels']} pixels), degrade {res['degrade']}, "
        f"mc_samples={res['mc_samples']}: sigma scale {res['sigma_scale']['mean']:.4g}"
        + (" and a sigma map" if res["sigma_map"] else "")
    )
    for when in ("before", "after"):
        t = res[when]
        p = t["pooled"]
        print(
            f"  {when:<6} ZMS {_fmt(p['zms'], '.3g')}, cov95 {_fmt(p['cov95'])}, Spearman "
            f"{_fmt(p['spearman'])}; ZMS per intensity tertile: {_tertiles(t)}"
        )
    print(f"calibration stored in {res['checkpoint']}")
    return 0


def _infer_2d_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", required=True, help="clean images (a folder or a quoted glob), e.g. DATA/test"
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a 2D model (best.pt)")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for the results")
    p.add_argument(
        "--num-samples", type=int, default=30, help="MC-dropout samples (default: %(default)s)"
    )
    p.add_argument(
        "--degrade",
        default=None,
        help="degradation applied to the clean images (default: the one the model was "
        "trained with; none: reconstruct them as they are)",
    )
    p.add_argument("--seed", type=int, default=0, help="degradation and dropout seed")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    _device_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "infer-2d",
    "degrade clean images, reconstruct them with a 2D model and write the mean, std, "
    "figures and metrics against the clean images",
    _infer_2d_args,
)
def _infer_2d(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.ae2d.infer import infer_2d_job

    doc = run_with_progress(
        infer_2d_job(
            args.data_dir,
            args.checkpoint,
            args.out_dir,
            num_samples=args.num_samples,
            degrade=args.degrade,
            seed=args.seed,
            overwrite=args.overwrite,
            device=args.device,
            max_images=args.max_images,
        ),
        disable=args.quiet,
    )
    p = doc["pooled"]
    print(
        f"{p['n_images']} images: PSNR {p['psnr']:.2f} dB (input {p['psnr_input']:.2f}), SSIM "
        f"{p['ssim']:.3f} (input {p['ssim_input']:.3f}); ZMS {_fmt(p['zms'], '.3g')}, cov95 "
        f"{_fmt(p['cov95'])}, Spearman {_fmt(p['spearman'])}; ZMS per intensity tertile: "
        f"{_tertiles(doc['conditional'])}"
    )
    print(f"results and metrics.json in {args.out_dir}/")
    return 0


def _anomaly_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="an autoencoder trained with --degrade none"
    )
    p.add_argument("--normal-dir", required=True, help="normal images (folder or quoted glob)")
    p.add_argument("--abnormal-dir", required=True, help="abnormal images (folder or quoted glob)")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for the results")
    p.add_argument(
        "--mc-samples",
        type=int,
        default=1,
        help="MC-dropout samples (default: 1, one deterministic pass)",
    )
    p.add_argument("--seed", type=int, default=0, help="dropout seed")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    _device_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "anomaly",
    "score normal and abnormal images with an autoencoder (uncertainty-normalised and "
    "plain MSE): AUC, EER, F1, ROC plot",
    _anomaly_args,
)
def _anomaly(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.ae2d.anomaly import anomaly_job

    doc = run_with_progress(
        anomaly_job(
            args.checkpoint,
            args.normal_dir,
            args.abnormal_dir,
            args.out_dir,
            mc_samples=args.mc_samples,
            seed=args.seed,
            overwrite=args.overwrite,
            device=args.device,
        ),
        disable=args.quiet,
    )
    s = doc["scores"]
    print(
        f"{doc['n_normal']} normal, {doc['n_abnormal']} abnormal images: "
        + "; ".join(
            f"{name} score AUC {s[name]['auc']:.3f}, EER {s[name]['eer']:.3f}, "
            f"F1 {s[name]['f1']:.3f}"
            for name in s
        )
    )
    for note in doc["notes"]:
        print(f"note: {note}")
    print(f"results in {args.out_dir}/ (anomaly.json, scores.csv, roc.png)")
    return 0


def _demo_2d_args(p: argparse.ArgumentParser) -> None:
    from napari_sim_uq.core.config import add_config_arguments
    from napari_sim_uq.tasks.ae2d.demo import Demo2DConfig

    add_config_arguments(p, Demo2DConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@command(
    "demo-2d",
    "the 2D workflow in minutes: generate images, train a denoiser, calibrate, infer on "
    "held-out images, train an anomaly autoencoder, score anomalies, draw a summary",
    _demo_2d_args,
)
def _demo_2d(args: argparse.Namespace) -> int:
    from napari_sim_uq.core.config import config_from_args
    from napari_sim_uq.core.events import run_with_progress
    from napari_sim_uq.tasks.ae2d.demo import Demo2DConfig, demo_2d_job

    cfg = config_from_args(Demo2DConfig, args)
    res = run_with_progress(demo_2d_job(cfg), disable=args.quiet)
    t, q = res["timings"], res["test"]["image_quality"]
    c = res["test"]["calibration"]
    print(f"2D demo finished in {t['total_s'] / 60:.1f} min on {res['device']}")
    print(
        f"  test images      PSNR {q['psnr']:.2f} dB (degraded {q['psnr_input']:.2f}), SSIM "
        f"{q['ssim']:.3f} (degraded {q['ssim_input']:.3f})"
    )
    tert = ", ".join(f"{k} {_fmt(v, '.3g')}" for k, v in c["by_intensity"].items())
    print(
        f"  calibration      ZMS {_fmt(c['pooled']['zms'], '.3g')} ({tert}), cov95 "
        f"{_fmt(c['pooled']['cov95'])}, Spearman {_fmt(c['pooled']['spearman'])}"
    )
    a = res["anomaly"]
    print(
        "  anomaly AUC      " + ", ".join(f"{name} score {_fmt(v['auc'])}" for name, v in a.items())
    )
    print(f"  summary figure   {res['files']['summary']}")
    print(f"  numbers          {Path(res['out_dir']) / 'demo_2d.json'}")
    return 0


# --------------------------------------------------------------------------- main


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser that adds its options when first used (parsing, help or
    usage), so building the whole parser does not import what one command's options are
    made from (``train``'s come from the model and loss configs, which need torch)."""

    def __init__(self, *args, add_arguments: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def ensure_arguments(self) -> argparse.ArgumentParser:
        """Add the options now (once); returns the parser."""
        add, self._add_arguments = self._add_arguments, None
        if add is not None:
            add(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        self.ensure_arguments()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.ensure_arguments()
        return super().format_usage()

    def format_help(self) -> str:
        self.ensure_arguments()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sim-uq",
        description="Uncertainty-aware SIM and 2D image reconstruction (napari-sim-uq). "
        "Every command is also available from Python (import napari_sim_uq) and as a "
        "napari widget.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_arguments=add_arguments)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from napari_sim_uq.core.errors import SimUqError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    _, _, run = _COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except (SimUqError, FileExistsError, FileNotFoundError, NotADirectoryError) as err:
        print(f"sim-uq {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"sim-uq {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
