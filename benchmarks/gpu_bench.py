"""GPU side by side: embedrank's ONNX exports (fp16) against PyTorch eager / torch.compile (bf16).

Random weights of the Qwen3-0.6B architecture (Qwen3-Embedding-0.6B's sizes: 28 layers, hidden
1024, FFN 3072, 16 query / 8 key-value heads of 128, vocabulary 151,669) with the real Qwen3
tokenizer.
Each variant runs in its own process (clean GPU memory readings, no shared caches) on the same
token ids and the same batches:

- fixed: 64 x 256 tokens, no padding;
- variable: 1,024 lengths drawn from 32-512 (seeded); length-sorted token-budget batches (the
  runtime's plan: 16,384 padded tokens, at most 128 rows) and, for eager, arrival-order batches
  of 64 as well (what a plain loop does);
- rerank: one query's top-100 (100 x 256 tokens), p50 over 20 calls, and its kernel profile.

Throughput counts real tokens. Memory: device memory in use (NVML) after the fixed batches
minus after loading, per 1k tokens of one 64 x 256 batch. Cosine: against fp32 PyTorch on the
first 128 variable-length documents. Figures: docs/performance.md.

    python benchmarks/gpu_bench.py all --work /tmp/gb --tokenizer TOKDIR --json out.json
    GPU_BENCH_DRY_RUN=1 python benchmarks/gpu_bench.py all ...   # the same pipeline, tiny, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import (
    DEVICE,
    DRY_RUN,
    GraphRunner,
    budget_plan,
    cpu_model,
    gpu_used_mib,
    run_planned,
    timed,
)

ARCH = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, vocab_size=151669, max_position_embeddings=40960,
            tie_word_embeddings=True)
PEAK_FLOPS = 790e12  # dense bf16 / fp16 on an H100 SXM / H200 (measured ~790-798 here)
FIXED = (64, 256)
VARIABLE = (1024, 32, 512)
RERANK = (100, 256)
if DRY_RUN:
    ARCH = {**ARCH, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
    FIXED, VARIABLE, RERANK = (8, 32), (40, 8, 64), (10, 32)
# name -> (kind, optimize, attention, rewrites); rewrites None = the export's device default
# ("onnx-fused-fp16": the `embedrank export --device cuda` default, packed QKV)
EXPORTS = {"onnx-torchscript-fp16": ("embedder", "none", None, ()),
           "onnx-fused-fp16": ("embedder", "fused", "gqa", None),
           "onnx-fused-fp16-reranker": ("reranker", "fused", "gqa", None),
           "onnx-fused-plain-fp16": ("embedder", "fused", "gqa", ()),  # --rewrites none
           "onnx-fused-plain-fp16-reranker": ("reranker", "fused", "gqa", ()),
           "onnx-fused-mha-fp16": ("embedder", "fused", "mha", ()),
           # the opt-in fused SwiGLU kernel (embedrank.ops; $EMBEDRANK_OPS_LIBRARY on the device)
           "onnx-fused-swiglu-fp16": ("embedder", "fused", "gqa", ("qkv", "swiglu")),
           "onnx-fused-swiglu-fp16-reranker": ("reranker", "fused", "gqa", ("qkv", "swiglu")),
           # embedrank's QKVRotary + causal MultiHeadAttention instead of GroupQueryAttention
           "onnx-fused-rope-fp16": ("embedder", "fused", "gqa", ("rope",)),
           "onnx-fused-rope-swiglu-fp16": ("embedder", "fused", "gqa", ("rope", "swiglu")),
           "onnx-fused-rope-swiglu-fp16-reranker": ("reranker", "fused", "gqa", ("rope", "swiglu"))}
# variants without an export of their own
PROBES = ("onnx-activations", "onnx-probes", "torch-eager-bf16", "torch-compile-bf16",
          "torch-fp32-reference")
VARIANTS = ("onnx-fused-fp16", "onnx-fused-mha-fp16", "torch-eager-bf16", "torch-compile-bf16")
EXPORTS_AT_ONCE = int(os.environ.get("GPU_BENCH_EXPORTS_AT_ONCE", "3"))  # prepare's parallel exports


def linear_flops_per_token(a: dict = ARCH) -> float:
    h, q, kv, f = a["hidden_size"], a["num_attention_heads"] * a["head_dim"], \
        a["num_key_value_heads"] * a["head_dim"], a["intermediate_size"]
    return 2.0 * a["num_hidden_layers"] * (h * (q + 2 * kv) + q * h + 3 * h * f)


def workloads(eot: int) -> dict[str, list[list[int]]]:
    rng = np.random.default_rng(0)

    def seq(n: int) -> list[int]:
        return [*rng.integers(1000, 150000, size=n - 1).tolist(), eot]

    n, lo, hi = VARIABLE
    return {"fixed": [seq(FIXED[1]) for _ in range(FIXED[0])],
            "variable": [seq(int(k)) for k in rng.integers(lo, hi + 1, size=n)],
            "rerank": [seq(RERANK[1]) for _ in range(RERANK[0])]}


def batches(seqs, mode: str) -> list[list[int]]:
    if mode == "sorted":
        return budget_plan(seqs)
    return [list(range(i, min(i + 64, len(seqs)))) for i in range(0, len(seqs), 64)]


# a backend maps a list of token-id rows to an array of results; it pads as its model expects
def torch_backend(ckpt: Path, pad_id: int, compile: bool,
                  dtype: str = "float32" if DRY_RUN else "bfloat16"):
    import torch

    from embedrank.formats import pad_left
    from embedrank.train.modeling import Embedder

    module = Embedder.from_pretrained(ckpt, dtype=getattr(torch, dtype), device=DEVICE).eval()
    fn = torch.compile(module) if compile else module

    @torch.inference_mode()
    def run(rows):
        ids, mask = pad_left(rows, pad_id)
        out = fn(torch.from_numpy(ids).to(DEVICE), torch.from_numpy(mask).to(DEVICE))
        return out.float().cpu().numpy()

    return run


def fixed_tokens_per_s(fn, work: dict, res: dict | None = None) -> float:
    """Throughput on the fixed batch: 3 warm-up calls (their seconds in ``res``), p50 of 20."""
    fixed = work["fixed"]
    plan = [list(range(len(fixed)))]
    start = time.perf_counter()
    for _ in range(3):
        run_planned(fn, fixed, plan)
    if res is not None:
        res["warmup_s"] = time.perf_counter() - start
    return FIXED[0] * FIXED[1] / float(np.median(timed(lambda: run_planned(fn, fixed, plan), 20)))


def measure(fn, work: dict, modes=("sorted",)) -> dict:
    """Throughput on the fixed and variable workloads, memory, and embeddings for the cosine."""
    res: dict = {}
    base = gpu_used_mib()
    res["fixed_tokens_per_s"] = fixed_tokens_per_s(fn, work, res)
    tokens = FIXED[0] * FIXED[1]
    res["fixed_batch_ms_p50"] = tokens / res["fixed_tokens_per_s"] * 1e3
    res["mem_mib_per_1k_tokens"] = (gpu_used_mib() - base) / (tokens / 1000)
    seqs = work["variable"]
    real = sum(len(s) for s in seqs)
    for mode in modes:
        plan = batches(seqs, mode)
        padded = sum(len(b) * max(len(seqs[i]) for i in b) for b in plan)
        start = time.perf_counter()
        run_planned(fn, seqs, plan)  # warm-up (and recompiles)
        res[f"variable_{mode}_warmup_s"] = time.perf_counter() - start
        t = timed(lambda: run_planned(fn, seqs, plan), 2)  # noqa: B023
        res[f"variable_{mode}_tokens_per_s"] = real / min(t)
        res[f"variable_{mode}_padding"] = 1 - real / padded
    res["peak_mem_mib"] = gpu_used_mib()
    sub = seqs[:128]
    res["_emb"] = run_planned(fn, sub, batches(sub, "sorted")) if modes else None
    return res


def rerank_latency(fn, work: dict, budget: int) -> float:
    seqs = work["rerank"]
    plan = budget_plan(seqs, budget)
    for _ in range(3):
        run_planned(fn, seqs, plan)
    return float(np.median(timed(lambda: run_planned(fn, seqs, plan), 20))) * 1e3


# ---------------------------------------------------------------- one variant per process
def run_variant(name: str, work_dir: Path) -> dict:
    import gpu_probes
    import torch  # noqa: F401  (loads the CUDA libraries ONNX Runtime's CUDA provider needs)

    if name == "onnx-activations":  # SiLU(gate) * up through ORT's ops: no checkpoint, no export
        return {"variant": name, "activations": gpu_probes.activation_probe()}
    if name == "onnx-probes":  # is TensorRT usable?
        return {"variant": name, "tensorrt": gpu_probes.tensorrt_probe()}
    meta = json.loads((work_dir / "meta.json").read_text())
    work = workloads(meta["eot"])
    ckpt, pad = work_dir / "ckpt", meta["pad"]
    res: dict = {"variant": name}
    if name in EXPORTS:
        res.update(onnx_variant(name, work_dir, work, pad))
    elif name == "torch-eager-bf16":
        res.update(measure(torch_backend(ckpt, pad, False), work, modes=("sorted", "arrival64")))
        res["rerank"] = gpu_probes.reranker_heads(ckpt, work, pad)
    elif name == "torch-compile-bf16":
        fn = torch_backend(ckpt, pad, True)
        res.update(measure(fn, work, modes=()))  # fixed shapes only
        res["kernels"] = gpu_probes.kernel_profile(fn, work["fixed"])
    elif name == "torch-fp32-reference":
        sub = work["variable"][:128]
        fn = torch_backend(ckpt, pad, False, "float32")
        np.save(work_dir / "ref.npy", run_planned(fn, sub, batches(sub, "sorted")))
        return res
    else:
        raise SystemExit(f"unknown variant {name!r}: one of {', '.join([*EXPORTS, *PROBES])}")
    res.update(cosine_to_reference(res.pop("_emb"), work_dir))
    return res


def onnx_variant(name: str, work_dir: Path, work: dict, pad: int) -> dict:
    """An export's throughput (with and without IO binding), kernels, memory, rerank latency."""
    import gpu_probes

    model_dir = work_dir / name
    res = measure(GraphRunner(model_dir), work)
    res["fixed_tokens_per_s_no_io_binding"] = fixed_tokens_per_s(
        GraphRunner(model_dir, io_binding=False), work)
    if EXPORTS[name][2] == "gqa":
        res["kernels"] = gpu_probes.kernel_profile(GraphRunner(model_dir), work["fixed"])
        res["memory"] = gpu_probes.memory_probe(model_dir, work["fixed"], pad)
    if (work_dir / f"{name}-reranker").is_dir():
        rr = GraphRunner(work_dir / f"{name}-reranker")
        for budget in (16384, 32768):
            res[f"rerank_p50_ms_budget{budget}"] = rerank_latency(rr, work, budget)
        res["rerank_kernels"] = gpu_probes.kernel_profile(rr, work["rerank"])  # one batch of 100
    return res


def cosine_to_reference(emb: np.ndarray | None, work_dir: Path) -> dict:
    """Min / mean cosine of ``emb`` to the fp32 PyTorch reference (when both exist)."""
    if emb is None or not (work_dir / "ref.npy").exists():
        return {}
    ref = np.load(work_dir / "ref.npy")
    cos = (emb * ref).sum(-1) / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(ref, axis=-1))
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


# ---------------------------------------------------------------- driver
def prepare(work_dir: Path, tokenizer: Path, only: str | None = None) -> dict:
    """Random-weight checkpoint + the exports named in ``only`` (all of EXPORTS by default)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    exports = [e for e in EXPORTS if only is None or e in only.split(",")]
    ckpt, cached = work_dir / "ckpt", work_dir / "exports.json"
    if cached.exists():  # a second call on the same (warm) machine: redo failed exports only
        info = json.loads(cached.read_text())
        for name in exports:
            if "error" in info.get(name, {"error": 1}):
                info[name] = _subprocess(["export", name], work_dir)
        cached.write_text(json.dumps(info))
        return info
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**ARCH)).to(torch.float32 if DRY_RUN else torch.bfloat16)
    model.save_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    tok.save_pretrained(ckpt)
    del model
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    meta = {"eot": eot, "pad": eot if tok.pad_token_id is None else tok.pad_token_id}
    (work_dir / "meta.json").write_text(json.dumps(meta))
    info = {}
    with ThreadPoolExecutor(EXPORTS_AT_ONCE) as pool:  # each in its own process
        done_all = pool.map(lambda e: _subprocess(["export", e], work_dir), exports)
        for name, done in zip(exports, done_all, strict=True):
            info[name] = done
            print(f"export {name}: {json.dumps(done)[:300]}", file=sys.stderr, flush=True)
    info["reference"] = _subprocess(["variant", "torch-fp32-reference"], work_dir)
    cached.write_text(json.dumps(info))
    return info


def run_export(name: str, work_dir: Path) -> dict:
    from embedrank.export import export_model

    kind, optimize, attention, rewrites = EXPORTS[name]
    if DRY_RUN and rewrites:  # Qwen3's q / k norms pack on CUDA only
        rewrites = tuple(r for r in rewrites if r != "qkv")
    start = time.perf_counter()
    result = export_model(kind, str(work_dir / "ckpt"), work_dir / name,
                          dtype="fp32" if DRY_RUN else "fp16", device=DEVICE, optimize=optimize,
                          attention=attention, rewrites=rewrites, overwrite=True)
    size = sum(f.stat().st_size for f in (work_dir / name).iterdir())
    return {"seconds": time.perf_counter() - start, "parity": result.parity.to_dict(),
            "manifest_extra": result.manifest.extra, "opset": result.manifest.opset,
            "files": sorted(f.name for f in (work_dir / name).iterdir()), "bytes": size,
            "host_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _subprocess(args: list[str], work_dir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--work", str(work_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": proc.stderr[-1500:]}
    return json.loads(lines[-1][len("RESULT "):])


def needed_exports(variants: str) -> str:
    """The exports the variants in ``variants`` read: each ONNX variant's own, with its reranker
    where defined."""
    names = [v for v in variants.split(",") if v in EXPORTS]
    names += [f"{v}-reranker" for v in names if f"{v}-reranker" in EXPORTS]
    return ",".join(dict.fromkeys(names))


def floors() -> dict:
    per_token = linear_flops_per_token()
    rerank_tokens = RERANK[0] * RERANK[1]
    return {"linear_gflop_per_token": per_token / 1e9,
            "floor_tokens_per_s": PEAK_FLOPS / per_token,
            "rerank_floor_ms": per_token * rerank_tokens / PEAK_FLOPS * 1e3,
            "lm_head_all_positions_gflop": 2 * ARCH["hidden_size"] * ARCH["vocab_size"]
            * rerank_tokens / 1e9,
            "one_logit_head_gflop": 2 * ARCH["hidden_size"] * RERANK[0] / 1e9}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"exports: {', '.join(EXPORTS)}; other variants: {', '.join(PROBES)}")
    p.add_argument("step", choices=["all", "prepare", "variant", "export"],
                   help="all: prepare, then run the --only variants, each in its own process; "
                        "prepare: the random-weight checkpoint and the exports; variant NAME / "
                        "export NAME: one of them in this process (what `all` calls)")
    p.add_argument("name", nargs="?", help="with the steps variant and export: which one")
    p.add_argument("--work", type=Path, required=True, help="working directory (checkpoint, exports)")
    p.add_argument("--tokenizer", type=Path, help="a directory with the Qwen3 tokenizer files")
    p.add_argument("--json", type=Path, help="write (and update) the results here")
    p.add_argument("--only", default=",".join(VARIANTS), help="comma list of variants [%(default)s]")
    p.add_argument("--exports", default=None,
                   help="comma list of exports to prepare [those the --only variants read]")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.step in ("export", "variant"):
        if not a.name:
            p.error(f"the step {a.step} needs a NAME")
        result = run_export(a.name, a.work) if a.step == "export" else run_variant(a.name, a.work)
        print("RESULT " + json.dumps(result), flush=True)
        return
    out = json.loads(a.json.read_text()) if a.json and a.json.exists() else {}
    if a.step in ("all", "prepare"):
        out["exports"] = prepare(a.work, a.tokenizer, a.exports or (
            needed_exports(a.only) if a.step == "all" else None))
    for name in a.only.split(",") if a.step == "all" else []:
        print(f"variant {name} ...", file=sys.stderr, flush=True)
        out.setdefault("variants", {})[name] = _subprocess(["variant", name], a.work)
        if a.json:
            a.json.write_text(json.dumps(out, indent=2))
    out["floors"] = floors()
    out["machine"] = _machine()
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)


def _machine() -> dict:
    import onnxruntime as ort
    import torch

    smi = "dry run (cpu)" if DRY_RUN else subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True).stdout.strip()
    return {"gpu": smi, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "onnxruntime": ort.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


if __name__ == "__main__":
    main()
