"""Prompt texts, verbatim from the papers (see ../shared/reference/methods.md §A.2 and §B.2).

WRAP (Maini et al. 2024, App. G): one Vicuna-style preamble and one instruction per style; the
chunk follows the instruction's colon on a new line. DataMan (Peng et al. 2025,
`sft/prepare_data.py`): the annotation prompt with its 14 criteria and 15 domains, and the system
message it was sent with.
"""

from __future__ import annotations

WRAP_PREAMBLE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the questions. USER: "
)

WRAP_INSTRUCTIONS = {
    "easy": "For the following paragraph give me a paraphrase of the same using a very small vocabulary and extremely simple sentences that a toddler will understand:",
    "medium": "For the following paragraph give me a diverse paraphrase of the same in high quality English language as in sentences on Wikipedia:",
    "hard": "For the following paragraph give me a paraphrase of the same using very terse and abstruse language that only an erudite scholar will understand. Replace simple words and phrases with rare and complex ones:",
    "qa": 'Convert the following paragraph into a conversational format with multiple tags of "Question:" followed by "Answer:":',
}

WRAP_STYLES = tuple(WRAP_INSTRUCTIONS)


def wrap_prompt(style: str, chunk: str, template: str | None = None) -> str:
    """The user message for one chunk: the paper's prompt for `style`, or a custom template
    with a `{text}` placeholder (style `custom`)."""
    if style == "custom":
        if template is None:
            raise ValueError("style `custom` needs a template with a {text} placeholder")
        return template.replace("{text}", chunk)
    return f"{WRAP_PREAMBLE}{WRAP_INSTRUCTIONS[style]}\n{chunk}"


# DataMan: (field name, name in the annotation prompt, definition), in the paper's order.
DATAMAN_CRITERIA = (
    (
        "accuracy",
        "Textual Accuracy",
        "The higher the score, the fewer grammar, referential, and spelling errors the text contains, and the more accurate its expression.",
    ),
    (
        "coherence",
        "Semantic Coherence",
        "The higher the score, the more fluent the content is expressed, and the stronger its logical coherence.",
    ),
    (
        "language_consistency",
        "Language Consistency",
        "The higher the score, the more consistent the use of language in the text, with less mixing of languages.",
    ),
    (
        "semantic_density",
        "Ratio of Valid Semantic Content",
        "The higher the score, the greater the proportion of valid information in the text, with less irrelevant or redundant information.",
    ),
    (
        "knowledge_novelty",
        "Novelty of Knowledge",
        "The higher the score, the more novel and cutting-edge the knowledge provided by the text, with more insightful views on the industry or topic.",
    ),
    (
        "topic_focus",
        "Topic Focus",
        "The higher the score, the more the text content focuses on the topic, with less deviation from the main theme.",
    ),
    (
        "creativity",
        "Creative Expression Ratio",
        "The higher the score, the more creative elements are shown in the text's expression.",
    ),
    (
        "professionalism",
        "Professionalism",
        "The higher the score, the more professional terminology appears in the text, with more accurate use of terms and more professional domain-specific expression.",
    ),
    (
        "style_consistency",
        "Style Consistency",
        "The higher the score, the more consistent the style of the text, with proper and appropriate style transitions.",
    ),
    (
        "grammatical_diversity",
        "Richness of Grammatical Structures",
        "The higher the score, the more varied and correct the grammatical structures used in the text, showing a richer language expression ability.",
    ),
    (
        "structural_standardization",
        "Standardization of Structure",
        "The higher the score, the clearer the structure followed by the text and the more standardized its format.",
    ),
    (
        "originality",
        "Non-repetitiveness of Content",
        "The higher the score, the fewer repetitions and similar content in the text.",
    ),
    (
        "sensitivity",
        "Appropriateness of Sensitive Content",
        "The higher the score, the more appropriately sensitive topics are handled in the text, with less inappropriate content.",
    ),
    (
        "overall",
        "Overall Score",
        "The higher the score, the better the comprehensive evaluation of the text, with superior performance in all aspects.",
    ),
)
CRITERIA = tuple(field for field, _, _ in DATAMAN_CRITERIA)

DATAMAN_DOMAINS = {
    "A": "Medicine",
    "B": "Finance",
    "C": "Law",
    "D": "Education",
    "E": "Technology",
    "F": "Entertainment",
    "G": "Mathematics",
    "H": "Coding",
    "I": "Government",
    "J": "Culture",
    "K": "Transportation",
    "L": "Retail E-commerce",
    "M": "Telecommunication",
    "N": "Agriculture",
    "O": "Other",
}

DATAMAN_SYSTEM = (
    "You are an expert to evaluate the text quality with high accuracy and confidence. "
    "Don't hesitate to use the full range of the score scale, including extreme scores if the text warrants it."
)


def _criteria_lines() -> str:
    lines = []
    for i, (field, name, definition) in enumerate(DATAMAN_CRITERIA, 1):
        lines.append(f"[{i}]{name}: {definition}" + ("" if field == "overall" else " _/5"))
    return "\n".join(lines)


DATAMAN_TEMPLATE = (
    "Please carefully read and analyze the following text, score it based on fourteen evaluation criteria and their respective scoring definitions. \n"
    "Additionally, select the most appropriate category from the fifteen domain types that best matches the content of the text. Let's think step by step.\n"
    "Text: {text}\n"
    "Domain Types: " + " ".join(f"[{k}]{v}" for k, v in DATAMAN_DOMAINS.items()) + "\n"
    "Evaluation Criteria:\n" + _criteria_lines()
)


def dataman_prompt(text: str) -> str:
    """The annotation prompt for one (already truncated) document."""
    return DATAMAN_TEMPLATE.replace("{text}", text)
