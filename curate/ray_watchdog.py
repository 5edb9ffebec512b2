"""Ends the embedded Ray's node agents with the driver that started them.

When a driver that started a local Ray is killed (SIGKILL), Ray's own reaper stops the GCS and the
raylet, but the raylet's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) outlive them,
orphaned, until someone kills them (seen with Ray 2.60). `init_ray` starts this watchdog in its
own session with a pipe from the driver on its stdin: `python -m curate.ray_watchdog RAYLET_PID`.
While the pipe is open it keeps note of the raylet's descendants; when it closes (the driver has
ended, however it ended) it kills those that still run.

It can only ever kill Ray's processes of its own driver: it refuses to start unless the process
it is given is named `raylet` and is a child of its own parent (the driver), it kills only the
raylet's descendants that are Ray processes (`ray::...` or run from Ray's package), and psutil
checks each one's start time, so a reused process id is never killed.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import psutil

POLL_SECONDS = 1.0


def own_raylet(pid: int) -> psutil.Process | None:
    """The process `pid` if it is a raylet started by this watchdog's own parent, else None."""
    try:
        process = psutil.Process(pid)
        return process if process.name() == "raylet" and process.ppid() == os.getppid() else None
    except psutil.Error:
        return None


def is_ray_process(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return command.startswith("ray::") or f"{os.sep}ray{os.sep}" in command


def watch(raylet: psutil.Process, closed: threading.Event) -> list[psutil.Process]:
    """The raylet's Ray descendants seen until `closed` is set (or the raylet has gone)."""
    seen: dict[int, psutil.Process] = {}
    while not closed.is_set():
        try:
            for child in raylet.children(recursive=True):
                if child.pid not in seen and is_ray_process(child):
                    seen[child.pid] = child
        except psutil.Error:  # the raylet has gone: what it left is what we saw
            break
        closed.wait(POLL_SECONDS)
    return list(seen.values())


def main(argv: list[str]) -> int:
    raylet = own_raylet(int(argv[0]))
    if raylet is None:
        print(f"curate.ray_watchdog: {argv[0]} is not a raylet of this process's parent: nothing to watch")
        return 2
    closed = threading.Event()

    def wait_for_driver() -> None:
        sys.stdin.buffer.read()  # returns at end of file: the driver has closed the pipe by ending
        closed.set()

    threading.Thread(target=wait_for_driver, daemon=True).start()
    left = watch(raylet, closed)
    closed.wait()
    time.sleep(POLL_SECONDS)  # a driver that ended normally has shut Ray down: nothing is left
    for process in left:
        try:
            if process.is_running() and process.pid not in (1, os.getpid(), os.getppid()):
                process.kill()
        except psutil.Error:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
