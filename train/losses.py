"""Training losses: the improved InfoNCE of the Qwen3 Embedding technical report, arXiv 2506.05176
(Eq. 1), its GradCache-style memory-saving variant, and the yes/no reranker loss (Eq. 2).

The embedding math lives in one pure function, :func:`improved_infonce`; the module wrappers
and the cached variant only call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedrank.errors import InputError

Batch = Mapping[str, Tensor]
Inputs = Batch | Sequence[Batch]
EncodeFn = Callable[[Batch], Tensor]


# --------------------------------------------------------------------------- embedding loss


def _as_ids(pos_ids: Tensor | Sequence[int] | None, n: int, device: torch.device) -> Tensor | None:
    if pos_ids is None:
        return None
    ids = torch.as_tensor(pos_ids, device=device)
    if ids.shape != (n,):
        raise InputError(f"pos_ids must have one id per pair ({n}), got shape {tuple(ids.shape)}")
    return ids


def _check_shapes(q: Tensor, d_pos: Tensor, d_neg: Tensor | None) -> None:
    if q.ndim != 2 or q.shape != d_pos.shape:
        raise InputError(
            f"q and d_pos must both be [N, D], got {tuple(q.shape)} and {tuple(d_pos.shape)}"
        )
    if d_neg is not None and (
        d_neg.ndim != 3 or d_neg.shape[0] != q.shape[0] or d_neg.shape[2] != q.shape[1]
    ):
        raise InputError(
            f"d_neg must be [N, K, D] = [{q.shape[0]}, K, {q.shape[1]}], got {tuple(d_neg.shape)}"
        )


def improved_infonce(
    q: Tensor,
    d_pos: Tensor,
    d_neg: Tensor | None = None,
    *,
    temperature: float = 0.01,
    margin: float = 0.1,
    pos_ids: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Improved InfoNCE (Qwen3 Embedding technical report, arXiv 2506.05176, Eq. 1), mean over the batch.

    ``Z_i`` holds the positive ``s(q_i, d_i+)``, the query's own hard negatives ``s(q_i, d_ik-)``
    and, for ``j != i``, the in-batch terms ``s(q_i, q_j)``, ``s(d_i+, d_j+)`` and
    ``s(q_i, d_j+)`` (other pairs' hard negatives are not used). A term is dropped when its own
    similarity exceeds ``s(q_i, d_i+) + margin``; in-batch document terms are also dropped when
    ``pos_ids[j] == pos_ids[i]`` (the same document). The positive is never dropped. Similarities
    are cosines; dropped terms enter the log-sum-exp as ``-inf``, so small temperatures are stable.
    """
    _check_shapes(q, d_pos, d_neg)
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    n = q.shape[0]
    dtype = torch.promote_types(q.dtype, torch.float32)
    qn = F.normalize(q.to(dtype), dim=-1)
    pn = F.normalize(d_pos.to(dtype), dim=-1)
    s_pos = (qn * pn).sum(-1)
    limit = (s_pos + margin).unsqueeze(1)
    off_diag = ~torch.eye(n, dtype=torch.bool, device=q.device)
    other_doc = off_diag
    ids = _as_ids(pos_ids, n, q.device)
    if ids is not None:
        other_doc = off_diag & (ids.unsqueeze(0) != ids.unsqueeze(1))

    terms = [s_pos.unsqueeze(1)]
    if d_neg is not None and d_neg.shape[1] > 0:
        s_neg = torch.einsum("nd,nkd->nk", qn, F.normalize(d_neg.to(dtype), dim=-1))
        terms.append(s_neg.masked_fill(s_neg > limit, float("-inf")))
    for sim, allowed in ((qn @ qn.T, off_diag), (pn @ pn.T, other_doc), (qn @ pn.T, other_doc)):
        terms.append(sim.masked_fill(~(allowed & (sim <= limit)), float("-inf")))
    logits = torch.cat(terms, dim=1) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


class ImprovedInfoNCELoss(nn.Module):
    """Module wrapper of :func:`improved_infonce` over precomputed embeddings."""

    def __init__(self, temperature: float = 0.01, margin: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature
        self.margin = margin

    def forward(
        self,
        q: Tensor,
        d_pos: Tensor,
        d_neg: Tensor | None = None,
        pos_ids: Tensor | Sequence[int] | None = None,
    ) -> Tensor:
        return improved_infonce(
            q, d_pos, d_neg, temperature=self.temperature, margin=self.margin, pos_ids=pos_ids
        )


# --------------------------------------------------------------------------- cached variant


@dataclass(frozen=True)
class _RngState:
    """Random state taken before a chunk's first forward, replayed for its recomputation."""

    cpu: Tensor
    cuda: tuple[Tensor, ...]

    @classmethod
    def capture(cls) -> _RngState:
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else ()
        return cls(torch.get_rng_state(), cuda)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the caller's random state is restored afterwards."""
        with torch.random.fork_rng(devices=range(len(self.cuda))):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(list(self.cuda))
            yield


def _chunks(inputs: Inputs, chunk_size: int) -> list[Batch]:
    """Split a dict of [B, ...] tensors into chunks of rows; a sequence is taken as pre-chunked."""
    if not isinstance(inputs, Mapping):
        return list(inputs)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    sizes = {len(v) for v in inputs.values()}
    if len(sizes) != 1:
        raise InputError(f"all input tensors need the same batch size, got {sorted(sizes)}")
    total = sizes.pop()
    starts = range(0, total, chunk_size)
    return [{k: v[i : i + chunk_size] for k, v in inputs.items()} for i in starts]


def _embed_no_grad(encode_fn: EncodeFn, chunks: list[Batch]) -> tuple[Tensor, list[_RngState]]:
    states, embs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RngState.capture())
            embs.append(encode_fn(chunk))
    return torch.cat(embs).detach().requires_grad_(True), states


def _backward_chunks(
    encode_fn: EncodeFn, chunks: list[Batch], states: list[_RngState], grad: Tensor
) -> None:
    start = 0
    for chunk, state in zip(chunks, states, strict=True):
        with state.replay():
            emb = encode_fn(chunk)
        emb.backward(grad[start : start + len(emb)].to(emb.dtype))
        start += len(emb)


def cached_infonce_backward(
    encode_fn: EncodeFn,
    queries: Inputs,
    docs: Inputs,
    negatives: Inputs | None = None,
    *,
    chunk_size: int = 32,
    temperature: float = 0.01,
    margin: float = 0.1,
    pos_ids: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """GradCache step: compute :func:`improved_infonce` over a large batch, accumulate the
    parameter gradients in ``.grad`` of the encoder, and return the detached loss.

    ``encode_fn`` maps a dict of input tensors ``[chunk, ...]`` to embeddings ``[chunk, D]``
    (an encoder module works). ``queries`` and ``docs`` hold ``N`` rows, ``negatives``
    ``N * K`` rows ordered query by query (rows ``i*K .. i*K+K-1`` belong to query ``i``).
    Each is either a dict of tensors (split into ``chunk_size`` rows) or a sequence of such dicts
    already chunked (e.g. batched by token budget). Pass 1 embeds every chunk without graph;
    the loss and its gradient w.r.t. the embeddings come from :func:`improved_infonce`; pass 2
    re-encodes each chunk with graph, replaying the random state of pass 1 (dropout identical),
    and backpropagates the cached embedding gradient. Do not call ``backward`` on the result.
    """
    groups = [_chunks(queries, chunk_size), _chunks(docs, chunk_size)]
    if negatives is not None:
        groups.append(_chunks(negatives, chunk_size))
    cached = [_embed_no_grad(encode_fn, chunks) for chunks in groups]
    embs = [emb for emb, _ in cached]
    d_neg = None
    if negatives is not None:
        n, total = len(embs[0]), len(embs[2])
        if n == 0 or total % n:
            raise InputError(f"negatives must hold N*K rows for N={n} queries, got {total}")
        d_neg = embs[2].view(n, total // n, -1)
    with torch.enable_grad():
        loss = improved_infonce(
            embs[0], embs[1], d_neg, temperature=temperature, margin=margin, pos_ids=pos_ids
        )
        grads = torch.autograd.grad(loss, embs)
    for chunks, (_, states), grad in zip(groups, cached, grads, strict=True):
        _backward_chunks(encode_fn, chunks, states, grad)
    return loss.detach()


class CachedInfoNCE(nn.Module):
    """Memory-saving :class:`ImprovedInfoNCELoss` for large batches (GradCache).

    ``forward`` already accumulates the encoder's parameter gradients and returns the detached
    loss: call ``optimizer.step()`` next, never ``loss.backward()``.
    """

    def __init__(
        self,
        encoder: EncodeFn,
        chunk_size: int = 32,
        temperature: float = 0.01,
        margin: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.margin = margin

    def forward(
        self,
        queries: Inputs,
        docs: Inputs,
        negatives: Inputs | None = None,
        pos_ids: Tensor | Sequence[int] | None = None,
    ) -> Tensor:
        return cached_infonce_backward(
            self.encoder,
            queries,
            docs,
            negatives,
            chunk_size=self.chunk_size,
            temperature=self.temperature,
            margin=self.margin,
            pos_ids=pos_ids,
        )


# --------------------------------------------------------------------------- reranker loss


def reranker_loss(
    logits: Tensor | tuple[Tensor, Tensor], labels: Tensor | Sequence[float]
) -> Tensor:
    """Reranker loss (the report's Eq. 2): 2-way cross-entropy over ``[no, yes]`` at the last position.

    ``logits`` is the one logit ``l = logit_yes - logit_no`` ``[N]``, or the pair
    ``(logit_no, logit_yes)``. ``labels`` are 1 ("yes", relevant) or 0 ("no"); values in
    between act as soft targets. Since ``softmax([a, b])[1] == sigmoid(b - a)``, the 2-way
    cross-entropy equals binary cross-entropy with logits on ``l``. Mean over the batch.
    """
    if isinstance(logits, tuple):
        logit_no, logit_yes = logits
        logits = logit_yes - logit_no
    target = torch.as_tensor(labels, device=logits.device).to(logits.dtype)
    if target.shape != logits.shape:
        raise InputError(
            f"labels shape {tuple(target.shape)} != logits shape "
            f"{tuple(logits.shape)}: give one label per (query, document) pair"
        )
    if ((target < 0) | (target > 1)).any():
        raise InputError("labels must lie in [0, 1] (1 = 'yes'/relevant, 0 = 'no')")
    return F.binary_cross_entropy_with_logits(logits, target)


class RerankerLoss(nn.Module):
    """Module wrapper of :func:`reranker_loss`."""

    def forward(
        self, logits: Tensor | tuple[Tensor, Tensor], labels: Tensor | Sequence[float]
    ) -> Tensor:
        return reranker_loss(logits, labels)
