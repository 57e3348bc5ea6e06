"""Losses against direct transcriptions of the report's equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from embedrank.errors import InputError
from embedrank.train.losses import (
    CachedInfoNCE,
    ImprovedInfoNCELoss,
    RerankerLoss,
    cached_infonce_backward,
    improved_infonce,
    reranker_loss,
)

# --------------------------------------------------------------------------- Eq. 1 by hand


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def eq1_reference(q, pos, neg, pos_ids, tau: float, margin: float = 0.1) -> float:
    """REFERENCE.md §3, Eq. 1, loop by loop in float64 Python arithmetic."""
    n, total = len(q), 0.0
    for i in range(n):
        s_pos = _cos(q[i], pos[i])
        limit = s_pos + margin
        z = math.exp(s_pos / tau)
        for d in neg[i]:
            s = _cos(q[i], d)
            z += math.exp(s / tau) if s <= limit else 0.0
        for j in range(n):
            if j == i:
                continue
            same_doc = pos_ids[j] == pos_ids[i]
            for s, is_doc in (
                (_cos(q[i], q[j]), False),
                (_cos(pos[i], pos[j]), True),
                (_cos(q[i], pos[j]), True),
            ):
                if s <= limit and not (is_doc and same_doc):
                    z += math.exp(s / tau)
        total += -math.log(math.exp(s_pos / tau) / z)
    return total / n


@pytest.fixture
def planted() -> dict:
    """Random batch with a repeated positive (pos_ids equal) and near-duplicates that trip the
    margin mask: a hard negative almost equal to its query, and two almost equal queries."""
    g = torch.Generator().manual_seed(0)
    n, k, dim = 6, 3, 8
    q = torch.randn(n, dim, generator=g, dtype=torch.float64)
    pos = q + 0.8 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    neg = torch.randn(n, k, dim, generator=g, dtype=torch.float64)
    pos[4] = pos[1]
    neg[0, 1] = q[0] + 1e-3 * torch.randn(dim, generator=g, dtype=torch.float64)
    q[5] = q[2] + 1e-3 * torch.randn(dim, generator=g, dtype=torch.float64)
    pos[5] = q[5] + 0.8 * torch.randn(dim, generator=g, dtype=torch.float64)
    return {"q": q, "pos": pos, "neg": neg, "ids": [0, 1, 2, 3, 1, 5]}


def _reference(b: dict, tau: float, margin: float = 0.1, ids=None) -> float:
    ids = b["ids"] if ids is None else ids
    return eq1_reference(b["q"].tolist(), b["pos"].tolist(), b["neg"].tolist(), ids, tau, margin)


def _loss(b: dict, tau: float, margin: float = 0.1, ids=None) -> float:
    ids = b["ids"] if ids is None else ids
    return improved_infonce(
        b["q"], b["pos"], b["neg"], temperature=tau, margin=margin, pos_ids=ids
    ).item()


@pytest.mark.parametrize("tau", [0.5, 1.0, 0.2])
def test_matches_eq1_reference_with_planted_duplicates(planted, tau):
    assert _loss(planted, tau) == pytest.approx(_reference(planted, tau), rel=1e-12)


def test_masks_are_triggered_and_change_the_loss(planted):
    no_ids = list(range(6))
    with_masks = _reference(planted, 0.5)
    assert _reference(planted, 0.5, margin=10.0) != pytest.approx(with_masks, rel=1e-6)
    assert _reference(planted, 0.5, ids=no_ids) != pytest.approx(with_masks, rel=1e-6)
    assert _loss(planted, 0.5, margin=10.0) == pytest.approx(
        _reference(planted, 0.5, margin=10.0), rel=1e-12
    )
    assert _loss(planted, 0.5, ids=no_ids) == pytest.approx(
        _reference(planted, 0.5, ids=no_ids), rel=1e-12
    )


def test_masked_terms_are_excluded(planted):
    before = _loss(planted, 0.5)
    moved = dict(planted, neg=planted["neg"].clone())
    moved["neg"][0, 1] = planted["q"][0] * 3.0  # cos 1 now: closer, still masked
    assert _loss(moved, 0.5) == pytest.approx(before, rel=1e-12)
    q = planted["q"].clone().requires_grad_(True)
    neg = planted["neg"].clone().requires_grad_(True)
    improved_infonce(q, planted["pos"], neg, temperature=0.5, pos_ids=planted["ids"]).backward()
    assert neg.grad[0, 1].abs().max().item() == 0.0
    assert neg.grad[0, 0].abs().max().item() > 0.0


def test_single_pair_hand_value():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 1.0]])  # cos = 1/sqrt2
    neg = torch.tensor([[[0.0, 1.0]]])  # cos 0
    tau = 0.5
    expected = math.log(1 + math.exp((0 - 1 / math.sqrt(2)) / tau))
    got = improved_infonce(q, pos, neg, temperature=tau).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert improved_infonce(q, pos, temperature=tau).item() == pytest.approx(0.0, abs=1e-7)


def test_stable_at_small_temperature_with_identical_vectors():
    n, k = 4, 2
    v = torch.ones(n, 8)
    neg = torch.ones(n, k, 8)
    loss = improved_infonce(v, v.clone(), neg, temperature=0.01)
    assert loss.item() == pytest.approx(math.log(1 + k + 3 * (n - 1)), rel=1e-5)
    same = improved_infonce(v, v.clone(), neg, temperature=0.01, pos_ids=[7] * n)
    assert same.item() == pytest.approx(math.log(1 + k + (n - 1)), rel=1e-5)


def test_stable_at_small_temperature_with_masked_terms(planted):
    b = {key: val.float() for key, val in planted.items() if key != "ids"}
    loss = improved_infonce(b["q"], b["pos"], b["neg"], temperature=0.01, pos_ids=planted["ids"])
    ref = _reference(planted, 0.01)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(ref, rel=1e-4)


def test_module_wrapper_and_input_errors(planted):
    module = ImprovedInfoNCELoss(temperature=0.5, margin=0.1)
    got = module(planted["q"], planted["pos"], planted["neg"], pos_ids=planted["ids"]).item()
    assert got == pytest.approx(_reference(planted, 0.5), rel=1e-12)
    with pytest.raises(InputError, match="pos_ids"):
        improved_infonce(planted["q"], planted["pos"], pos_ids=[0, 1])
    with pytest.raises(InputError, match="d_neg"):
        improved_infonce(planted["q"], planted["pos"], planted["neg"][:2])
    with pytest.raises(InputError, match="temperature"):
        improved_infonce(planted["q"], planted["pos"], temperature=0.0)


# --------------------------------------------------------------------------- GradCache variant


class TinyEncoder(nn.Module):
    """Embedding + masked mean + dropout + linear: enough to exercise the RNG replay."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.drop = nn.Dropout(0.3)
        self.proj = nn.Linear(16, 12)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1).to(self.emb.weight.dtype)
        pooled = (self.emb(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        return self.proj(self.drop(pooled))


def _inputs(rows: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (rows, 7), generator=g)
    mask = (torch.arange(7) < torch.randint(2, 8, (rows, 1), generator=g)).long()
    return {"input_ids": ids, "attention_mask": mask}


def _chunked(inputs: dict, size: int) -> list[dict]:
    rows = len(inputs["input_ids"])
    return [{k: v[i : i + size] for k, v in inputs.items()} for i in range(0, rows, size)]


def _plain_grads(model, groups, n, kw) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(123)
    embs = [torch.cat([model(c) for c in chunks]) for chunks in groups]
    loss = improved_infonce(embs[0], embs[1], embs[2].view(n, -1, embs[2].shape[-1]), **kw)
    model.zero_grad()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("pre_chunked", [False, True])
def test_cached_gradients_equal_plain_gradients(pre_chunked):
    torch.manual_seed(0)
    model = TinyEncoder().double().train()
    n, k, chunk = 6, 2, 4
    q, d, neg = _inputs(n, 1), _inputs(n, 2), _inputs(n * k, 3)
    kw = {"temperature": 0.05, "margin": 0.1, "pos_ids": [0, 1, 2, 1, 4, 5]}
    groups = [_chunked(x, chunk) for x in (q, d, neg)]
    plain_loss, plain = _plain_grads(model, groups, n, kw)

    model.zero_grad()
    torch.manual_seed(123)
    args = groups if pre_chunked else (q, d, neg)
    loss = cached_infonce_backward(model, *args, chunk_size=chunk, **kw)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(plain_loss, rel=1e-10)
    for p, ref in zip(model.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-6, atol=1e-9)
    assert max(g.abs().max().item() for g in plain) > 1e-3


def test_dropout_makes_replay_necessary():
    torch.manual_seed(0)
    model = TinyEncoder().double().train()
    batch = _inputs(4, 1)
    assert not torch.allclose(model(batch), model(batch))


def test_cached_module_without_negatives_matches_plain():
    torch.manual_seed(0)
    model = TinyEncoder().double().eval()
    q, d = _inputs(5, 4), _inputs(5, 5)
    loss = improved_infonce(model(q), model(d), temperature=0.1)
    model.zero_grad()
    loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    cached = CachedInfoNCE(model, chunk_size=2, temperature=0.1)
    assert cached(q, d).item() == pytest.approx(loss.item(), rel=1e-10)
    for p, ref in zip(model.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-6, atol=1e-9)


def test_cached_rejects_ragged_negatives():
    model = TinyEncoder().double()
    with pytest.raises(InputError, match="N\\*K"):
        cached_infonce_backward(model, _inputs(3, 1), _inputs(3, 2), _inputs(4, 3))


# --------------------------------------------------------------------------- reranker (Eq. 2)


def test_reranker_loss_equals_two_way_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logit_no, logit_yes = torch.randn(2, 16, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 2, (16,), generator=g)
    expected = F.cross_entropy(torch.stack([logit_no, logit_yes], dim=-1), labels)
    one_logit = reranker_loss(logit_yes - logit_no, labels)
    assert one_logit.item() == pytest.approx(expected.item(), rel=1e-12)
    assert reranker_loss((logit_no, logit_yes), labels).item() == pytest.approx(
        expected.item(), rel=1e-12
    )
    assert RerankerLoss()(logit_yes - logit_no, labels.tolist()).item() == pytest.approx(
        expected.item(), rel=1e-12
    )


def test_reranker_loss_hand_values_and_errors():
    assert reranker_loss(torch.zeros(3), [1, 0, 1]).item() == pytest.approx(math.log(2))
    assert reranker_loss(torch.tensor([2.0]), [1]).item() == pytest.approx(
        math.log(1 + math.exp(-2.0)), rel=1e-6
    )
    with pytest.raises(InputError, match="labels"):
        reranker_loss(torch.zeros(3), [1, 0])
    with pytest.raises(InputError, match="labels"):
        reranker_loss(torch.zeros(2), [2, 0])
