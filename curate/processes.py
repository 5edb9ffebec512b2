"""Stopping a child started in its own process group (`start_new_session=True`), with everything
it started: a llama.cpp server, a `ray start --head`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the process's group, then SIGKILL if the process has not ended within `timeout`
    seconds; returns once it has been reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
