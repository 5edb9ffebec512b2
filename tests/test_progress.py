"""The run's progress display: a few periodic lines off a terminal, one rewritten line on it."""

import io

from pipelines.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_periodic_lines_off_a_terminal_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    with Progress("scoring", shards=4, docs=400, stream=out, every_s=10, clock=clock) as progress:
        assert out.getvalue() == ""  # nothing until there is something to say
        clock.now += 5
        progress.advance(100)  # 5 s after the start: too soon for a line
        assert out.getvalue() == ""
        clock.now += 5
        progress.advance(100)  # 10 s: 200 documents, 20 docs/s, 200 left -> 10 s
        clock.now += 2
        progress.advance(100)  # 2 s after the last line: quiet
        clock.now += 3
        progress.advance(100)  # the last shard always prints
    lines = out.getvalue().splitlines()
    assert lines == [
        "scoring: 2/4 shards, 200/400 documents, 20 docs/s, ETA 0:10",
        "scoring: 4/4 shards, 400/400 documents, 27 docs/s, done in 0:15",
    ]


def test_one_updating_line_on_a_terminal():
    clock, out = Clock(), io.StringIO()
    with Progress("scoring", shards=2, docs=3000, stream=out, updating=True, clock=clock) as progress:
        clock.now += 1
        progress.advance(1000)
        clock.now += 3600
        progress.advance(2000)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert frames[0].startswith("scoring: 0/2 shards, 0/3,000 documents, 0 docs/s, ETA -")
    assert frames[1].strip() == "scoring: 1/2 shards, 1,000/3,000 documents, 1,000 docs/s, ETA 0:02"
    assert frames[2].strip() == "scoring: 2/2 shards, 3,000/3,000 documents, 1 docs/s, done in 1:00:01"
    assert all(len(f) >= len(prev.rstrip()) for prev, f in zip(frames, frames[1:]))  # old text blanked


def test_a_run_that_stops_early_ends_the_line():
    out = io.StringIO()
    try:
        with Progress("scoring", shards=3, docs=30, stream=out, updating=True) as progress:
            progress.advance(10)
            raise RuntimeError("stage failed")
    except RuntimeError:
        pass
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1
