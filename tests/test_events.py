"""Jobs as generators of progress events: run() and relay()."""

from __future__ import annotations

from napari_sim_uq.core.events import Event, relay, run


def _sub(n, log):
    try:
        for i in range(n):
            yield Event("work", i + 1, n, message=f"item {i + 1}")
        return "result"
    finally:
        log.append("sub closed")


def test_relay_prefixes_messages_and_returns_the_result():
    log = []

    def outer():
        value = yield from relay(_sub(2, log), "stack 1/1: ")
        return value.upper()

    seen = []
    assert run(outer(), seen.append) == "RESULT"
    assert [e.message for e in seen] == ["stack 1/1: item 1", "stack 1/1: item 2"]
    assert [(e.step, e.total) for e in seen] == [(1, 2), (2, 2)]
    assert log == ["sub closed"]


def test_closing_the_outer_job_closes_the_sub_job():
    log = []

    def outer():
        yield from relay(_sub(5, log), "")
        log.append("not reached")

    job = outer()
    assert next(job).step == 1
    job.close()  # a stop (napari's worker.quit())
    assert log == ["sub closed"]
