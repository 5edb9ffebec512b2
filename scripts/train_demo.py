"""The curated-vs-raw proof (jobs/train_demo.yaml): train the same tiny model with the same seed
on the same number of tokens, once on a curation job's kept documents and once on all of its
valid input documents (same tokenizer), and compare both in bits per byte on text neither saw.

Usage: .venv/bin/python scripts/train_demo.py [jobs/train_demo.yaml] [--steps N] [--out DIR] [--arm curated|raw]
Writes OUT/report.json and a self-contained OUT/report.html (table and loss curves)."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.documents import ShardSpec, count_records, expand_inputs, read_shard
from curate.registry import Strict
from curate.settings import load_settings
from curate.storage import write_parquet
from indexes.build import build_index
from indexes.layout import CARD_NAME
from models.config import TrainConfig
from models.data import TokenShards
from models.evaluate import evaluate_checkpoint, format_table
from models.train import read_metrics, train
from pipelines.runner import run_job
from pipelines.spec import Job, load_job

ARMS = ("curated", "raw")
HELD_OUT_WEB = "held-out web (test split of the raw index)"


class Experiment(Strict):
    curation: str
    output: str
    train: TrainConfig
    eval_text: list[str]
    eval_stride: int | None = None  # default: half the context
    eval_max_docs: int | None = None  # per evaluation set, evenly spaced


def load_experiment(path: str) -> Experiment:
    return load_settings(path, Experiment, "experiment")


def curated_run(job: Job, job_path: str, log=print) -> Path:
    """The curation job's output directory, running the job first when it has no index yet."""
    if job.index is None:
        raise ValueError(f"{job_path} has no `index:` step: there are no kept shards to train on")
    out = job.output_dir()
    if not (out / "index" / CARD_NAME).is_file():
        log(f"running {job_path} first (no {out / 'index'})")
        run_job(job)
    return out


def raw_index(job: Job, tokenizer: Path, out: Path, log=print) -> Path:
    """Every input document the job's validation accepts (same max_doc_bytes and sources; the
    quarantined left out), indexed with the curated run's tokenizer."""
    index = out / "index"
    if not (index / CARD_NAME).is_file():
        tables = []
        for entry in job.inputs:
            for path in expand_inputs([entry.path]):
                rows = read_shard(ShardSpec(0, str(path), 0, count_records(path), entry.source), job.max_doc_bytes)
                tables.append(rows.filter(pc.is_null(rows["error"])).select(["id", "text", "source"]))
        write_parquet(pa.concat_tables(tables), out / "documents.parquet")
        build_index([str(out / "documents.parquet")], tokenizer, index, overwrite=True, log=log)
    return index


def corpus_stats(index_dir: Path, tokens_trained: int) -> dict:
    shards = TokenShards(index_dir)
    train_docs = shards.split_docs("train")
    train_tokens = int((shards.doc_end[train_docs] - shards.doc_start[train_docs] + 1).sum())
    return {
        "documents": len(shards.doc_ids),
        "train_documents": len(train_docs),
        "train_tokens": train_tokens,
        "epochs": tokens_trained / train_tokens,
    }


def run(
    spec_path: str, steps: int | None = None, out: str | None = None, arms: tuple[str, ...] = ARMS, log=print
) -> dict:
    """Train and evaluate the given arms (each result is kept in OUT/ARM/result.json, so the arms
    can run as separate processes); with both arms done, write the report."""
    exp = load_experiment(spec_path)
    cfg = exp.train.model_copy(update={"steps": steps}) if steps else exp.train
    cfg = TrainConfig.model_validate(cfg.model_dump())
    out_dir = Path(out or exp.output)
    t0 = time.perf_counter()
    job = load_job(exp.curation)
    curated_out = curated_run(job, exp.curation, log)
    raw = raw_index(job, curated_out / "tokenizer.json", out_dir / "raw_data", log)
    indexes = {"curated": curated_out / "index", "raw": raw}
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    results = {}
    for arm in arms:
        cached = out_dir / arm / "result.json"
        if cached.is_file() and json.loads(cached.read_text())["config"] == cfg.model_dump(mode="json"):
            results[arm] = json.loads(cached.read_text())
            continue
        log(f"== training on the {arm} documents ({tokens:,} tokens)")
        train(cfg, indexes[arm], out_dir / arm, log=log)
        metrics = read_metrics(out_dir / arm)
        options = {"stride": exp.eval_stride, "max_docs": exp.eval_max_docs}
        evals = {HELD_OUT_WEB: evaluate_checkpoint(out_dir / arm, raw, split="test", **options)}
        for path in exp.eval_text:
            evals[path] = evaluate_checkpoint(out_dir / arm, raw, texts=[path], **options)
        results[arm] = {
            "config": cfg.model_dump(mode="json"),
            "index": str(indexes[arm]),
            "corpus": corpus_stats(indexes[arm], tokens),
            "final_train_loss": next((m["loss"] for m in reversed(metrics) if "loss" in m), None),
            "val_loss": next((m["val_loss"] for m in reversed(metrics) if "val_loss" in m), None),
            "eval": evals,
            "curve": [[m["tokens"], m["loss"]] for m in metrics if "loss" in m],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        cached.write_text(json.dumps(results[arm], indent=2) + "\n")
    report = {
        "config": cfg.model_dump(mode="json"),
        "training_tokens": tokens,
        "arms": results,
        "seconds": round(sum(r["seconds"] for r in results.values()), 1),
    }
    if set(arms) == set(ARMS):
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "report.html").write_text(render_html(report))
        log(summary_table(report))
        log(f"report: {out_dir / 'report.html'}")
    return report


def summary_table(report: dict) -> str:
    """Bits per byte of both models on each evaluation set (overall and per source)."""
    lines = [f"{'evaluation set':<58} {'curated':>9} {'raw':>9} {'raw-cur':>8}"]
    first = report["arms"][ARMS[0]]["eval"]
    for name in first:
        rows = {arm: report["arms"][arm]["eval"][name] for arm in ARMS}
        sources = list(rows["raw"]["sources"]) if len(rows["raw"]["sources"]) > 1 else []
        for source in [None, *sources]:
            bpb = [(rows[a]["sources"][source] if source else rows[a]["overall"])["bits_per_byte"] for a in ARMS]
            title = name if source is None else f"  {source}"
            lines.append(f"{title[:58]:<58} {bpb[0]:>9.4f} {bpb[1]:>9.4f} {bpb[1] - bpb[0]:>+8.4f}")
    return "\n".join(lines)


def render_html(report: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in ARMS:
        curve = report["arms"][arm]["curve"]
        ax.plot([t for t, _ in curve], [loss for _, loss in curve], label=f"{arm} (train loss)", linewidth=1)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token, each model on its own data)")
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    corpus = "".join(
        f"<tr><td>{arm}</td><td>{c['documents']:,}</td><td>{c['train_documents']:,}</td><td>{c['train_tokens']:,}</td>"
        f"<td>{c['epochs']:.2f}</td></tr>"
        for arm in ARMS
        for c in [report["arms"][arm]["corpus"]]
    )
    tables = "".join(
        f"<h3>{html.escape(name)} &mdash; {arm}</h3><pre>{html.escape(format_table(ev))}</pre>"
        for name in report["arms"][ARMS[0]]["eval"]
        for arm in ARMS
        for ev in [report["arms"][arm]["eval"][name]]
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>curated vs raw</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
pre{{background:#f6f6f6;padding:6px}}</style></head><body>
<h1>Curated vs raw: same model, seed and {report["training_tokens"]:,} training tokens</h1>
<h2>Bits per byte on text neither model saw (lower is better)</h2><pre>{html.escape(summary_table(report))}</pre>
<h2>Training data</h2><table><tr><th>arm</th><th>documents</th><th>train documents</th><th>train tokens</th>
<th>epochs</th></tr>{corpus}</table>
<h2>Loss curves</h2><img alt="training loss curves" src="data:image/png;base64,{png}">
<h2>Per source</h2>{tables}
<p>Training config: <code>{html.escape(json.dumps(report["config"]))}</code>; {report["seconds"]} s of training and
evaluation (both arms).</p>
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", default="jobs/train_demo.yaml")
    p.add_argument("--steps", type=int, help="override the training steps (both models)")
    p.add_argument("--out", help="output directory (default: the spec's `output`)")
    p.add_argument("--arm", choices=ARMS, help="train and evaluate one arm only (run both at once, then without --arm)")
    args = p.parse_args(argv)
    try:
        run(args.spec, args.steps, args.out, (args.arm,) if args.arm else ARMS)
    except (ValueError, FileNotFoundError) as e:
        print(f"train_demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
