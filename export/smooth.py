"""SmoothQuant (Xiao et al., 2023) folded into an exported fp32 ONNX graph.

Decoder LMs carry a few hidden channels whose activations are 10-100x the rest; one int8
scale per tensor (or per token) then leaves the other channels a handful of levels. Smoothing
divides activation channel j by ``s_j`` and multiplies row j of every weight reading it by
``s_j``: ``(X diag(1/s)) (diag(s) W) = X W``, an identity in exact arithmetic that moves the
outliers into the weights, which are quantized per output channel and absorb them well.
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` from calibration activations.

The division is folded into a constant upstream, so the graph keeps its ops:

* ``norm``: an RMSNorm's final ``Mul`` by its weight gamma whose output feeds only linear
  layers (q/k/v; gate/up) and ``Shape``: gamma becomes gamma / s.
* ``up``: a linear layer (down_proj) reading ``Mul(act(gate), up)`` where up_proj's output
  feeds only that product: up_proj's output columns are divided by s.

Sites are found from the graph structure, not from node names; a pattern feeding anything
else (a residual, another product) is left alone, so the fold stays exact. The attention
output projection (o_proj, fed by the attention product) is not smoothed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedrank.errors import InputError
from embedrank.jsonline import parse_json_line

# contrib ops of the fused export (export/fused.py): its RMSNorms are not Mul nodes and its
# attention is right-padded, while calibration pads on the left like the TorchScript graph
FUSED_OPS = {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
             "GroupQueryAttention", "MultiHeadAttention"}
SCALE_RANGE = (1e-2, 1e3)  # clip s: a dead or huge channel never zeroes or blows up a weight
CALIBRATION_TOKEN_BUDGET = 4096  # tokens per calibration batch (padding included)


@dataclass
class Site:
    kind: str  # "norm" | "up"
    tensor: str  # the activation that is smoothed (input of ``linears``)
    owner: str  # node holding the constant divided by s (the norm Mul, or up_proj's MatMul)
    linears: list[str]  # MatMul nodes whose weight rows are multiplied by s


@dataclass
class SmoothReport:
    alpha: float
    sites: list[Site] = field(default_factory=list)
    amax: dict[str, float] = field(default_factory=dict)  # tensor -> largest |activation|


def _init_map(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _constant(name: str, inits: dict, producer: dict) -> str | None:
    """The initializer behind ``name``, through ``Identity`` nodes (the TorchScript exporter
    shares equal weights, e.g. all-ones norm weights, that way)."""
    while name not in inits and name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    return name if name in inits else None


def find_sites(model) -> list[Site]:
    """The smoothable (activation, linear layers) pairs of ``model``, in graph order."""
    inits = _init_map(model)
    users = _consumers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}

    def linear(node) -> bool:
        return node.op_type == "MatMul" and node.input[1] in inits and node.input[1] not in outputs

    def only_linears(tensor: str) -> list | None:
        nodes = users.get(tensor, [])
        if tensor in outputs or not nodes or any(
                not (n.op_type == "Shape" or (linear(n) and n.input[0] == tensor)) for n in nodes):
            return None
        mats = [n for n in nodes if n.op_type == "MatMul"]
        return mats or None

    sites = []
    for node in model.graph.node:
        consts = [c for c in (_constant(i, inits, producer) for i in node.input) if c is not None]
        if node.op_type == "Mul" and len(consts) == 1:
            mats = only_linears(node.output[0])
            if mats and len(inits[consts[0]].dims) == 1:
                sites.append(Site("norm", node.output[0], node.name, [n.name for n in mats]))
        elif linear(node):
            prod = producer.get(node.input[0])
            mats = only_linears(node.input[0])
            if prod is None or prod.op_type != "Mul" or mats is None or len(mats) != 1:
                continue
            ups = [producer.get(i) for i in prod.input]
            ups = [u for u in ups if u is not None and linear(u)
                   and len(users.get(u.output[0], [])) == 1]
            if len(ups) == 1 and ups[0].input[0] != node.input[0]:
                sites.append(Site("up", node.input[0], ups[0].name, [node.name]))
    return sites


def _runnable(model, tensors: list[str], tmp: Path) -> Path:
    """``model`` with ``tensors`` as extra outputs, saved (external data) to ``tmp``."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving with external data rewrites the tensors it saves
    for name in tensors:
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                    None))
    path = tmp / "calibrate.onnx"
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="calibrate.onnx.data", size_threshold=1024)
    return path


def calibrate(model, tensors: list[str], calibration: Sequence[Sequence[int]],
              threads: int = 2) -> dict[str, np.ndarray]:
    """Per-channel max |activation| of ``tensors`` over the real tokens of ``calibration``
    (token id sequences, formatted as the model's runtime formats them)."""
    import onnxruntime as ort

    from embedrank.formats import pad_left, plan_batches

    seqs = [list(s) for s in calibration]
    if not seqs or any(not s for s in seqs):
        raise InputError("calibration needs at least one non-empty token id sequence")
    names = [i.name for i in model.graph.input]
    if names != ["input_ids", "attention_mask"]:
        raise InputError(f"calibration feeds input_ids and attention_mask; the graph takes {names}")
    amax: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(_runnable(model, tensors, Path(tmp))), options,
                                       providers=["CPUExecutionProvider"])
        for batch in plan_batches([len(s) for s in seqs], CALIBRATION_TOKEN_BUDGET, 64):
            ids, mask = pad_left([seqs[i] for i in batch], 0)
            outs = session.run(tensors, {"input_ids": ids, "attention_mask": mask})
            for name, value in zip(tensors, outs, strict=True):
                real = np.abs(value[mask.astype(bool)]).reshape(-1, value.shape[-1]).max(0)
                amax[name] = np.maximum(amax.get(name, real), real)
    return amax


def _private(model, node, index: int, inits: dict, users: dict, source: str | None = None):
    """The initializer at ``node.input[index]`` (or ``source``, the initializer behind it),
    copied first if another input uses it too."""
    from onnx import numpy_helper

    name = node.input[index]
    if name in inits and len(users[name]) == 1 and sum(i == name for i in node.input) == 1:
        return inits[name]
    value = numpy_helper.to_array(inits[source or name])
    copy = numpy_helper.from_array(value, f"{source or name}/smoothed/{node.name}")
    model.graph.initializer.append(copy)
    node.input[index] = copy.name
    inits[copy.name], users[copy.name] = model.graph.initializer[-1], [node]
    users[name].remove(node)
    return inits[copy.name]


def _update(tensor, value: np.ndarray) -> None:
    from onnx import numpy_helper

    tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))


def smooth(model, calibration: Sequence[Sequence[int]], alpha: float = 0.5,
           threads: int = 2, alpha_down: float | None = None,
           amax: dict[str, np.ndarray] | None = None) -> SmoothReport:
    """Fold SmoothQuant scales into ``model`` (in place, weights loaded) after calibrating it.
    ``alpha_down``: alpha of the up -> down sites [``alpha``]; 0 leaves them unsmoothed.
    ``amax``: per-channel max |activation| already calibrated on this graph (:func:`calibrate`);
    the sites it lacks are calibrated here."""
    from onnx import numpy_helper

    alpha_down = alpha if alpha_down is None else alpha_down
    for value in (alpha, alpha_down):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"smoothing alpha must be in [0, 1], got {value}")
    fused = FUSED_OPS & {n.op_type for n in model.graph.node}
    if fused:
        raise InputError(f"smoothing needs the unfused TorchScript export (optimize='none'); this "
                         f"graph is fused ({', '.join(sorted(fused))})")
    sites = find_sites(model)
    if not sites:
        raise InputError("no RMSNorm -> linear or up_proj -> down_proj pattern to smooth in the "
                         "graph; smoothing needs the unfused export (--optimize none)")
    amax = dict(amax or {})
    missing = [s.tensor for s in sites if s.tensor not in amax]
    if missing:
        amax.update(calibrate(model, missing, calibration, threads))
    nodes = {n.name: n for n in model.graph.node}
    inits, users = _init_map(model), _consumers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    for site in sites:
        a = alpha if site.kind == "norm" else alpha_down
        if a == 0.0:
            continue
        weights = [_private(model, nodes[n], 1, inits, users) for n in site.linears]
        arrays = [numpy_helper.to_array(w) for w in weights]
        wmax = np.max([np.abs(w).max(1) for w in arrays], 0)
        s = np.maximum(amax[site.tensor], 1e-5) ** a / np.maximum(wmax, 1e-5) ** (1 - a)
        s = np.clip(s, *SCALE_RANGE).astype(np.float32)
        for tensor, array in zip(weights, arrays, strict=True):
            _update(tensor, array * s[:, None])
        owner = nodes[site.owner]
        if site.kind == "norm":
            index, source = next((i, c) for i, n in enumerate(owner.input)
                                 if (c := _constant(n, inits, producer)) is not None)
            gamma = _private(model, owner, index, inits, users, source)
            _update(gamma, numpy_helper.to_array(gamma) / s)
        else:
            up = _private(model, owner, 1, inits, users)
            _update(up, numpy_helper.to_array(up) / s[None, :])
    return SmoothReport(alpha, sites, {site.tensor: float(amax[site.tensor].max()) for site in sites})


def read_calibration_texts(path: str | Path) -> tuple[list[str], list[str]]:
    """(documents, queries) of a JSONL file: one ``{"text": ...}`` (a document) or
    ``{"query": ...}`` (embedded with the query template) object per line."""
    docs, queries = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = parse_json_line(line)
        except InputError as exc:
            raise InputError(f"{path}:{number}: {exc}") from None
        keys = [k for k in ("text", "query") if isinstance(item, dict) and isinstance(item.get(k), str)]
        if len(keys) != 1 or not item[keys[0]].strip():
            raise InputError(f'{path}:{number}: expected {{"text": "..."}} or {{"query": "..."}}')
        (docs if keys[0] == "text" else queries).append(item[keys[0]])
    if not docs and not queries:
        raise InputError(f"{path}: no calibration texts")
    return docs, queries
