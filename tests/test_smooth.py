"""SmoothQuant fold (export/smooth.py) and per-token int8 (quantize_per_token) on the tiny model."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from quant_support import PERTOKEN, cosine_gap, plant_outlier, run

from embedrank.errors import InputError
from embedrank.export.quantize import RECIPES, quantize
from embedrank.export.smooth import find_sites, read_calibration_texts, smooth


def test_sites_of_a_decoder(torchscript_embedder_dir):
    sites = find_sites(onnx.load(str(torchscript_embedder_dir / "model.onnx")))
    # per layer: input norm -> q/k/v, post-attention norm -> gate/up, up -> down
    assert [(s.kind, len(s.linears)) for s in sites] == [("norm", 3), ("norm", 2), ("up", 1)] * 2
    assert all(s.linears[0].endswith("down_proj/MatMul") for s in sites if s.kind == "up")


def test_smoothing_is_an_fp32_identity(torchscript_embedder_dir, calibration, feed):
    model = onnx.load(str(torchscript_embedder_dir / "model.onnx"))
    before = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    report = smooth(model, calibration, alpha=0.5)
    assert len(report.sites) == 6 and all(v > 0 for v in report.amax.values())
    changed = [i.name for i in model.graph.initializer
               if i.name not in before or not np.array_equal(before[i.name], numpy_helper.to_array(i))]
    assert len(changed) == 2 * 6 + 4  # q/k/v/gate/up/down of 2 layers, 4 norm weights (not o_proj)
    ref, got = run(torchscript_embedder_dir / "model.onnx", feed), run(model, feed)
    assert ref.shape == got.shape == (5, 64)
    assert np.abs(got - ref).max() < 1e-5


def test_down_sites_can_stay_unsmoothed(torchscript_embedder_dir, calibration, feed):
    model = onnx.load(str(torchscript_embedder_dir / "model.onnx"))
    downs = {n.input[1] for n in model.graph.node if n.name.endswith("down_proj/MatMul")}
    before = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer if i.name in downs}
    smooth(model, calibration, alpha=0.8, alpha_down=0.0)
    after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in downs}
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert np.abs(run(model, feed) - run(torchscript_embedder_dir / "model.onnx", feed)).max() < 1e-5


def test_smoothing_undoes_a_planted_outlier(torchscript_embedder_dir, calibration, feed, tmp_path):
    planted = tmp_path / "planted.onnx"
    onnx.save(plant_outlier(torchscript_embedder_dir / "model.onnx"), str(planted))
    ref = run(torchscript_embedder_dir / "model.onnx", feed)
    assert np.abs(run(planted, feed) - ref).max() < 1e-5  # still the same function in fp32
    gaps, method = {}, "pertoken"
    for recipe in (PERTOKEN, RECIPES["smooth-pertoken"]):
        for name, src in (("clean", torchscript_embedder_dir / "model.onnx"), ("planted", planted)):
            quantize(src, tmp_path / "q.onnx", recipe, calibration=calibration)
            gaps[recipe.name, name] = cosine_gap(run(tmp_path / "q.onnx", feed), ref)
    # measured: 1 - mean cosine 0.100 on the planted graph, 0.0005 once smoothed; the clean
    # graph 0.0004
    assert gaps[method, "planted"][0] > 0.05
    assert gaps[f"smooth-{method}", "planted"][0] < 0.004
    assert gaps[f"smooth-{method}", "planted"][1] < 0.005
    assert gaps[f"smooth-{method}", "planted"][0] < gaps[method, "planted"][0] / 20
    # the smoothing scales absorb the planted factor: both graphs quantize alike
    assert gaps[f"smooth-{method}", "planted"] == pytest.approx(gaps[f"smooth-{method}", "clean"],
                                                                abs=2e-4)


def test_per_token_graph(torchscript_embedder_dir, feed, tmp_path):
    result = quantize(torchscript_embedder_dir / "model.onnx", tmp_path / "q.onnx", PERTOKEN)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert result.quantized == 14 and ops.count("MatMulIntegerToFloat") == 14
    assert ops.count("ReduceMax") == 2 * 4  # q/k/v and gate/up share their input's quantization
    weight_matmuls = [n for n in graph.node if n.op_type == "MatMul"
                      and n.input[1] in {i.name for i in graph.initializer}]
    assert weight_matmuls == []
    assert {i.data_type for i in graph.initializer if i.name.endswith("/w_int8")} == {
        onnx.TensorProto.INT8}
    mean_gap, max_gap = cosine_gap(run(tmp_path / "q.onnx", feed),
                                   run(torchscript_embedder_dir / "model.onnx", feed))
    assert 0 < mean_gap < 1e-3 and max_gap < 2e-3


def test_smoothing_needs_calibration(torchscript_embedder_dir, tmp_path):
    with pytest.raises(InputError, match="needs calibration"):
        quantize(torchscript_embedder_dir / "model.onnx", tmp_path / "q.onnx", "smooth-pertoken")
    model = onnx.load(str(torchscript_embedder_dir / "model.onnx"))
    with pytest.raises(InputError, match="non-empty"):
        smooth(model, [[]], 0.5)
    with pytest.raises(InputError, match="alpha"):
        smooth(model, [[1, 2]], 1.5)
    assert not list(tmp_path.iterdir())


def test_fused_graph_is_refused(embedder_dir, calibration):
    model = onnx.load(str(embedder_dir / "model.onnx"))  # the default export: fused, right-padded
    with pytest.raises(InputError, match="unfused TorchScript export"):
        smooth(model, calibration, 0.5)


def test_calibration_file(tmp_path):
    path = tmp_path / "cal.jsonl"
    path.write_text(json.dumps({"text": "a document"}) + "\n\n" + json.dumps({"query": "a query?"}) + "\n")
    assert read_calibration_texts(path) == (["a document"], ["a query?"])
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(InputError, match="cal.jsonl:2"):
        read_calibration_texts(path)
    path.write_text("{not json\n")
    with pytest.raises(InputError, match=r"cal.jsonl:1: invalid JSON \(.* at column 2\)"):
        read_calibration_texts(path)
