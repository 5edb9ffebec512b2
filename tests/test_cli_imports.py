"""The CLI loads its heavy libraries only in the command that needs them: `curate --help`, every
subcommand's help and a job's validation stay free of KenLM, numba, Ray and torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("kenlm", "numba", "ray", "torch", "llama_cpp")

# Runs in a fresh interpreter: prints the heavy modules loaded after the given curate calls.
PROBE = """
import contextlib, io, json, sys
from curate.cli import main
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps(sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)))
"""


def _heavy_after(*argvs: list[str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _commands(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    """Every command path of the parser, e.g. ["index", "build"]."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _commands(sub, [*prefix, name])
    return paths


def test_help_of_every_command_loads_nothing_heavy():
    from curate.cli import _parser

    commands = [[*path, "--help"] for path in _commands(_parser(), [])]
    assert len(commands) > 15 and ["index", "build", "--help"] in commands and ["lm", "train", "--help"] in commands
    assert _heavy_after(*commands) == []


def test_a_bad_job_fails_before_anything_heavy_loads(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninputs: [{path: a.jsonl}]\nstages: [{perplexity: {model: wiki, kep: [head]}}]\n")
    assert _heavy_after(["run", str(bad)]) == []


def test_the_probe_sees_a_heavy_import(tmp_path):
    """The same probe after a command that does load KenLM (scoring a missing model)."""
    assert "kenlm" in _heavy_after(["kenlm", "score", str(tmp_path), str(tmp_path / "none.jsonl")])


def test_kenlm_and_its_old_name_lm_are_the_same_command():
    def curate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=REPO, capture_output=True, text=True)

    help_text = curate("--help").stdout
    assert "kenlm (lm)" in help_text and "alias for one release" in help_text
    for name in ("kenlm", "lm"):
        out = curate(name, "score", "--help")
        assert out.returncode == 0 and "usage: curate kenlm score" in out.stdout  # one parser, two names
