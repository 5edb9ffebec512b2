"""Harmful-content perplexity on the shipped labelled data and on real web pages, before and
after language identification, the out-of-domain guard and the contrast on one scale, in one run:

    .venv/bin/python benchmarks/harmful.py

Training: Davidson et al. tweets of the `train` id split. Threshold: best macro-F1 on the `val`
split. Figures: the `test` split, the Jigsaw talk-page comments (another genre, all unseen), and
the share of the web sample flagged (benign pages, almost all: a filter that flags many of them
over-filters), split by the langid stage into English and other languages, and by the id split of
the pages: the guard model trains on `train`, the web-fitted guard level is fitted on `val`, and
`test` is held out from both.

- before: every page scored by the English models, no guard; v2's models and contrast;
- guard v2: langid first, only English pages scored (`models: {en: ...}`); harmful model order 5,
  8,000 pieces; reference: benign tweets plus Wikipedia; the contrast as each model's own per-token
  mean (`model_means`); the guard model trained on the `train` web pages, its margin raised until
  at most 2% of the `val` web pages are flagged (`calibrate --web`);
- v3 (now): as v2, with the contrast over the harmful model's tokens (`harmful_tokens`, the two
  models' vocabularies differ) and the models chosen on `val` under it: order 3, 4,000 pieces,
  reference of the benign `train` tweets only.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

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
    with TemporaryDirectory(prefix="curate-harmful-") as tmp:
        root = Path(tmp)
        harm_v2, ref_v2, harm_v3, ref_v3, guard = (root / n for n in ("harm_v2", "ref_v2", "harm", "ref", "web"))
        harmful_tweets = lm.source(DAVIDSON, {"harmful": True}, "train")
        benign_tweets = lm.source(DAVIDSON, {"harmful": False}, "train")
        lm.train([harmful_tweets], harm_v2, vocab=8000, log=quiet)
        lm.train([benign_tweets, lm.source(WIKI)], ref_v2, vocab=8000, log=quiet)
        lm.train([harmful_tweets], harm_v3, order=3, vocab=4000, log=quiet)
        lm.train([benign_tweets], ref_v3, order=3, vocab=4000, log=quiet)
        lm.train([lm.source(WEB, None, "train")], guard, vocab=8000, log=quiet)
        common = {"guard": guard, "web": [WEB]}
        print("Davidson et al. tweets, guard v2: threshold on the val split, figures on the test split")
        card_v2 = harmful.calibrate_model(harm_v2, [DAVIDSON], reference=ref_v2, contrast="model_means", **common)
        print("\nDavidson et al. tweets, v3 (now)")
        card = harmful.calibrate_model(harm_v3, [DAVIDSON], reference=ref_v3, **common)
        print("\nJigsaw talk-page comments (other genre, unseen), guard v2:")
        jigsaw_v2 = harmful.evaluate(harm_v2, [JIGSAW])
        print("\nJigsaw talk-page comments, v3 (now):")
        jigsaw = harmful.evaluate(harm_v3, [JIGSAW])

        docs = list(read_texts([WEB]))
        texts = [d["text"] for d in docs]
        split = np.array([split_of(d["id"]) for d in docs])
        t0 = time.perf_counter()
        langid = LangidStage(LangidConfig())
        langid.setup()
        english = langid.score(texts)["language"] == "en"
        langid_rate = len(texts) / (time.perf_counter() - t0)
        guard_lm = LanguageModel(guard)

        def flags(model: Path, ref: Path, card: dict, guarded: bool) -> np.ndarray:
            kind = card["default"]
            t = card[kind]["threshold"] if kind == "contrastive" else -np.log10(card[kind]["threshold"])
            scores = harmfulness(LanguageModel(model), LanguageModel(ref), texts, guard_lm)
            return flag_score(scores, kind, card["guard"] if guarded else None) > t

        before = flags(harm_v2, ref_v2, card_v2, guarded=False)
        v2 = flags(harm_v2, ref_v2, card_v2, guarded=True)
        v3 = flags(harm_v3, ref_v3, card, guarded=True)

        def rate(flagged: np.ndarray, where: np.ndarray) -> str:
            return f"{flagged[where].mean():.1%} ({int(flagged[where].sum())}/{int(where.sum())})"

        print(f"\nweb sample: {len(texts)} pages, {english.sum()} English (langid); splits {Counter(split)}")
        print(
            "| | Davidson test macro-F1 | Jigsaw macro-F1 | English: all | val | test (held out) | val + test "
            "| other languages |"
        )
        print("|---|---|---|---|---|---|---|---|")
        kind_v2, kind = card_v2["default"], card["default"]
        for name, dav, jig, flagged, scored in (
            ("before", card_v2[kind_v2]["test"], jigsaw_v2[kind_v2], before, np.ones(len(texts), bool)),
            ("guard v2", card_v2["guard"]["test"], jigsaw_v2[kind_v2 + " + guard"], v2, english),
            ("v3 (now)", card["guard"]["test"], jigsaw[kind + " + guard"], v3, english),
        ):
            flagged = flagged & scored  # with langid, other languages never reach the English models
            parts = [english, english & (split == "val"), english & (split == "test"), english & (split != "train")]
            pages = " | ".join(rate(flagged, where) for where in [*parts, ~english])
            print(f"| {name} | {dav['macro_f1']:.3f} | {jig['macro_f1']:.3f} | {pages} |")
        print(f"(v3 alone, without langid, on other languages: {rate(v3, ~english)})")
        for name, c in (("guard v2", card_v2), ("v3", card)):
            print(f"{name} levels: {c['guard']['from']}: min_margin {c['guard']['min_margin']:.3f}")
        print(f"langid speed (lid.176.ftz, 1 process): {langid_rate:.0f} docs/s")


if __name__ == "__main__":
    main()
