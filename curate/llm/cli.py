"""`curate llm serve` (the local llama.cpp server, by hand) and `curate rate distill`."""

from __future__ import annotations

import argparse
import json
import signal


def add_commands(sub: argparse._SubParsersAction) -> None:
    llm = sub.add_parser("llm", help="the local LLM server").add_subparsers(required=True, metavar="ACTION")
    serve = llm.add_parser("serve", help="run the llama.cpp server the `local` backend uses, until interrupted")
    serve.add_argument("--model", help="a .gguf file (default: Gemma 3 270M)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--n-ctx", type=int, default=4096)
    serve.add_argument("--threads", type=int)
    serve.set_defaults(func=_serve)

    rate = sub.add_parser("rate", help="DataMan ratings").add_subparsers(required=True, metavar="ACTION")
    distill = rate.add_parser("distill", help="fit a fast CPU rater on LLM ratings; print its held-out agreement")
    distill.add_argument(
        "--ratings", nargs="+", required=True, help="run outputs or Parquet files with dataman_* columns"
    )
    distill.add_argument(
        "--out", required=True, help="directory for the rater (`rate: {backend: distilled, distilled: DIR}`)"
    )
    distill.add_argument("--test-fraction", type=float, default=0.2)
    distill.add_argument("--seed", type=int, default=1024)
    distill.set_defaults(func=_distill)


def _serve(args) -> int:
    from curate.llm.server import LocalServer

    with LocalServer(args.model, port=args.port, n_ctx=args.n_ctx, threads=args.threads) as server:
        print(f"serving {server.name} at {server.url} (OpenAI API; Ctrl-C stops it)", flush=True)
        # SIGTERM as Ctrl-C: leave the wait and let the `with` stop the server. Stopping it inside
        # the handler deadlocked: the handler's wait needs the lock the interrupted wait holds.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def _distill(args) -> int:
    from curate.llm.distill import distill

    print(json.dumps(distill(args.ratings, args.out, args.test_fraction, args.seed), indent=2))
    return 0
