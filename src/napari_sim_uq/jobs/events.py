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
    """Drive ``job`` with a tqdm progress bar per stage (for the command line)."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def show(ev: Event) -> None:
        bar = bars.get(ev.stage)
        if bar is None:
            bar = bars[ev.stage] = tqdm(
                total=ev.total, desc=ev.stage, disable=disable, dynamic_ncols=True
            )
        bar.n = ev.step
        if ev.metrics:
            bar.set_postfix({k: f"{v:.4g}" for k, v in ev.metrics.items()}, refresh=False)
        bar.refresh()

    try:
        return run(job, show)
    finally:
        job.close()
        for bar in bars.values():
            bar.close()


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
