"""Where an untrained decoder LM's last-token embedding carries the text (docs/training.md).

Embeds a sample of a BEIR folder's test queries (with the Qwen3 instruction) and documents four
ways: pooled at an appended ``<|endoftext|>`` (the Qwen3 format), at an appended ``<|im_end|>``,
at the last text token (nothing appended), and mean-pooled. Prints each way's mean
document-document cosine (near 1: every text gets nearly the same vector) and MRR@10 of the sample
queries against the sample documents. PyTorch fp32 on the CPU, left padding.

    python benchmarks/eot_probe.py --model runs/smol --beir data/debian --queries 60 --docs 240
"""

from __future__ import annotations

import argparse
import random
import time


def sample(beir: str, n_queries: int, n_docs: int, seed: int):
    from embedrank.beir import document_text, load_beir

    corpus, queries, qrels = load_beir(beir, split="test")
    rng = random.Random(seed)
    qids = rng.sample(sorted(qrels), n_queries)
    relevant = sorted({d for q in qids for d in qrels[q]})
    dids = relevant + rng.sample(sorted(set(corpus) - set(relevant)), n_docs)
    return [queries[q] for q in qids], [{d for d in qrels[q]} for q in qids], dids, \
        [document_text(corpus[d]) for d in dids]


def embed(model, tok, texts, suffix, pool, max_tokens=120):
    import torch

    out = []
    for i in range(0, len(texts), 16):
        ids = [tok(t, add_special_tokens=False)["input_ids"][:max_tokens] + suffix for t in texts[i:i + 16]]
        width = max(map(len, ids))
        x = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in ids])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in ids])
        with torch.no_grad():
            h = model(input_ids=x, attention_mask=mask,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        v = h[:, -1] if pool == "last" else (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out.append(torch.nn.functional.normalize(v, dim=-1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF checkpoint directory of a decoder LM")
    ap.add_argument("--beir", required=True, help="BEIR folder with a test split")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--docs", type=int, default=240, help="documents besides the relevant ones")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    from embedrank.formats import QWEN3

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32).eval()
    texts, relevant, dids, docs = sample(args.beir, args.queries, args.docs, args.seed)
    queries = [QWEN3.query(t) for t in texts]
    position = {d: i for i, d in enumerate(dids)}
    ways = [("<|endoftext|>", [tok.convert_tokens_to_ids("<|endoftext|>")], "last"),
            ("<|im_end|>", [tok.convert_tokens_to_ids("<|im_end|>")], "last"),
            ("last text token", [], "last"), ("mean", [], "mean")]
    for name, suffix, pool in ways:
        start = time.perf_counter()
        d, q = embed(model, tok, docs, suffix, pool), embed(model, tok, queries, suffix, pool)
        scores = q @ d.T
        rr = []
        for i, wanted in enumerate(relevant):
            order = scores[i].argsort(descending=True).tolist()
            rank = min(order.index(position[x]) for x in wanted) + 1
            rr.append(1 / rank if rank <= 10 else 0.0)
        off = (d @ d.T)[~torch.eye(len(d), dtype=torch.bool)].mean().item()
        print(f"{name:16} doc-doc cosine {off:.4f}  MRR@10 {sum(rr) / len(rr):.4f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
