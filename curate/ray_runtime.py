"""The one way curate starts (or joins) Ray, and where Ray's own records go.

A command's terminal is for curate's own lines. Ray's records (the driver's `ray` and `ray.data`
loggers, and the workers' stdout/stderr that Ray forwards to the driver, C++ error lines
included) go to a log file of the run, e.g. `OUT/logs/ray.log`; `verbose` sends them to the
terminal as well, with Ray Data's own progress bars. Errors that stop a command still reach the
terminal: they come back to the driver as exceptions, which the command reports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

RAY_LOGGERS = ("ray", "ray.data")
# the name under which Ray's driver prints forwarded worker output (ray/_private/worker.py)
RAY_PRINT_HANDLER = "ray_print_logs"
ROUTE_HANDLER = "curate_ray_log"
# the last line of a Python traceback: "OSError: Cannot read model ..."
ERROR_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception)\w*: ")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"
AUTH_MODE = "RAY_AUTH_MODE"


class RayStartError(RuntimeError):
    """Ray would not start or could not be joined (an overloaded host, a wrong address)."""


def init_ray(address: str | None = None, verbose: bool = False, log_file: str | Path | None = None) -> None:
    """Start a local Ray, or join `address` (else $RAY_ADDRESS), once per process. With a
    `log_file`, Ray's records of this command go there (and to the terminal when `verbose`); a
    later call with another `log_file` moves them. Without one, an earlier routing stays."""
    import ray

    if log_file is not None:
        _route.to(Path(log_file), verbose)
    if not ray.is_initialized():
        level = logging.INFO if log_file is not None or verbose else logging.WARNING
        options = {"logging_level": level, "logging_format": FILE_FORMAT, "log_to_driver": True}
        address = address or os.environ.get("RAY_ADDRESS")
        if not address:
            # A local instance on loopback: on hosts whose primary address is not reachable from
            # itself, Ray's health checks otherwise declare the node dead after ~30 s. Ray's other
            # start-up settings (worker prestart, task events, metrics) were measured and save no CPU
            # (README, "Ray's fixed cost per run"): a long-lived Ray joined with `address` does.
            options.update(include_dashboard=False, _node_ip_address="127.0.0.1")
        _auth.as_given()
        try:
            # "local": with no address Ray would join the cluster a `ray start` last left on this host
            ray.init(address=address or "local", **options)
        except Exception as e:  # Ray raises bare Exceptions (start-up timeouts) and ConnectionErrors
            where = f"at {address}" if address else "locally"
            raise RayStartError(f"Ray did not start {where}: {e}") from e
        finally:
            _auth.note_what_ray_set()
        if not address:
            _watch_local_ray()
    if log_file is not None:
        _route.workers()


class _AuthMode:
    """Each Ray start in this process sees the authentication mode the user gave (RAY_AUTH_MODE).

    Ray's local start turns token authentication on for the whole process: it sets RAY_AUTH_MODE
    in os.environ, and that outlives ray.shutdown(). A later start in the same process that joins
    a cluster running without tokens then has the driver reject the cluster's calls (the GCS
    asking the owner of an actor whether it still holds it), so the GCS takes the driver for dead
    and cancels every actor it owns before it runs: Ray Data's "actor never ran". The setting Ray
    left is undone before the next start, and Ray's settings, which it caches from the
    environment, are read again (Ray has no public API for either)."""

    def __init__(self) -> None:
        self.set_by_ray: str | None = None  # the value Ray's last start wrote, if the user had none
        self.before: str | None = None  # the user's value at this start

    def as_given(self) -> None:
        from ray._raylet import AuthenticationTokenLoader, Config

        if self.set_by_ray is not None and os.environ.get(AUTH_MODE) == self.set_by_ray:
            del os.environ[AUTH_MODE]
        self.set_by_ray, self.before = None, os.environ.get(AUTH_MODE)
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    def note_what_ray_set(self) -> None:
        now = os.environ.get(AUTH_MODE)
        self.set_by_ray = now if self.before is None and now is not None else None


_auth = _AuthMode()


def _watch_local_ray() -> None:
    """Have the agents of the local Ray this process started die with it, even by SIGKILL
    (curate/ray_watchdog.py): the watchdog reads a pipe that only this process holds open."""
    from ray._private import worker

    node = worker._global_node  # Ray has no public API for its node's processes
    raylet = node.all_processes.get("raylet") if node is not None else None
    if raylet:
        _watchdogs.append(
            subprocess.Popen(
                [sys.executable, "-m", "curate.ray_watchdog", str(raylet[0].process.pid)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # not in the driver's process group, so a kill of the group spares it
            )
        )


_watchdogs: list[subprocess.Popen] = []  # held for the process's life: their pipes close when it ends


def ray_log_file(out_dir: str | Path) -> Path:
    """Where a run in `out_dir` keeps Ray's records."""
    return Path(out_dir) / "logs" / "ray.log"


def command_log(name: str) -> Path | None:
    """A log file `name` beside the current command's Ray records (for the output of processes
    it starts, e.g. the llama.cpp server), or None when Ray's records are not routed."""
    return _route.path.with_name(name) if _route.path is not None else None


def is_ray_failure(error: BaseException) -> bool:
    """An error of Ray's (a failed task or actor, a start-up that failed) rather than curate's."""
    from ray.exceptions import RayError

    return isinstance(error, (RayError, RayStartError))


def describe_failure(error: BaseException) -> str:
    """One line for a failure that came back from Ray: the original error inside Ray's wrappers
    (a stage's exception, a model that would not load) and where Ray's records, with the full
    remote traceback, are."""
    where = f" (Ray's records, with the traceback: {_route.path})" if _route.path is not None else ""
    if isinstance(error, RayStartError):
        return f"{error}{where}"
    return f"a Ray task failed: {_original_error(error)}{where}"


def _original_error(error: BaseException) -> str:
    """The innermost error of Ray's chain (`cause`, `__cause__`) that says something; a remote
    traceback in a wrapper's text ends with the line naming the original error."""
    chain: list[BaseException] = []
    inner: object = error
    while isinstance(inner, BaseException) and all(inner is not seen for seen in chain):
        chain.append(inner)
        inner = getattr(inner, "cause", None) or inner.__cause__
    for e in reversed(chain):
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        named = [line for line in lines if ERROR_LINE.match(line)]
        if named:
            return named[-1]
        if lines:
            return f"{type(e).__name__}: {lines[-1]}"
    return type(error).__name__


def format_worker_lines(data: dict[str, Any]) -> list[str]:
    """Ray's batch of forwarded worker output as lines prefixed like Ray's own:
    `(ActorName pid=123) line`."""
    pid = data.get("pid")
    name = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({pid})" if pid in ("raylet", "autoscaler") else f"({name + ' ' if name else ''}pid={pid})"
    return [f"{prefix} {line}" for line in data.get("lines", [])]


class _LogFileHandler(logging.StreamHandler):
    """Ray's records into the run's log file. A record that cannot be written (a full disk) is
    dropped, not printed as a traceback on the terminal: curate's own writes report the full disk."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _Route:
    """The current destination of Ray's records in this process, undone before it moves."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.stream: TextIO | None = None
        self.handler: logging.Handler | None = None
        self.detached: list[tuple[logging.Logger, logging.Handler]] = []
        self.printer: Callable | None = None  # Ray's printing of worker output, while detached
        self.print_errors: Callable | None = None  # Ray's printing of its error messages, ditto
        self.native_stderr: int | None = None  # the process's fd 2, while Ray's C++ lines go to the file
        self.python_stderr: TextIO | None = None
        self.verbose = False
        self.lock = threading.Lock()

    def to(self, path: Path, verbose: bool) -> None:
        from ray.data import DataContext  # importing Ray Data sets up its `ray.data` logger, routed below

        self.undo()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(path, "a", encoding="utf-8", buffering=1)
        self.path = path
        self.verbose = verbose
        self.handler = _LogFileHandler(self.stream)
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
        if not verbose:
            self.capture_native_stderr()

    def capture_native_stderr(self) -> None:
        """Ray's C++ core worker in this process writes its errors straight to fd 2 (e.g. the
        harmless `core_worker.cc` line about actor constructor arguments): point fd 2 at the
        file, and Python's own stderr (tracebacks, curate's errors) at a copy of the old fd 2."""
        sys.stderr.flush()
        self.native_stderr = os.dup(2)
        if _writes_to_fd2(sys.stderr):
            self.python_stderr = sys.stderr
            copy = os.dup(self.native_stderr)
            sys.stderr = open(copy, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
        os.dup2(self.stream.fileno(), 2)

    def workers(self) -> None:
        """Send the workers' forwarded output and Ray's error messages (task retries, dead
        workers: `(raylet) ...`) to the file, and to the terminal only if verbose."""
        from ray._private import worker

        dispatcher = _dispatcher()
        dispatcher.remove_handler(ROUTE_HANDLER)
        if not self.verbose:
            printer = [h for name, h in dispatcher.handlers if name == RAY_PRINT_HANDLER]
            if printer:
                self.printer = printer[0]
                dispatcher.remove_handler(RAY_PRINT_HANDLER)
            # the driver's error listener prints through this module function, looked up per call
            self.print_errors = worker.print_to_stdstream
            worker.print_to_stdstream = lambda data, ignore_prefix: self.write_worker_lines(data)
        dispatcher.add_handler(ROUTE_HANDLER, self.write_worker_lines)

    def write_worker_lines(self, data: dict[str, Any]) -> None:
        # the autoscaler's status blocks every few seconds: Ray's session logs keep them
        if data.get("pid") == "autoscaler":
            return
        with self.lock:
            if self.stream is not None:
                with contextlib.suppress(OSError):  # a full disk: see _LogFileHandler
                    self.stream.write("".join(line + "\n" for line in format_worker_lines(data)))

    def undo(self) -> None:
        if self.native_stderr is not None:
            sys.stderr.flush()
            os.dup2(self.native_stderr, 2)
            os.close(self.native_stderr)
            self.native_stderr = None
            if self.python_stderr is not None:
                sys.stderr.close()
                sys.stderr, self.python_stderr = self.python_stderr, None
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
        if self.print_errors is not None:
            from ray._private import worker

            worker.print_to_stdstream, self.print_errors = self.print_errors, None
        with self.lock:
            if self.stream is not None:
                self.stream.close()
                self.stream = self.path = None


def _dispatcher():
    """Ray's driver-side fan-out of forwarded worker output: no public API routes it elsewhere."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    return global_worker_stdstream_dispatcher


def _writes_to_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _is_console(handler: logging.Handler) -> bool:
    """Ray's PlainRayHandler writes to whatever sys.stderr is at emit time; others name a stream."""
    if type(handler).__name__ == "PlainRayHandler":
        return True
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout)


_route = _Route()
