"""WRAP's rules around the rephraser: the requests of a document (one per style and chunk) and
the paper's post-processing (App. B) of what comes back."""

from __future__ import annotations

import re

from curate.llm.chunking import sentence_spans

# Leading boilerplate the paper removes ("Here's a paraphrase...", "The following...", the
# prompt's own "high quality English"), lower-case.
PREAMBLE_MARKERS = (
    "paraphrase",
    "here's",
    "here is",
    "the following",
    "high-quality english",
    "high quality english",
    "rephrase",
)


class Discarded(ValueError):
    """A rephrase that still carries boilerplate after the preamble is cut: dropped entirely."""


def clean_rephrase(answer: str) -> str:
    """Cut a leading preamble: when the first sentence holds a marker, drop it up to its first
    "\\n\\n" or ":" delimiter. Raise Discarded when a marker is still there, or nothing is left."""
    text = answer.strip()
    spans = sentence_spans(text)
    if spans:
        first = text[: spans[0][1]]
        if _marked(first):
            cut = [i for i in (first.find("\n\n"), first.find(":")) if i >= 0]
            text = (
                text[min(cut) + (2 if text[min(cut)] == "\n" else 1) :].strip() if cut else text[spans[0][1] :].strip()
            )
    if not text:
        raise Discarded("nothing left after the preamble")
    if _marked(text):
        raise Discarded(f"boilerplate left after the preamble: {text[:120]!r}")
    return text


def _marked(text: str) -> bool:
    low = re.sub(r"\s+", " ", text.lower())
    return any(m in low for m in PREAMBLE_MARKERS)


def join_rephrases(parts: list[str]) -> str:
    """A document's rephrase: its chunks' rephrases in order, one per line (as Nemotron-CC joins)."""
    return "\n".join(parts)
