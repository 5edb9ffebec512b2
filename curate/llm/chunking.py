"""Cutting documents for the LLM: WRAP's ~300-token chunks at sentence boundaries, and
DataMan's head-and-tail truncation.

Sentences come from NLTK's Punkt splitter (the splitter WRAP used), with its default parameters:
Punkt's trained English tables are a separate download that setup cannot count on.
"""

from __future__ import annotations

from nltk.tokenize.punkt import PunktSentenceTokenizer

from curate.tokenizer import TextTokenizer

_PUNKT = PunktSentenceTokenizer()


def sentence_spans(text: str) -> list[tuple[int, int]]:
    return list(_PUNKT.span_tokenize(text))


def chunk_text(text: str, tokenizer: TextTokenizer, max_tokens: int = 300) -> list[str]:
    """Greedily pack whole sentences into chunks of at most `max_tokens` tokens (a sentence
    longer than that is a chunk of its own, never split). The chunks are consecutive slices of
    the text, so `"".join(chunks) == text`; each chunk also carries the whitespace before the
    next one."""
    spans = sentence_spans(text)
    if not spans:
        return [text] if text else []
    starts = [0]
    size = 0
    for _i, (a, b) in enumerate(spans):
        n = len(tokenizer.encode(text[a:b]))
        if size and size + n > max_tokens:
            starts.append(a)
            size = 0
        size += n
    bounds = starts + [len(text)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(len(starts))]


def head_and_tail(text: str, tokenizer: TextTokenizer, keep: int = 947, max_chars: int = 20_000) -> tuple[str, int]:
    """DataMan's truncation: a text over `max_chars` characters first keeps its first and last
    `max_chars / 2`; then, over 2 * `keep` tokens, its first and last `keep` tokens joined by
    "...". Returns the text to rate and the document's length in tokens (extrapolated from the
    kept characters when the text was cut by characters), which selection budgets with."""
    chars = len(text)
    if chars > max_chars:
        half = max_chars // 2
        text = text[:half] + text[-half:]
    ids = tokenizer.encode(text)
    length = round(len(ids) * chars / len(text)) if text else 0
    if len(ids) <= 2 * keep:
        return text, length
    return tokenizer.decode(ids[:keep]) + "..." + tokenizer.decode(ids[-keep:]), length
