"""The Qwen3 Embedding / Reranker input formats, written once.

Strings follow the official QwenLM/Qwen3-Embedding code byte for byte (tests pin them).
The export side writes them into each model's manifest; the runtime reads them from there.
Everything here is torch-free: tokenization runs on a ``tokenizers.Tokenizer`` so the
PyTorch reference and the ONNX runtime feed the graph exactly the same ids.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from embedrank.errors import InputError

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{query}"
EOT_TOKEN = "<|endoftext|>"  # the pooled token (id 151643); NOT tokenizer.eos_token (<|im_end|>)
RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
RERANK_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
YES_TOKEN = "yes"
NO_TOKEN = "no"
MIN_MATRYOSHKA_DIM = 32
DEFAULT_MAX_LENGTH = 8192
# the fewest tokens a query (embedder) or document (reranker) may be left after the instruction
MIN_TEXT_TOKENS = 16


@dataclass(frozen=True)
class PromptFormat:
    """The strings a model was trained with; stored in (and read from) the manifest."""

    query_template: str = QUERY_TEMPLATE
    default_instruction: str = DEFAULT_INSTRUCTION
    eot_token: str = EOT_TOKEN
    rerank_prefix: str = RERANK_PREFIX
    rerank_body: str = RERANK_BODY
    rerank_suffix: str = RERANK_SUFFIX
    yes_token: str = YES_TOKEN
    no_token: str = NO_TOKEN

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptFormat:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def query(self, query: str, instruction: str | None = None) -> str:
        return self.query_template.format(
            instruction=self.default_instruction if instruction is None else instruction,
            query=query,
        )

    def rerank_text(self, query: str, document: str, instruction: str | None = None) -> str:
        body = self.rerank_body.format(
            instruction=self.default_instruction if instruction is None else instruction,
            query=query,
            document=document,
        )
        return self.rerank_prefix + body + self.rerank_suffix


QWEN3 = PromptFormat()


def check_texts(texts: str | Iterable[str], what: str = "texts") -> list[str]:
    """Return ``texts`` as a list of non-empty strings, or raise :class:`InputError`.

    A single string is accepted as a batch of one.
    """
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, bytes) or not isinstance(texts, Iterable):
        raise InputError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        problem = text_problem(text)
        if problem is not None:
            raise InputError(f"{what}[{i}] {problem}")
    return out


def text_problem(text: object) -> str | None:
    """Why ``text`` cannot be embedded ("is empty...", "must be a str..."), or None if it can."""
    if not isinstance(text, str):
        return f"must be a str, got {type(text).__name__}"
    if not text.strip():
        return "is empty or whitespace only: nothing to embed"
    if "\x00" in text:
        return "contains a NUL byte; strip it before embedding"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode (lone surrogate?): {exc}"
    return None


def check_instruction(instruction: str | None) -> str | None:
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"instruction must be a str or None, got {type(instruction).__name__}")
    return instruction


def plain_tokenizer(tokenizer):
    """A copy of a ``tokenizers.Tokenizer`` with its saved padding and truncation switched off.

    Padding and truncation are ours to do (left padding, template-preserving truncation).
    Accepts a transformers fast tokenizer too (its ``backend_tokenizer`` is used).
    """
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def load_tokenizer(path) -> Tokenizer:  # noqa: F821 - tokenizers is a base dependency
    from tokenizers import Tokenizer

    return plain_tokenizer(Tokenizer.from_file(str(path)))


def token_id(tokenizer, token: str) -> int:
    tid = tokenizer.token_to_id(token)
    if tid is None:
        raise InputError(f"the tokenizer has no token {token!r}: is this a Qwen3 tokenizer?")
    return tid


def _wrapper(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after a single sequence
    (the Qwen3-Embedding tokenizer appends ``<|endoftext|>``; BERT's wraps in [CLS] ... [SEP])."""
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


def control_strings(tokenizer) -> tuple[str, ...]:
    """The tokenizer's added tokens (``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``,
    ``<think>``...), longest first: the strings that would turn into control tokens."""
    return tuple(sorted({t.content for t in tokenizer.get_added_tokens_decoder().values()},
                        key=lambda c: (-len(c), c)))


@lru_cache(maxsize=16)
def _pattern(strings: tuple[str, ...]) -> re.Pattern | None:
    return re.compile("(" + "|".join(map(re.escape, strings)) + ")") if strings else None


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
HEADS_KEPT = 256  # query template heads (per instruction) kept per tokenizer


def _cache(tokenizer) -> dict:
    """What is kept per tokenizer object, emptied when its vocabulary size changes (``add_tokens``);
    the runtime's tokenizers are private copies (:func:`plain_tokenizer`), never edited in place."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    try:
        if (cache := _CACHES.get(tokenizer)) is None or cache["size"] != size:
            cache = _CACHES[tokenizer] = {"size": size}
    except TypeError:  # an object that cannot be weakly referenced: nothing kept
        cache = {"size": size}
    return cache


def _added_patterns(tokenizer) -> tuple[re.Pattern | None, re.Pattern | None]:
    """Patterns of the added tokens: all, and those matched after normalization."""
    cache = _cache(tokenizer)
    if "patterns" not in cache:
        normalized = tuple(t.content for t in tokenizer.get_added_tokens_decoder().values() if t.normalized)
        cache["patterns"] = (_pattern(control_strings(tokenizer)),
                             _pattern(normalized) if tokenizer.normalizer is not None else None)
    return cache["patterns"]


def _plain_ids(tokenizer, text: str) -> list[int]:
    """``text`` through the normalizer, the pre-tokenizer and the model, never the added vocabulary."""
    if tokenizer.normalizer is not None:
        text = tokenizer.normalizer.normalize_str(text)
    pieces = tokenizer.pre_tokenizer.pre_tokenize_str(text) if tokenizer.pre_tokenizer else [(text, None)]
    return [token.id for piece, _ in pieces for token in tokenizer.model.tokenize(piece)]


def encode_text(tokenizer, texts: Sequence[str], add_special_tokens: bool = False,
                raw_control_tokens: bool = False) -> list[list[int]]:
    """Token ids of user texts read as plain text.

    A control-token string inside a text (``<|im_end|>``, ``<|endoftext|>``...) is tokenized like
    any other characters, so a document cannot close the reranker's user turn or end an embedding
    early. Texts without such strings take the tokenizer's own (fast) path and get the ids it
    gives. ``raw_control_tokens=True`` restores the Hugging Face tokenizer's behaviour (parse them).
    """
    encs = tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    out = [list(enc.ids) for enc in encs]
    if raw_control_tokens:
        return out
    # tokens matched after normalization (none in Qwen3's tokenizer) are looked for there too
    pattern, normalized = _added_patterns(tokenizer)
    if pattern is None:
        return out
    wrapper = None
    for i, text in enumerate(texts):
        if pattern.search(text) or (normalized is not None and normalized.search(
                tokenizer.normalizer.normalize_str(text))):
            if wrapper is None:
                wrapper = _wrapper(tokenizer) if add_special_tokens else ([], [])
            out[i] = wrapper[0] + _plain_ids(tokenizer, text) + wrapper[1]
    return out


def encode_template(tokenizer, template: str, rows: Sequence[dict[str, str]],
                    add_special_tokens: bool = False,
                    raw_control_tokens: bool = False) -> list[list[int]]:
    """Token ids of ``template.format(**row)`` per row: control tokens written in the template
    stay control tokens, the values (user text) are read as plain text (see :func:`encode_text`)."""
    pattern = _added_patterns(tokenizer)[0]
    parts = pattern.split(template) if pattern is not None and not raw_control_tokens else [template]
    if len(parts) == 1:  # the usual case: no control token in the template itself
        return encode_text(tokenizer, [template.format(**row) for row in rows], add_special_tokens,
                           raw_control_tokens)
    before, after = _wrapper(tokenizer) if add_special_tokens else ([], [])
    out = []
    for row in rows:
        ids = list(before)
        for k, part in enumerate(parts):  # odd parts are the template's own control tokens
            if k % 2:
                ids.append(tokenizer.token_to_id(part))
            elif part:
                ids += encode_text(tokenizer, [part.format(**row)])[0]
        out.append(ids + after)
    return out


def _embedding_ids(ids: list[int], eot: int, max_length: int) -> list[int]:
    if ids and ids[-1] == eot:
        ids = ids[:-1]
    return ids[: max_length - 1] + [eot]


def encode_embedding_inputs(tokenizer, texts: Sequence[str], max_length: int,
                            eot_token: str = EOT_TOKEN, *,
                            raw_control_tokens: bool = False) -> list[list[int]]:
    """Token ids for embedding: the text (plain, :func:`encode_text`), truncated, ending in
    exactly one EOT.

    ``tokenizer`` is a :func:`plain_tokenizer`.
    The tokenizer's own post-processor may already append the EOT (the Qwen3-Embedding one
    does, the base Qwen3 one does not); either way the result ends with it once. Truncation
    keeps the start of the text (where the instruction template sits) and the final EOT.
    """
    eot = token_id(tokenizer, eot_token)
    return [_embedding_ids(ids, eot, max_length)
            for ids in encode_text(tokenizer, texts, True, raw_control_tokens)]


def encode_query_inputs(tokenizer, fmt: PromptFormat, queries: Sequence[str],
                        instruction: str | None, max_length: int, *,
                        raw_control_tokens: bool = False) -> list[list[int]]:
    """Embedding ids of queries in ``fmt.query_template``; refuses an instruction that leaves
    the query fewer than :data:`MIN_TEXT_TOKENS` tokens of ``max_length``."""
    instruction = fmt.default_instruction if instruction is None else instruction
    head = _head_length(tokenizer, fmt.query_template, instruction, raw_control_tokens)
    room = max_length - 1 - head  # the final EOT takes one
    if room < MIN_TEXT_TOKENS:
        raise InputError(
            f"the query instruction takes {head} of the embedder's {max_length}-token limit, "
            f"leaving {max(room, 0)} tokens for the query (at least {MIN_TEXT_TOKENS} needed); "
            "shorten the instruction")
    eot = token_id(tokenizer, fmt.eot_token)
    rows = [{"instruction": instruction, "query": q} for q in queries]
    return [_embedding_ids(ids, eot, max_length) for ids in encode_template(
        tokenizer, fmt.query_template, rows, True, raw_control_tokens)]


def _head_length(tokenizer, template: str, instruction: str, raw_control_tokens: bool) -> int:
    """Tokens of the query template with an empty query (kept per tokenizer and instruction)."""
    heads = _cache(tokenizer).setdefault("heads", {})
    length = heads.get(key := (template, instruction, raw_control_tokens))
    if length is None:  # threads may race here: each computes the same length
        if len(heads) >= HEADS_KEPT:
            heads.clear()
        heads[key] = length = len(encode_template(
            tokenizer, template, [{"instruction": instruction, "query": ""}],
            raw_control_tokens=raw_control_tokens)[0])
    return length


def encode_rerank_inputs(tokenizer, fmt: PromptFormat, query: str, documents: Sequence[str],
                         instruction: str | None, max_length: int, *,
                         raw_control_tokens: bool = False) -> list[list[int]]:
    """prefix + body + suffix ids; only the body is truncated, the template never is.

    The prefix and suffix are the template's (their control tokens are real); the query,
    instruction and documents are plain text (:func:`encode_text`). A query and instruction that
    leave the documents fewer than :data:`MIN_TEXT_TOKENS` tokens are refused: every document
    would be cut to a few tokens and score alike.
    """
    tok = tokenizer
    prefix, suffix = (tok.encode(t, add_special_tokens=False).ids for t in (fmt.rerank_prefix,
                                                                          fmt.rerank_suffix))
    budget = max_length - len(prefix) - len(suffix)
    row = {"instruction": fmt.default_instruction if instruction is None else instruction, "query": query}
    (head,) = encode_template(tok, fmt.rerank_body, [{**row, "document": ""}],
                              raw_control_tokens=raw_control_tokens)
    if budget - len(head) < MIN_TEXT_TOKENS:
        raise InputError(f"the reranker query and instruction take {len(head)} of the {max(budget, 0)} "
                         f"tokens left for them and the document (max_length {max_length} minus "
                         f"{len(prefix) + len(suffix)} for the template), leaving "
                         f"{max(budget - len(head), 0)} for each document (at least {MIN_TEXT_TOKENS} "
                         "needed); shorten the query or the instruction")
    bodies = encode_template(tok, fmt.rerank_body, [{**row, "document": d} for d in documents],
                             raw_control_tokens=raw_control_tokens)
    return [prefix + ids[:budget] + suffix for ids in bodies]


PADDING_SIDES = ("left", "right")


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left",
        width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pad to ``width`` (default: the longest sequence) on ``side``: (input_ids, attention_mask), int64."""
    if side not in PADDING_SIDES:
        raise InputError(f"padding side must be one of {PADDING_SIDES}, got {side!r}")
    longest = max(len(s) for s in seqs)
    width = longest if width is None else width
    if width < longest:
        raise InputError(f"cannot pad a {longest}-token sequence to width {width}")
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        if seq:
            cols = slice(width - len(seq), None) if side == "left" else slice(0, len(seq))
            ids[row, cols] = seq
            mask[row, cols] = 1
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad to the longest sequence: (input_ids, attention_mask), both int64."""
    return pad(seqs, pad_id, "left")


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int) -> list[list[int]]:
    """Group indices into batches, longest first, so padded tokens per batch stay in budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * width > token_budget or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def last_token_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hidden state of each row's last real token (left or right padding)."""
    last = (np.arange(mask.shape[1])[None, :] * mask).argmax(axis=1)
    return hidden[np.arange(hidden.shape[0]), last]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def matryoshka(embeddings: np.ndarray, dim: int | None) -> np.ndarray:
    """Truncate to ``dim`` then L2-normalize (a no-op truncation when ``dim`` is None)."""
    if dim is None or dim == embeddings.shape[-1]:
        return l2_normalize(embeddings)
    check_dim(dim, embeddings.shape[-1])
    return l2_normalize(embeddings[..., :dim])


def check_dim(dim: int, full_dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise InputError(f"dim must be an int, got {type(dim).__name__}")
    low = min(MIN_MATRYOSHKA_DIM, full_dim)
    if not low <= dim <= full_dim:
        raise InputError(f"dim={dim} is outside this model's Matryoshka range [{low}, {full_dim}]")
    return dim
