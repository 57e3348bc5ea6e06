"""int8 variants of an exported fp32 graph, with ONNX Runtime's quantization tools.

A recipe is data (a frozen dataclass); :func:`quantize` applies one to ``model.onnx``.
Two methods (``docs/int8.md`` has these and the variants that measured worse, such as ONNX
Runtime's per-tensor ``quantize_dynamic``, whose quality collapses on decoder LMs):

* ``blockwise`` (``int8-block32``, ``w8-block32``): ``MatMulNBits`` with 8-bit weights in
  blocks of ``block_size`` along the input dimension and ``accuracy_level=4``: activations
  are quantized to int8 per block of the same size too, then multiplied with int8 dot products
  (VNNI / AVX2). An outlier channel only coarsens its own block, so quality holds with int8
  arithmetic throughout. (``w8-block32``: ``accuracy_level=0``, fp32 activations and compute.)
* ``pertoken``: per-channel int8 weights and uint8 activations with one scale per token,
  computed at run time (:func:`quantize_per_token`; standard ops + ``MatMulIntegerToFloat``):
  a token with massive activations coarsens only itself.
* ``smooth=alpha`` (``smooth-*``): SmoothQuant folded into the fp32 graph first
  (``export/smooth.py``; an exact identity in fp32) from calibration token ids, so that
  per-channel activation outliers move into the weights.

Only MatMuls with a constant weight are touched (q/k/v/o and the MLP); the attention
products (Q·K, P·V), norms and softmax stay fp32. ``keep_fp32`` names node-name
substrings left in fp32 (sensitive layers). ``docs/int8.md`` has the measurements.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedrank.errors import InputError, require


@dataclass(frozen=True)
class QuantRecipe:
    name: str
    method: str  # "blockwise" | "pertoken"
    reduce_range: bool = False  # pertoken: 7-bit weights (CPUs without VNNI)
    block_size: int = 32
    bits: int = 8  # blockwise weight bits (MatMulNBits takes 4 or 8)
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations and int8 dot products
    keep_fp32: tuple[str, ...] = ()  # regexes on node names left in fp32
    smooth: float | None = None  # SmoothQuant alpha (export/smooth.py); needs calibration
    smooth_down: float | None = None  # alpha of the up -> down_proj sites [smooth]; 0 = off
    # fp32 activation channels: calibration max |x| > outliers x the median channel's
    # (export/outliers.py); needs calibration
    outliers: float | None = None
    help: str = ""

    @property
    def calibrated(self) -> bool:
        """Whether the recipe needs calibration texts (it smooths or keeps outlier channels)."""
        return self.smooth is not None or self.outliers is not None


# The recipes a user should pick (docs/int8.md has the figures of every variant measured):
# int8-block32 (the default: the best top-10 agreement with int8 compute, no calibration),
# w8-block32 (weight-only: no calibration, no faster), smooth-pertoken (the fastest; needs
# calibration texts), w8-block32-outliers (weight-only with the outlier channels in fp32: the
# one that meets the ranking bar on a trained embedder, no faster; needs calibration texts).
RECIPES = {r.name: r for r in (
    QuantRecipe("int8-block32", "blockwise", block_size=32,
                help="8-bit weights and int8 activations in blocks of 32 (MatMulNBits)"),
    QuantRecipe("w8-block32", "blockwise", block_size=32, accuracy_level=0,
                help="weight-only: 8-bit weights in blocks of 32, fp32 activations and compute"),
    QuantRecipe("smooth-pertoken", "pertoken", smooth=0.5,
                help="SmoothQuant alpha 0.5, then int8 activations with a scale per token"),
    QuantRecipe("w8-block32-outliers", "blockwise", block_size=32, accuracy_level=0, outliers=8.0,
                help="w8-block32 with the activation channels over 8x the median (calibration) "
                     "computed in fp32"),
)}
DEFAULT_RECIPE = "int8-block32"


def weight_matmuls(model) -> list[str]:
    """Names of the MatMul nodes whose second input is an initializer (the linear layers)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def _num_layers(names: list[str]) -> int:
    found = [int(m.group(1)) for n in names if (m := re.search(r"/layers\.(\d+)/", n))]
    return max(found) + 1 if found else 0


def select_nodes(model, keep_fp32: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(quantized, kept in fp32) weight MatMul names; ``{last}`` stands for the last layer."""
    names = weight_matmuls(model)
    last = _num_layers(names) - 1
    patterns = [re.compile(p.replace("{last}", str(last))) for p in keep_fp32]
    keep = [n for n in names if any(p.search(n) for p in patterns)]
    return [n for n in names if n not in keep], keep


def _blockwise(model, dst: Path, recipe: QuantRecipe, exclude: list[str], external: bool) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(block_size=recipe.block_size, is_symmetric=True,
                                          accuracy_level=recipe.accuracy_level, bits=recipe.bits,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    quantizer.process()
    _save(quantizer.model.model, dst, external)


def _save(model, dst: Path, external: bool) -> None:
    import onnx

    onnx.save_model(model, str(dst), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=dst.name + ".data")


def _activation_quant(x: str, prefix: str, opset: int, nodes: list, consts: dict) -> tuple[str, str]:
    """Nodes quantizing ``x`` per token (last axis): (uint8 codes, float scale per token).
    ``QuantizeLinear`` per axis 0 of the [tokens, channels] view does divide, round, shift
    and saturate in one pass."""
    from onnx import TensorProto, helper

    def out(tag: str) -> str:
        return f"{prefix}/{tag}"

    nodes.append(helper.make_node("Abs", [x], [out("abs")], name=out("Abs")))
    if opset >= 18:
        nodes.append(helper.make_node("ReduceMax", [out("abs"), consts["axes"]], [out("amax")],
                                      name=out("ReduceMax"), keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceMax", [out("abs")], [out("amax")],
                                      name=out("ReduceMax"), axes=[-1], keepdims=1))
    nodes += [
        helper.make_node("Mul", [out("amax"), consts["inv127"]], [out("scale0")], name=out("Mul")),
        helper.make_node("Max", [out("scale0"), consts["eps"]], [out("scale")], name=out("Max")),
        helper.make_node("Reshape", [out("scale"), consts["flat"]], [out("scale1d")],
                         name=out("ReshapeScale")),
        helper.make_node("Mul", [out("scale1d"), consts["zero"]], [out("zeros")], name=out("Zeros")),
        helper.make_node("Add", [out("zeros"), consts["zp_float"]], [out("zp_float")],
                         name=out("AddZp")),
        helper.make_node("Cast", [out("zp_float")], [out("zp")], name=out("CastZp"),
                         to=TensorProto.UINT8),
        helper.make_node("Shape", [x], [out("shape")], name=out("Shape")),
        helper.make_node("Gather", [out("shape"), consts["last"]], [out("width")], name=out("Width")),
        helper.make_node("Concat", [consts["minus1"], out("width")], [out("shape2d")],
                         name=out("Shape2d"), axis=0),
        helper.make_node("Reshape", [x, out("shape2d")], [out("x2d")], name=out("Reshape2d")),
        helper.make_node("QuantizeLinear", [out("x2d"), out("scale1d"), out("zp")], [out("codes2d")],
                         name=out("QuantizeLinear"), axis=0),
        helper.make_node("Reshape", [out("codes2d"), out("shape")], [out("codes")],
                         name=out("ReshapeBack")),
    ]
    return out("codes"), out("scale")


def quantize_per_token(model, names: list[str], reduce_range: bool = False) -> None:
    """Replace the MatMuls ``names`` (constant weight) by int8 ones.

    Weights: symmetric int8 per output channel. Activations: uint8 with one scale per token,
    computed at run time (``s = max|x| / 127``, codes ``round(x / s) + 128``), so a token with
    massive activations (an attention sink) only coarsens itself, not the whole batch as the
    per-tensor scale of ``quantize_dynamic`` does. ``MatMulIntegerToFloat`` (u8 x s8, the VNNI
    path, times the weight scales) then ``* s``. Linears reading the same activation share its
    quantization. ``reduce_range``: 7-bit weights, for CPUs without VNNI whose u8 x s8 kernels
    saturate.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        raise InputError(f"per-token int8 needs opset >= 13 (QuantizeLinear per axis), got {opset}")
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    levels = 63 if reduce_range else 127
    values = {"inv127": np.array(1 / 127, np.float32), "eps": np.array(1e-12, np.float32),
              "zero": np.array(0, np.float32), "zp_float": np.array(128, np.float32),
              "zp": np.array(128, np.uint8), "one": np.array(1, np.float32),
              "axes": np.array([-1], np.int64), "flat": np.array([-1], np.int64),
              "last": np.array([-1], np.int64), "minus1": np.array([-1], np.int64)}
    consts = {key: f"pertoken/{key}" for key in values}
    model.graph.initializer.extend(numpy_helper.from_array(v, consts[k]) for k, v in values.items())
    wanted, quantized, nodes = set(names), {}, []
    for node in model.graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        x, w = node.input
        if x not in quantized:
            quantized[x] = _activation_quant(x, f"{node.name}/xq", opset, nodes, consts)
        codes, scale = quantized[x]
        weight = numpy_helper.to_array(inits[w])
        w_scale = np.maximum(np.abs(weight).max(0), 1e-12) / levels
        w_int8 = np.clip(np.round(weight / w_scale), -levels, levels).astype(np.int8)
        p = node.name
        model.graph.initializer.extend([numpy_helper.from_array(w_int8, f"{p}/w_int8"),
                                        numpy_helper.from_array(w_scale.astype(np.float32),
                                                                f"{p}/w_scale")])
        nodes += [
            helper.make_node("MatMulIntegerToFloat",
                             [codes, f"{p}/w_int8", consts["one"], f"{p}/w_scale", consts["zp"]],
                             [f"{p}/acc"], name=f"{p}/MatMulIntegerToFloat", domain="com.microsoft"),
            helper.make_node("Mul", [f"{p}/acc", scale], [node.output[0]], name=f"{p}/MulX"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


@dataclass
class QuantResult:
    recipe: str
    quantized: int
    kept_fp32: list[str]
    smoothed: int = 0  # activations smoothed (SmoothQuant sites)
    outlier_channels: int = 0  # activation channels computed in fp32 (export/outliers.py)


def get_recipe(recipe: str | QuantRecipe) -> QuantRecipe:
    if isinstance(recipe, QuantRecipe):
        return recipe
    if recipe not in RECIPES:
        raise InputError(f"unknown int8 recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[recipe]


def quantize(src: str | Path, dst: str | Path, recipe: str | QuantRecipe = DEFAULT_RECIPE,
             external_data: bool = False, calibration: Sequence[Sequence[int]] | None = None,
             threads: int = 2) -> QuantResult:
    """Write an int8 variant of the fp32 graph ``src`` to ``dst`` following ``recipe``.

    ``calibration``: token id sequences (texts formatted and tokenized as the runtime does,
    e.g. :func:`calibration_ids`) for the recipes that calibrate (``recipe.calibrated``).
    """
    require("onnxruntime", "train")
    import onnx

    recipe = get_recipe(recipe)
    if recipe.method not in ("blockwise", "pertoken"):
        raise InputError(f"unknown quantization method {recipe.method!r}")
    if recipe.calibrated and not calibration:
        raise InputError(f"int8 recipe {recipe.name!r} calibrates on activations and needs "
                         "calibration texts (token ids); pass calibration=... (export: a "
                         "calibration file)")
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=True)
    include, keep = select_nodes(model, recipe.keep_fp32)
    if not include:  # ORT reads an empty node list as "all nodes"
        raise InputError(f"recipe {recipe.name!r} keeps every linear layer of {str(src)!r} in "
                         "fp32: nothing to quantize; pick another recipe")
    amax, report, found, added = None, None, {}, []
    if recipe.calibrated:  # one pass over the unsmoothed graph serves both steps
        from embedrank.export.smooth import calibrate

        linears = set(include + keep)
        inputs = {n.name: n.input[0] for n in model.graph.node if n.name in linears}
        amax = calibrate(model, list(dict.fromkeys(inputs[n] for n in include + keep)),
                         calibration, threads)
    if recipe.smooth is not None:
        from embedrank.export.smooth import smooth

        report = smooth(model, calibration, recipe.smooth, threads, recipe.smooth_down, amax)
    if recipe.outliers is not None:
        from embedrank.export.outliers import find_outliers, split_outliers

        found = find_outliers({inputs[n]: amax[inputs[n]] for n in include}, recipe.outliers)
        added = split_outliers(model, include, found)
    if recipe.method == "pertoken":
        quantize_per_token(model, include, recipe.reduce_range)
        _save(model, dst, external_data)
    else:
        _blockwise(model, dst, recipe, keep + added, external_data)
    return QuantResult(recipe.name, len(include), keep,
                       len(report.sites) if report else 0,
                       sum(len(v) for v in found.values()))


def calibration_ids(model_dir: str | Path, documents: Sequence[str] = (),
                    queries: Sequence[str] = ()) -> list[list[int]]:
    """Token ids of calibration texts as the runtime of the model directory ``model_dir``
    (manifest + tokenizer) formats them: documents as they are, queries with the query
    template and the default instruction."""
    from embedrank.formats import (
        encode_embedding_inputs,
        encode_query_inputs,
        load_tokenizer,
        plain_tokenizer,
    )
    from embedrank.manifest import read_manifest

    manifest = read_manifest(Path(model_dir))
    if manifest.kind != "embedder":
        raise InputError(f"calibration_ids formats embedder inputs; {str(model_dir)!r} is a "
                         f"{manifest.kind}")
    tokenizer = plain_tokenizer(load_tokenizer(Path(model_dir) / "tokenizer.json"))
    docs = encode_embedding_inputs(tokenizer, list(documents), manifest.max_length,
                                   manifest.prompts.eot_token)
    return docs + (encode_query_inputs(tokenizer, manifest.prompts, list(queries), None,
                                       manifest.max_length) if queries else [])


def quantize_in_place(graph: Path, recipe: str | QuantRecipe = DEFAULT_RECIPE,
                      external_data: bool = False,
                      calibration: Sequence[Sequence[int]] | None = None) -> QuantResult:
    """Replace ``graph`` (and its external data) by its int8 variant."""
    with tempfile.TemporaryDirectory(dir=graph.parent) as tmp:
        out = Path(tmp) / graph.name
        result = quantize(graph, out, recipe, external_data, calibration)
        for old in graph.parent.glob(graph.name + "*"):
            if old.is_file():
                old.unlink()
        for new in Path(tmp).iterdir():
            new.rename(graph.parent / new.name)
    return result
