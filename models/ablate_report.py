"""report.json and a self-contained report.html (plots inlined as base64 PNG) of a `curate ablate` run:
candidates ranked by proxy perplexity per evaluation set, proxy-versus-real scatter plots with
their correlations, and what each side cost."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from curate.atomic import write_text  # noqa: E402


def write_report(out: Path, report: dict) -> None:
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.html", render(report))


def rankings(report: dict) -> dict[str, list[str]]:
    """Candidate names per evaluation set, lowest proxy perplexity first."""
    cands = report["candidates"]
    return {e: sorted(cands, key=lambda n: cands[n]["eval"][e]["perplexity"]) for e in report["eval_sets"]}


def render(report: dict) -> str:
    cands, real, corr = report["candidates"], report["real"], report["correlations"]
    parts = [
        f"<h1>Data ablation by merging: {_e(report['name'])}</h1>",
        f"<p>{len(report['partitions'])} partitions, {len(cands)} candidate mixtures, {len(real)} trained for real; "
        f"{report['seconds']:.0f} s in all. Proxy: the parameter average of the partition models "
        "(Na et al. 2024); real: one model continued from the same seed on the union of the partitions "
        "with the token budget of its parts together.</p>",
        "<h2>Partitions and the pool</h2>",
        _table(
            [
                [
                    n,
                    p["documents"],
                    f"{p['bytes']:,}",
                    f"{report['pool'][n]['tokens']:,}",
                    f"{report['pool'][n]['seconds']:.1f}",
                    _f(report["pool"][n].get("val_loss")),
                    "reused" if report["pool"][n]["reused"] else "trained",
                ]
                for n, p in report["partitions"].items()
            ],
            ["partition", "documents", "bytes", "training tokens", "seconds", "val loss", "this run"],
        ),
        "<h2>Proxy versus real perplexity</h2>",
        _table(
            [[e, c["mixtures"], _f(c["pearson"]), _f(c["spearman"])] for e, c in corr.items()],
            ["evaluation set", "mixtures", "Pearson r", "Spearman ρ"],
        ),
    ]
    if real:
        parts.append(f'<img src="data:image/png;base64,{_scatter(corr)}">')
    parts += ["<h2>Cost</h2>", _cost(report["cost"])]
    if report["retried"]:
        parts += [
            "<h2>Failed attempts (retried)</h2>",
            _table([[f["model"], f["attempt"], f["error"]] for f in report["retried"]], ["model", "attempt", "error"]),
        ]
    parts.append("<h2>Candidates ranked by proxy perplexity, per evaluation set</h2>")
    for e, names in rankings(report).items():
        info = report["eval_sets"][e]
        parts.append(
            f"<h3>{_e(e)} <small>({_e(info['on'])}: {info['windows']} windows from its "
            f"{info['docs']} documents)</small></h3>"
        )
        rows = [
            [
                i + 1,
                n,
                cands[n]["kind"],
                _f(cands[n]["eval"][e]["perplexity"], 2),
                _f(cands[n]["eval"][e]["loss"], 4),
                _f(real[n]["eval"][e]["perplexity"], 2) if n in real else "",
            ]
            for i, n in enumerate(names)
        ]
        parts.append(_table(rows, ["rank", "mixture", "kind", "proxy ppl", "proxy loss", "real ppl"]))
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
        "margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "td:nth-child(2),th:nth-child(2){text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>ablation {_e(report['name'])}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _cost(cost: dict) -> str:
    p, r = cost["proxy"], cost["real"]
    rows = [
        [
            "proxy: partition pool (paid once, serves every candidate)",
            f"{p['pool_models']} models",
            f"{p['pool_tokens']:,}",
            f"{p['pool_train_seconds']:.1f}",
        ],
        ["proxy: merging every candidate", f"{p['candidates']} merges", "0", f"{p['merge_seconds']:.1f}"],
        ["proxy: evaluating every candidate", f"{p['candidates']} models", "", f"{p['eval_seconds']:.1f}"],
        [
            "real: training the validated mixtures",
            f"{r['models']} models",
            f"{r['tokens']:,}",
            f"{r['train_seconds']:.1f}",
        ],
        [
            "real: every uniform candidate (estimated at the same tokens/s)",
            "",
            f"{r['all_uniform_candidates_tokens']:,.0f}",
            _f(r["all_uniform_candidates_seconds_estimate"], 1),
        ],
    ]
    return _table(rows, ["side", "models", "training tokens", "seconds (summed over tasks)"])


def _scatter(corr: dict) -> str:
    n = len(corr)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), dpi=90, squeeze=False)
    for ax, (name, c) in zip(axes.flat, corr.items()):
        ax.scatter(c["proxy"], c["real"], color="#5b8def")
        ax.set_title(f"{name}: r={_f(c['pearson'], 2)} ρ={_f(c['spearman'], 2)} (n={c['mixtures']})", fontsize=9)
        ax.set_xlabel("proxy (merged) perplexity")
        ax.set_ylabel("real (union) perplexity")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _e(v) -> str:
    return html.escape(str(v))
