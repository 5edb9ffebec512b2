"""A run's report: `report.json` for machines and a self-contained `report.html` for people
(counts per stage and source, score histograms with the thresholds drawn, sample documents
from each bucket and from the rejected and quarantined, time per stage)."""

from __future__ import annotations

import base64
import html
import io
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from curate.llm import report as llm_report  # noqa: E402
from curate.stages import Plot, Stage  # noqa: E402
from curate.storage import Location, join, write_text  # noqa: E402
from pipelines.result import RunResult  # noqa: E402


def write(out_dir: Location, manifest: dict, result: RunResult, stages: list[Stage], samples: int) -> dict:
    scores = result.scores
    data = {
        "job": manifest["job"],
        "counts": {k: manifest[k] for k in ("input", "kept", "rejected", "quarantined")},
        "sources": manifest["sources"],
        "stages": manifest["stages"],
        "seconds": manifest["seconds"],
        "histograms": _histograms(
            scores, [p for stage, params in zip(stages, result.params) for p in stage.plots(params)]
        ),
        "languages": _languages(result),
        "samples": _samples(result, manifest["stages"], samples),
        "index": manifest.get("index"),
        "llm": llm_report.section(scores, result.kept, result.rejected, result.synthetic, samples),
    }
    write_text(join(out_dir, "report.json"), json.dumps(data, indent=2, ensure_ascii=False, default=float) + "\n")
    write_text(join(out_dir, "report.html"), _html(data))
    return data


def _histograms(scores: pl.DataFrame, plots: list[Plot]) -> dict:
    """Histograms of the columns the stages plot, with their thresholds on the same axis (log10
    for perplexities)."""
    out = {}
    for plot in plots:
        col, lines, log = plot.column, dict(plot.lines), plot.log
        rows = scores.filter(pl.col(col).is_not_null()) if len(scores) else scores
        if plot.language is not None and len(rows):
            rows = rows.filter(pl.col("language") == plot.language)
        values = rows[col].to_numpy() if len(rows) else np.empty(0)
        if log:
            values = np.log10(np.maximum(values, 1e-12))
            lines = {k: float(np.log10(v)) for k, v in lines.items() if v and v > 0}
        if not len(values):
            continue
        counts, edges = np.histogram(values, bins=40)
        name = col if plot.language is None else f"{col} [{plot.language}]"
        axis = f"log10 {col}" if log else col
        out[name] = {"axis": axis, "counts": counts.tolist(), "edges": edges.tolist(), "lines": lines}
    return out


def _languages(result: RunResult) -> dict:
    """Per language (the langid stage's `language`): documents, kept, rejected per stage."""
    kept, rejected = result.kept, result.rejected
    if "language" not in kept.columns and "language" not in rejected.columns:
        return {}
    out: dict[str, dict] = {}
    kept_rows = kept.group_by("language").len().rows() if "language" in kept.columns else []
    rejected_rows = rejected.group_by("language", "reject_stage").len().rows() if "language" in rejected.columns else []
    for lang, stage, n in [(lang, None, n) for lang, n in kept_rows] + rejected_rows:
        entry = out.setdefault(lang, {"input": 0, "kept": 0, "rejected": {}})
        entry["input"] += n
        if stage is None:
            entry["kept"] = n
        else:
            entry["rejected"][stage] = n
    return dict(sorted(out.items(), key=lambda item: -item[1]["input"]))


def _samples(result: RunResult, stages: list[dict], n: int) -> dict:
    def pick(frame: pl.DataFrame, cols: list[str]) -> list[dict]:
        if not len(frame):
            return []
        frame = frame.with_columns(_h=pl.col("id").hash(seed=0)).sort("_h").head(n)
        return frame.select([c for c in cols if c in frame.columns]).to_dicts()

    kept = result.kept
    out: dict[str, list[dict]] = {}
    if "ppl_bucket" in kept.columns:
        for bucket in ("head", "middle", "tail"):
            out[f"kept, bucket {bucket}"] = pick(
                kept.filter(pl.col("ppl_bucket") == bucket), ["id", "source", "ppl", "snippet"]
            )
    else:
        out["kept"] = pick(kept, ["id", "source", "snippet"])
    rejected = result.rejected
    for stage in stages:
        if len(rejected):
            out[f"rejected by {stage['stage']}"] = pick(
                rejected.filter(pl.col("reject_stage") == stage["stage"]), ["id", "source", "reject_reason", "snippet"]
            )
    out["quarantined"] = pick(result.quarantine, ["id", "source", "error", "snippet"])
    return out


def _plot(hist: dict) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=100)
    edges = np.asarray(hist["edges"])
    ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="#5b8def", edgecolor="white")
    for i, (label, x) in enumerate(hist["lines"].items()):
        ax.axvline(x, color=["#d62728", "#ff7f0e", "#2ca02c"][i % 3], linestyle="--", label=f"{label} ({x:.2f})")
    ax.set_xlabel(hist["axis"])
    ax.set_ylabel("documents")
    if hist["lines"]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _params(stage: dict) -> str:
    def show(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return ", ".join(f"{k} {show(x)}" for k, x in v.items())
        if isinstance(v, list):
            return ", ".join(map(show, v))
        return str(v)

    return "; ".join(f"{k}: {show(v)}" for k, v in stage.items() if k != "stage" and v is not None)


def _table(rows: list[list], header: list[str], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{css}'><tr>{head}</tr>{body}</table>"


def _html(data: dict) -> str:
    stage_names = [s["stage"] for s in data["stages"]]
    header = ["source", "input", "kept"] + [f"rejected: {s}" for s in stage_names] + ["quarantined"]

    def row(name, c):
        return [name, c["input"], c["kept"]] + [c["rejected"].get(s, 0) for s in stage_names] + [c["quarantined"]]

    counts = _table([row("all", data["counts"])] + [row(k, v) for k, v in data["sources"].items()], header)
    if data.get("languages"):
        languages = data["languages"].items()
        lang_rows = [[k, v["input"], v["kept"]] + [v["rejected"].get(s, 0) for s in stage_names] for k, v in languages]
        counts += "<h3>By language (langid)</h3>" + _table(lang_rows, ["language", "documents", "kept"] + header[3:-1])
    stages = _table([[s["stage"], _params(s)] for s in data["stages"]], ["stage", "parameters"], css="text")
    seconds = _table([[k, v] for k, v in data["seconds"].items()], ["step", "seconds (summed over workers)"])
    plots = "".join(
        f"<h3>{html.escape(col)}</h3><img alt='{html.escape(col)} histogram' src='data:image/png;base64,{_plot(h)}'>"
        for col, h in data["histograms"].items()
    )
    index = ""
    if data["index"]:
        card, dedup = data["index"]["card"], data["index"].get("dedup")
        rows = [
            ["index", data["index"]["dir"]],
            ["tokens", f"{card['tokens']:,}"],
            ["documents", f"{card['documents']:,}"],
            ["shards", card["shards"]],
            ["build seconds", card["build_seconds"]],
        ]
        if dedup:
            rows += [[f"dedup: {k.replace('_', ' ')}", v] for k, v in dedup.items()]
        index = "<h2>Index</h2>" + _table(rows, ["", "value"])
    samples = ""
    for group, docs in data["samples"].items():
        if not docs:
            continue
        samples += f"<h3>{html.escape(group)}</h3>"
        for d in docs:
            fields = " · ".join(
                f"<b>{html.escape(k)}</b> {html.escape(str(round(v, 1) if isinstance(v, float) else v))}"
                for k, v in d.items()
                if k != "snippet"
            )
            samples += (
                f"<div class='doc'><div class='meta'>{fields}</div>"
                f"<pre>{html.escape(str(d.get('snippet') or ''))}</pre></div>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}table.text td{text-align:left}"
        "td:first-child,th:first-child{text-align:left}.doc{border:1px solid #ddd;margin:.5em 0;padding:.5em}"
        ".meta{font-size:.85em;color:#555}pre{white-space:pre-wrap;font-size:.85em;max-height:12em;overflow:auto}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>curate report: {html.escape(data['job'])}</title>"
        f"<style>{style}</style></head><body><h1>curate report: {html.escape(data['job'])}</h1>"
        f"<h2>Documents</h2>{counts}<h2>Stages</h2>{stages}<h2>Scores</h2>{plots}"
        f"{index}{llm_report.render(data.get('llm'))}<h2>Time</h2>{seconds}<h2>Samples</h2>{samples}</body></html>\n"
    )
