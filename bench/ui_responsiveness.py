"""Benchmark: does the napari GUI stay responsive while the widgets' jobs run?

    xvfb-run -a python bench/ui_responsiveness.py [--quick] [--epochs 12] [--rec-size 256]

Opens a real napari viewer (needs a display: run under ``xvfb-run``), docks the plugin's
widgets through the manifest and starts their jobs in their thread workers, exactly as a
user does. A ``QTimer`` firing every 10 ms (``Qt.PreciseTimer``) on the GUI thread records
``time.perf_counter()`` at every tick while a job runs; a blocked event loop shows up as a
long interval between two ticks. Per case it reports

- **median tick**: median interval between consecutive ticks (ideal 10 ms);
- **p99 tick** and **max tick**: 99th percentile and maximum interval;
- **longest stall**: ``max interval - 10 ms``, the time the event loop was blocked beyond
  the timer period (this is the number compared with the target);
- ``n > 50 ms``: number of intervals longer than 50 ms;
- **fullGC**: the longest full (generation 2) garbage collection during the case, on any
  thread (it holds the GIL, so it stalls the event loop too).

Targets: longest stall < 100 ms, median tick < 20 ms.

Cases (one viewer, run one after another; every widget is docked and the viewer left
idle for a second before its measurement). The cases after the first runs are repeated
``--repeats`` times (3): a row gives the statistics over all ticks of its runs, the
longest stall of the worst run and each run's longest stall:

1. ``idle``: no job, 3 s (the floor of this machine under its current load);
2. ``train, first run``: the "Train SIM model" widget trains for 1 epoch on 16 generated
   48 x 48 stacks (f = 2, 4 validation stacks, batch 4, base 16 channels, depth 2,
   supervised), live plot on: the first training of a session, which includes torch's
   one-time lazy imports (the first optimiser step imports ``torch._dynamo``, seconds of
   GIL-bound Python in the worker thread);
3. ``train, plot on``: the same for ``--epochs`` epochs, with the widget's default CPU
   threads (cores - 1);
4. ``train, plot off``: the same with the live plot switched off;
5. ``train, all cores``: plot on, torch using every core (what you get without the
   widget's thread setting);
6. ``reconstruct, first run``: the "Reconstruct SIM" widget reconstructs a generated
   ``9 x rec_size x rec_size`` stack with the bundled example model, until the seven
   result layers are added (one at a time, 30 ms apart, on the GUI thread; included). The
   first reconstruction of a session includes more of torch's lazy imports (``sympy``
   and friends, again seconds of GIL-bound Python in the worker);
7. ``reconstruct``: the same again (the layers are replaced in place);
8. ``napari alone: add 7 layers`` / ``update 7``: no plugin code, for comparison: plain
   ``viewer.add_image`` of arrays like the seven results (then ``layer.data = ...``),
   paced like the plugin's adds (``LAYER_ADD_GAP_MS`` apart), i.e. napari's own cost.

``--no-gc-freeze`` switches off the widgets' ``gc.freeze()`` while jobs run, to show what
it changes (the JSON gets a ``_no_gc_freeze`` suffix).

Prints a table and writes ``bench/results/ui_responsiveness.json`` (``_quick`` with
``--quick``), with the machine description and load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, machine_info, write_result

PLUGIN = "napari-sim-uq"
TICK_MS = 10
TARGET_STALL_MS = 100.0
TARGET_MEDIAN_MS = 20.0


class GcRecorder:
    """Durations of Python's full (generation 2) garbage collections, on any thread."""

    def __init__(self) -> None:
        import gc

        self.t0 = 0.0
        self.full_ms: list[float] = []
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self.t0 = time.perf_counter()
        elif self.t0:
            self.full_ms.append((time.perf_counter() - self.t0) * 1000.0)

    def reset(self) -> None:
        self.full_ms = []

    def summary(self) -> dict:
        return {
            "full_gc_count": len(self.full_ms),
            "full_gc_max_ms": float(max(self.full_ms, default=0.0)),
        }


class TickRecorder:
    """Timestamps of a 10 ms QTimer on the GUI thread (and the full collections)."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))
        self.gc = GcRecorder()

    def start(self) -> None:
        self.gc.reset()
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        self.times.append(time.perf_counter())
        iv = np.diff(np.asarray(self.times)) * 1000.0
        return {**tick_stats(iv), **self.gc.summary(), "intervals": iv}


def tick_stats(iv: np.ndarray) -> dict:
    return {
        "n_ticks": int(iv.size),
        "duration_s": float(iv.sum() / 1000.0),
        "median_tick_ms": float(np.median(iv)),
        "p99_tick_ms": float(np.percentile(iv, 99)),
        "max_tick_ms": float(iv.max()),
        "longest_stall_ms": float(max(iv.max() - TICK_MS, 0.0)),
        "n_over_50ms": int((iv > 50).sum()),
    }


def merge(runs: list[dict]) -> dict:
    """One row from repeated runs of a case: tick statistics over all their ticks (the
    longest stall is the worst run's), the per-run longest stalls, the mean job time."""
    out = tick_stats(np.concatenate([r["intervals"] for r in runs]))
    out["runs"] = len(runs)
    out["longest_stall_ms_per_run"] = [round(r["longest_stall_ms"], 1) for r in runs]
    out["job_s"] = float(np.mean([r["job_s"] for r in runs]))
    out["full_gc_count"] = int(sum(r["full_gc_count"] for r in runs))
    out["full_gc_max_ms"] = float(max(r["full_gc_max_ms"] for r in runs))
    return out


def run_until_finished(widget, start, timeout_s: float = 600.0) -> None:
    """Start a widget's job and spin the Qt event loop until its worker is gone."""
    from qtpy.QtCore import QEventLoop, QTimer

    start()
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(20)
    t0 = time.perf_counter()

    def check():
        # busy: the job runs or its result layers are still being added
        if not widget.busy or time.perf_counter() - t0 > timeout_s:
            loop.quit()

    poll.timeout.connect(check)
    poll.start()
    loop.exec_()
    poll.stop()


class NapariBaseline:
    """napari alone, for comparison: calls ``calls`` one per ``gap_ms`` on the GUI thread
    (the pacing of the plugin's layer adds), with no plugin code; ``busy`` until done."""

    def __init__(self, calls, gap_ms: int) -> None:
        self.calls = list(calls)
        self.gap_ms = gap_ms

    @property
    def busy(self) -> bool:
        return bool(self.calls)

    def start(self) -> None:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._next)

    def _next(self) -> None:
        from qtpy.QtCore import QTimer

        self.calls.pop(0)()
        if self.calls:
            QTimer.singleShot(self.gap_ms, self._next)


def measure(recorder: TickRecorder, widget, start) -> dict:
    recorder.start()
    t0 = time.perf_counter()
    run_until_finished(widget, start)
    out = recorder.stop()
    out["job_s"] = time.perf_counter() - t0
    return out


def settle(seconds: float = 1.0) -> None:
    """Let the viewer lay out and paint what was just added."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def idle(recorder: TickRecorder, seconds: float) -> dict:
    from qtpy.QtCore import QEventLoop, QTimer

    recorder.start()
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()
    return recorder.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer epochs, smaller stack")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per case (12)")
    ap.add_argument("--rec-size", type=int, default=None, help="reconstructed stack side (256)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of each case but the first ones (3; 1 with --quick)",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    ap.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="switch off the widgets' gc.freeze() while jobs run (for comparison)",
    )
    args = ap.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise SystemExit("needs a display: run under xvfb-run -a python bench/ui_responsiveness.py")
    epochs = args.epochs or (3 if args.quick else 12)
    rec_size = args.rec_size or (96 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    stem = "ui_responsiveness" + ("_quick" if args.quick else "")
    stem += "_no_gc_freeze" if args.no_gc_freeze else ""
    out_path = args.out or RESULTS / f"{stem}.json"

    import napari
    import torch

    from napari_sim_uq._napari._widgets import GC_FREEZE, LAYER_ADD_GAP_MS, default_torch_threads
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample, generate_splits

    if args.no_gc_freeze:
        GC_FREEZE.hold = GC_FREEZE.release = lambda: None
    env = machine_info([torch.device("cpu")])
    tmp = Path(tempfile.mkdtemp(prefix="sim_uq_ui_bench_"))
    try:
        data = tmp / "data"
        run(
            generate_splits(
                data, {"train": 16, "val": 4}, SynthConfig(lr_size=(48, 48), hr_factor=2)
            )
        )
        rec_stack = generate_sample(SynthConfig(lr_size=(rec_size, rec_size), hr_factor=2), 7).raw

        try:  # no "PyQt5 backend is deprecated" toast
            import napari._qt.qt_main_window as qmw

            qmw.SHOW_QT_WARNING = False
        except (ImportError, AttributeError):
            pass
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1400, 1000)
        recorder = TickRecorder()
        settle(2.0)
        rows = [{"case": "idle", **merge([{**idle(recorder, 3.0), "job_s": 3.0}])}]
        print(f"idle: {rows[-1]['median_tick_ms']:.1f} ms median tick", flush=True)

        _d, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train SIM model")
        train.train_glob.setText(str(data / "train" / "*.tif"))
        train.val_glob.setText(str(data / "val" / "*.tif"))
        train.device_combo.setCurrentText("cpu")
        settings = {
            "epochs": epochs,
            "batch_size": 4,
            "supervised": True,
            "model": {"base_channels": 16, "depth": 2},
        }
        settle()
        cases = [
            ("train, first run", True, default_torch_threads(), 1),
            ("train, plot on", True, default_torch_threads(), epochs),
            ("train, plot off", False, default_torch_threads(), epochs),
            ("train, all cores", True, os.cpu_count() or 1, epochs),
        ]
        for i, (name, plot, threads, n_epochs) in enumerate(cases):
            runs, train_s = [], []
            draws0 = train.plot.n_draws
            for k in range(1 if i == 0 else repeats):
                train.ckpt_edit.setText(str(tmp / f"ckpt{i}_{k}"))
                train.fields.set_values({**settings, "epochs": n_epochs})
                train.plot_check.setChecked(plot)
                train.threads_spin.setValue(threads)
                settle(0.5)
                runs.append(measure(recorder, train, train.start))
                res = train.last_result or {}
                train_s.append(res.get("seconds") or float("nan"))
            row = {"case": name, "torch_threads": threads, "live_plot": plot, "epochs": n_epochs}
            row.update(merge(runs))
            row["plot_redraws_per_run"] = (train.plot.n_draws - draws0) / len(runs)
            row["steps"] = res.get("steps")
            row["train_s"] = float(np.mean(train_s))
            rows.append(row)
            print(
                f"{name}: {row['median_tick_ms']:.1f} ms median tick, longest stall "
                f"{row['longest_stall_ms']:.0f} ms, {row['steps']} steps in {row['job_s']:.1f} s",
                flush=True,
            )

        viewer.add_image(rec_stack, name="bench stack")
        _d, rec = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct SIM")
        rec.layer_combo.setCurrentText("bench stack")
        rec.device_combo.setCurrentText("cpu")
        for name in ("reconstruct, first run", "reconstruct"):
            runs = []
            for _k in range(1 if name.endswith("first run") else repeats):
                settle()
                runs.append(measure(recorder, rec, rec.run))
            row = {"case": name, "stack": list(rec_stack.shape)}
            row.update(merge(runs))
            row["layers_added"] = len(rec.last_layers)
            rows.append(row)
            print(
                f"{name}: {row['median_tick_ms']:.1f} ms median tick, longest stall "
                f"{row['longest_stall_ms']:.0f} ms in {row['job_s']:.1f} s",
                flush=True,
            )

        # napari's own cost of adding (and updating) layers like the seven results, with
        # the same pacing, for comparison with the reconstruction rows
        like = [
            (
                np.array(layer.data),
                {
                    "name": f"baseline {i}",
                    "scale": tuple(layer.scale),
                    "translate": tuple(layer.translate),
                    "colormap": layer.colormap.name,
                    "visible": bool(layer.visible),
                },
            )
            for i, layer in enumerate(rec.last_layers)
        ]

        def add(data, kw):
            return lambda: viewer.add_image(data, **kw)

        def update(data, kw):
            return lambda: setattr(viewer.layers[kw["name"]], "data", data * 1.01)

        for name, make in (("napari alone: add 7 layers", add), ("napari alone: update 7", update)):
            settle()
            base = NapariBaseline([make(d, kw) for d, kw in like], LAYER_ADD_GAP_MS)
            row = {"case": name}
            row.update(merge([measure(recorder, base, base.start)]))
            rows.append(row)
            print(f"{name}: longest stall {row['longest_stall_ms']:.0f} ms", flush=True)
        viewer.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for r in rows:
        r["meets_targets"] = bool(
            r["longest_stall_ms"] < TARGET_STALL_MS and r["median_tick_ms"] < TARGET_MEDIAN_MS
        )
    print()
    header = (
        f"{'case':>26} {'runs':>4} {'job [s]':>8} {'median':>7} {'p99':>7} {'stall':>7} "
        f"{'>50ms':>6} {'fullGC':>7} {'ok':>3}  stall per run"
    )
    print(header)
    print(
        "(tick intervals in ms over all runs of a case; stall = longest interval - 10 ms, "
        "the worst run's; fullGC = longest full collection)"
    )
    print("-" * len(header))
    for r in rows:
        per_run = " ".join(f"{v:.0f}" for v in r["longest_stall_ms_per_run"])
        print(
            f"{r['case']:>26} {r['runs']:>4} {r['job_s']:>8.1f} {r['median_tick_ms']:>7.1f} "
            f"{r['p99_tick_ms']:>7.1f} {r['longest_stall_ms']:>7.1f} {r['n_over_50ms']:>6} "
            f"{r['full_gc_max_ms']:>7.1f} {'yes' if r['meets_targets'] else 'NO':>3}  {per_run}"
        )
    env["loadavg_end"] = list(os.getloadavg())
    result = {
        "benchmark": "ui_responsiveness",
        "quick": args.quick,
        "config": {
            "tick_ms": TICK_MS,
            "timer": "QTimer, Qt.PreciseTimer, GUI thread",
            "longest_stall": "max tick interval - 10 ms",
            "targets": {"longest_stall_ms": TARGET_STALL_MS, "median_tick_ms": TARGET_MEDIAN_MS},
            "train_data": "16 train + 4 val generated stacks, 9 x 48 x 48, hr_factor 2",
            "train_settings": {**settings, "epochs": f"1 (first run), {epochs}"},
            "repeats": repeats,
            "reconstruct": f"bundled example model, 9 x {rec_size} x {rec_size}, cpu",
            "gc_freeze_while_jobs_run": not args.no_gc_freeze,
        },
        "environment": env,
        "results": rows,
        "median_of_medians_ms": statistics.median(r["median_tick_ms"] for r in rows),
    }
    return write_result(out_path, result)


if __name__ == "__main__":
    main()
