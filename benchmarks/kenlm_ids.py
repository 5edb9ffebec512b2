"""KenLM scoring of id arrays (`curate.kenlm_ids.IdScorer.score`) against the kenlm module's
`Model.score` per line, on the same lines, in one process:

    .venv/bin/python benchmarks/kenlm_ids.py [--model DIR] [--repeat 3]

The lines are the distinct CCNet-normalised non-empty lines of one copy of the shipped web sample,
cut into pieces by the model's SentencePiece (the 16k-piece order-5 Wikipedia model of
benchmarks/perplexity.py, trained here unless `--model` names one). `Model.score` gets each line's
pieces joined by spaces, as curate's stages give them today; `IdScorer.score` gets all lines as one
array of KenLM word ids with their ends. Tokenisation and the id mapping are not timed. It prints
CPU seconds (process time, best of `--repeat` interleaved runs), million words per CPU second and the
ratio, and fails unless the two give the same float for every line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import kenlm
import numpy as np
import sentencepiece as spm

from curate import lm
from curate.documents import read_texts
from curate.kenlm_ids import IdScorer
from curate.normalize import DocumentLines

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds(fn) -> tuple[float, np.ndarray]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a curate model directory (default: train the wiki model)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="curate-bench-kenlm-ids-") as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "wiki"
            lm.train([lm.source(str(REPO / "data" / "wiki"))], model_dir, vocab=16000, log=lambda *_: None)
        lines = DocumentLines.of([d["text"] for d in read_texts([str(REPO / "data" / "web")])]).distinct
        sp = spm.SentencePieceProcessor(model_file=str(Path(model_dir) / lm.SP_MODEL))
        pieces = sp.encode(lines, out_type=str)
        texts = [" ".join(p) for p in pieces]
        model = kenlm.Model(str(Path(model_dir) / lm.KENLM_BINARY))
        scorer = IdScorer(Path(model_dir) / lm.KENLM_BINARY)
        distinct = {p: i for i, p in enumerate({p for line in pieces for p in line})}
        table = scorer.word_ids([p.encode() for p in distinct])
        ids = table[np.array([distinct[p] for line in pieces for p in line], dtype=np.int64)]
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
        words = len(ids) + len(lines)  # with each line's </s>
        module_runs, ids_runs = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same load
            seconds, want = cpu_seconds(lambda: np.fromiter(map(model.score, texts), dtype=np.float64))
            module_runs.append(seconds)
            seconds, got = cpu_seconds(lambda: scorer.score(ids, ends))
            ids_runs.append(seconds)
        best = (min(module_runs), min(ids_runs))
        if not np.array_equal(got.astype(np.float64), want):
            raise SystemExit("IdScorer.score differs from kenlm.Model.score")
    print(f"{len(lines):,} distinct lines, {words:,} words with </s>, same float on every line")
    for name, seconds in (("kenlm.Model.score per line", best[0]), ("IdScorer.score, one call", best[1])):
        print(f"{name:28s} {seconds:6.3f} CPU s  {words / seconds / 1e6:6.2f} M words/CPU s")
    print(f"ratio: {best[0] / best[1]:.2f}x")


if __name__ == "__main__":
    main()
