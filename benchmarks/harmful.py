"""Harmful-content perplexity on the shipped labelled data: the paper's harmful-only perplexity
against the contrastive (Moore-Lewis) score, with the demo job's models.

    .venv/bin/python benchmarks/harmful.py

Training: Davidson et al. tweets of the `train` id split (harmful ones for the harmful model;
benign ones plus the Wikipedia sample for the reference). Threshold: best macro-F1 on the `val`
split. Figures: the `test` split (never seen by training or calibration), the Jigsaw talk-page
comments (another genre, all of them unseen), and the share of the web sample flagged
(mostly benign pages: a filter that flags many of them over-filters).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from curate import harmful, lm
from curate.documents import read_texts
from curate.lm import LanguageModel
from curate.harmful import harmfulness

REPO = Path(__file__).resolve().parent.parent
DAVIDSON = str(REPO / "data" / "harmful" / "davidson_hate_offensive.jsonl.gz")
JIGSAW = str(REPO / "data" / "harmful" / "jigsaw_toxic_sample.jsonl.gz")
WEB = str(REPO / "data" / "web")


def main() -> None:
    quiet = lambda *_: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="curate-harmful-") as tmp:
        harm, ref = Path(tmp) / "harmful", Path(tmp) / "benign"
        lm.train([lm.source(DAVIDSON, {"harmful": True}, "train")], harm, vocab=8000, log=quiet)
        lm.train([lm.source(DAVIDSON, {"harmful": False}, "train"), lm.source(str(REPO / "data" / "wiki"))], ref, vocab=8000, log=quiet)
        print("Davidson et al. tweets: threshold on the val split, figures on the test split")
        card = harmful.calibrate_model(harm, [DAVIDSON], reference=ref)
        print("\nJigsaw talk-page comments (other genre, unseen):")
        harmful.evaluate(harm, [JIGSAW])
        texts = [d["text"] for d in read_texts([WEB])]
        t0 = time.perf_counter()
        scores = harmfulness(LanguageModel(harm), LanguageModel(ref), texts)
        seconds = time.perf_counter() - t0
        flagged_ppl = np.mean(scores["harmful_ppl"] < card["perplexity"]["threshold"])
        flagged_con = np.mean(scores["harmful_score"] > card["contrastive"]["threshold"])
        print(f"\nweb sample ({len(texts)} pages) flagged: perplexity {flagged_ppl:.1%}, contrastive {flagged_con:.1%}")
        print(f"scoring speed (both models, 1 process): {len(texts) / seconds:.0f} docs/s")


if __name__ == "__main__":
    main()
