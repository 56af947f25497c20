"""The plugin is installable and its manifest reaches npe2 (editable install and wheel)."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_sim_uq"


def test_manifest_symlink_is_relative_and_points_to_top_level():
    link = PKG / "napari.yaml"
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))
    assert link.resolve() == (ROOT / "napari.yaml").resolve()


def test_manifest_commands_resolve():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(ROOT / "napari.yaml")
    pm.validate_imports()  # every python_name imports and exists
    assert pm.name == "napari-sim-uq"
    assert {r.command for r in pm.contributions.readers} == {"napari-sim-uq.get_reader"}


def test_npe2_validate_installed_plugin():
    npe2 = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    out = subprocess.run(
        [npe2, "validate", "napari-sim-uq"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_import_is_cheap():
    code = (
        "import sys, napari_sim_uq; "
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt5', 'scipy', 'tifffile') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_core_never_imports_qt_or_napari():
    # Only _napari/ may import napari or Qt (DESIGN.md 1); the CLI may open a viewer on
    # request (--view), imported inside that function.
    pattern = re.compile(
        r"^\s*(import|from)\s+(napari|qtpy|PyQt5|PyQt6|PySide\d|magicgui)\b", re.MULTILINE
    )
    offenders = []
    for py in PKG.rglob("*.py"):
        if "_napari" in py.parts:
            continue
        for m in pattern.finditer(py.read_text()):
            line = m.group(0).strip()
            if py.name == "cli.py" and line == "import napari":
                continue
            offenders.append(f"{py.relative_to(PKG)}: {line}")
    assert offenders == []


@pytest.mark.slow
def test_wheel_ships_manifest_and_validates(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("napari_sim_uq-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_sim_uq/napari.yaml" in names
        shipped = yaml.safe_load(zf.read("napari_sim_uq/napari.yaml"))
        (ep,) = [n for n in names if n.endswith("entry_points.txt")]
        entry_points = zf.read(ep).decode()
    assert shipped == yaml.safe_load((ROOT / "napari.yaml").read_text())
    assert "napari-sim-uq = napari_sim_uq:napari.yaml" in entry_points
    assert "sim-uq = napari_sim_uq.cli:main" in entry_points
    # install the wheel into its own folder and validate the manifest npe2 finds there
    target = tmp_path / "site"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from importlib.metadata import distribution\n"
        "import napari_sim_uq\n"
        "assert napari_sim_uq.__file__.startswith(sys.argv[1]), napari_sim_uq.__file__\n"
        "dist = distribution('napari-sim-uq')\n"
        "assert str(dist.locate_file('')).startswith(sys.argv[1]), dist.locate_file('')\n"
        "from npe2 import PluginManifest\n"
        "pm = PluginManifest.from_distribution('napari-sim-uq')\n"
        "pm.validate_imports()\n"
        "print('OK', pm.name, len(pm.contributions.commands))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    n_commands = len(manifest["contributions"]["commands"])
    assert out.stdout.startswith(f"OK napari-sim-uq {n_commands}"), out.stdout
