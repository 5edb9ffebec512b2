"""Ends the embedded Ray's node agents with the driver that started them.

When a driver that started a local Ray is killed (SIGKILL), Ray's own reaper stops the GCS and the
raylet, but the raylet's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) outlive them,
orphaned, until someone kills them (seen with Ray 2.60). `init_ray` starts this watchdog in its
own session with a pipe from the driver on its stdin: `python -m curate.ray_watchdog RAYLET_PID`.
While the pipe is open it keeps note of the raylet's descendants; when it closes (the driver has
ended, however it ended) it kills those that still run. psutil checks each process's start time,
so a reused process id is never killed.
"""

from __future__ import annotations

import sys
import threading
import time

import psutil

POLL_SECONDS = 1.0


def watch(raylet_pid: int, closed: threading.Event) -> list[psutil.Process]:
    """The raylet's descendants seen until `closed` is set (or the raylet has gone)."""
    seen: dict[int, psutil.Process] = {}
    try:
        raylet = psutil.Process(raylet_pid)
    except psutil.Error:
        return []
    while not closed.is_set():
        try:
            for child in raylet.children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.Error:  # the raylet has gone: what it left is what we saw
            break
        closed.wait(POLL_SECONDS)
    return list(seen.values())


def main(argv: list[str]) -> int:
    closed = threading.Event()

    def wait_for_driver() -> None:
        sys.stdin.buffer.read()  # returns at end of file: the driver has closed the pipe by ending
        closed.set()

    threading.Thread(target=wait_for_driver, daemon=True).start()
    left = watch(int(argv[0]), closed)
    closed.wait()
    time.sleep(POLL_SECONDS)  # a driver that ended normally has shut Ray down: nothing is left
    for process in left:
        try:
            if process.is_running():
                process.kill()
        except psutil.Error:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
