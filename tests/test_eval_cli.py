"""`curate eval` and `curate generate` on a tiny model trained on real shards."""

import gzip
import json
import math
from pathlib import Path

import pytest

from curate.cli import main
from curate.splits import split_of
from models.config import TrainConfig
from models.train import train
from tests.train_support import DATA, demo_index, quiet, synthetic_index

DOCS_PER_FILE = 60


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    index = demo_index(root, vocab=2000, docs_per_file=DOCS_PER_FILE)
    cfg = TrainConfig(size="tiny", seq_len=64, batch_size=8, steps=30, eval_every=30, checkpoint_every=30, log_every=30)
    train(cfg, index, root / "run", log=quiet)
    return root / "run", index


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def heldout_bytes() -> dict[str, int]:
    """UTF-8 bytes of the test-split documents of the indexed sample, per source."""
    totals: dict[str, int] = {}
    for path in sorted(DATA.glob("web/*.jsonl.gz")) + sorted(DATA.glob("wiki/*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for _, line in zip(range(DOCS_PER_FILE), f):
                doc = json.loads(line)
                if split_of(doc["id"]) == "test":
                    totals[doc["source"]] = totals.get(doc["source"], 0) + len(doc["text"].encode("utf-8"))
    return totals


def test_eval_reports_bits_per_byte_per_source_on_the_held_out_documents(trained, capsys):
    run, index = trained
    rc, out, _ = run_cli(capsys, "eval", run, "--data", index, "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["on"] == "test split" and report["context"] == 64 and report["stride"] == 32
    # every held-out document counted with the bytes of its text, grouped by its source
    assert {s: r["bytes"] for s, r in report["sources"].items()} == heldout_bytes()
    overall = report["overall"]
    assert overall["docs"] == sum(r["docs"] for r in report["sources"].values())
    nll = sum(r["loss"] * r["tokens"] for r in report["sources"].values())
    assert overall["bits_per_byte"] == pytest.approx(nll / math.log(2) / overall["bytes"])
    assert overall["perplexity"] == pytest.approx(math.exp(overall["loss"]))
    # 30 steps have learnt something: below a uniform guess over the 2,000 tokens (7.6 nats)
    assert overall["loss"] < math.log(2000) - 0.5

    rc, out, _ = run_cli(capsys, "eval", run, "--data", index)
    lines = out.splitlines()
    assert rc == 0 and lines[-1].startswith("overall") and f"{overall['bits_per_byte']:.4f}" in lines[-1]


def test_eval_on_text_files_counts_their_bytes(trained, capsys):
    run, index = trained
    sample = DATA / "samples" / "openwebtext_short12.jsonl"
    rc, out, _ = run_cli(capsys, "eval", run, "--data", index, "--text", sample, "--json", "--stride", 64)
    assert rc == 0
    report = json.loads(out)
    docs = [json.loads(line) for line in sample.read_text().splitlines()]
    assert report["overall"]["docs"] == len(docs)
    assert report["overall"]["bytes"] == sum(len(d["text"].encode("utf-8")) for d in docs)
    assert list(report["sources"]) == sorted({d["source"] for d in docs})


def test_generate_is_reproducible_and_honours_the_sampling_options(trained, capsys):
    run, _ = trained
    outs = [run_cli(capsys, "generate", run, "The city", "--max-tokens", 12, "--temperature", 0)[1] for _ in range(2)]
    assert outs[0] == outs[1] and outs[0].startswith("The city") and len(outs[0]) > len("The city\n")
    seeded = [
        run_cli(
            capsys, "generate", run, "The city", "--max-tokens", 12, "--typical-p", 0.5, "--top-k", 50, "--seed", 3
        )[1]
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    rc, _, err = run_cli(capsys, "generate", run, "x", "--top-p", 2)
    assert rc == 2 and "--top-p must be in (0, 1]" in err


def test_clear_errors_for_a_missing_checkpoint_and_a_tokenizer_mismatch(trained, capsys, tmp_path):
    run, index = trained
    rc, _, err = run_cli(capsys, "eval", tmp_path / "nope", "--data", index)
    assert rc == 2 and f"checkpoint {tmp_path / 'nope'} does not exist" in err
    other = tmp_path / "other"
    synthetic_index(other, [[1, 2, 3]] * 4, [f"d{i}" for i in range(4)], vocab=2000, eos=0, shard_tokens=1000)
    rc, _, err = run_cli(capsys, "eval", run, "--data", other)
    assert rc == 2 and "is not the tokenizer of index" in err
    rc, _, err = run_cli(capsys, "generate", run, "hi", "--data", other)
    assert rc == 2 and "is not the tokenizer of index" in err
    rc, _, err = run_cli(capsys, "eval", run, "--data", index, "--text", tmp_path / "missing.jsonl")
    assert rc == 2 and "missing.jsonl" in err
