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
    from napari_sim_uq.data.samples import write_example_data

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


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sim-uq",
        description="Uncertainty-aware SIM and 2D image reconstruction (napari-sim-uq). "
        "Every command is also available from Python (import napari_sim_uq) and as a "
        "napari widget.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from napari_sim_uq.errors import SimUqError

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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
