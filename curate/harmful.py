"""`curate kenlm calibrate`: score labelled documents under the harmful model (and a benign
reference), pick thresholds on the validation split, measure them on the test split, and write
them into the model card. The score with the better validation macro-F1 becomes the default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate import calibrate
from curate.documents import read_texts
from curate.lm import LanguageModel, perplexity
from curate.splits import split_of


def load_labeled(paths: list[str], label_field: str, exclude_split: str | None = "train") -> tuple[list[str], np.ndarray, list[str]]:
    """Texts, boolean labels and split names of labelled documents; documents of `exclude_split`
    (the part models are trained on) and documents without a boolean label are left out."""
    texts, labels, splits = [], [], []
    for doc in read_texts(paths):
        label = doc.get(label_field)
        split = split_of(doc["id"])
        if not isinstance(label, bool) or split == exclude_split:
            continue
        texts.append(doc["text"])
        labels.append(label)
        splits.append(split)
    if not texts:
        raise ValueError(f"no documents with a true/false `{label_field}` field outside the {exclude_split} split in {paths}")
    return texts, np.asarray(labels), splits


def calibrate_model(model_dir: str | Path, labeled: list[str], label_field: str = "harmful", reference: str | Path | None = None, candidates: int = 200, log=print) -> dict:
    texts, labels, splits = load_labeled(labeled, label_field)
    split = np.asarray(splits)
    val, test = split == "val", split == "test"
    log(f"scoring {len(texts)} labelled documents ({val.sum()} validation, {test.sum()} test)")
    lm = LanguageModel(model_dir)
    ref = LanguageModel(reference) if reference else None
    scores = harmfulness(lm, ref, texts)
    by_kind = {"perplexity": -np.log10(scores["harmful_ppl"])}
    if ref is not None:
        by_kind["contrastive"] = scores["harmful_score"]
    results = {}
    for kind, h in by_kind.items():
        threshold, val_metrics = calibrate.sweep(h[val], labels[val], candidates)
        test_metrics = calibrate.metrics(h[test], labels[test], threshold)
        entry = {
            "threshold": float(10.0 ** (-threshold)) if kind == "perplexity" else threshold,
            "validation": calibrate.as_dict(val_metrics),
            "test": calibrate.as_dict(test_metrics),
            "candidates": candidates,
            "labeled": [str(p) for p in labeled],
        }
        if kind == "contrastive":
            entry["reference"] = str(Path(reference).resolve())
        results[kind] = entry
    default = max(results, key=lambda k: results[k]["validation"]["macro_f1"])
    lm.card.setdefault("thresholds", {})["harmful"] = {"default": default, **results}
    lm.save_card()
    log(format_table(results, default))
    return lm.card["thresholds"]["harmful"]


def calibrate_valley(model_dir: str | Path, unlabeled: list[str], log=print) -> dict:
    """Without labels: the threshold at the valley of the bimodal log-perplexity histogram."""
    lm = LanguageModel(model_dir)
    sums, tokens = lm.score_many(doc["text"] for doc in read_texts(unlabeled))
    t = calibrate.valley(sums / tokens)
    entry = {"threshold": float(10.0 ** (-t)), "from": "valley of the log-perplexity histogram", "unlabeled": [str(p) for p in unlabeled]}
    lm.card.setdefault("thresholds", {})["harmful"] = {"default": "perplexity", "perplexity": entry}
    lm.save_card()
    flagged = int(np.sum(sums / tokens > t))
    log(f"threshold at the histogram valley: perplexity {entry['threshold']:.4g}; {flagged} of {len(sums)} documents fall below it")
    return lm.card["thresholds"]["harmful"]


def evaluate(model_dir: str | Path, labeled: list[str], label_field: str = "harmful", log=print) -> dict:
    """Metrics of the card's thresholds on other labelled files (all of them: nothing of these
    files was used for training or calibration)."""
    lm = LanguageModel(model_dir)
    card = lm.card["thresholds"]["harmful"]
    texts, labels, _ = load_labeled(labeled, label_field, exclude_split=None)
    ref = LanguageModel(card["contrastive"]["reference"]) if "contrastive" in card else None
    scores = harmfulness(lm, ref, texts)
    out = {"perplexity": calibrate.as_dict(calibrate.metrics(-np.log10(scores["harmful_ppl"]), labels, -np.log10(card["perplexity"]["threshold"])))}
    if ref is not None:
        out["contrastive"] = calibrate.as_dict(calibrate.metrics(scores["harmful_score"], labels, card["contrastive"]["threshold"]))
    for kind, m in out.items():
        log(f"{kind:12s} on {', '.join(map(str, labeled))}: precision {m['precision']:.3f} recall {m['recall']:.3f} F1 {m['f1']:.3f} macro-F1 {m['macro_f1']:.3f} (n={m['n']}, harmful={m['positives']})")
    return out


def format_table(results: dict, default: str) -> str:
    lines = [f"{'score':12s} {'threshold':>10s} {'val macro-F1':>12s} {'test P':>7s} {'test R':>7s} {'test F1':>7s} {'test macro-F1':>13s}"]
    for kind, r in results.items():
        t = r["test"]
        mark = "  <- default" if kind == default else ""
        lines.append(f"{kind:12s} {r['threshold']:10.4g} {r['validation']['macro_f1']:12.3f} {t['precision']:7.3f} {t['recall']:7.3f} {t['f1']:7.3f} {t['macro_f1']:13.3f}{mark}")
    return "\n".join(lines)


def harmfulness(lm: LanguageModel, reference: LanguageModel | None, texts: list[str]) -> dict[str, np.ndarray]:
    """Perplexities and the harmfulness score (higher = more harmful): the contrastive
    log10-probability difference when a reference is given, else minus log10 perplexity."""
    log10_sum, tokens = lm.score_many(texts)
    harm_lp = log10_sum / tokens  # per-token log10 probability, = -log10 ppl
    out = {"harmful_ppl": perplexity(log10_sum, tokens)}
    if reference is not None:
        ref_sum, ref_tokens = reference.score_many(texts)
        ref_lp = ref_sum / ref_tokens
        out["harmful_ref_ppl"] = perplexity(ref_sum, ref_tokens)
        out["harmful_score"] = harm_lp - ref_lp
    else:
        out["harmful_ref_ppl"] = np.full(len(texts), np.nan)
        out["harmful_score"] = harm_lp
    return out
