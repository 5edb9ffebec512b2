"""The document perplexity formula, checked by hand on a tiny ARPA model."""

import math

import kenlm
import pytest

from curate.lm import perplexity, score_piece_lines

TINY_ARPA = """\\data\\
ngram 1=4
ngram 2=3

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.5
-0.6\ta\t-0.3
-0.8\t</s>\t0

\\2-grams:
-0.2\t<s> a
-0.4\ta a
-0.1\ta </s>

\\end\\
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("arpa") / "tiny.arpa"
    path.write_text(TINY_ARPA)
    return kenlm.Model(str(path))


def test_hand_computed_document(tiny):
    # "a a": P(a|<s>) + P(a|a) + P(</s>|a)            = -0.2 - 0.4 - 0.1 = -0.7, 3 tokens
    # "a":   P(a|<s>) + P(</s>|a)                      = -0.2 - 0.1       = -0.3, 2 tokens
    # "":    backoff(<s>) + P(</s>)                    = -0.5 - 0.8       = -1.3, 1 token
    # "b":   backoff(<s>) + P(<unk>), then P(</s>)     = -1.5 - 0.8       = -2.3, 2 tokens
    log10_sum, tokens = score_piece_lines(tiny, [["a", "a"], ["a"], [], ["b"]])
    assert log10_sum == pytest.approx(-4.6, abs=1e-5)
    assert tokens == 8
    assert perplexity(log10_sum, tokens) == pytest.approx(10 ** (4.6 / 8), rel=1e-5)


def test_line_split_matters(tiny):
    """Two lines are not one line: each line gets its own <s> and </s>."""
    two_lines = score_piece_lines(tiny, [["a"], ["a"]])
    one_line = score_piece_lines(tiny, [["a", "a"]])
    assert two_lines == (pytest.approx(-0.6, abs=1e-5), 4)
    assert one_line == (pytest.approx(-0.7, abs=1e-5), 3)
    assert not math.isclose(perplexity(*two_lines), perplexity(*one_line))
