"""The rows of ``embedrank bench``: what each one runs, what its time includes, the ratios.

Torch-free data and math: :mod:`embedrank.bench.run` and the report read it; the PyTorch side
(:mod:`embedrank.bench.torch_backend`) builds its modules from :data:`TORCH_ROWS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from embedrank.errors import InputError

# the strongest PyTorch variant measured on an H200 (Qwen3-0.6B architecture, 64 x 256)
STRONGEST_MODE = "max-autotune-no-cudagraphs"


@dataclass(frozen=True)
class TorchRow:
    """One PyTorch variant: its attention, padding side and torch.compile mode (None: eager)."""

    title: str
    attention: str  # "sdpa": transformers' SDPA with the padding mask; "causal": causal-only SDPA
    padding: str  # "left" | "right"
    compile_mode: str | None = None  # None: eager; "default" or a torch.compile mode

    @property
    def compiled(self) -> bool:
        return self.compile_mode is not None


TORCH_ROWS: dict[str, TorchRow] = {
    "torch": TorchRow("PyTorch eager, transformers' SDPA with the padding mask, left padding",
                      "sdpa", "left"),
    "torch-compile": TorchRow("torch.compile (default mode), transformers' SDPA with the padding "
                              "mask, left padding", "sdpa", "left", "default"),
    "torch-causal": TorchRow("PyTorch eager, causal-only SDPA (no mask), right padding",
                             "causal", "right"),
    "torch-compile-causal": TorchRow(f"torch.compile(mode={STRONGEST_MODE!r}), causal-only SDPA "
                                     "(no mask), right padding", "causal", "right", STRONGEST_MODE),
}
AGAINST_CHOICES = (*TORCH_ROWS, "all")

CALL_INCLUDES = ("wall clock (time.perf_counter) per call: tokenization, the token-budget batch "
                 "plan, padding on the host, host-to-device copies, the forward with pooling / the "
                 "yes-no head, the device-to-host copy of the results, Python between batches")
ONNX_INCLUDES = ("ONNX Runtime session of the exported graph (pooling and L2 norm, or the "
                 "one-logit head, inside the graph; the manifest's padding side; on CUDA inputs "
                 "and output bound by IO binding, copied from and to the host)")


ONNX_FORWARD = ("time.perf_counter around each ONNX Runtime run, summed per call: the padded ids and "
                "mask copied to the device, the graph (pooling or head included), its output copied "
                "back (so the run has finished); no tokenization, no batch plan")


def forward_includes(device: str) -> str:
    timer = ("CUDA events recorded on the stream right before and after the module call" if
             device.startswith("cuda") else "time.perf_counter around the module call (CPU work is "
             "synchronous; no CUDA events on the CPU)")
    return (f"{timer}, per batch, summed per call: the decoder forward with last-token pooling and "
            "L2 norm (embedder) or the one-logit head (reranker) on the device; no tokenization, no "
            "host padding, no copies" + ("; GPU idle time while Python launches kernels counts"
                                         if device.startswith("cuda") else ""))


def resolve_against(names: Iterable[str]) -> tuple[str, ...]:
    """``--against`` values -> the PyTorch rows in table order (``all``: every one)."""
    names = set(names)
    unknown = names - set(AGAINST_CHOICES)
    if unknown:
        raise InputError(f"--against takes {AGAINST_CHOICES}, got {sorted(unknown)}")
    return tuple(n for n in TORCH_ROWS if n in names or "all" in names)


def describe(name: str, device: str, dtype: str, compile_shapes: str | None = None) -> dict:
    """What a row runs and what its two figures include (the report's and the JSON's words)."""
    if name == "onnx":
        return {"title": f"ONNX Runtime, {dtype} export", "runs": ONNX_INCLUDES,
                "call": CALL_INCLUDES, "forward": ONNX_FORWARD}
    row = TORCH_ROWS[name]
    precision = "bf16" if device.startswith("cuda") else "fp32"
    runs = f"{row.title}; {precision}"
    if row.compiled and compile_shapes:
        runs += f"; {compile_shapes}"
    if row.attention == "causal":
        runs += ("; exact for unpadded or right-padded rows with last-token pooling (a real token "
                 "never attends to a later padding position); left-padded input is refused")
    return {"title": row.title, "runs": runs, "call": CALL_INCLUDES,
            "forward": forward_includes(device)}


def compile_shapes(shapes: set[tuple[int, int]]) -> tuple[bool, str]:
    """(dynamic, words): static shapes when every batch has one (batch, length), else dynamic=True."""
    if len(shapes) == 1:
        b, n = next(iter(shapes))
        return False, f"compiled for static shapes (every batch is {b} x {n})"
    return True, f"compiled with dynamic=True (one graph for {len(shapes)} batch shapes)"


def baseline(section: dict) -> str | None:
    """The strongest PyTorch row of a section: the highest forward tokens/s measured in the run."""
    rows = {n: m for n, m in section.items() if n in TORCH_ROWS and m.get("forward")}
    return max(rows, key=lambda n: rows[n]["forward"]["tokens_per_s"]) if rows else None


def ratios(section: dict) -> dict[str, dict[str, float]]:
    """Each row's tokens/s over the baseline's, measured in the same run.

    ``call``: whole call over whole call (like for like). ``forward``: the row's forward over the
    baseline's (its whole call where a row has no forward figure: a lower bound).
    """
    name = baseline(section)
    if name is None:
        return {}
    base = section[name]
    return {n: {"call": m["tokens_per_s"] / base["tokens_per_s"],
                "forward": (m.get("forward") or m)["tokens_per_s"] / base["forward"]["tokens_per_s"]}
            for n, m in section.items()}
