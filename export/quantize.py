"""int8 variants of an exported fp32 graph, with ONNX Runtime's quantization tools.

A recipe is data (a frozen dataclass); :func:`quantize` applies one to ``model.onnx``.
Two families are measured against each other in ``docs/int8.md``:

* ``dynamic*``: ``quantize_dynamic`` (MatMulInteger / DynamicQuantizeMatMul). Weights int8
  (per tensor or per output channel), activations uint8 with ONE scale per tensor computed at
  run time. Decoder LMs carry a few hidden channels with activations 10-100x the rest, so
  one scale per tensor wipes out the small channels: quality collapses (REFERENCE §6).
* ``int8-block*``: ``MatMulNBits`` with 8-bit weights in blocks of ``block_size`` along the
  input dimension and ``accuracy_level=4``: activations are quantized to int8 per block of
  the same size too, then multiplied with int8 dot products (VNNI / AVX2). An outlier
  channel only coarsens its own block, so quality holds with int8 arithmetic throughout.

Only MatMuls with a constant weight are touched (q/k/v/o and the MLP); the attention
products (Q·K, P·V), norms and softmax stay fp32. ``keep_fp32`` names node-name
substrings left in fp32 (sensitive layers).
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from embedrank.errors import InputError, require


@dataclass(frozen=True)
class QuantRecipe:
    name: str
    method: str  # "dynamic" | "blockwise"
    per_channel: bool = False
    reduce_range: bool = False
    block_size: int = 32
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations and int8 dot products
    weights_only: bool = True  # dynamic: quantize MatMuls with a constant weight only
    keep_fp32: tuple[str, ...] = ()  # regexes on node names left in fp32
    help: str = ""


# Sensitive parts of a decoder: the first and last blocks and the MLP down projections
# (their input, the gated product, holds the largest activation outliers).
SENSITIVE = (r"/layers\.0/", r"/layers\.{last}/", r"/mlp/down_proj/")

RECIPES = {r.name: r for r in (
    QuantRecipe("dynamic", "dynamic", weights_only=False,
                help="ORT defaults: every MatMul, per-tensor weights and activations"),
    QuantRecipe("dynamic-pc", "dynamic", per_channel=True,
                help="per-channel weights, per-tensor dynamic activations"),
    QuantRecipe("dynamic-pc-keep", "dynamic", per_channel=True, keep_fp32=SENSITIVE,
                help="per-channel, first/last block and every down_proj kept fp32"),
    QuantRecipe("int8-block32", "blockwise", block_size=32,
                help="8-bit weights and int8 activations in blocks of 32 (MatMulNBits)"),
    QuantRecipe("int8-block32-keep", "blockwise", block_size=32, keep_fp32=SENSITIVE,
                help="int8-block32, first/last block and every down_proj kept fp32"),
    QuantRecipe("int8-block32-keepdown", "blockwise", block_size=32,
                keep_fp32=(r"/mlp/down_proj/",), help="int8-block32, every down_proj kept fp32"),
    QuantRecipe("w8-block32", "blockwise", block_size=32, accuracy_level=0,
                help="weight-only: 8-bit weights in blocks of 32, fp32 activations and compute"),
    QuantRecipe("int8-block128", "blockwise", block_size=128,
                help="8-bit weights and int8 activations in blocks of 128 (MatMulNBits)"),
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


def _dynamic(src: Path, dst: Path, recipe: QuantRecipe, include: list[str], external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range, weight_type=QuantType.QInt8,
        nodes_to_quantize=include if recipe.weights_only else None,
        nodes_to_exclude=None if recipe.weights_only else [],
        use_external_data_format=external,
        extra_options={"MatMulConstBOnly": recipe.weights_only},
    )


def _blockwise(model, dst: Path, recipe: QuantRecipe, exclude: list[str], external: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(block_size=recipe.block_size, is_symmetric=True,
                                          accuracy_level=recipe.accuracy_level, bits=8,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    quantizer.process()
    onnx.save_model(quantizer.model.model, str(dst), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=dst.name + ".data")


@dataclass
class QuantResult:
    recipe: str
    quantized: int
    kept_fp32: list[str]


def quantize(src: str | Path, dst: str | Path, recipe: str | QuantRecipe = DEFAULT_RECIPE,
             external_data: bool = False) -> QuantResult:
    """Write an int8 variant of the fp32 graph ``src`` to ``dst`` following ``recipe``."""
    require("onnxruntime", "train")
    import onnx

    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise InputError(f"unknown int8 recipe {recipe!r}; choose one of {sorted(RECIPES)}")
        recipe = RECIPES[recipe]
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=True)
    include, keep = select_nodes(model, recipe.keep_fp32)
    if not include:  # ORT reads an empty node list as "all nodes"
        raise InputError(f"recipe {recipe.name!r} keeps every linear layer of {str(src)!r} in "
                         "fp32: nothing to quantize; pick another recipe")
    if recipe.method == "dynamic":
        _dynamic(src, dst, recipe, include, external_data)
    elif recipe.method == "blockwise":
        _blockwise(model, dst, recipe, keep, external_data)
    else:
        raise InputError(f"unknown quantization method {recipe.method!r}")
    return QuantResult(recipe.name, len(include), keep)


def quantize_in_place(graph: Path, recipe: str | QuantRecipe = DEFAULT_RECIPE,
                      external_data: bool = False) -> QuantResult:
    """Replace ``graph`` (and its external data) by its int8 variant."""
    with tempfile.TemporaryDirectory(dir=graph.parent) as tmp:
        out = Path(tmp) / graph.name
        result = quantize(graph, out, recipe, external_data)
        for old in graph.parent.glob(graph.name + "*"):
            if old.is_file():
                old.unlink()
        for new in Path(tmp).iterdir():
            new.rename(graph.parent / new.name)
    return result
