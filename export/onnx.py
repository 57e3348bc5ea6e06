"""Export a Qwen3-style embedder or reranker to an ONNX model directory.

The graph takes padded ``input_ids`` / ``attention_mask`` (dynamic batch and length; right
padding for the fused GroupQueryAttention graph, left otherwise, as its manifest records)
and returns the L2-normalized pooled embedding ``[B, D]`` or the one yes-no logit ``[B]``.
Everything is written into a temporary directory next to OUT, checked for parity with
PyTorch, and only then moved into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from embedrank.errors import InputError, ParityError
from embedrank.export.cuda_rewrites import MIN_ORT_QK_NORM, REWRITES
from embedrank.export.fused import ATTENTIONS, FUSED_OPSET, export_fused
from embedrank.formats import MIN_MATRYOSHKA_DIM
from embedrank.manifest import GRAPH_NAME, OUTPUT_NAMES, Manifest
from embedrank.ops import find_library
from embedrank.outputs import check_no_overlap, check_replaceable
from embedrank.train.modeling import Embedder, Reranker, last_token_pool, position_ids, torch_device

# torch dtype the module is loaded in; "int8" exports an fp32 graph, then quantizes it
# (export/quantize.py, recipe DEFAULT_RECIPE) and checks it against the fp32 module.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float32}
DEFAULT_OPSET = 17  # TorchScript; the fused (dynamo) export uses FUSED_OPSET
OPTIMIZE = ("fused", "none")
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf's hard limit is 2 GiB
EXTERNAL_DATA_NAME = GRAPH_NAME + ".data"
# the CUDA default: packed QKV with the q / k norms in GroupQueryAttention. "swiglu" and "rope"
# (the fastest, docs/performance.md) are opt-in: they need the ops library built (embedrank.ops)
CUDA_REWRITES = ("qkv",)


class _EmbedderGraph(nn.Module):
    """Embedder.forward with a float32 output whatever the compute dtype."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embedder(input_ids, attention_mask).float()


class _RerankerGraph(nn.Module):
    """Decoder + last-token pooling + the one-logit head (w_yes - w_no): never full-vocab logits."""

    def __init__(self, reranker: Reranker) -> None:
        super().__init__()
        self.decoder = reranker.decoder
        weight, bias = reranker.head()
        self.head = nn.Linear(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            self.head.weight.copy_(weight[None])
            self.head.bias.copy_(bias.reshape(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask)).last_hidden_state
        return self.head(last_token_pool(hidden, attention_mask)).squeeze(-1).float()


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    parity: object | None  # export.parity.ParityReport


def load_module(kind: str, src: str, dtype: str = "fp32", device: str = "cpu",
                max_length: int | None = None, trust_remote_code: bool = False):
    cls = {"embedder": Embedder, "reranker": Reranker}[kind]
    return cls.from_pretrained(src, dtype=DTYPES[dtype], device=device, max_length=max_length,
                               trust_remote_code=trust_remote_code)


def _trace(graph: nn.Module, kind: str, path: Path, opset: int, device: str, module) -> None:
    """Trace on a left-padded batch of ids the model's own tokenizer produces (any vocab size)."""
    pad, eot = module.pad_id, module.eot_id
    words = module.tokenizer.encode("Hello, world", add_special_tokens=False).ids[:3]
    words = (words + [eot] * 3)[:3]
    ids = torch.tensor([[pad, pad, eot, eot], [*words, eot]], device=device)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]], device=device)
    output = OUTPUT_NAMES[kind]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            output: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=[output], dynamic_axes=axes, opset_version=opset,
                          dynamo=False, do_constant_folding=True)


def _consolidate(path: Path) -> None:
    """One graph file, or graph + one external-data file when it would pass protobuf's 2 GiB.

    The TorchScript exporter writes one file per tensor for large models; gather them.
    """
    import onnx

    files = [p for p in path.parent.iterdir() if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    if files == [path] and size < EXTERNAL_DATA_THRESHOLD:
        return
    model = onnx.load(str(path), load_external_data=True)
    for file in files:
        file.unlink()
    external = size >= EXTERNAL_DATA_THRESHOLD
    onnx.save_model(model, str(path), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=EXTERNAL_DATA_NAME, size_threshold=1024)


def _name_output_dims(path: Path, kind: str, dim: int) -> None:
    """Give the output its static size (the tracer leaves the embedding width symbolic)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    if kind == "embedder":
        dims[1].dim_value = dim
    onnx.save_model(model, str(path))


def _requirements(fused_ops: dict) -> dict:
    """The manifest's runtime requirements of a fused graph (typed, fingerprinted fields)."""
    needs = {}
    if fused_ops.get("rewrite_qkv_norms"):  # ONNX Runtime's in-op q / k norm: CUDA only, from 1.31
        needs.update(requires_device="cuda", min_onnxruntime=MIN_ORT_QK_NORM)
    custom = [op for op, rewrite in (("SwiGLU", "swiglu"), ("QKVRotary", "rope"))
              if fused_ops.get(f"rewrite_{rewrite}")]
    if custom:  # the runtime registers embedrank.ops
        needs["custom_ops"] = tuple(custom)
    return needs


def _manifest(kind: str, module, dtype: str, opset: int, out: Path, src: str,
              extra: dict | None = None, padding_side: str = "left",
              requirements: dict | None = None) -> Manifest:
    tok = module.tokenizer
    dim = module.model.config.hidden_size
    return Manifest(
        kind=kind, prompts=module.prompts, dim=dim, max_length=module.max_length, dtype=dtype,
        opset=opset, fingerprint="", pad_token_id=module.pad_id,
        eot_token_id=module.eot_id,
        matryoshka_dims=(min(MIN_MATRYOSHKA_DIM, dim), dim) if kind == "embedder" else None,
        yes_token_id=tok.token_to_id(module.prompts.yes_token) if kind == "reranker" else None,
        no_token_id=tok.token_to_id(module.prompts.no_token) if kind == "reranker" else None,
        output=OUTPUT_NAMES[kind], source=_source(src), extra=extra or {}, padding_side=padding_side,
        **(requirements or {}),
    ).sealed(out)


def _source(src: str) -> str:
    """A local checkpoint as an absolute path (``bench --against torch`` / ``verify`` find it from
    anywhere); a hub id as given."""
    path = Path(src)
    return str(path.resolve()) if path.exists() else str(src)


def _prepare_out(out: Path, src: str, overwrite: bool) -> None:
    """OUT may be new, empty, or (with ``overwrite``) a model directory embedrank exported; never
    the source checkpoint, inside it, or around it."""
    check_no_overlap(out, src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise InputError(f"{str(out)!r} already exists and is not empty; pass --overwrite "
                             "(overwrite=True) to replace it")
        check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)


def resolve_variant(device: str, dtype: str | None = None, optimize: str | None = None,
                    attention: str | None = None, rewrites: tuple[str, ...] | None = None
                    ) -> tuple[str, str, str | None, tuple[str, ...]]:
    """(dtype, optimize, attention, rewrites) with the defaults of ``device``: the fastest
    variant that passes parity (docs/performance.md, docs/bench.md, docs/int8.md).

    CUDA: fp16, fused, GroupQueryAttention with packed QKV and the q / k norms inside it
    (rewrite "qkv"); embedrank's own kernels (rewrites "swiglu" and "rope") are opt-in, so the
    default graph never depends on what was built on the machine. CPU: fp32 (no int8
    recipe meets the ranking bar), fused, GroupQueryAttention. int8 starts from the TorchScript
    graph (its recipes select layers by that graph's node names); fp32 on CUDA uses
    MultiHeadAttention (GroupQueryAttention has fp16 / bf16 CUDA kernels only).
    """
    dtype = dtype or ("fp16" if device.startswith("cuda") else "fp32")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    optimize = optimize or ("none" if dtype == "int8" else "fused")
    if optimize not in OPTIMIZE:
        raise InputError(f"optimize must be one of {OPTIMIZE}, got {optimize!r}")
    if dtype == "int8" and optimize == "fused":
        raise InputError("--dtype int8 starts from the TorchScript graph (its recipes select layers "
                         "by that graph's node names): drop --optimize fused")
    if attention is not None and optimize != "fused":
        raise InputError("attention applies to the fused export only (optimize='fused')")
    if attention is not None and attention not in ATTENTIONS:
        raise InputError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if attention is None and optimize == "fused":
        attention = "mha" if device.startswith("cuda") and dtype == "fp32" else "gqa"
    if rewrites is None:
        rewrites = CUDA_REWRITES if attention == "gqa" and device.startswith("cuda") else ()
    rewrites = tuple(rewrites)
    if any(r not in REWRITES for r in rewrites) or len(set(rewrites)) != len(rewrites):
        raise InputError(f"rewrites must be distinct names of {REWRITES}, got {rewrites!r}")
    if rewrites and attention != "gqa":
        raise InputError("graph rewrites apply to the fused GroupQueryAttention graph only")
    return dtype, optimize, attention, rewrites


def export_model(kind: str, src: str, out: str | Path, *, dtype: str | None = None,
                 opset: int | None = None, max_length: int | None = None, verify: bool = True,
                 overwrite: bool = False, device: str = "cpu", trust_remote_code: bool = False,
                 optimize: str | None = None, attention: str | None = None,
                 int8_recipe: str | None = None, calibration: str | Path | None = None,
                 rewrites: tuple[str, ...] | None = None) -> ExportResult:
    """Export ``src`` (hub id or checkpoint dir) as a ``kind`` model directory at ``out``.

    Defaults per device: :func:`resolve_variant` (``dtype``: fp16 on CUDA, fp32 on CPU).
    ``optimize``: "fused" (dynamo export + ONNX Runtime contrib-op fusions, see
    :mod:`embedrank.export.fused`) or "none" (TorchScript export, unfused); default "fused",
    "none" for int8. A failed fusion raises; it never falls back to "none" by itself.
    ``int8_recipe`` / ``calibration`` (``dtype="int8"`` only): a recipe of
    :data:`embedrank.export.quantize.RECIPES` (default ``DEFAULT_RECIPE``) and, for the
    recipes that smooth activations, a JSONL file of calibration texts (docs/int8.md).
    ``attention`` (fused only): "gqa" (right-padded GroupQueryAttention; the default) or "mha"
    (left-padded MultiHeadAttention; the default for fp32 on CUDA, where GQA has no kernel).
    ``rewrites`` (GQA only): graph rewrites of :mod:`embedrank.export.cuda_rewrites`; default
    :data:`CUDA_REWRITES` on CUDA, none on CPU.
    """
    if kind not in OUTPUT_NAMES:
        raise InputError(f"kind must be one of {sorted(OUTPUT_NAMES)}, got {kind!r}")
    strict_rewrites = rewrites is not None  # asked for: every layer; the device default: where it fits
    dtype, optimize, attention, rewrites = resolve_variant(device, dtype, optimize, attention, rewrites)
    if {"swiglu", "rope"} & set(rewrites):  # before anything is exported (parity needs the library)
        find_library(cuda=device.startswith("cuda"))
    int8 = _int8_plan(kind, dtype, int8_recipe, calibration)
    opset = opset or (FUSED_OPSET if optimize == "fused" else DEFAULT_OPSET)
    out = Path(out)
    _check_device(device, verify)
    _prepare_out(out, src, overwrite)
    torch_device = "cuda" if device.startswith("cuda") else "cpu"
    module = load_module(kind, src, dtype, torch_device, max_length, trust_remote_code)
    graph = (_EmbedderGraph if kind == "embedder" else _RerankerGraph)(module).eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graph_dir = tmp / "graph"
        graph_dir.mkdir()
        extra = {"optimize": optimize}
        if optimize == "fused":
            extra["exporter"] = "torch.onnx dynamo + onnxscript ort_fusions"
            extra["fused_ops"] = export_fused(
                graph, kind, graph_dir / GRAPH_NAME, output=OUTPUT_NAMES[kind],
                dim=module.model.config.hidden_size, module=module, device=torch_device,
                opset=opset, external_threshold=EXTERNAL_DATA_THRESHOLD,
                external_name=EXTERNAL_DATA_NAME, max_positions=module.max_length,
                attention=attention, rewrites=rewrites, strict_rewrites=strict_rewrites)
            extra["attention"] = attention
            extra["rewrites"] = list(rewrites)
        else:
            extra["exporter"] = "torch.onnx TorchScript"
            _trace(graph, kind, graph_dir / GRAPH_NAME, opset, torch_device, module)
            _consolidate(graph_dir / GRAPH_NAME)
            _name_output_dims(graph_dir / GRAPH_NAME, kind, module.model.config.hidden_size)
        if dtype == "int8":
            extra.update(_quantize(graph_dir / GRAPH_NAME, kind, module, *int8))
        for file in graph_dir.iterdir():
            file.rename(tmp / file.name)
        graph_dir.rmdir()
        module.hf_tokenizer.save_pretrained(tmp)
        manifest = _manifest(kind, module, dtype, opset, tmp, src, extra,
                             padding_side="left" if attention in (None, "mha") else "right",
                             requirements=_requirements(extra.get("fused_ops", {})))
        manifest.write(tmp)
        report = None
        if verify:
            report = _verify(kind, tmp, src, module, dtype, device, trust_remote_code)
        if out.exists():
            check_replaceable(out)  # again: OUT may have changed during the export
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, manifest, report)


def _check_device(device: str, verify: bool) -> None:
    """A missing GPU (PyTorch's, and ONNX Runtime's for the parity check) before anything loads."""
    torch_device(device)
    if verify and device != "cpu":
        from embedrank.runtime.models import providers_for

        providers_for(device)


def _int8_plan(kind: str, dtype: str, recipe: str | None, calibration) -> tuple:
    """(recipe, calibration texts): checked before anything is exported."""
    if dtype != "int8":
        if recipe is not None or calibration is not None:
            raise InputError("int8_recipe / calibration apply to dtype='int8' only")
        return None, None
    from embedrank.export.quantize import DEFAULT_RECIPE, get_recipe
    from embedrank.export.smooth import read_calibration_texts

    chosen = get_recipe(recipe or DEFAULT_RECIPE)
    if chosen.calibrated and calibration is None:
        raise InputError(f"int8 recipe {chosen.name!r} calibrates on activations: pass a "
                         'calibration file (--calibration FILE.jsonl, lines {"text": ...} or '
                         '{"query": ...})')
    if calibration is not None and not chosen.calibrated:
        raise InputError(f"int8 recipe {chosen.name!r} takes no calibration texts")
    texts = read_calibration_texts(calibration) if calibration is not None else None
    if texts is not None and kind == "reranker" and not all(texts):
        raise InputError("reranker calibration needs both documents ({\"text\": ...}) and queries "
                         '({"query": ...}): each document is scored against one of the queries')
    return chosen, texts


def _calibration_ids(kind: str, module, texts: tuple[list[str], list[str]]) -> list[list[int]]:
    """Calibration texts tokenized as the runtime formats them (queries with the instruction)."""
    docs, queries = texts
    if kind == "embedder":
        return ((module.tokenize_documents(docs) if docs else [])
                + (module.tokenize_queries(queries) if queries else []))
    return [ids for i, doc in enumerate(docs)
            for ids in module.tokenize(queries[i % len(queries)], [doc])]


def _quantize(graph: Path, kind: str, module, recipe, texts) -> dict:
    from embedrank.export.quantize import quantize_in_place

    size = sum(p.stat().st_size for p in graph.parent.iterdir())
    calibration = _calibration_ids(kind, module, texts) if texts is not None else None
    result = quantize_in_place(graph, recipe, external_data=size // 2 >= EXTERNAL_DATA_THRESHOLD,
                               calibration=calibration)
    extra = {"int8_recipe": result.recipe, "int8_kept_fp32": result.kept_fp32}
    if texts is not None:
        extra.update(int8_smoothed=result.smoothed, int8_outlier_channels=result.outlier_channels,
                     int8_calibration={"documents": len(texts[0]), "queries": len(texts[1])})
    return extra


def _verify(kind, tmp: Path, src, module, dtype, device, trust_remote_code):
    from embedrank.export.parity import check
    from embedrank.runtime import Embedder as OnnxEmbedder
    from embedrank.runtime import Reranker as OnnxReranker

    runtime = (OnnxEmbedder if kind == "embedder" else OnnxReranker).load(tmp, device=device)
    if DTYPES[dtype] != torch.float32:  # compare against the fp32 reference, not fp16
        module = load_module(kind, src, "fp32", "cuda" if device.startswith("cuda") else "cpu",
                             module.max_length, trust_remote_code)
    report = check(runtime, module, dtype)
    if not report.passed:
        raise ParityError(f"the exported {kind} does not match PyTorch; nothing was written to "
                          f"the output directory:\n{report.table()}")
    return report
