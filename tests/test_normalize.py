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


# line breaks, strip and control characters, final sigma, combining marks
LINE_EDGES = "\n\n \t\x07\x85\u2028\u00a0ΣσΑa\u0301\u0327é1٣—«"


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(LINE_EDGES), max_size=120))
def test_whole_document_equals_line_by_line(text):
    assert normalize_lines(text.split("\n")) == [normalize_reference(line) for line in text.split("\n")]
