"""DataMan answers: the strict parser, and the answer grammar for servers that take one.

An answer is accepted only when it names exactly one domain letter (A-O) and gives each of the
14 criteria exactly one integer score from 1 to 5, in one of two layouts:
- the annotation prompt's own layout, its blanks filled in: `Domain: [E]` and `[1]Textual
  Accuracy: 4/5` ... `[14]Overall Score: 4/5` (what GPT-4 wrote for the paper);
- the DataMan rater's layout: 15 lines, the domain letter and then the 14 scores in order.
Anything else is unparseable: the row is re-asked, then left unrated with its raw answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from curate.llm.prompts import CRITERIA, DATAMAN_DOMAINS

DOMAINS = "".join(DATAMAN_DOMAINS)
DATAMAN_COLUMNS = ("dataman_domain", *(f"dataman_{c}" for c in CRITERIA))  # what a rating fills in
_DOMAIN = re.compile(r"Domain(?: Type)?s?\s*:\s*\**\s*\[?\s*([A-Z])\s*\]?", re.IGNORECASE)


class AnswerError(ValueError):
    """An answer that is not a complete DataMan rating."""


@dataclass(frozen=True)
class Rating:
    domain: str
    scores: dict[str, int]  # criterion field -> 1..5, all 14


def parse_answer(answer: str) -> Rating:
    """The rating in `answer`, or AnswerError saying what is wrong."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if len(lines) == 15 and len(lines[0]) == 1 and all(re.fullmatch(r"\d+", x) for x in lines[1:]):
        return _checked(lines[0], lines[1:])
    domains = {m.group(1).upper() for m in _DOMAIN.finditer(answer)}
    if len(domains) != 1:
        raise AnswerError(f"expected one domain letter, found {sorted(domains) or 'none'}")
    scores = []
    for i in range(1, len(CRITERIA) + 1):
        found = re.findall(rf"\[{i}\][^\n\[]*?:\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*/\s*5", answer)
        if len(found) != 1:
            raise AnswerError(f"criterion [{i}] has {len(found)} scores, expected 1")
        scores.append(found[0])
    return _checked(domains.pop(), scores)


def _checked(domain: str, scores: list[str]) -> Rating:
    if domain not in DOMAINS:
        raise AnswerError(f"domain {domain!r} is not one of {DOMAINS}")
    values = []
    for field, s in zip(CRITERIA, scores):
        if not re.fullmatch(r"\d+", s) or not 1 <= int(s) <= 5:
            raise AnswerError(f"{field} score {s!r} is not an integer from 1 to 5")
        values.append(int(s))
    return Rating(domain, dict(zip(CRITERIA, values)))


def answer_grammar() -> str:
    """A GBNF grammar (llama.cpp) for the rater's layout, the shortest the parser reads (about 30
    tokens): the model still picks the domain and every score, the grammar only holds it to the
    form. The annotation layout would cost ~200 generated tokens per document on a CPU."""
    return 'root ::= [A-O] "\\n" ' + ' "\\n" '.join(["[1-5]"] * len(CRITERIA))
