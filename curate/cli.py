"""The `curate` command line. Imports stay inside the commands, so that `curate --help` and a
job's validation load none of KenLM, numba, Ray or torch."""

from __future__ import annotations

import argparse
import json
import sys

from curate.atomic import is_no_space, no_space_message
from curate.llm import cli as llm_cli
from indexes import cli as index_cli
from indexes.suffix_array import SortError
from models import cli as models_cli

# Errors a user can fix, printed as one line. InputError, SpecError and the index's errors are
# ValueErrors; KenLM's ModelError is looked up only once its module is loaded (it must be, to
# have been raised), so that knowing it does not load KenLM.
USER_ERRORS = (ValueError, FileNotFoundError, SortError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:  # one line, not a traceback; finished shards and files stay
        again = " (run the same command again to resume)" if args.func is _run else ""
        print(f"curate: interrupted{again}", file=sys.stderr)
        return 130
    except Exception as e:
        if is_no_space(e):
            print(f"curate: error: {no_space_message(e)}", file=sys.stderr)
            return 1
        runtime = sys.modules.get("curate.ray_runtime")  # loaded if Ray ran, as for ModelError below
        if runtime is not None and runtime.is_ray_failure(e):
            print(f"curate: error: {runtime.describe_failure(e)}", file=sys.stderr)
            return 1
        lm = sys.modules.get("curate.lm")
        if not isinstance(e, USER_ERRORS) and not (lm and isinstance(e, lm.ModelError)):
            raise
        print(f"curate: error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curate", description="Curate LLM pretraining corpora on Ray.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a job spec (YAML) on Ray")
    run.add_argument("job")
    run.add_argument("--out", help="output directory (default: the job's `output`)")
    run.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--fresh", action="store_true", help="delete the output directory and start over")
    run.add_argument("--verbose", action="store_true", help="show Ray's own records too (else in OUT/logs/ray.log)")
    run.set_defaults(func=_run)

    lm = sub.add_parser(
        "kenlm",
        aliases=["lm"],
        help="KenLM models: train, score, calibrate (`lm`: the old name, an alias for one release)",
    ).add_subparsers(required=True, metavar="ACTION")
    train = lm.add_parser("train", help="CCNet recipe: normalise, SentencePiece, lmplz, build_binary")
    train.add_argument("--input", nargs="+", required=True, help="files, folders or globs")
    train.add_argument("--out", required=True, help="model directory, outside the source tree (e.g. out/kenlm/wiki)")
    train.add_argument("--order", type=int, default=5)
    train.add_argument(
        "--vocab", type=int, default=65536, help="SentencePiece vocabulary (an upper bound on small corpora)"
    )
    train.add_argument(
        "--where",
        nargs="*",
        default=[],
        metavar="FIELD=JSON",
        help="keep documents whose field equals the value, e.g. harmful=true",
    )
    train.add_argument("--split", choices=["train", "val", "test"], help="keep one part of the fixed id split")
    train.set_defaults(func=_lm_train)

    score = lm.add_parser("score", help="print each document's perplexity (CCNet convention) as JSON lines")
    score.add_argument("model")
    score.add_argument("files", nargs="+")
    score.set_defaults(func=_lm_score)

    cal = lm.add_parser("calibrate", help="pick the harmful-content threshold")
    cal.add_argument("model")
    group = cal.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--labeled", nargs="+", help="labelled files: threshold on the val split, figures on the test split"
    )
    group.add_argument(
        "--unlabeled", nargs="+", help="no labels: threshold at the valley of the log-perplexity histogram"
    )
    cal.add_argument("--label-field", default="harmful")
    cal.add_argument("--reference", help="benign reference model for the contrastive score")
    cal.add_argument(
        "--guard", help="benign model of the filtered genre (web pages): abstain on text it explains better"
    )
    cal.add_argument(
        "--web", nargs="+", help="unlabelled pages of the filtered genre: fit the guard on their val split, report"
    )
    cal.add_argument(
        "--web-flagged", type=float, default=0.02, help="share of the --web val pages the guard lets be flagged"
    )
    cal.add_argument("--candidates", type=int, default=200, help="thresholds swept (at least 100)")
    cal.set_defaults(func=_lm_calibrate)

    ev = lm.add_parser("evaluate", help="precision/recall of the calibrated thresholds on other labelled files")
    ev.add_argument("model")
    ev.add_argument("--labeled", nargs="+", required=True)
    ev.add_argument("--label-field", default="harmful")
    ev.set_defaults(func=_lm_evaluate)

    index_cli.add_commands(sub)
    llm_cli.add_commands(sub)
    models_cli.add_commands(sub)
    return p


def _run(args) -> int:
    from pipelines.spec import load_job

    job = load_job(args.job)  # a bad spec fails here, before Ray and the models load
    from pipelines.runner import run_job

    run_job(job, out=args.out, address=args.address, fresh=args.fresh, verbose=args.verbose)
    return 0


def _lm_train(args) -> int:
    from curate import lm

    where = {}
    for item in args.where:
        field, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--where takes FIELD=VALUE, got {item!r}")
        try:
            where[field] = json.loads(value)
        except json.JSONDecodeError:
            where[field] = value
    lm.train([lm.source(path, where, args.split) for path in args.input], args.out, order=args.order, vocab=args.vocab)
    return 0


def _lm_score(args) -> int:
    from curate.documents import read_texts
    from curate.lm import LanguageModel

    model = LanguageModel(args.model)
    for doc in read_texts(args.files):
        log10_sum, tokens = model.score(doc["text"])
        print(
            json.dumps(
                {
                    "id": doc["id"],
                    "ppl": round(10 ** (-log10_sum / tokens), 2),
                    "log10_sum": round(log10_sum, 4),
                    "tokens": tokens,
                }
            )
        )
    return 0


def _lm_calibrate(args) -> int:
    from curate import harmful

    if args.candidates < 100:
        raise ValueError("--candidates must be at least 100")
    if args.labeled:
        harmful.calibrate_model(
            args.model,
            args.labeled,
            args.label_field,
            args.reference,
            args.candidates,
            guard=args.guard,
            web=args.web,
            web_flagged=args.web_flagged,
        )
    else:
        harmful.calibrate_valley(args.model, args.unlabeled)
    return 0


def _lm_evaluate(args) -> int:
    from curate import harmful

    harmful.evaluate(args.model, args.labeled, args.label_field)
    return 0


if __name__ == "__main__":
    sys.exit(main())
