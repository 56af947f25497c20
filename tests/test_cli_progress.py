"""Progress bars of the command line (jobs.events.run_with_progress, used by every `sim-uq`
command): every bar is closed, also on errors and Ctrl-C, and the last screen shows only
finished bars, whatever the stages did (restart, change their total, end early)."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import tqdm.auto

from napari_sim_uq.cli import main
from napari_sim_uq.core.events import Event, run_with_progress

BAR = re.compile(r"^(?P<stage>[\w-]+): +(?P<pct>\d+)%\|[^|]*\| (?P<n>\d+)/(?P<total>\d+) \[")


def _screen(text: str) -> list[str]:
    """The lines a terminal shows after ``text`` (tqdm writes \\r, \\n and ESC[A)."""
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(text):
        if text.startswith("\x1b[A", i):  # cursor up
            row, i = max(row - 1, 0), i + 3
            continue
        c = text[i]
        assert c != "\x1b", f"unexpected escape sequence {text[i : i + 6]!r}"
        if c == "\r":
            col = 0
        elif c == "\n":
            row, col = row + 1, 0
        else:
            while len(lines) <= row:
                lines.append([])
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = c
            col += 1
        i += 1
    out = ["".join(line).rstrip() for line in lines]
    while out and not out[-1]:
        out.pop()
    return out


def _bars(lines: list[str]) -> list[tuple[str, int, int, int]]:
    """(stage, percent, n, total) of each line that shows a bar."""
    found = []
    for line in lines:
        m = BAR.match(line)
        if m:
            found.append((m["stage"], int(m["pct"]), int(m["n"]), int(m["total"])))
    return found


@pytest.fixture
def opened(monkeypatch):
    """Every tqdm bar run_with_progress opens (it imports tqdm.auto.tqdm when called)."""
    bars = []

    class Recording(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    return bars


@contextlib.contextmanager
def _terminal():
    """stdout and stderr into one stream, as on a terminal (tqdm writes to stderr). Set in
    the test itself: pytest's output capture replaces both again between setup and call."""
    stream = io.StringIO()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        yield stream


def _job(log: list, fail: BaseException | None = None):
    """Stages as the demo's: restarts, a changed total, an early end, nesting."""
    try:
        # "generate": three splits whose steps restart and whose totals differ
        for n in (8, 3, 5):
            for i in range(n + 1):
                yield Event("generate", i, n, message=f"{i}/{n}")
        # "train" / "validate" interleaved, stopped by a time budget after 2 of 10 epochs
        for epoch in range(2):
            for s in range(4):
                yield Event("train", 4 * epoch + s + 1, 40, {"loss": 1.0 / (s + 1)})
            yield Event("validate", epoch + 1, 10, {"val_loss": 0.5})
        # "evaluate": planned 10 items, then the plan changes to 6 (the total shrinks)
        for i in range(4):
            yield Event("evaluate", i, 10)
        for i in range(4, 7):
            yield Event("evaluate", i, 6)
        # "reconstruct" per stack, nested in "calibrate" (as jobs.events.relay passes it on)
        for k in range(3):
            for t in range(1, 5):
                yield Event("reconstruct", t, 4, message=f"stack {k + 1}/3: tile {t}/4")
            if fail is not None and k == 1:
                raise fail
            yield Event("calibrate", k + 1, 3)
        yield Event("summary", 0, 1)
        yield Event("summary", 1, 1)
        return "result"
    finally:
        log.append("job closed")


FINISHED = [
    ("generate", 100, 5, 5),
    ("evaluate", 100, 6, 6),
    ("reconstruct", 100, 4, 4),
    ("calibrate", 100, 3, 3),
    ("summary", 100, 1, 1),
]


def test_last_screen_shows_finished_bars_only(opened):
    log = []
    with _terminal() as terminal:
        assert run_with_progress(_job(log)) == "result"
    lines = _screen(terminal.getvalue())
    # train and validate ended early (time budget): removed, not left at 20%
    assert _bars(lines) == FINISHED
    assert len(lines) == len(FINISHED), lines  # no blank or stale line between them
    assert [b.desc for b in opened] == [
        "generate",
        "train",
        "validate",
        "evaluate",
        "reconstruct",
        "calibrate",
        "summary",
    ]
    assert all(b.disable for b in opened)  # tqdm sets this when a bar is closed
    assert not any(b in tqdm.auto.tqdm._instances for b in opened)
    assert log == ["job closed"]


@pytest.mark.parametrize("fail", [RuntimeError("boom"), KeyboardInterrupt()])
def test_bars_are_closed_on_errors_and_ctrl_c(opened, fail):
    log = []
    with _terminal() as terminal, pytest.raises(type(fail)):
        run_with_progress(_job(log, fail))
    lines = _screen(terminal.getvalue())
    # calibrate stopped at 1/3 and is removed; the bars that stay are all complete
    assert _bars(lines) == FINISHED[:3]
    assert len(lines) == 3, lines
    assert opened and all(b.disable for b in opened)
    assert log == ["job closed"]


def test_quiet_opens_no_bar(opened):
    log = []
    with _terminal() as terminal:
        assert run_with_progress(_job(log), disable=True) == "result"
    assert terminal.getvalue() == "" and all(b.disable for b in opened)
    assert log == ["job closed"]


def test_demo_command_ends_with_finished_bars_and_its_summary(opened, monkeypatch, tmp_path):
    import napari_sim_uq.tasks.sim.demo as demo

    def fake_demo_job(cfg):  # the demo's stages in a few milliseconds
        result = yield from _job([])
        assert result == "result"
        return {
            "timings": {"total_s": 6.0},
            "device": "cpu",
            "epochs_trained": 2,
            "summary": str(tmp_path / "summary.png"),
            "evaluation": str(tmp_path / "evaluation" / "metrics.json"),
            "reconstruction": [str(tmp_path / "reconstruction" / "s_emitter.tif")],
            "checkpoint": str(tmp_path / "checkpoints" / "best.pt"),
            "data": str(tmp_path / "data"),
        }

    monkeypatch.setattr(demo, "demo_job", fake_demo_job)
    with _terminal() as terminal:
        assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    lines = _screen(terminal.getvalue())
    n = len(FINISHED)
    assert _bars(lines) == FINISHED
    assert _bars(lines[:n]) == FINISHED  # the bars first, then the summary right after
    assert lines[n].startswith(
        "demo (supervised, patterns network) finished in 0.1 min on cpu (2 epochs of training)"
    )
    assert lines[-1].startswith("open in napari:")
    assert all(b.disable for b in opened)


def test_finished_bars_show_the_time_their_stage_took(monkeypatch):
    # a fake clock: "generate" reports at t = 1 s and 2 s (its bar opens at the first
    # report), then "train" at 12, 22, ..., 102 s. The generate bar must say the 1 s its
    # stage took, not the 101 s until the job ended; train ran from generate's last report
    # (2 s) to 102 s
    import tqdm.std

    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])

    def job():
        for i in range(1, 3):
            now[0] += 1.0
            yield Event("generate", i, 2)
        for i in range(1, 11):
            now[0] += 10.0
            yield Event("train", i, 10)
        now[0] += 5.0  # a stage that reports once, when it is done
        yield Event("summary", 1, 1)
        return "ok"

    with _terminal() as out:
        assert run_with_progress(job()) == "ok"
    lines = _screen(out.getvalue())
    gen = next(line for line in lines if line.startswith("generate"))
    train = next(line for line in lines if line.startswith("train"))
    assert "[00:01<" in gen, gen
    assert "[01:40<" in train, train
    summary = next(line for line in lines if line.startswith("summary"))
    assert "[00:05<" in summary, summary
