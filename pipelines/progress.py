"""The one progress display of a run: shards done of total, documents per second and ETA.

On a terminal it is a single line rewritten in place; otherwise (a log file, CI, `ray job
submit`) it prints a line at most every `every_s` seconds and one when the work is done, so a
long run leaves a few lines rather than one per shard.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Counts finished shards and their documents; rate and ETA are over documents, since shards
    may differ in size. A context manager, so that a failing run ends the line cleanly."""

    def __init__(
        self,
        what: str,
        shards: int,
        docs: int,
        stream: TextIO | None = None,
        updating: bool | None = None,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what, self.shards, self.docs = what, shards, docs
        self.stream = stream or sys.stdout
        self.updating = self.stream.isatty() if updating is None else updating
        self.every_s, self.clock = every_s, clock
        self.started = self.clock()
        self.last_line = self.started
        self.shards_done = self.docs_done = 0
        self.width = 0  # of the line on screen, to blank what a shorter one leaves
        if self.updating:
            self._draw()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        """A run that stops early leaves the line as it was and the cursor on a fresh line."""
        if self.updating and self.shards_done < self.shards:
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.docs_done / elapsed if elapsed > 0 else 0.0
        if self.shards_done >= self.shards:
            eta = f"done in {_clock(elapsed)}"
        elif rate > 0:
            eta = f"ETA {_clock((self.docs - self.docs_done) / rate)}"
        else:
            eta = "ETA -"
        return (
            f"{self.what}: {self.shards_done}/{self.shards} shards, "
            f"{self.docs_done:,}/{self.docs:,} documents, {rate:,.0f} docs/s, {eta}"
        )

    def advance(self, docs: int) -> None:
        """One more shard finished, with `docs` documents."""
        self.shards_done += 1
        self.docs_done += docs
        done = self.shards_done >= self.shards
        if self.updating:
            self._draw()
        elif done or self.clock() - self.last_line >= self.every_s:
            self.last_line = self.clock()
            print(self.line(), file=self.stream, flush=True)

    def _draw(self) -> None:
        text = self.line()
        done = self.shards_done >= self.shards
        self.stream.write("\r" + text.ljust(self.width) + ("\n" if done else ""))
        self.width = len(text)
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"
