"""`curate tokenizer ...` and `curate index ...` subcommands (wired into curate/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from curate.local_model import GEMMA_NAME
from indexes.options import (
    DEFAULT_ATTRIBUTE_MIN_TOKENS,
    DEFAULT_CONTEXT,
    DEFAULT_MIN_TOKENS,
    DEFAULT_NGRAM,
    MAX_SHARD_TOKENS,
    MIN_SHARD_TOKENS,
    QUERY_TYPES,
)
from indexes.suffix_array import SORTERS


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the tokenizer and index commands on the top-level `curate` parser."""
    tok = sub.add_parser("tokenizer", help="byte-level BPE tokenizers").add_subparsers(required=True, metavar="ACTION")
    train = tok.add_parser("train", help="train a byte-level BPE tokenizer.json")
    train.add_argument(
        "--input", nargs="+", required=True, help="files, folders or globs (.jsonl, .jsonl.gz, .parquet)"
    )
    train.add_argument("--out", required=True, help="tokenizer.json to write")
    train.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    train.set_defaults(func=_tokenizer_train)

    index = sub.add_parser("index", help="infini-gram suffix-array indexes").add_subparsers(
        required=True, metavar="ACTION"
    )
    build = index.add_parser("build", help="tokenize documents and build the suffix-array index")
    build.add_argument("--input", nargs="+", required=True, help="Parquet shards (e.g. OUT/kept) or JSON Lines files")
    build.add_argument(
        "--tokenizer",
        required=True,
        help=(
            "a tokenizer.json, or a .gguf model whose vocabulary gives the ids "
            "(gemma-3-270m: the packaged Gemma 3 270M)"
        ),
    )
    build.add_argument("--out", required=True, help="index directory")
    build.add_argument(
        "--shard-tokens",
        type=int,
        help=(
            f"tokens per shard (default: one per CPU of the Ray cluster, but none under "
            f"{MIN_SHARD_TOKENS:,} tokens nor over {MAX_SHARD_TOKENS:,})"
        ),
    )
    build.add_argument(
        "--sorter",
        choices=SORTERS,
        default="auto",
        help=(
            "suffix sorter: libsais over the token alphabet, or pydivsufsort over the bytes "
            "(same table; default auto: libsais when `make setup` built it)"
        ),
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    build.add_argument("--verbose", action="store_true", help="show Ray's records (else: logs/ray.log by the index)")
    build.set_defaults(func=_index_build)

    query = index.add_parser("query", help="ask the index one question; prints JSON")
    query.add_argument("index_dir")
    query.add_argument("query_type", choices=QUERY_TYPES)
    query.add_argument(
        "query",
        nargs="?",
        help=(
            "text: a phrase of words, counted after whitespace and at document and line starts "
            "(count/search_docs/find_cnf also accept 'a OR b AND c'); prob: the last word is the continuation"
        ),
    )
    query.add_argument("--ids", action="store_true", help="QUERY is a JSON list of token ids instead of text")
    for name in ("max_support", "maxnum", "max_disp_len", "max_clause_freq", "max_diff_tokens", "s", "rank", "ptr"):
        query.add_argument("--" + name.replace("_", "-"), dest=name, type=int)
    query.set_defaults(func=_index_query)

    attr = index.add_parser(
        "attribute", help="the maximal spans of a text found verbatim in the index, with counts and documents"
    )
    attr.add_argument("index_dir")
    attr.add_argument("--text", required=True, help="the text to trace (e.g. a model's output)")
    attr.add_argument(
        "--min-tokens",
        type=int,
        default=DEFAULT_ATTRIBUTE_MIN_TOKENS,
        help=f"shortest span reported (default {DEFAULT_ATTRIBUTE_MIN_TOKENS})",
    )
    attr.add_argument("--maxnum", type=int, default=1, help="documents shown per span (default 1)")
    attr.add_argument("--max-disp-len", type=int, help="tokens of each document shown around the span")
    attr.set_defaults(func=_index_attribute)

    serve = index.add_parser("serve", help="serve the HTTP JSON API")
    serve.add_argument("index_dir")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--ray", action="store_true", help="serve with Ray Serve (a local Ray unless --address)")
    serve.add_argument("--address", help="join this Ray cluster (implies --ray; default $RAY_ADDRESS with --ray)")
    serve.add_argument(
        "--replicas", type=int, help="with --ray: replicas, each holding a group of shards (default: one per shard)"
    )
    serve.set_defaults(func=_index_serve)

    cont = index.add_parser(
        "contamination", help="per eval document: longest match and fraction of 13-grams in the index"
    )
    cont.add_argument("index_dir")
    cont.add_argument("eval_file", nargs="+", help="eval documents (.jsonl, .jsonl.gz or .parquet with a text field)")
    cont.add_argument("--ngram", type=int, default=DEFAULT_NGRAM)
    cont.set_defaults(func=_index_contamination)

    dedup = index.add_parser("dedup", help="exact-substring dedup: repeated spans to remove, per document")
    dedup.add_argument("index_dir")
    dedup.add_argument(
        "--min-tokens",
        type=int,
        default=DEFAULT_MIN_TOKENS,
        help=f"shortest repeated span removed (default {DEFAULT_MIN_TOKENS})",
    )
    dedup.add_argument("--out", help="write the per-document result as Parquet here (default: JSON lines on stdout)")
    dedup.set_defaults(func=_index_dedup)

    ppl = index.add_parser("perplexity", help="neural vs ∞-gram-interpolated perplexity (λ fitted on held-out text)")
    ppl.add_argument("index_dir", help="an index built with the model's tokenizer (--tokenizer MODEL.gguf)")
    ppl.add_argument(
        "--heldout", nargs="+", required=True, help="documents to fit the two λs on (.jsonl, .jsonl.gz, .parquet)"
    )
    ppl.add_argument("--eval", nargs="+", required=True, help="documents to report perplexities on")
    ppl.add_argument("--model", help="a .gguf model (default: the packaged Gemma 3 270M)")
    ppl.add_argument("--max-docs", type=int, help="use the first N documents of --heldout and of --eval")
    ppl.add_argument("--max-tokens", type=int, help="score each document's first N tokens")
    ppl.add_argument(
        "--context",
        type=int,
        default=DEFAULT_CONTEXT,
        help=f"the model's window in tokens (default {DEFAULT_CONTEXT}; longer documents: windows overlapping by half)",
    )
    ppl.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores)")
    ppl.add_argument("--json", action="store_true", help="print the report as JSON")
    ppl.set_defaults(func=_index_perplexity)


def _tokenizer_train(args) -> int:
    from curate.documents import read_texts
    from curate.tokenizer import train_tokenizer

    tokenizer = train_tokenizer((doc["text"] for doc in read_texts(args.input)), args.out, args.vocab)
    print(f"tokenizer {args.out}: {tokenizer.vocab_size:,} tokens")
    return 0


def _index_build(args) -> int:
    from curate import storage
    from curate.local_model import gemma_path
    from curate.ray_runtime import init_ray, ray_log_file
    from indexes.build import build_index

    tokenizer = gemma_path() if args.tokenizer == GEMMA_NAME else args.tokenizer
    # beside the index, as a run keeps OUT/logs/ray.log beside OUT/index (for an object-store
    # --out, under the local folder named after it: curate/storage.py, local_dir)
    if storage.is_url(args.out):
        log_file = ray_log_file(storage.local_dir(args.out))
        print(f"Ray's records of this build: {log_file}", file=sys.stderr)
    else:
        log_file = ray_log_file(Path(args.out).resolve().parent)
    init_ray(verbose=args.verbose, log_file=log_file)
    build_index(
        args.input,
        tokenizer,
        args.out,
        args.shard_tokens,
        args.overwrite,
        log=lambda m: print(m, file=sys.stderr),
        sorter=args.sorter,
    )
    return 0


def _local_index(index_dir: str) -> str:
    """An index on an object store (`s3://...`) is read from its cached local copy: its shards are
    memory-mapped (curate/remote_dirs.py). A local path is left as it is, importing nothing."""
    if "://" not in index_dir:
        return index_dir
    from curate.remote_dirs import fetch
    from indexes.layout import CARD_NAME

    return str(fetch(index_dir, CARD_NAME))


def _index_query(args) -> int:
    from indexes.engine import Engine
    from indexes.phrases import vocabulary
    from indexes.server import answer

    request = {"query_type": args.query_type}
    if args.query is not None:
        if args.ids:
            try:
                request["query_ids"] = json.loads(args.query)
            except json.JSONDecodeError:
                raise ValueError(f"--ids: QUERY must be a JSON list of token ids, got {args.query!r}") from None
        else:
            request["query"] = args.query
    for name in ("max_support", "maxnum", "max_disp_len", "max_clause_freq", "max_diff_tokens", "s", "rank", "ptr"):
        if getattr(args, name) is not None:
            request[name] = getattr(args, name)
    engine = Engine(_local_index(args.index_dir))
    if "query" in request and engine.tokenizer is not None:
        vocabulary(engine)  # a text query's one-time setup, so that `latency` is the query's alone
    print(json.dumps(answer(engine, request), ensure_ascii=False))
    return 0


def _index_attribute(args) -> int:
    from indexes.attribution import attribute
    from indexes.engine import Engine

    result = attribute(Engine(_local_index(args.index_dir)), args.text, args.min_tokens, args.maxnum, args.max_disp_len)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _index_serve(args) -> int:
    if args.ray or args.address:
        from indexes.serve_ray import serve_on_ray

        return serve_on_ray(_local_index(args.index_dir), args.host, args.port, args.replicas, args.address)
    if args.replicas is not None:
        raise ValueError("--replicas needs --ray (one process serves every shard)")
    from indexes.server import IndexServer

    server = IndexServer(_local_index(args.index_dir), args.host, args.port)
    print(
        f"serving {args.index_dir} on {server.url} (POST JSON queries; API docs at {server.url}docs; Ctrl-C stops)",
        file=sys.stderr,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _index_contamination(args) -> int:
    import numpy as np

    from curate.documents import read_texts
    from indexes.contamination import contamination_report
    from indexes.engine import Engine

    fractions = []
    for row in contamination_report(Engine(_local_index(args.index_dir)), read_texts(args.eval_file), args.ngram):
        print(json.dumps(row, ensure_ascii=False))
        if row["ngram_found_fraction"] is not None:
            fractions.append(row["ngram_found_fraction"])
    if fractions:
        f = np.array(fractions)
        print(
            f"{len(f)} eval documents: mean {args.ngram}-gram overlap {f.mean():.3f}; "
            f"{int((f >= 0.8).sum())} with >= 80% overlap",
            file=sys.stderr,
        )
    return 0


def _index_dedup(args) -> int:
    import pyarrow.parquet as pq

    from indexes.dedup import dedup_table

    table = dedup_table(_local_index(args.index_dir), args.min_tokens)
    if args.out:
        pq.write_table(table, args.out, compression="zstd")
    else:
        for row in table.to_pylist():
            print(json.dumps(row))
    removed = sum(table.column("removed_tokens").to_pylist())
    print(
        f"{removed:,} repeated tokens to remove in "
        f"{sum(1 for r in table.column('removed_tokens').to_pylist() if r)} of {table.num_rows} documents",
        file=sys.stderr,
    )
    return 0


def _index_perplexity(args) -> int:
    from itertools import islice

    from curate.documents import expand_inputs, read_texts
    from indexes.engine import Engine
    from indexes.neural import NeuralModel
    from indexes.perplexity import check_same_tokenizer, fit_lambdas, score_documents, summarize

    for name in ("max_docs", "max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    expand_inputs(args.heldout + args.eval)  # missing files fail now, not after minutes of scoring
    engine = Engine(_local_index(args.index_dir))
    model = NeuralModel(args.model, args.context, args.threads)
    check_same_tokenizer(engine, model)

    def scores(files: list[str], label: str) -> dict:
        texts = list(islice((d["text"] for d in read_texts(files)), args.max_docs))
        print(f"{label}: scoring {len(texts)} documents", file=sys.stderr)
        return score_documents(
            engine, model, texts, args.max_tokens, log=lambda m: print(f"{label} {m}", file=sys.stderr)
        )

    heldout = scores(args.heldout, "held-out")
    lambdas = fit_lambdas(heldout, heldout["neural"])
    report = {
        "index": str(args.index_dir),
        "index_tokens": engine.card["tokens"],
        "model": model.path,
        "context": model.context,
        "lambda_sparse": lambdas[0],
        "lambda_non_sparse": lambdas[1],
        "heldout": summarize(heldout, lambdas),
        "eval": summarize(scores(args.eval, "eval"), lambdas),
    }
    print(json.dumps(report, indent=2) if args.json else _perplexity_text(report))
    return 0


def _perplexity_text(r: dict) -> str:
    lines = [
        f"index {r['index']} ({r['index_tokens']:,} tokens), model {r['model']}, context {r['context']}",
        f"λ fitted on {r['heldout']['tokens']:,} held-out tokens ({r['heldout']['documents']} documents): "
        f"sparse {r['lambda_sparse']:.2f}, non-sparse {r['lambda_non_sparse']:.2f}",
    ]
    for name in ("heldout", "eval"):
        s = r[name]
        change = s["interpolated_perplexity"] / s["neural_perplexity"] - 1
        sparse_correct = (
            "" if s["sparse_correct_fraction"] is None else f", {s['sparse_correct_fraction']:.1%} of them right"
        )
        lines += [
            f"{'held-out' if name == 'heldout' else 'eval'}: {s['documents']} documents, {s['tokens']:,} tokens",
            f"  neural perplexity        {s['neural_perplexity']:10.3f}",
            f"  interpolated perplexity  {s['interpolated_perplexity']:10.3f}  ({change:+.1%})",
            f"  ∞-gram sparse estimates  {s['sparse_fraction']:10.1%}  of tokens{sparse_correct}",
            f"  ∞-gram P(token) > 0      {s['infgram_nonzero_fraction']:10.1%}  of tokens",
            f"  mean ∞-gram suffix       {s['mean_suffix_len']:10.2f}  tokens",
        ]
    return "\n".join(lines)
