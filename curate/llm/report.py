"""The LLM stages' part of a run's report: DataMan rating distributions per criterion and domain,
and original documents beside their WRAP rephrases."""

from __future__ import annotations

import html

import polars as pl

from curate.llm.prompts import CRITERIA, DATAMAN_DOMAINS


def section(
    scores: pl.DataFrame, kept: pl.DataFrame, rejected: pl.DataFrame, synthetic: pl.DataFrame, samples: int
) -> dict | None:
    """JSON-ready figures, or None when the run had no LLM stage (the frames: a run's rows, with
    a `snippet` instead of the text)."""
    out: dict = {}
    if "dataman_overall" in scores.columns:
        rated = scores.filter(pl.col("dataman_overall").is_not_null())
        out["rated"], out["unrated"] = (
            len(rated),
            int(scores.filter(pl.col("error").is_null())["dataman_overall"].is_null().sum()),
        )
        out["criteria"] = {c: [int((rated[f"dataman_{c}"] == s).sum()) for s in range(1, 6)] for c in CRITERIA}
        out["domains"] = {
            f"{k} {DATAMAN_DOMAINS[k]}": n for k, n in sorted(rated["dataman_domain"].value_counts().iter_rows())
        }
    if len(synthetic):
        originals = pl.concat([kept, rejected], how="diagonal_relaxed").select(
            pl.col("id").alias("parent_id"), pl.col("snippet").alias("original")
        )
        pairs = synthetic.join(originals, on="parent_id").sort("id").head(samples)
        out["rephrases"] = pairs.select(
            "parent_id", "wrap_style", "wrap_model", "original", pl.col("snippet").alias("rephrase")
        ).to_dicts()
    return out or None


def render(data: dict | None) -> str:
    if not data:
        return ""
    parts = []
    if "criteria" in data:
        head = "".join(f"<th>{s}</th>" for s in range(1, 6))
        rows = "".join(
            f"<tr><td>{c}</td>" + "".join(f"<td>{n}</td>" for n in counts) + "</tr>"
            for c, counts in data["criteria"].items()
        )
        domains = "".join(f"<tr><td>{html.escape(d)}</td><td>{n}</td></tr>" for d, n in data["domains"].items())
        parts.append(
            f"<h3>DataMan ratings ({data['rated']} rated, {data['unrated']} unrated)</h3>"
            f"<table><tr><th>criterion</th>{head}</tr>{rows}</table>"
            f"<table><tr><th>domain</th><th>documents</th></tr>{domains}</table>"
        )
    for p in data.get("rephrases", []):
        parts.append(
            f"<div class='doc'><div class='meta'><b>{html.escape(p['parent_id'])}</b> · "
            f"WRAP {html.escape(p['wrap_style'])} by {html.escape(p['wrap_model'])}</div>"
            f"<table class='text'><tr><th>original</th><th>rephrase</th></tr>"
            f"<tr><td><pre>{html.escape(p['original'] or '')}</pre></td>"
            f"<td><pre>{html.escape(p['rephrase'] or '')}</pre></td></tr></table></div>"
        )
    return "<h2>LLM stages</h2>" + "".join(parts)
