"""The one way curate starts (or joins) Ray, and where Ray's own records go.

A command's terminal is for curate's own lines. Ray's records (the driver's `ray` and `ray.data`
loggers, and the workers' stdout/stderr that Ray forwards to the driver, C++ error lines
included) go to a log file of the run, e.g. `OUT/logs/ray.log`; `verbose` sends them to the
terminal as well, with Ray Data's own progress bars. Errors that stop a command still reach the
terminal: they come back to the driver as exceptions, which the command reports.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

RAY_LOGGERS = ("ray", "ray.data")
# the name under which Ray's driver prints forwarded worker output (ray/_private/worker.py)
RAY_PRINT_HANDLER = "ray_print_logs"
ROUTE_HANDLER = "curate_ray_log"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"


def init_ray(address: str | None = None, verbose: bool = False, log_file: str | Path | None = None) -> None:
    """Start a local Ray, or join `address` (else $RAY_ADDRESS), once per process. With a
    `log_file`, Ray's records of this command go there (and to the terminal when `verbose`); a
    later call with another `log_file` moves them. Without one, an earlier routing stays."""
    import ray
    import ray.data  # configures the `ray.data` logger, which must exist before it is routed

    if log_file is not None:
        _route.to(Path(log_file), verbose)
    if not ray.is_initialized():
        level = logging.INFO if log_file is not None or verbose else logging.WARNING
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=level, log_to_driver=True)
        else:
            # A local instance on loopback: on hosts whose primary address is not reachable from
            # itself, Ray's health checks otherwise declare the node dead after ~30 s.
            ray.init(include_dashboard=False, logging_level=level, log_to_driver=True, _node_ip_address="127.0.0.1")
    if log_file is not None:
        _route.workers()


def ray_log_file(out_dir: str | Path) -> Path:
    """Where a run in `out_dir` keeps Ray's records."""
    return Path(out_dir) / "logs" / "ray.log"


def format_worker_lines(data: dict[str, Any]) -> list[str]:
    """Ray's batch of forwarded worker output as lines prefixed like Ray's own:
    `(ActorName pid=123) line`."""
    name = data.get("actor_name") or data.get("task_name") or ""
    return [f"({name + ' ' if name else ''}pid={data.get('pid')}) {line}" for line in data.get("lines", [])]


class _Route:
    """The current destination of Ray's records in this process, undone before it moves."""

    def __init__(self) -> None:
        self.stream: TextIO | None = None
        self.handler: logging.Handler | None = None
        self.detached: list[tuple[logging.Logger, logging.Handler]] = []
        self.printer: Callable | None = None  # Ray's printing of worker output, while detached
        self.verbose = False
        self.lock = threading.Lock()

    def to(self, path: Path, verbose: bool) -> None:
        from ray.data import DataContext

        self.undo()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(path, "a", encoding="utf-8", buffering=1)
        self.verbose = verbose
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter(FILE_FORMAT))
        self.handler.setLevel(logging.INFO)
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            if not verbose:
                for handler in [h for h in logger.handlers if _is_console(h)]:
                    logger.removeHandler(handler)
                    self.detached.append((logger, handler))
            logger.addHandler(self.handler)
        # curate's own progress display replaces Ray Data's bars unless asked for everything
        DataContext.get_current().enable_progress_bars = verbose

    def workers(self) -> None:
        """Send the workers' forwarded output to the file, and to the terminal only if verbose."""
        dispatcher = _dispatcher()
        dispatcher.remove_handler(ROUTE_HANDLER)
        if not self.verbose:
            printer = [h for name, h in dispatcher.handlers if name == RAY_PRINT_HANDLER]
            if printer:
                self.printer = printer[0]
                dispatcher.remove_handler(RAY_PRINT_HANDLER)
        dispatcher.add_handler(ROUTE_HANDLER, self.write_worker_lines)

    def write_worker_lines(self, data: dict[str, Any]) -> None:
        with self.lock:
            if self.stream is not None:
                self.stream.write("".join(line + "\n" for line in format_worker_lines(data)))

    def undo(self) -> None:
        for logger, handler in self.detached:
            logger.addHandler(handler)
        self.detached = []
        if self.handler is not None:
            for name in RAY_LOGGERS:
                logging.getLogger(name).removeHandler(self.handler)
            self.handler = None
        dispatcher = _dispatcher()
        dispatcher.remove_handler(ROUTE_HANDLER)
        if self.printer is not None:
            dispatcher.add_handler(RAY_PRINT_HANDLER, self.printer)
            self.printer = None
        with self.lock:
            if self.stream is not None:
                self.stream.close()
                self.stream = None


def _dispatcher():
    """Ray's driver-side fan-out of forwarded worker output: no public API routes it elsewhere."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    return global_worker_stdstream_dispatcher


def _is_console(handler: logging.Handler) -> bool:
    """Ray's PlainRayHandler writes to whatever sys.stderr is at emit time; others name a stream."""
    if type(handler).__name__ == "PlainRayHandler":
        return True
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout)


_route = _Route()
