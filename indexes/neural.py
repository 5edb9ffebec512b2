"""Token probabilities of a text under a neural language model: a GGUF model run in-process by
llama.cpp on the CPU (Gemma 3 270M, the model curate ships, by default), aligned with the ∞-gram
scores of `indexes.perplexity` so the two can be interpolated.

A document longer than the context is evaluated in windows that overlap by half, each starting
with BOS; a token is scored in the first window that holds it after the overlap, so every token
past the first window sees at least half a context of history.
"""

from __future__ import annotations

import atexit
import os

import numpy as np

from curate.local_model import resolve_gguf
from curate.tokenizer import GgufTokenizer
from indexes.options import DEFAULT_CONTEXT

SOFTMAX_ROWS = 64  # logits rows normalised at once (262,144 floats each for Gemma)


class NeuralModel:
    """A GGUF model loaded once, with logits for every position (`logits_all`)."""

    def __init__(self, model: str | None = None, context: int = DEFAULT_CONTEXT, threads: int | None = None):
        from llama_cpp import Llama

        if context < 4:
            raise ValueError(f"--context must be at least 4 tokens, got {context}")
        self.path = resolve_gguf(model)
        self.context = context
        threads = threads or os.cpu_count()
        self.llama = Llama(
            model_path=self.path,
            n_ctx=context,
            n_batch=context,  # one decode per window: llama.cpp's rounding depends on the batch shape
            logits_all=True,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        atexit.register(self.llama.close)  # before interpreter shutdown tears llama.cpp's module down
        self.tokenizer = GgufTokenizer(self.path, llama=self.llama)

    def token_probs(self, token_ids: list[int]) -> np.ndarray:
        """P(t_i | BOS, t_<i) for i = 1..n-1: the positions `infgram_token_probs` scores."""
        n = len(token_ids)
        probs = np.empty(max(n - 1, 0), np.float64)
        width = self.context - 1  # BOS takes one slot
        stride = max(width // 2, 1)
        start, scored = 0, 1  # window's first token; next position to score
        while scored < n:
            window = list(token_ids[start : start + width])
            self.llama.reset()
            self.llama.eval([self.llama.token_bos(), *window])
            # row j of the scores follows BOS + window[:j], i.e. predicts window[j]
            first, last = scored - start, len(window)
            probs[scored - 1 : start + last - 1] = target_probs(
                self.llama.scores[first:last], np.asarray(window[first:last])
            )
            scored = start + last
            start += stride
        return probs


def target_probs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """softmax(logits)[row, target] per row, without materialising the whole softmax."""
    out = np.empty(len(targets), np.float64)
    for lo in range(0, len(targets), SOFTMAX_ROWS):
        rows = logits[lo : lo + SOFTMAX_ROWS]
        peak = rows.max(axis=1)
        log_norm = np.log(np.exp(rows - peak[:, None]).sum(axis=1, dtype=np.float64))
        picked = rows[np.arange(len(rows)), targets[lo : lo + SOFTMAX_ROWS]].astype(np.float64)
        out[lo : lo + len(rows)] = np.exp(picked - peak - log_norm)
    return out
