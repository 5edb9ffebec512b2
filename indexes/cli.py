"""`curate tokenizer ...` and `curate index ...` subcommands (wired into curate/cli.py)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the tokenizer and index commands on the top-level `curate` parser."""
