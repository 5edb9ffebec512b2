"""Harmful-content perplexity on the shipped labelled data and on real web pages, before and
after language identification and the out-of-domain guard, in one run:

    .venv/bin/python benchmarks/harmful.py

Training: Davidson et al. tweets of the `train` id split (harmful ones for the harmful model;
benign ones plus the Wikipedia sample for the contrastive reference). Threshold: best macro-F1 on
the `val` split. Figures: the `test` split, the Jigsaw talk-page comments (another genre, all
unseen), and the share of the web sample flagged (benign pages, almost all: a filter that flags
many of them over-filters), split by the langid stage into English and other languages, and by
the id split of the pages: the guard models train on `train`, the web-fitted guard level is
fitted on `val`, and `test` is held out from both.

- before: every page scored by the English models, no guard (the filter as it was);
- guard v1: langid first, only English pages scored (`models: {en: ...}`), the guard model trained
  on benign tweets, Wikipedia and the `train` web pages, its levels from the harmful val tweets;
- guard v2 (now): langid first, the guard model trained on the `train` web pages only, its margin
  level raised until at most 2% of the `val` web pages are flagged (`calibrate --web`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
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
        root = Path(tmp)
        harm, ref, guard_v1, guard_v2 = (root / n for n in ("harmful", "benign", "guard_v1", "guard_v2"))
        benign = [lm.source(DAVIDSON, {"harmful": False}, "train"), lm.source(WIKI)]
        lm.train([lm.source(DAVIDSON, {"harmful": True}, "train")], harm, vocab=8000, log=quiet)
        lm.train(benign, ref, vocab=8000, log=quiet)
        lm.train([*benign, lm.source(WEB, None, "train")], guard_v1, vocab=8000, log=quiet)
        lm.train([lm.source(WEB, None, "train")], guard_v2, vocab=8000, log=quiet)
        harm_v1 = root / "harmful_v1"
        shutil.copytree(harm, harm_v1)
        card_v1 = harmful.calibrate_model(harm_v1, [DAVIDSON], reference=ref, guard=guard_v1, log=quiet)
        print("Davidson et al. tweets: threshold on the val split, figures on the test split (guard v2)")
        card = harmful.calibrate_model(harm, [DAVIDSON], reference=ref, guard=guard_v2, web=[WEB])
        print("\nJigsaw talk-page comments (other genre, unseen), guard v2:")
        jigsaw = harmful.evaluate(harm, [JIGSAW])
        jigsaw_v1 = harmful.evaluate(harm_v1, [JIGSAW], log=quiet)

        docs = list(read_texts([WEB]))
        texts = [d["text"] for d in docs]
        split = np.array([split_of(d["id"]) for d in docs])
        t0 = time.perf_counter()
        langid = LangidStage(LangidConfig())
        langid.setup()
        english = langid.score(texts)["language"] == "en"
        langid_rate = len(texts) / (time.perf_counter() - t0)
        harm_lm, ref_lm = LanguageModel(harm), LanguageModel(ref)
        kind = card["default"]
        assert card_v1["default"] == kind and card_v1[kind]["threshold"] == card[kind]["threshold"]
        t = card[kind]["threshold"] if kind == "contrastive" else -np.log10(card[kind]["threshold"])
        scores_v1 = harmfulness(harm_lm, ref_lm, texts, LanguageModel(guard_v1))
        scores_v2 = harmfulness(harm_lm, ref_lm, texts, LanguageModel(guard_v2))
        before = flag_score(scores_v1, kind, None) > t
        v1 = (flag_score(scores_v1, kind, card_v1["guard"]) > t) & english  # other languages never scored
        v2_guarded = flag_score(scores_v2, kind, card["guard"]) > t
        v2 = v2_guarded & english

        def rate(flags: np.ndarray, where: np.ndarray) -> str:
            return f"{flags[where].mean():.1%} ({int(flags[where].sum())}/{int(where.sum())})"

        print(f"\nweb sample: {len(texts)} pages, {english.sum()} English (langid); splits {Counter(split)}")
        print(
            "| | Davidson test macro-F1 | Jigsaw macro-F1 | English: all | val | test (held out) | val + test "
            "| other languages |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, dav, jig, flags in (
            ("before", card[kind]["test"], jigsaw[kind], before),
            ("guard v1", card_v1["guard"]["test"], jigsaw_v1[kind + " + guard"], v1),
            ("guard v2", card["guard"]["test"], jigsaw[kind + " + guard"], v2),
        ):
            parts = [english, english & (split == "val"), english & (split == "test"), english & (split != "train")]
            pages = " | ".join(rate(flags, where) for where in [*parts, ~english])
            print(f"| {name} | {dav['macro_f1']:.3f} | {jig['macro_f1']:.3f} | {pages} |")
        print(f"(guard v2 alone, without langid, on other languages: {rate(v2_guarded, ~english)})")
        print(f"guard v2 levels: {card['guard']['from']}: min_margin {card['guard']['min_margin']:.3f}")
        print(f"langid speed (lid.176.ftz, 1 process): {langid_rate:.0f} docs/s")


if __name__ == "__main__":
    main()
