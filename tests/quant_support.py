"""Shared by the int8 tests (test_smooth, test_outliers): calibration and held-out texts, a
graph runner, the cosine gap, and the tiny model with a planted activation outlier."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from embedrank.export.quantize import QuantRecipe

CALIBRATION = (["The quick brown fox jumps over the lazy dog.", "Qdrant stores vectors.", "短い文"],
               ["what is a vector database?"])
# held-out texts (none of them calibrates), mixed lengths, left padded
EVAL = (["Paris is the capital of France.", "Photosynthesis converts light into chemical energy. " * 3,
         "hello"], ["where is paris", "photosynthesis"])
OUTLIER_CHANNEL, OUTLIER_FACTOR = 5, 50.0


def run(model_or_path, feed) -> np.ndarray:
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "graph") else str(model_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def cosine_gap(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(1 - mean cosine, 1 - min cosine) of unit rows."""
    cos = (got * ref).sum(-1)
    return float(1 - cos.mean()), float(1 - cos.min())


def plant_outlier(path) -> onnx.ModelProto:
    """The fp32 graph with hidden channel 5 of every RMSNorm output 50x larger and the rows of
    the linear layers reading it 50x smaller: the same function, an activation outlier."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in list(model.graph.node):
        if node.op_type != "Mul" or not node.name.endswith("layernorm/Mul_1"):
            continue
        name = node.input[0]
        while name not in inits:  # equal norm weights are shared through Identity nodes
            name = producer[name].input[0]
        gamma = numpy_helper.to_array(inits[name]).copy()
        gamma[OUTLIER_CHANNEL] *= OUTLIER_FACTOR
        model.graph.initializer.append(numpy_helper.from_array(gamma, node.name + "/planted"))
        node.input[0] = node.name + "/planted"
        for user in model.graph.node:
            if user.op_type == "MatMul" and user.input[0] == node.output[0]:
                weight = numpy_helper.to_array(inits[user.input[1]]).copy()
                weight[OUTLIER_CHANNEL] /= OUTLIER_FACTOR
                inits[user.input[1]].CopyFrom(numpy_helper.from_array(weight, user.input[1]))
    return model


PERTOKEN = QuantRecipe("pertoken", "pertoken")  # smooth-pertoken without the smoothing
