"""`curate kenlm calibrate`: score labelled documents under the harmful model (and a benign
reference), pick thresholds on the validation split, measure them on the test split, and write
them into the model card. The score with the better validation macro-F1 becomes the default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate import calibrate, storage
from curate.documents import read_texts
from curate.lm import LanguageModel, perplexity
from curate.normalize import DocumentLines
from curate.splits import split_of

WEB_FLAGGED = 0.02  # default: at most this share of the benign web pages of the val split flagged

# How the harmful model's log-probability is set against another model's (the reference: the
# contrastive score; the guard model: the guard margin). The two models cut the text with their
# own SentencePiece vocabularies, so their per-token means are not on one scale: a word the harmful
# model keeps whole and the reference cuts in three shifts the means apart whatever the two
# probabilities. `harmful_tokens` divides the document's log10-probability difference (a
# likelihood ratio) by the harmful model's token count; `model_means` subtracts each model's own
# per-token mean, as cards calibrated before the contrast was recorded do.
CONTRASTS = ("harmful_tokens", "model_means")
CONTRAST = "harmful_tokens"


def load_labeled(
    paths: list[str], label_field: str, exclude_split: str | None = "train"
) -> tuple[list[str], np.ndarray, list[str]]:
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
        raise ValueError(
            f"no documents with a true/false `{label_field}` field outside the {exclude_split} split in {paths}"
        )
    return texts, np.asarray(labels), splits


def calibrate_model(
    model_dir: str | Path,
    labeled: list[str],
    label_field: str = "harmful",
    reference: str | Path | None = None,
    candidates: int = 200,
    log=print,
    guard: str | Path | None = None,
    web: list[str] | None = None,
    web_flagged: float | None = WEB_FLAGGED,
    contrast: str = CONTRAST,
) -> dict:
    """Thresholds on the val split, figures on the test split; the out-of-domain guard's levels
    from the harmful val documents (`guard`: a benign model that knows the filtered genre, e.g.
    web pages trained on their `train` split). With `web` (unlabelled, almost all benign pages of
    that genre) and a guard model, the guard's margin is raised until at most `web_flagged` of
    their `val` split is flagged; the share flagged is reported on their val and test splits.
    Both differences are taken as `contrast` (one of CONTRASTS) says, and the card records it."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    texts, labels, splits = load_labeled(labeled, label_field)
    split = np.asarray(splits)
    val, test = split == "val", split == "test"
    log(f"scoring {len(texts)} labelled documents ({val.sum()} validation, {test.sum()} test)")
    lm = LanguageModel(model_dir)
    ref = LanguageModel(reference) if reference else None
    guard_lm = LanguageModel(guard) if guard else None
    scores = harmfulness(lm, ref, texts, guard_lm, contrast)
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
            entry["reference"] = str(storage.absolute(reference))
        results[kind] = entry
    default = max(results, key=lambda k: results[k]["validation"]["macro_f1"])
    levels = guard_levels(scores, val & labels, guard)
    unguarded = results[default]
    t = _oriented(unguarded["threshold"], default)
    if web:
        web_docs = list(read_texts(web))
        web_split = np.asarray([split_of(doc["id"]) for doc in web_docs])
        web_scores = harmfulness(lm, ref, [doc["text"] for doc in web_docs], guard_lm, contrast)
        if guard_lm is not None and web_flagged is not None:
            levels = fit_web_margin(levels, web_scores, web_split == "val", default, t, web_flagged)
    flags, parts = flag_score(scores, default, levels), (("validation", val), ("test", test))
    measured = {part: calibrate.as_dict(calibrate.metrics(flags[rows], labels[rows], t)) for part, rows in parts}
    guarded = {**unguarded, **measured}
    thresholds = {"default": default, "contrast": contrast, **results, "guard": {**levels, **measured}}
    lm.card.setdefault("thresholds", {})["harmful"] = thresholds
    lm.save_card()
    log(format_table({**results, f"{default} + guard": guarded}, default))
    if web:
        log(f"unlabelled web text ({len(web_docs)} documents of {', '.join(web)}) flagged:")
        for part, note in (("val", ", the guard's margin fitted here" if "web" in levels else ""), ("test", "")):
            pages = web_split == part
            if not pages.any():
                continue
            bare, kept = (np.mean((flag_score(web_scores, default, g) > t)[pages]) for g in (None, levels))
            log(f"  {part} split ({int(pages.sum())} pages{note}): {bare:.1%} without the guard, {kept:.1%} with it")
    return lm.card["thresholds"]["harmful"]


GUARD_QUANTILES = (2.0, 99.0)  # of the harmful val documents: lowest guard margin, highest harmful perplexity


def fit_web_margin(
    levels: dict, scores: dict[str, np.ndarray], pages: np.ndarray, kind: str, threshold: float, share: float
) -> dict:
    """The guard's margin level raised, if need be, until at most `share` of the web `pages` (the
    val split of unlabelled pages of the filtered genre, taken as benign) are flagged: the level
    falls halfway between the margin of the first page over the share and the next higher one.
    The harmful documents' own level is a floor, so the guard never gets weaker than it was."""
    if not 0 <= share < 1:
        raise ValueError(f"the share of web pages flagged must lie in [0, 1), got {share}")
    n = int(pages.sum())
    if n == 0:
        raise ValueError("no web page falls in the val split: give more unlabelled web pages to fit the guard on")
    over = (flag_score(scores, kind, {"max_harmful_ppl": levels["max_harmful_ppl"]}) > threshold)[pages]
    margins = np.sort(scores["harmful_guard_margin"][pages][over])[::-1]
    allowed = int(np.floor(share * n))
    floor = levels["min_margin"]
    level = floor
    if np.sum(margins >= floor) > allowed:
        higher = margins[margins > margins[allowed]]
        level = (margins[allowed] + higher.min()) / 2 if len(higher) else float(np.nextafter(margins[allowed], np.inf))
    web = {"pages": n, "share": share, "floor": floor}
    how = f"; min_margin at least what flags at most {share:.1%} of {n} val-split web pages"
    return {**levels, "min_margin": float(level), "web": web, "from": levels["from"] + how}


def guard_levels(scores: dict[str, np.ndarray], harmful_val: np.ndarray, guard: str | Path | None) -> dict:
    """Out-of-domain levels met by all but a few of the known harmful documents: the harmful
    model's perplexity (text it finds less familiar is another genre or language), and with a
    guard model, how much better the harmful model explains the text than a benign model of the
    filtered genre does (a web page that a web model explains better is no tweet-like abuse)."""
    low, high = GUARD_QUANTILES
    levels = {"max_harmful_ppl": float(np.percentile(scores["harmful_ppl"][harmful_val], high))}
    if guard is not None:
        levels["reference"] = str(storage.absolute(guard))
        levels["min_margin"] = float(np.percentile(scores["harmful_guard_margin"][harmful_val], low))
    levels["from"] = f"percentiles {low:g}/{high:g} of the {int(harmful_val.sum())} harmful validation documents"
    return levels


def familiar(scores: dict[str, np.ndarray], levels: dict | None) -> np.ndarray:
    """True where the guard lets the score decide (no levels: everywhere)."""
    ok = np.ones(len(scores["harmful_ppl"]), dtype=bool)
    if levels:
        ok &= scores["harmful_ppl"] <= levels["max_harmful_ppl"]
        if "min_margin" in levels:
            ok &= scores["harmful_guard_margin"] >= levels["min_margin"]
    return ok


def flag_score(scores: dict[str, np.ndarray], kind: str, levels: dict | None) -> np.ndarray:
    """The harmfulness of `kind` (higher = more harmful), -inf where the guard abstains."""
    h = scores["harmful_score"] if kind == "contrastive" else -np.log10(scores["harmful_ppl"])
    return np.where(familiar(scores, levels), h, -np.inf)


def _oriented(threshold: float, kind: str) -> float:
    """A card threshold on the higher-is-harmful scale of `flag_score`."""
    return threshold if kind == "contrastive" else -np.log10(threshold)


def calibrate_valley(model_dir: str | Path, unlabeled: list[str], log=print) -> dict:
    """Without labels: the threshold at the valley of the bimodal log-perplexity histogram."""
    lm = LanguageModel(model_dir)
    sums, tokens = lm.score_many(doc["text"] for doc in read_texts(unlabeled))
    t = calibrate.valley(sums / tokens)
    entry = {
        "threshold": float(10.0 ** (-t)),
        "from": "valley of the log-perplexity histogram",
        "unlabeled": [str(p) for p in unlabeled],
    }
    calibrated = {"default": "perplexity", "contrast": CONTRAST, "perplexity": entry}
    lm.card.setdefault("thresholds", {})["harmful"] = calibrated
    lm.save_card()
    flagged = int(np.sum(sums / tokens > t))
    log(
        f"threshold at the histogram valley: perplexity {entry['threshold']:.4g}; "
        f"{flagged} of {len(sums)} documents fall below it"
    )
    return lm.card["thresholds"]["harmful"]


def evaluate(model_dir: str | Path, labeled: list[str], label_field: str = "harmful", log=print) -> dict:
    """Metrics of the card's thresholds on other labelled files (all of them: nothing of these
    files was used for training or calibration)."""
    lm = LanguageModel(model_dir)
    card = lm.card["thresholds"]["harmful"]
    texts, labels, _ = load_labeled(labeled, label_field, exclude_split=None)
    ref = LanguageModel(card["contrastive"]["reference"]) if "contrastive" in card else None
    levels = card.get("guard")
    guard = LanguageModel(levels["reference"]) if levels and "reference" in levels else None
    scores = harmfulness(lm, ref, texts, guard)
    out = {}
    for kind in calibrate.SCORES if ref is not None else ("perplexity",):
        t = _oriented(card[kind]["threshold"], kind)
        out[kind] = calibrate.as_dict(calibrate.metrics(flag_score(scores, kind, None), labels, t))
        if levels and kind == card["default"]:
            out[f"{kind} + guard"] = calibrate.as_dict(calibrate.metrics(flag_score(scores, kind, levels), labels, t))
    for kind, m in out.items():
        log(
            f"{kind:20s} on {', '.join(map(str, labeled))}: precision {m['precision']:.3f} recall {m['recall']:.3f} "
            f"F1 {m['f1']:.3f} macro-F1 {m['macro_f1']:.3f} (n={m['n']}, harmful={m['positives']})"
        )
    return out


def format_table(results: dict, default: str) -> str:
    lines = [
        f"{'score':20s} {'threshold':>10s} {'val macro-F1':>12s} "
        f"{'test P':>7s} {'test R':>7s} {'test F1':>7s} {'test macro-F1':>13s}"
    ]
    for kind, r in results.items():
        t = r["test"]
        mark = "  <- default" if kind == default else ""
        lines.append(
            f"{kind:20s} {r['threshold']:10.4g} {r['validation']['macro_f1']:12.3f} "
            f"{t['precision']:7.3f} {t['recall']:7.3f} {t['f1']:7.3f} {t['macro_f1']:13.3f}{mark}"
        )
    return "\n".join(lines)


def contrast_of(card: dict) -> str:
    """The contrast a harmful model's thresholds were calibrated with: CONTRAST for an
    uncalibrated model, `model_means` for a calibration made before the contrast was recorded."""
    calibrated = card.get("thresholds", {}).get("harmful")
    return calibrated.get("contrast", "model_means") if calibrated else CONTRAST


def harmfulness(
    lm: LanguageModel,
    reference: LanguageModel | None,
    texts: list[str],
    guard: LanguageModel | None = None,
    contrast: str | None = None,
) -> dict[str, np.ndarray]:
    """Perplexities and the harmfulness score (higher = more harmful): the contrastive
    log10-probability difference when a reference is given, else minus log10 perplexity; with a
    guard model, the same difference against it (`harmful_guard_margin`, NaN without). Both
    differences are taken as `contrast` says (default: what the harmful model's card was
    calibrated with, `contrast_of`). The texts are cut into lines and normalised once for all models."""
    contrast = contrast or contrast_of(lm.card)
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r} (model {lm.dir})")
    lines = DocumentLines.of(texts)
    log10_sum, tokens = lm.score_lines(lines)
    out = {"harmful_ppl": perplexity(log10_sum, tokens)}
    out["harmful_guard_margin"], out["harmful_ref_ppl"] = np.full((2, len(texts)), np.nan)  # NaN without the model
    others = {"harmful_guard_margin": guard, "harmful_score": reference}
    for column, other in others.items():
        if other is None:
            continue
        other_sum, other_tokens = other.score_lines(lines)
        if contrast == "harmful_tokens":
            out[column] = (log10_sum - other_sum) / tokens
        else:
            out[column] = log10_sum / tokens - other_sum / other_tokens
        if column == "harmful_score":
            out["harmful_ref_ppl"] = perplexity(other_sum, other_tokens)
    if reference is None:
        out["harmful_score"] = log10_sum / tokens  # per-token log10 probability, = -log10 ppl
    return out
