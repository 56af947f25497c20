"""Shared widget helpers that keep the viewer responsive: the garbage-collection freeze
around jobs, progress bars without Qt's busy animation or synchronous repaints, paced
layer adds and the loss plot's blitting."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_sim_uq._napari import _widgets
from napari_sim_uq._napari._widgets import (
    LAYER_ADD_GAP_MS,
    GcFreeze,
    LayerAdder,
    progress_bar,
    set_progress,
    set_waiting,
)


class _Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def unfrozen():
    if gc.get_freeze_count():
        pytest.skip("objects were frozen before this test")
    yield
    gc.unfreeze()


def test_gc_freeze_keeps_old_objects_out_of_collections_and_hands_them_back(unfrozen):
    guard = GcFreeze()
    garbage = _Node()
    ref = weakref.ref(garbage)
    del garbage
    guard.hold()
    guard.hold()  # nested: a job and its layer adds
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert ref() is not None  # frozen: a full collection does not even look at it
    guard.release()
    assert gc.get_freeze_count() > 0 and ref() is not None
    guard.release()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None  # handed back: nothing leaks
    guard.release()  # more releases than holds are ignored
    assert guard.holds == 0


def test_gc_freeze_leaves_a_freeze_by_someone_else_alone(unfrozen, monkeypatch):
    gc.freeze()
    # the frozen count itself is no witness: a frozen object freed meanwhile (by another
    # thread) lowers it; a fresh CI machine failed on 748033 != 748035
    calls = []
    guard = GcFreeze()
    # patched only inside the block: the fixture's teardown must unfreeze for real
    with monkeypatch.context() as m:
        m.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
        m.setattr(gc, "freeze", lambda: calls.append("freeze"))
        guard.hold()
        guard.release()
    assert calls == []  # neither frozen again nor unfrozen by us
    assert gc.get_freeze_count() > 0


@pytest.mark.gui  # needs a Qt application (a display)
def test_progress_bars_never_use_the_busy_animation(qtbot):
    bar = progress_bar("batch %v / %m")
    qtbot.addWidget(bar)
    set_waiting(bar)
    assert bar.maximum() == 1 and bar.value() == 0 and bar.format() == "starting …"
    set_progress(bar, 3, 8)
    assert (bar.minimum(), bar.maximum(), bar.value()) == (0, 8, 3)
    assert bar.format() == "batch %v / %m" and bar.text() == "batch 3 / 8"
    set_progress(bar, 12, 8)  # clamped
    assert bar.value() == 8
    set_progress(bar, 2, 5, "step %v / %m")
    assert bar.text() == "step 2 / 5"
    set_progress(bar, 0, None)  # unknown total: an empty bar, not Qt's busy indicator
    assert bar.maximum() == 1 and bar.format() == "starting …"
    assert bar.updatesEnabled()
    plain = progress_bar()
    qtbot.addWidget(plain)
    set_progress(plain, 1, 4)
    assert plain.text() == "25%"


@pytest.mark.gui  # needs a Qt application (a display)
def test_layer_adder_paces_adds_and_releases_the_freeze(make_napari_viewer, qtbot, monkeypatch):
    guard = GcFreeze()
    monkeypatch.setattr(_widgets, "GC_FREEZE", guard)
    monkeypatch.delenv("NAPARI_SIM_UQ_NOTHREADS", raising=False)
    viewer = make_napari_viewer()
    adder = LayerAdder(viewer)
    got = {}

    def item(value, i):
        kw = {"name": f"l{i}", "scale": (1.0, 1.0), "translate": (0.0, 0.0), "metadata": {}}
        return np.full((8, 8), value, np.float32), kw, "image"

    data = [item(i, i) for i in range(3)]
    ends = []
    adder.start(
        data,
        lambda layers: got.setdefault("done", layers),
        got.setdefault,
        lambda: ends.append(("finished", "done" in got, adder.busy)),
    )
    assert adder.busy and guard.holds == 1
    assert len(viewer.layers) == 0  # nothing added inside start(): one per timer turn
    qtbot.waitUntil(lambda: "done" in got, timeout=5000)
    assert [la.name for la in got["done"]] == ["l0", "l1", "l2"]
    assert not adder.busy and guard.holds == 0
    assert ends == [("finished", True, False)]  # after done(), and no longer busy
    # the first new layer is the active one at the end, napari's insert behaviour restored
    assert viewer.layers.selection.active.name == "l0"
    assert getattr(viewer.layers, "_activate_on_insert", True) is True

    # layers of the same names are updated in place; the user's selection is kept
    viewer.layers.selection.active = viewer.layers["l2"]
    got.clear()
    new = [item(10 + i, i) for i in range(3)]
    adder.start(new, lambda layers: got.setdefault("done", layers), got.setdefault)
    qtbot.waitUntil(lambda: "done" in got, timeout=5000)
    assert len(viewer.layers) == 3 and float(viewer.layers["l1"].data[0, 0]) == 11.0
    assert viewer.layers.selection.active.name == "l2" and guard.holds == 0

    # without threads (tests, scripts) everything happens inside start()
    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    got.clear()
    adder.start(
        [(np.ones((4, 4)), {"name": "sync"}, "image")],
        lambda layers: got.setdefault("done", layers),
        got.setdefault,
    )
    assert [la.name for la in got["done"]] == ["sync"] and not adder.busy
    monkeypatch.delenv("NAPARI_SIM_UQ_NOTHREADS")

    # a failing add: the error callback, no exception into Qt, the freeze released
    errors = []
    bad = [(np.zeros((8, 8)), {"name": "ok"}, "image"), (np.zeros(3), {"name": "x"}, "vectors")]
    ends.clear()
    adder.start(bad, lambda layers: None, errors.append, lambda: ends.append(bool(errors)))
    qtbot.waitUntil(lambda: bool(ends), timeout=5000)
    assert "only image and points layers" in str(errors[0]) and guard.holds == 0
    assert ends == [True]  # finished() follows error()
    assert LAYER_ADD_GAP_MS >= 10


@pytest.mark.gui  # needs a Qt application (a display)
def test_loss_plot_blits_without_a_full_draw(qtbot):
    from napari_sim_uq._napari._loss_plot import LossPlot

    plot = LossPlot(min_interval_s=0.0)
    qtbot.addWidget(plot)
    plot.resize(400, 300)
    plot.show()
    qtbot.waitExposed(plot)
    plot.clear_data(planned_epochs=4)
    for i in range(8):
        plot.add_batch(i / 4, 1.0 - 0.05 * i)
    plot.request_redraw(force=True)
    qtbot.wait(50)
    full = plot.n_full_draws
    assert full >= 1
    # a new point inside the current limits: only the curves are drawn (a blit)
    plot.add_val(2.0, 0.8)
    plot.request_redraw(force=True)
    assert plot.n_full_draws == full
    # the validation marker is in the canvas buffer at its data position
    x, y = plot.ax.transData.transform((2.0, 0.8))
    buf = np.asarray(plot.canvas.buffer_rgba())
    row, col = int(round(buf.shape[0] - y)), int(round(x))
    patch = buf[row - 2 : row + 3, col - 2 : col + 3, :3].astype(int)
    orange = np.array([255, 127, 14])  # matplotlib's C1
    assert np.abs(patch - orange).sum(axis=-1).min() < 60
    qtbot.wait(50)  # the deferred repaint runs without a full draw either
    assert plot.n_full_draws == full


@pytest.mark.gui  # needs a Qt application (a display)
def test_removing_a_layer_during_a_job_frees_it(make_napari_viewer, qtbot, unfrozen):
    # napari layers are freed by the cyclic collector: frozen, a removed layer (and its
    # data) would stay in memory until the job ends
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.float32), name="big")
    ref = weakref.ref(layer)
    del layer
    guard = GcFreeze()
    guard.hold(viewer)
    guard.hold(viewer)  # a job and its layer adds: one connection
    viewer.layers.remove("big")
    qtbot.waitUntil(lambda: guard.n_collections == 1, timeout=5000)
    assert ref() is None
    assert gc.get_freeze_count() > 0  # still frozen for the rest of the job
    guard.release()
    guard.release()
    assert gc.get_freeze_count() == 0
    # after the job nothing is watched any more
    viewer.add_image(np.zeros((4, 4)), name="small")
    viewer.layers.remove("small")
    qtbot.wait(20)
    assert guard.n_collections == 1
