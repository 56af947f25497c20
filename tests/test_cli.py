import subprocess
import sys
from pathlib import Path

import pytest

from napari_sim_uq import __version__
from napari_sim_uq.cli import main


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_sim_uq", *args], capture_output=True, text=True, timeout=120
    )


def test_help_and_version_via_python_m():
    out = _run("--help")
    assert out.returncode == 0
    assert "sample" in out.stdout and "info" in out.stdout
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"sim-uq {__version__}"


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("sim-uq") or shutil.which("sim-uq", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("sim-uq not on PATH (package not installed)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"sim-uq {__version__}"


def test_sample_command_writes_and_reads_back(tmp_path, capsys):
    assert main(["sample", "--out-dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "SIM sample" in out and "(9, 96, 96)" in out
    assert (tmp_path / "s" / "sim_stack.tif").exists()
    # second run refuses to replace the files: exit 2, one clear line, no traceback
    before = (tmp_path / "s" / "sim_stack.tif").stat().st_mtime_ns
    assert main(["sample", "--out-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err
    assert (tmp_path / "s" / "sim_stack.tif").stat().st_mtime_ns == before
    assert main(["sample", "--out-dir", str(tmp_path / "s"), "--overwrite"]) == 0


def test_sample_into_a_file_is_a_clear_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["sample", "--out-dir", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "cpu" in out
