"""A fast rater learned from the LLM's ratings (beyond the papers): hashed word n-grams (no
vocabulary to store) and one logistic-regression classifier (SGD) per criterion and for the domain, so a
whole corpus can be rated on CPUs. `distill` fits it on rated documents and measures its agreement
with the LLM on held-out ones; `DistilledActor` is the `rate` stage's `backend: distilled`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import polars as pl
import pyarrow as pa
from scipy.stats import spearmanr
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier

from curate.llm.chunking import head_and_tail
from curate.llm.dataman import DATAMAN_COLUMNS
from curate.llm.prompts import CRITERIA
from curate.tokenizer import load_tokenizer

TARGETS = ("domain", *CRITERIA)
CARD = "distilled.json"
MODELS = "classifiers.joblib"


def features() -> HashingVectorizer:
    """Word unigrams and bigrams hashed into 2^20 columns (character n-grams were tried: 7x
    slower on the OpenWebText sample)."""
    return HashingVectorizer(ngram_range=(1, 2), n_features=2**20, alternate_sign=False, norm="l2")


def _column(target: str) -> str:
    return f"dataman_{target}"


def _classifier(labels: np.ndarray, seed: int):
    if len(np.unique(labels)) < 2:  # one class seen: predicting it is all a classifier could learn
        return DummyClassifier(strategy="most_frequent")
    return SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=30, tol=None, random_state=seed)


def read_ratings(paths: list[str]) -> pl.DataFrame:
    """Rated documents (text and dataman columns) from run outputs or Parquet files."""
    files = [f for p in paths for f in (sorted(Path(p).glob("**/*.parquet")) if Path(p).is_dir() else [Path(p)])]
    files = [f for f in files if "quarantine" not in f.parts and "work" not in f.parts]
    cols = ["id", "text", *(_column(t) for t in TARGETS)]
    frames = [pl.read_parquet(f).select(cols) for f in files if set(cols) <= set(pl.read_parquet_schema(f))]
    if not frames:
        raise ValueError(f"no rated documents (columns {cols}) under {paths}")
    return (
        pl.concat(frames, how="vertical_relaxed")
        .filter(pl.col("dataman_overall").is_not_null())
        .unique("id", keep="first")
        .sort("id")
    )


def distill(paths: list[str], out: str, test_fraction: float = 0.2, seed: int = 1024) -> dict[str, Any]:
    """Fit on a fixed share of the rated documents, measure on the rest, then refit on all."""
    df = read_ratings(paths)
    if len(df) < 5:
        raise ValueError(f"only {len(df)} rated documents: distilling needs at least 5")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(df), bool)
    test[rng.permutation(len(df))[: max(1, round(test_fraction * len(df)))]] = True
    vec = features()
    x = vec.transform(df["text"].to_list())
    agreement = {}
    for target in TARGETS:
        y = df[_column(target)].to_numpy()
        pred = _classifier(y[~test], seed).fit(x[~test], y[~test]).predict(x[test])
        row = {"accuracy": round(float(np.mean(pred == y[test])), 4)}
        if target != "domain":
            rho = (
                spearmanr(pred.astype(float), y[test].astype(float)).statistic
                if len(set(y[test])) > 1 and len(set(pred)) > 1
                else float("nan")
            )
            row["spearman"] = None if np.isnan(rho) else round(float(rho), 4)
        agreement[target] = row
    models = {t: _classifier(df[_column(t)].to_numpy(), seed).fit(x, df[_column(t)].to_numpy()) for t in TARGETS}
    Path(out).mkdir(parents=True, exist_ok=True)
    joblib.dump(models, Path(out) / MODELS)
    card = {
        "trained_on": paths,
        "documents": len(df),
        "held_out": int(test.sum()),
        "seed": seed,
        "agreement_with_llm": agreement,
    }
    (Path(out) / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card


class DistilledRater:
    def __init__(self, path: str):
        self.models = joblib.load(Path(path) / MODELS)
        self.vec = features()

    def rate(self, texts: list[str]) -> dict[str, np.ndarray]:
        x = self.vec.transform(texts)
        return {_column(t): self.models[t].predict(x) for t in TARGETS}


class DistilledActor:
    """Ray actor: the distilled rater with the same output columns as the LLM rater."""

    def __init__(self, path: str, tokenizer: str, keep: int):
        self.rater = DistilledRater(path)
        self.tokenizer, self.keep = load_tokenizer(tokenizer), keep

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid = np.array([e is None for e in batch["error"].to_pylist()], bool)
        texts = [t for t, ok in zip(batch["text"].to_pylist(), valid) if ok]
        ratings = self.rater.rate(texts) if texts else {}
        lengths = [head_and_tail(t, self.tokenizer, self.keep)[1] for t in texts]
        for name in DATAMAN_COLUMNS:
            typ = pa.string() if name == "dataman_domain" else pa.int8()
            batch = batch.append_column(name, _spread(ratings.get(name, []), valid, typ))
        batch = batch.append_column("dataman_tokens", _spread(lengths, valid, pa.int64()))
        batch = batch.append_column("dataman_answer", pa.nulls(len(batch), pa.large_string()))
        return batch.append_column("dataman_error", pa.nulls(len(batch), pa.string()))


def _spread(values, valid: np.ndarray, typ: pa.DataType) -> pa.Array:
    """Values for the valid rows, null for the others."""
    it = iter(np.asarray(values).tolist())
    return pa.array([next(it) if ok else None for ok in valid], typ)
