"""Loss, perplexity and bits per byte of a trained model, per source and overall.

Bits per byte follows Languini's normalised perplexity: the total negative log-likelihood of the
text, in bits, over the number of UTF-8 bytes of the text. It does not depend on the tokenizer,
so models with different vocabularies, or trained on differently curated data, compare fairly.

Protocol: every document is scored on its own, preceded by the end-of-text token (as in training,
where each document follows a separator); every token of the document is predicted, the closing
end-of-text token is not. A document longer than the model's context is scored with windows of
`context` tokens advancing by `stride` tokens: the first window scores all its tokens, each later
one only its last `stride`, so every token is scored once, with at least context - stride tokens
of context once past the first window."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from curate.documents import read_texts
from curate.tokenizer import TextTokenizer, fingerprint, load_tokenizer
from indexes.layout import IndexFormatError
from models.checkpoint import check_tokenizer, load_checkpoint
from models.data import TokenShards

IGNORE = -100


@dataclass
class Totals:
    """Sums over documents; the ratios are taken at the end so that groups add up exactly."""

    docs: int = 0
    tokens: int = 0
    bytes: int = 0
    nll: float = 0.0  # nats

    def add(self, tokens: int, n_bytes: int, nll: float) -> None:
        self.docs += 1
        self.tokens += tokens
        self.bytes += n_bytes
        self.nll += nll

    def row(self) -> dict:
        loss = self.nll / self.tokens if self.tokens else float("nan")
        return {
            "docs": self.docs,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "loss": loss,
            "perplexity": math.exp(loss) if self.tokens else float("nan"),
            "bits_per_byte": bits_per_byte(self.nll, self.bytes),
        }


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood (natural log) in bits per UTF-8 byte of the text scored."""
    return nll_nats / math.log(2) / n_bytes if n_bytes else float("nan")


def windows(tokens: list[int], bos: int, context: int, stride: int) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) of the windows that score every token of a document once; targets are
    IGNORE where a position was already scored by an earlier window (see the module's protocol)."""
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and the context ({context}), got {stride}")
    seq = [bos, *tokens]
    n = len(tokens)  # targets are seq[1..n]
    scored = 0  # targets seq[1..scored] are done
    while scored < n:
        end = min(n, context if scored == 0 else scored + stride)  # last target of this window
        start = max(0, end - context)  # inputs seq[start:end], targets seq[start+1:end+1]
        targets = [seq[j + 1] if j + 1 > scored else IGNORE for j in range(start, end)]
        yield seq[start:end], targets
        scored = end


@torch.no_grad()
def document_losses(
    model: torch.nn.Module,
    docs: Iterable[list[int]],
    bos: int,
    context: int,
    stride: int | None = None,
    batch_size: int = 16,
) -> Iterator[tuple[int, float]]:
    """(tokens scored, total NLL in nats) per document, in order. Windows of several documents
    share a batch (right-padded, which a causal model cannot see)."""
    stride = stride or max(1, context // 2)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pending: list[tuple[int, list[int], list[int]]] = []  # (doc index, inputs, targets)
    counts: list[int] = []
    sums: list[float] = []
    done = 0  # documents before this index have been yielded

    def run_batch() -> None:
        width = max(len(x) for _, x, _ in pending)
        idx = torch.full((len(pending), width), bos, dtype=torch.long)
        tgt = torch.full((len(pending), width), IGNORE, dtype=torch.long)
        for row, (_, x, y) in enumerate(pending):
            idx[row, : len(x)] = torch.tensor(x)
            tgt[row, : len(y)] = torch.tensor(y)
        tgt = tgt.to(device)
        losses = model(idx.to(device), tgt, reduction="none").float()
        per_row = torch.where(tgt != IGNORE, losses, 0.0).sum(dim=1).tolist()
        for (d, _, _), nll in zip(pending, per_row):
            sums[d] += nll
        pending.clear()

    try:
        for d, tokens in enumerate(docs):
            counts.append(len(tokens))
            sums.append(0.0)
            for x, y in windows(tokens, bos, context, stride):
                pending.append((d, x, y))
                if len(pending) == batch_size:
                    run_batch()
            # documents with no window left pending are complete
            first_open = pending[0][0] if pending else d + 1
            while done < first_open:
                yield counts[done], sums[done]
                done += 1
        if pending:
            run_batch()
        while done < len(counts):
            yield counts[done], sums[done]
            done += 1
    finally:
        model.train(was_training)


def evaluate(
    model: torch.nn.Module,
    docs: Iterable[tuple[str, list[int], int]],
    bos: int,
    context: int,
    stride: int | None = None,
    batch_size: int = 16,
) -> dict:
    """Per-source and overall figures for documents given as (source, token ids, UTF-8 bytes)."""
    stride = stride or max(1, context // 2)
    sources: list[str] = []
    byte_counts: list[int] = []

    def token_lists() -> Iterator[list[int]]:
        for source, tokens, n_bytes in docs:
            if not tokens:
                continue
            sources.append(source)
            byte_counts.append(n_bytes)
            yield tokens

    groups: dict[str, Totals] = {}
    overall = Totals()
    for i, (n_tokens, nll) in enumerate(document_losses(model, token_lists(), bos, context, stride, batch_size)):
        groups.setdefault(sources[i], Totals()).add(n_tokens, byte_counts[i], nll)
        overall.add(n_tokens, byte_counts[i], nll)
    if not overall.docs:
        raise ValueError("no documents to evaluate")
    return {
        "context": context,
        "stride": stride,
        "sources": {name: groups[name].row() for name in sorted(groups)},
        "overall": overall.row(),
    }


def format_table(report: dict) -> str:
    """The report as an aligned text table, one row per source and the overall row last."""
    header = f"{'source':<28} {'docs':>6} {'tokens':>10} {'bytes':>11} {'loss':>7} {'ppl':>9} {'bits/byte':>9}"
    lines = [header, "-" * len(header)]
    rows = [*report["sources"].items(), ("overall", report["overall"])]
    for name, r in rows:
        lines.append(
            f"{name[:28]:<28} {r['docs']:>6,} {r['tokens']:>10,} {r['bytes']:>11,} {r['loss']:>7.4f} "
            f"{r['perplexity']:>9.2f} {r['bits_per_byte']:>9.4f}"
        )
    return "\n".join(lines)


def index_tokenizer(shards: TokenShards) -> TextTokenizer:
    """The tokenizer an index was built with (named by its card), checked against the card's
    fingerprint so that text is turned into the ids the model was trained on."""
    name = shards.card.get("tokenizer")
    if not name:
        raise IndexFormatError(f"{shards.index_dir} was built without a tokenizer: text cannot be encoded for it")
    path = shards.index_dir / name  # an absolute path (a .gguf left in place) stays absolute
    if not path.is_file():
        raise IndexFormatError(f"{shards.index_dir} was tokenized with {path}, which is missing")
    tokenizer = load_tokenizer(path)
    if shards.tokenizer_fingerprint and fingerprint(tokenizer) != shards.tokenizer_fingerprint:
        raise IndexFormatError(f"{path} gives other token ids than when {shards.index_dir} was built")
    return tokenizer


def evaluate_checkpoint(
    model_dir: str | Path,
    index_dir: str | Path,
    split: str = "test",
    texts: list[str] | None = None,
    batch_size: int = 16,
    stride: int | None = None,
    device: str = "cpu",
    max_docs: int | None = None,
) -> dict:
    """`curate eval`: the checkpoint on the index's held-out split, or on text files encoded with
    the index's tokenizer (the one the checkpoint must have been trained with). `max_docs` keeps
    that many documents, evenly spaced over the set, so every part of it is represented."""
    model, meta = load_checkpoint(model_dir, device)
    check_tokenizer(meta, index_dir)
    shards = TokenShards(index_dir)
    tokenizer = index_tokenizer(shards)
    if texts:
        docs = _text_documents(texts, tokenizer)
    else:
        docs = (
            (source, ids, len(tokenizer.decode(ids).encode("utf-8")))
            for _, source, tokens in shards.documents(split)
            for ids in [tokens.tolist()]
        )
    if max_docs is not None:
        docs = evenly_spaced(list(docs), max_docs)
    report = evaluate(model, docs, shards.eot_id, model.config.seq_len, stride, batch_size)
    return {"model": str(model_dir), "data": str(index_dir), "on": texts or f"{split} split", **report}


def evenly_spaced(items: list, n: int) -> list:
    """At most n items, spread evenly over the list (its first and its last included)."""
    if n < 1:
        raise ValueError(f"max_docs must be at least 1, got {n}")
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / max(1, n - 1))] for i in range(n)]


def _text_documents(texts: list[str], tokenizer: TextTokenizer) -> Iterator[tuple[str, list[int], int]]:
    with contextlib.redirect_stdout(sys.stderr):  # read_texts reports skipped records on stdout
        records = list(read_texts(texts))
    for doc in records:
        yield doc["source"], tokenizer.encode(doc["text"]), len(doc["text"].encode("utf-8"))
