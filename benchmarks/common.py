"""Helpers the benchmark scripts share (not installed with embedrank).

Token-id rows go through an exported model directory's ONNX Runtime session as the runtime opens
it (:class:`GraphRunner`), padded as its manifest says; timing, device memory and the dry-run
switch of the GPU scripts live here too, so that the scripts import this module and never each
other's internals.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embedrank.formats import pad, plan_batches
from embedrank.manifest import read_manifest

# a CPU dry run of the GPU pipeline (tiny sizes, fp32): GPU_BENCH_DRY_RUN=1
DRY_RUN = os.environ.get("GPU_BENCH_DRY_RUN") == "1"
DEVICE = "cpu" if DRY_RUN else "cuda"
BUDGET, MAX_BATCH = 16384, 128  # the runtime's defaults (embedrank.runtime)

Rows = Sequence[Sequence[int]]


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def cpu_model() -> str:
    """The CPU's model name (Linux), for the machine line of a result."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def machine_line(threads: int | None = None) -> str:
    """CPU model, cores (and threads used), date: where a CPU table was measured."""
    used = f", {threads} threads used" if threads else ""
    return (f"{cpu_model()}, {os.cpu_count()} cores{used}, load average "
            f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def gpu_used_mib() -> float:
    """Device memory in use on GPU 0 (NVML), 0 in a dry run."""
    if DRY_RUN:
        return 0.0
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used / 2**20


def ops_library(model_dir: Path, device: str) -> Path | None:
    """embedrank's custom-op library when the model's graph uses it (exports with ``swiglu``)."""
    if not read_manifest(model_dir).custom_ops:
        return None
    from embedrank.ops import find_library

    return find_library(cuda=device != "cpu")


class GraphRunner:
    """One forward pass of an exported model over token-id rows, padded as its manifest says.

    The session is the runtime's own (``embedrank.runtime``: its providers, arena strategy and
    custom-op registration); ``io_binding`` binds inputs and output explicitly on CUDA, as the
    runtime does there.
    """

    def __init__(self, model_dir: Path, device: str = DEVICE, threads: int | None = None,
                 io_binding: bool | None = None) -> None:
        from embedrank.runtime import Embedder, Reranker

        self.manifest = read_manifest(model_dir)
        cls = Embedder if self.manifest.kind == "embedder" else Reranker
        self.session = cls.load(model_dir, device=device, threads=threads).session
        self.device = device
        self.io_binding = device != "cpu" if io_binding is None else io_binding

    def __call__(self, rows: Rows) -> np.ndarray:
        ids, mask = pad(rows, self.manifest.pad_token_id, self.manifest.padding_side)
        if not self.io_binding:
            return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        index = int(self.device.split(":")[1]) if ":" in self.device else 0
        binding.bind_output(self.manifest.output, "cpu" if self.device == "cpu" else "cuda", index)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def run_planned(fn: Callable[[Rows], np.ndarray], seqs: Rows, plan: list[list[int]]) -> np.ndarray:
    """``fn`` over the batches of ``plan``; rows back in input order, as float32."""
    out = None
    for batch in plan:
        result = np.asarray(fn([seqs[i] for i in batch]), dtype=np.float32)
        if out is None:
            out = np.zeros((len(seqs), *result.shape[1:]), dtype=np.float32)
        out[batch] = result
    return out


def budget_plan(seqs: Rows, budget: int = BUDGET, max_batch: int = MAX_BATCH) -> list[list[int]]:
    """The runtime's plan: length-sorted batches within a padded-token budget."""
    return plan_batches([len(s) for s in seqs], budget, max_batch)
