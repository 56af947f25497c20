"""Make the screenshots in docs/images/ (run under a display: xvfb-run -a python ...)."""

from __future__ import annotations

import sys
from pathlib import Path

import napari

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
EXAMPLES = Path(__file__).resolve().parents[1] / "example_data"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    try:  # keep napari's one-off "PyQt5 backend is deprecated" toast out of the pictures
        import napari._qt.qt_main_window as qmw

        qmw.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)

    viewer.open_sample("napari-sim-uq", "sim_stack")
    gt = viewer.layers["SIM sample GT emitter"]
    gt.visible = True
    gt.opacity = 0.6
    gt.blending = "additive"
    viewer.dims.set_current_step(0, 4)
    viewer.reset_view()
    viewer.screenshot(str(OUT / "sample_sim_stack.png"), canvas_only=False)

    viewer.layers.clear()
    viewer.open(str(EXAMPLES / "cells_2d.tif"), plugin="napari-sim-uq")
    viewer.reset_view()
    viewer.screenshot(str(OUT / "reader_cells_2d.png"), canvas_only=False)
    viewer.close()
    print(f"screenshots written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
