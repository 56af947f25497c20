"""Progress events and a driver for jobs written as generators (DESIGN.md 2).

A long operation is written once as a generator that yields :class:`Event` objects and
returns its result. The CLI drives it with a progress bar (:func:`run_with_progress`), a
napari widget runs it in a generator thread worker (``yielded`` -> progress, ``quit()`` ->
stop at the next yield), and scripts call :func:`run` to just get the result.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass
class Event:
    """One progress report of a job."""

    stage: str  # e.g. "generate", "train", "validate"
    step: int  # steps done in this stage
    total: int | None  # steps in this stage, None if unknown
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


Job = Generator[Event, None, R]


def run(job: Job[R], on_event: Callable[[Event], Any] | None = None) -> R:
    """Drive ``job`` to the end and return its result (optionally seeing each event)."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def run_with_progress(job: Job[R], *, disable: bool = False) -> R:
    """Drive ``job`` with a tqdm progress bar per stage (for the command line).

    Each stage gets one bar, in the order the stages first report, and keeps it until the
    job ends: stages interleave (``train`` / ``validate``) and nest (a ``reconstruct`` per
    stack inside ``calibrate``), so a stage that stops reporting for a while has not ended.

    - A stage whose step goes back (the next split of ``generate``, the next stack's
      ``reconstruct``) starts over: its bar is reset to the new total, in place.
    - A new total without the step going back is a revised plan: the bar takes it over.
    - When the job ends, returned, failed or stopped (``KeyboardInterrupt``), every bar is
      closed. A bar stays on screen only if its stage finished: it reached its total (with
      no total known: the job returned). A stage that ended early (training stopped by a
      time budget, a failure, Ctrl-C) is removed (``leave=False``), never left partial.
      The bars that stay are written one below the other, the last screen shows finished
      bars only, and what the caller prints next follows them directly. A finished bar
      shows the time its stage took (when it reached its total), not the time until the
      job ended.
    """
    if disable:
        try:
            return run(job)
        finally:
            job.close()

    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}  # stage -> its bar, in the order the stages first reported
    done_at: dict[str, float] = {}  # stage -> clock time when its bar reached its total
    last_report: float | None = None  # clock time of the job's previous report

    def show(ev: Event) -> None:
        nonlocal last_report
        bar = bars.get(ev.stage)
        started = bar is None or ev.step < bar.n
        if bar is None:
            bar = bars[ev.stage] = tqdm(
                total=ev.total, desc=ev.stage, dynamic_ncols=True, leave=True
            )
        elif started:  # the stage starts over (a new split, the next stack)
            bar.reset(total=ev.total)
        now = bar._time()
        if started and last_report is not None:
            # its work began after the job's previous report, not at this first one (a
            # stage that reports once, at its end, would otherwise show 00:00)
            bar.start_t = last_report
        if bar.total != ev.total:  # reset() keeps the old total when given None
            bar.total = ev.total
        bar.n = ev.step
        if bar.total is not None and bar.n >= bar.total:
            done_at.setdefault(ev.stage, now)
        else:
            done_at.pop(ev.stage, None)
        if ev.metrics:
            bar.set_postfix({k: f"{v:.4g}" for k, v in ev.metrics.items()}, refresh=False)
        bar.refresh()
        last_report = now

    returned = False
    try:
        result = run(job, show)
        returned = True
        return result
    finally:
        try:
            for stage, t in done_at.items():  # stop the clock of the finished stages
                bars[stage]._time = lambda t=t: t
            _close_bars(list(bars.values()), returned)
        finally:
            job.close()


def _close_bars(bars: list[Any], returned: bool) -> None:
    """Close the bars of :func:`run_with_progress`: finished ones stay, the others go."""

    def finished(bar: Any) -> bool:
        return returned if bar.total is None else bar.n >= bar.total

    bars = sorted(bars, key=lambda b: abs(getattr(b, "pos", 0)))
    try:
        # Blank every line first (bottom-up, the cursor stays on the first bar's line):
        # the bars that stay are written from that line down, one after the other, and
        # must not land on a line still showing an older bar.
        for bar in reversed(bars):
            bar.clear()
    finally:
        for bar in reversed(bars):
            if not finished(bar):
                bar.leave = False
                bar.close()
        for bar in bars:
            bar.close()  # no-op for the bars closed above


def relay(job: Job[R], prefix: str) -> Job[R]:
    """Run the sub-job ``job`` inside another job: yields its events with ``prefix`` put
    before their messages and returns its result (``result = yield from relay(...)``).
    The sub-job is closed when this ends, also when this generator is closed (a stop)."""
    try:
        while True:
            try:
                ev = next(job)
            except StopIteration as stop:
                return stop.value
            ev.message = prefix + ev.message
            yield ev
    finally:
        job.close()
