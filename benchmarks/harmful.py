"""Harmful-content perplexity on the shipped labelled data and on real web pages, before and
after language identification and the out-of-domain guard, in one run:

    .venv/bin/python benchmarks/harmful.py

Training: Davidson et al. tweets of the `train` id split (harmful ones for the harmful model;
benign ones plus the Wikipedia sample for the contrastive reference; the guard model adds the
`train` split of the web sample to those). Threshold: best macro-F1 on the `val` split; guard
levels: percentiles of the harmful `val` tweets. Figures: the `test` split, the Jigsaw talk-page
comments (another genre, all unseen), and the share of the web sample flagged (benign pages,
almost all: a filter that flags many of them over-filters), split by the langid stage into
English and other languages; "held out" counts only the web pages the guard model never saw.

Before: every page scored by the English models, no guard (the filter as it was).
After: the langid stage first, only English pages scored (`models: {en: ...}`, the others
unmodeled and kept), and the guard.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from curate import harmful, lm
from curate.documents import read_texts
from curate.harmful import flag_score, harmfulness
from curate.langid import LangidConfig, LangidStage
from curate.lm import LanguageModel
from curate.splits import split_of

REPO = Path(__file__).resolve().parent.parent
DAVIDSON = str(REPO / "data" / "harmful" / "davidson_hate_offensive.jsonl.gz")
JIGSAW = str(REPO / "data" / "harmful" / "jigsaw_toxic_sample.jsonl.gz")
WEB = str(REPO / "data" / "web")
WIKI = str(REPO / "data" / "wiki")


def main() -> None:
    quiet = lambda *_: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="curate-harmful-") as tmp:
        harm, ref, guard = Path(tmp) / "harmful", Path(tmp) / "benign", Path(tmp) / "web"
        benign = [lm.source(DAVIDSON, {"harmful": False}, "train"), lm.source(WIKI)]
        lm.train([lm.source(DAVIDSON, {"harmful": True}, "train")], harm, vocab=8000, log=quiet)
        lm.train(benign, ref, vocab=8000, log=quiet)
        lm.train([*benign, lm.source(WEB, None, "train")], guard, vocab=8000, log=quiet)
        print("Davidson et al. tweets: threshold on the val split, figures on the test split")
        card = harmful.calibrate_model(harm, [DAVIDSON], reference=ref, guard=guard, web=[WEB])
        print("\nJigsaw talk-page comments (other genre, unseen):")
        jigsaw = harmful.evaluate(harm, [JIGSAW])

        docs = list(read_texts([WEB]))
        texts = [d["text"] for d in docs]
        held_out = np.array([split_of(d["id"]) != "train" for d in docs])
        t0 = time.perf_counter()
        langid = LangidStage(LangidConfig())
        langid.setup()
        english = langid.score(texts)["language"] == "en"
        langid_rate = len(texts) / (time.perf_counter() - t0)
        scores = harmfulness(LanguageModel(harm), LanguageModel(ref), texts, LanguageModel(guard))
        kind = card["default"]
        t = card[kind]["threshold"] if kind == "contrastive" else -np.log10(card[kind]["threshold"])
        before = flag_score(scores, kind, None) > t
        guarded = flag_score(scores, kind, card["guard"]) > t
        after = guarded & english  # other languages are never scored by the English models

        def rate(flags: np.ndarray, where: np.ndarray) -> str:
            return f"{flags[where].mean():.1%} ({int(flags[where].sum())}/{int(where.sum())})"

        test = card["guard"]["test"]
        print(f"\nweb sample: {len(texts)} pages, {english.sum()} English (langid), {held_out.sum()} outside train")
        print(
            "| | Davidson test macro-F1 | Jigsaw macro-F1 | English pages flagged | held out "
            "| other languages flagged |"
        )
        print("|---|---|---|---|---|---|")
        for name, dav, jig, flags in (
            ("before", card[kind]["test"], jigsaw[kind], before),
            ("after", test, jigsaw[kind + " + guard"], after),
        ):
            pages = f"{rate(flags, english)} | {rate(flags, english & held_out)} | {rate(flags, ~english)}"
            print(f"| {name} | {dav['macro_f1']:.3f} | {jig['macro_f1']:.3f} | {pages} |")
        print(f"(the guard alone, without langid, on other languages: {rate(guarded, ~english)})")
        print(f"langid speed (lid.176.ftz, 1 process): {langid_rate:.0f} docs/s")


if __name__ == "__main__":
    main()
