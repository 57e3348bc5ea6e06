"""Parity of an exported model directory against its PyTorch reference.

The check runs the real runtime (``embedrank.plugin``: tokenization from the manifest,
token-budget batching, ONNX Runtime) against the PyTorch module on one left-padded,
mixed-length batch: short and long texts (the longest over 3x the shortest), unicode,
queries with and without an instruction, and a Matryoshka dimension.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from embedrank.errors import ParityError
from embedrank.hub import check_source

DOCUMENTS = [
    "Paris is the capital of France.",
    "Qdrant stores vectors with payloads and filters them during search. It supports "
    "cosine, dot and Euclidean distances, named vectors, sparse vectors and quantization, "
    "and runs in memory, on disk, or as a distributed cluster with shards and replicas. "
    "Collections can be snapshotted and restored, and payload indexes speed up filtering.",
    "Zürich, Köln, São Paulo — naïve café crème; 東京は日本の首都です。 Ελληνικά 😀",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "def add(a, b):\n    return a + b  # code is text too",
]
QUERIES = [
    "What is the capital of France?",
    "how do vector databases filter search results by payload fields while keeping recall high",
    "日本の首都は？",
    "photosynthesis",
]
INSTRUCTION = "Given a question, retrieve passages that answer it"

# (min cosine, max |score difference|) a dtype must reach
TOLERANCES = {"fp32": (0.9999, 1e-4), "fp16": (0.999, 1e-2), "int8": (0.97, 0.05)}
# int8 also: this mean cosine (embedder), and the best document of every query unchanged
# (embedder: queries x documents by cosine; reranker: by score). docs/int8.md measures the
# same bars at scale (mean cosine >= 0.99, top-10 agreement >= 0.95 over a real corpus).
MEAN_COSINE = {"int8": 0.99}
TOP1_AGREEMENT = {"int8": 1.0}


@dataclass
class ParityReport:
    kind: str
    dtype: str
    checks: dict[str, dict[str, float]] = field(default_factory=dict)
    min_cosine: float | None = None
    max_abs_diff: float | None = None
    mean_cosine: float | None = None
    top1_agreement: float | None = None  # share of queries whose best document is unchanged
    passed: bool = False

    def table(self) -> str:
        """One row per check: cosines for embeddings, the largest score difference for both."""
        cosines = self.kind == "embedder"
        head = f"{'check':<28} {'n':>3}" + (f" {'min cos':>10} {'mean cos':>10}" if cosines else "")
        rows = [head + f" {'max |d|':>10}"]
        for name, c in self.checks.items():
            row = f"{name:<28} {int(c['n']):>3}"
            if cosines:
                row += f" {c['min_cosine']:>10.6f} {c['mean_cosine']:>10.6f}"
            rows.append(row + f" {c['max_abs_diff']:>10.2e}")
        verdict = "PASS" if self.passed else "FAIL"
        cos, diff = TOLERANCES[self.dtype]
        target = f"cosine >= {cos}" if self.kind == "embedder" else f"|dscore| <= {diff}"
        if self.dtype in MEAN_COSINE and self.kind == "embedder":
            target += f", mean cosine >= {MEAN_COSINE[self.dtype]}"
        if self.dtype in TOP1_AGREEMENT:
            target += (f", top-1 agreement {self.top1_agreement:.2f} >= "
                       f"{TOP1_AGREEMENT[self.dtype]}")
        rows.append(f"{verdict}: {self.kind} {self.dtype}, target {target}")
        return "\n".join(rows)

    def next_step(self, model_dir: str, against: str) -> str:
        """What to do after a FAIL (one line)."""
        return (f"{model_dir} does not reproduce {against} within the {self.dtype} tolerance: check "
                "that --against is the checkpoint it was exported from (its manifest's source), "
                f"then re-export: embedrank export {self.kind} {against} {model_dir} --overwrite"
                + (" (or --dtype fp32 for the closest match)" if self.dtype != "fp32" else ""))

    def to_dict(self) -> dict:
        return asdict(self)


def _compare(name: str, onnx: np.ndarray, ref: np.ndarray, report: ParityReport) -> None:
    entry: dict[str, float] = {"n": float(len(ref)), "max_abs_diff": float(np.abs(onnx - ref).max())}
    if onnx.ndim == 2:
        cos = (onnx * ref).sum(-1) / (np.linalg.norm(onnx, axis=-1) * np.linalg.norm(ref, axis=-1))
        entry.update(min_cosine=float(cos.min()), mean_cosine=float(cos.mean()))
    report.checks[name] = entry


@torch.no_grad()
def check_embedder(runtime, module, dtype: str) -> ParityReport:
    """Compare a runtime ``Embedder`` with a torch ``Embedder`` (full dim and a Matryoshka dim)."""
    report = ParityReport("embedder", dtype)
    full = runtime.manifest.dim
    small = max(min(32, full), full // 2)
    ref_docs = module.embed_documents(DOCUMENTS).float().cpu().numpy()
    docs = runtime.embed_documents(DOCUMENTS)
    _compare("documents", docs, ref_docs, report)
    queries, ref_queries = (runtime.embed_queries(QUERIES),
                            module.embed_queries(QUERIES).float().cpu().numpy())
    _compare("queries (default instr.)", queries, ref_queries, report)
    report.top1_agreement = float(np.mean((queries @ docs.T).argmax(1)
                                          == (ref_queries @ ref_docs.T).argmax(1)))
    _compare("queries (custom instr.)", runtime.embed_queries(QUERIES, INSTRUCTION),
             module.embed_queries(QUERIES, INSTRUCTION).float().cpu().numpy(), report)
    truncated = copy.copy(runtime)
    truncated.dim = small
    _compare(f"documents dim={small}", truncated.embed_documents(DOCUMENTS),
             module.embed_documents(DOCUMENTS, dim=small).float().cpu().numpy(), report)
    report.min_cosine = min(c["min_cosine"] for c in report.checks.values())
    report.max_abs_diff = max(c["max_abs_diff"] for c in report.checks.values())
    report.mean_cosine = float(np.mean([c["mean_cosine"] for c in report.checks.values()]))
    report.passed = (report.min_cosine >= TOLERANCES[dtype][0]
                     and report.mean_cosine >= MEAN_COSINE.get(dtype, -1.0)
                     and report.top1_agreement >= TOP1_AGREEMENT.get(dtype, 0.0))
    return report


@torch.no_grad()
def check_reranker(runtime, module, dtype: str) -> ParityReport:
    """Compare P(yes) from a runtime ``Reranker`` with a torch ``Reranker``."""
    report = ParityReport("reranker", dtype)
    same_best = []
    for name, instruction in (("default instr.", None), ("custom instr.", INSTRUCTION)):
        for q, query in enumerate(QUERIES[:2]):
            ref = module.score(query, DOCUMENTS, instruction).float().cpu().numpy()
            got = runtime.score(query, DOCUMENTS, instruction)
            _compare(f"query {q} ({name})", got, ref, report)
            same_best.append(got.argmax() == ref.argmax())
    report.max_abs_diff = max(c["max_abs_diff"] for c in report.checks.values())
    report.top1_agreement = float(np.mean(same_best))
    report.passed = (report.max_abs_diff <= TOLERANCES[dtype][1]
                     and report.top1_agreement >= TOP1_AGREEMENT.get(dtype, 0.0))
    return report


def check(runtime, module, dtype: str) -> ParityReport:
    checker = check_embedder if runtime.kind == "embedder" else check_reranker
    return checker(runtime, module, dtype)


def verify(model_dir, against, *, device: str = "cpu", trust_remote_code: bool = False,
           raise_on_fail: bool = False) -> ParityReport:
    """Load ``model_dir`` with the runtime and ``against`` (hub id / checkpoint) with torch."""
    from embedrank.manifest import read_manifest
    from embedrank.runtime import Embedder as OnnxEmbedder
    from embedrank.runtime import Reranker as OnnxReranker
    from embedrank.train.modeling import Embedder, Reranker, torch_device

    manifest = read_manifest(model_dir)
    torch_device(device)  # before anything loads
    check_source(against, hint=f"the manifest of {str(model_dir)!r} names {manifest.source!r}")
    runtime_cls, torch_cls = ((OnnxEmbedder, Embedder) if manifest.kind == "embedder"
                              else (OnnxReranker, Reranker))
    runtime = runtime_cls.load(model_dir, device=device)
    torch_device = "cuda" if device.startswith("cuda") else "cpu"
    module = torch_cls.from_pretrained(against, device=torch_device, max_length=manifest.max_length,
                                       trust_remote_code=trust_remote_code)
    report = check(runtime, module, manifest.dtype)
    if raise_on_fail and not report.passed:
        raise ParityError("parity check failed:\n" + report.table())
    return report
