"""The local backend: a llama.cpp server (`llama-cpp-python[server]`) on 127.0.0.1 serving a GGUF
model, Gemma 3 270M by default, assembled from its PyPI packages. `LocalServer` is a context
manager: it starts the server, waits until it answers, and stops it (and only it) on exit, also
when the job fails."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from curate.local_model import GEMMA_NAME, gemma_path
from curate.processes import stop_group
from curate.ray_runtime import command_log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    def __init__(
        self,
        model: str | None = None,
        port: int | None = None,
        n_ctx: int = 4096,
        threads: int | None = None,
        log_file: str | None = None,
    ):
        self.model = model or gemma_path()
        self.name = GEMMA_NAME if model is None else Path(model).stem
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.threads = threads or os.cpu_count() or 1
        self.log_file = log_file
        # The packaged Gemma 3 270M is the pretrained model: its GGUF has no chat template, so
        # the server is told Gemma's turn format (the turn tokens are in its vocabulary).
        self.chat_format = "gemma" if model is None else None
        self.process: subprocess.Popen | None = None
        self.log_path: str | Path | None = None
        self.stopped = False  # by stop(): an exit before that is a death worth reporting

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "curate.llm.llama_server",
            "--model", self.model, "--model_alias", self.name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
            *(["--chat_format", self.chat_format] if self.chat_format else []),
        ]  # fmt: skip

    def start(self, wait_s: float = 120) -> LocalServer:
        # its output goes beside the command's Ray records (OUT/logs/llama-server.log in a run)
        path = self.log_path = self.log_file or command_log("llama-server.log")
        log = open(path or os.devnull, "ab")
        # its own process group, so stopping it also stops anything it spawned
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.stopped = False
        log.close()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = f" (its output: {path})" if path else ""
                code, command = self.process.returncode, " ".join(self.command())
                raise RuntimeError(f"llama.cpp server exited with code {code} while starting{output}: {command}")
            if self.answers():
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"llama.cpp server did not answer on {self.url} within {wait_s:.0f} s")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                return bool(json.load(r).get("data"))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.process is None or self.stopped:
            return
        self.stopped = True
        if self.process.poll() is not None:
            self._report_death()
            return
        stop_group(self.process, timeout=15)

    def _report_death(self) -> None:
        """A server that died under the job turns every request into a per-document error; say so
        on the terminal, since nothing else does (e.g. SIGILL from a llama.cpp build for another CPU)."""
        code = self.process.returncode
        if code == 0:
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        output = f"; its output: {self.log_path}" if self.log_path else ""
        print(f"curate: warning: llama.cpp server {self.url} died during the job ({how}){output}", file=sys.stderr)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
