import itertools
import sys
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from curate.normalize import normalize, normalize_lines, normalize_reference


def test_ccnet_steps():
    assert normalize("  Héllo WORLD  ") == "hello world"
    assert normalize("In 2019, 3.5%") == "in 0000, 0.0%"  # every digit, one by one
    assert normalize("«Quote» — end…") == '"quote"  -  end...'
    assert normalize("tab\there\x07bell\x9f") == "tabherebell"
    assert normalize("Ünïcödé ٣") == "unicode 0"  # accents stripped, Arabic-Indic digit -> 0
    assert normalize("１２") == "00"  # fullwidth digits are digits before they are punctuation
    assert normalize("   ") == ""


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_fast_path_equals_reference(text):
    assert normalize(text) == normalize_reference(text)


# line breaks, strip and control characters, final sigma, combining marks, and marks that survive
# normalisation (spacing marks with a combining class: NFD orders them among their neighbours)
LINE_EDGES = "\n\n \t\x07\x85\u2028\u00a0ΣσΑa\u0301\u0327é1٣—«İ\u302e\u302f\U0001d165\U0001d16d\u1b44"


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(LINE_EDGES), max_size=120))
def test_whole_document_equals_line_by_line(text):
    assert normalize_lines(text.split("\n")) == [normalize_reference(line) for line in text.split("\n")]


def test_every_code_point_equals_reference():
    """Each character alone, as a line (its table entry, or the step-by-step path for those whose
    neighbours matter), then in a word's middle and at its end before a combining mark (where a
    capital sigma lower-cases to a final sigma)."""
    chars = [chr(c) for c in range(sys.maxunicode + 1) if c != ord("\n") and not 0xD800 <= c < 0xE000]
    assert normalize_lines(chars) == [normalize_reference(c) for c in chars]
    in_words = [f"A{c}b A{c}\u0301" for c in chars]
    assert normalize_lines(in_words) == [normalize_reference(line) for line in in_words]
    # the marks that survive normalisation, two by two after a letter: NFD orders them by class
    marks = [c for c in chars if any(unicodedata.combining(m) for m in normalize_reference(c))]
    pairs = [f"a{x}{y}" for x, y in itertools.product(marks, repeat=2)]
    assert normalize_lines(pairs) == [normalize_reference(line) for line in pairs]
