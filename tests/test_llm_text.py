"""LLM stages, text rules: exact prompts, the DataMan parser, WRAP post-processing."""

import pytest

from curate.llm import dataman, wrap
from curate.llm.prompts import CRITERIA, DATAMAN_CRITERIA, dataman_prompt, wrap_prompt

PREAMBLE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the questions. USER: "
)


def test_wrap_prompts_are_the_papers():
    assert (
        wrap_prompt("easy", "X")
        == PREAMBLE
        + "For the following paragraph give me a paraphrase of the same using a very small vocabulary "
        "and extremely simple sentences that a toddler will understand:\nX"
    )
    assert (
        wrap_prompt("medium", "X")
        == PREAMBLE
        + "For the following paragraph give me a diverse paraphrase of the same in high quality English language "
        "as in sentences on Wikipedia:\nX"
    )
    assert (
        wrap_prompt("hard", "X")
        == PREAMBLE
        + "For the following paragraph give me a paraphrase of the same using very terse and abstruse language "
        "that only an erudite scholar will understand. Replace simple words and phrases with rare and complex ones:\nX"
    )
    assert (
        wrap_prompt("qa", "X")
        == PREAMBLE
        + "Convert the following paragraph into a conversational format with multiple tags of "
        '"Question:" followed by "Answer:":\nX'
    )
    assert wrap_prompt("custom", "X", "Rewrite as a poem: {text}") == "Rewrite as a poem: X"


def test_dataman_prompt_is_the_papers():
    p = dataman_prompt("THE TEXT")
    assert p.startswith(
        "Please carefully read and analyze the following text, score it based on fourteen evaluation criteria "
        "and their respective scoring definitions. \n"
        "Additionally, select the most appropriate category from the fifteen domain types that best matches "
        "the content of the text. Let's think step by step.\n"
        "Text: THE TEXT\n"
        "Domain Types: [A]Medicine [B]Finance [C]Law [D]Education [E]Technology [F]Entertainment [G]Mathematics "
        "[H]Coding [I]Government [J]Culture [K]Transportation [L]Retail E-commerce [M]Telecommunication "
        "[N]Agriculture [O]Other\n"
        "Evaluation Criteria:\n"
        "[1]Textual Accuracy: The higher the score, the fewer grammar, referential, and spelling errors "
        "the text contains, and the more accurate its expression. _/5\n"
    )
    assert (
        "[12]Non-repetitiveness of Content: The higher the score, the fewer repetitions and similar content "
        "in the text. _/5\n" in p
    )
    assert p.endswith(
        "[14]Overall Score: The higher the score, the better the comprehensive evaluation of the text, "
        "with superior performance in all aspects."
    )
    assert len(CRITERIA) == 14 and CRITERIA[-1] == "overall"


def _labelled(scores, domain="E"):
    return f"Domain: [{domain}]\n" + "\n".join(
        f"[{i}]{name}: {s}/5" for i, ((_, name, _), s) in enumerate(zip(DATAMAN_CRITERIA, scores), 1)
    )


def test_parser_accepts_both_layouts():
    scores = [5, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5, 4, 3, 4]
    r = dataman.parse_answer(_labelled(scores, "H"))
    assert r.domain == "H" and list(r.scores.values()) == scores and list(r.scores) == list(CRITERIA)
    r = dataman.parse_answer("B\n" + "\n".join(map(str, scores)) + "\n")
    assert r.domain == "B" and list(r.scores.values()) == scores
    # GPT-style decoration around the same facts
    assert dataman.parse_answer(_labelled(scores).replace(": 5/5", ": **5**/5")).scores["accuracy"] == 5


@pytest.mark.parametrize(
    "answer, why",
    [
        ("", "domain"),
        (_labelled([4] * 13), r"criterion \[14\] has 0"),
        (_labelled([4] * 13 + [6]), "overall score '6'"),
        (_labelled([0] + [4] * 13), "accuracy score '0'"),
        (_labelled([4.5] + [4] * 13), "accuracy score '4.5'"),
        (_labelled([4] * 14, "Z"), "domain 'Z'"),
        (_labelled([4] * 14) + "\nDomain: [B]", "one domain letter"),
        (_labelled([4] * 14) + "\n[3]Language Consistency: 2/5", r"criterion \[3\] has 2"),
        ("E\n" + "\n".join(["4"] * 13) + "\n9", "score '9'"),
        ("The text is about cars. I would rate it highly.", "domain"),
    ],
)
def test_parser_rejects_incomplete_or_out_of_range_answers(answer, why):
    with pytest.raises(dataman.AnswerError, match=why):
        dataman.parse_answer(answer)


def test_grammar_describes_the_layout_the_parser_reads():
    g = dataman.answer_grammar()
    assert g.startswith('root ::= [A-O] "\\n" [1-5]') and g.count("[1-5]") == 14
    # the answer the grammar spells, each character class filled in, is an accepted rating
    assert (
        dataman.parse_answer(
            g.removeprefix("root ::= ")
            .replace('"\\n"', "\n")
            .replace("[A-O]", "C")
            .replace("[1-5]", "2")
            .replace(" ", "")
        ).domain
        == "C"
    )


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Here is a paraphrase of the paragraph: The cat sat. It was glad.", "The cat sat. It was glad."),
        ("Here's a paraphrased version\n\nThe cat sat.", "The cat sat."),
        ("The cat sat on the mat. It was glad.", "The cat sat on the mat. It was glad."),
        ("Question: Who sat? Answer: The cat.", "Question: Who sat? Answer: The cat."),
    ],
)
def test_rephrase_preambles_are_cut(answer, expected):
    assert wrap.clean_rephrase(answer) == expected


@pytest.mark.parametrize(
    "answer", ["Here is a paraphrase: The following text is in high quality English.", "Here is a paraphrase:", "   "]
)
def test_rephrases_still_carrying_boilerplate_are_discarded(answer):
    with pytest.raises(wrap.Discarded):
        wrap.clean_rephrase(answer)
