"""Every prompt of synthetic data generation, in one place (the Qwen3 Embedding technical
report, arXiv 2506.05176: §3.3, appendix A.1).

Our own wording of the report's recipe. Retrieval uses two calls per passage: a configuration
step (Character from the top-5 personas retrieved for the passage, Question_Type, Difficulty;
JSON out) and a generation step (the query, with type, difficulty, length and language; JSON
out). The other task types (bitext mining, semantic similarity, classification) take one call.
Each prompt asks for a single JSON object; the keys listed in ``*_KEYS`` are required.
"""

from __future__ import annotations

QUESTION_TYPES = {
    "keywords": "a handful of search keywords, not a full sentence",
    "acquire_knowledge": "a question that seeks a fact or explanation the passage gives",
    "summary": "a request for an overview of what the passage covers",
    "yes_or_no": "a question that the passage answers with yes or no",
    "background": "a question about the context, causes or history behind the passage",
}
DIFFICULTIES = ("high_school", "university", "phd")
QUERY_LENGTHS = (5, 8, 12, 16, 24)  # words; one is drawn per passage
TOP_PERSONAS = 5

# Instructions the embedder sees: persona retrieval, and training rows of each task type.
PERSONA_INSTRUCTION = (
    "Given a passage, retrieve the description of a person likely to search for it"
)
TASK_INSTRUCTIONS = {
    "retrieval": None,  # the model's default web-search instruction
    "bitext": "Retrieve parallel sentences",
    "sts": "Retrieve semantically similar text",
    "classification": "Given a text, retrieve the description of the category it belongs to",
}

CONFIG_KEYS = ("Character", "Question_Type", "Difficulty")
CONFIG_PROMPT = """\
You help build training data for a search engine. Read the passage and decide who would look \
for it and what kind of query they would type.

Passage:
\"\"\"
{passage}
\"\"\"

Candidate characters (choose exactly one and copy it verbatim):
{characters}

Question types (choose one):
{question_types}

Difficulty levels (choose one): {difficulties}

Reply with a single JSON object and nothing else, in this form:
{{"Character": "<one candidate>", "Question_Type": "<one question type>", \
"Difficulty": "<one difficulty level>"}}"""

QUERY_KEYS = ("Query",)
QUERY_PROMPT = """\
Take the role of this character: {character}

From that point of view, write one search query that the passage below answers.

Passage:
\"\"\"
{passage}
\"\"\"

Requirements:
- Question type: {question_type} ({question_type_meaning})
- Difficulty: the background knowledge of a {difficulty} reader
- Length: about {length} words
- Language: {language}
- The passage must answer the query, but do not copy long phrases from it.

Reply with a single JSON object and nothing else, in this form:
{{"Query": "<the query>"}}"""

BITEXT_KEYS = ("translation",)
BITEXT_PROMPT = """\
Translate the text below into {language}. Keep its meaning, names and numbers; add no notes.

Text:
\"\"\"
{passage}
\"\"\"

Reply with a single JSON object and nothing else, in this form:
{{"translation": "<the text in {language}>"}}"""

STS_KEYS = ("paraphrase", "related", "unrelated")
STS_LEVELS = {"paraphrase": 5, "related": 3, "unrelated": 0}  # similarity on a 0-5 scale
STS_PROMPT = """\
Write three sentences in {language} for a semantic similarity data set, each compared with the \
text below:
- "paraphrase": the same meaning in different words (similarity 5 of 5)
- "related": the same topic but a different statement (similarity 3 of 5)
- "unrelated": a different topic altogether (similarity 0 of 5)

Text:
\"\"\"
{passage}
\"\"\"

Reply with a single JSON object and nothing else, in this form:
{{"paraphrase": "...", "related": "...", "unrelated": "..."}}"""

CLASSIFICATION_KEYS = ("label", "description")
CLASSIFICATION_PROMPT = """\
Which category does the text below belong to (a topic, an intent or a sentiment)? Give a short \
label and a one-sentence description of the category that would let someone sort similar \
texts into it, in {language}.

Text:
\"\"\"
{passage}
\"\"\"

Reply with a single JSON object and nothing else, in this form:
{{"label": "<short label>", "description": "<one sentence>"}}"""


def config_prompt(passage: str, characters: list[str]) -> str:
    return CONFIG_PROMPT.format(
        passage=passage,
        characters="\n".join(f"{i}. {c}" for i, c in enumerate(characters, 1)),
        question_types="\n".join(f"- {k}: {v}" for k, v in QUESTION_TYPES.items()),
        difficulties=", ".join(DIFFICULTIES),
    )


def query_prompt(passage: str, character: str, question_type: str, difficulty: str,
                 length: int, language: str) -> str:
    return QUERY_PROMPT.format(
        passage=passage, character=character, question_type=question_type,
        question_type_meaning=QUESTION_TYPES[question_type],
        difficulty=difficulty.replace("_", " "),
        length=length, language=language,
    )


TASK_PROMPTS = {
    "bitext": (BITEXT_PROMPT, BITEXT_KEYS),
    "sts": (STS_PROMPT, STS_KEYS),
    "classification": (CLASSIFICATION_PROMPT, CLASSIFICATION_KEYS),
}


def task_prompt(task: str, passage: str, language: str) -> str:
    return TASK_PROMPTS[task][0].format(passage=passage, language=language)
