"""Export with a chosen int8 recipe and calibration texts (CLI and API), and its refusals."""

import json

import pytest
from click.testing import CliRunner

from embedrank.cli.main import main
from embedrank.errors import InputError
from embedrank.export import export_model
from embedrank.manifest import read_manifest
from embedrank.plugin import Embedder


@pytest.fixture()
def calibration_file(tmp_path):
    path = tmp_path / "calibration.jsonl"
    lines = [{"text": f"Document {i}: rivers, tides and the moon's pull on the sea."} for i in range(6)]
    lines += [{"query": f"why are there {i} tides a day?"} for i in range(3)]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("recipe", ["smooth-pertoken", "w8-block32-outliers"])
def test_cli_exports_a_calibrated_int8_embedder(recipe, tiny_ckpt, tmp_path, calibration_file,
                                                torch_embedder):
    out = tmp_path / "int8"
    result = CliRunner().invoke(main, ["export", "embedder", str(tiny_ckpt), str(out), "--dtype",
                                       "int8", "--int8-recipe", recipe, "--calibration",
                                       str(calibration_file)])
    assert result.exit_code == 0, result.output
    assert "PASS: embedder int8" in result.output
    extra = read_manifest(out).extra
    assert extra["int8_recipe"] == recipe and extra["optimize"] == "none"
    assert (extra["int8_smoothed"] > 0) == (recipe == "smooth-pertoken")
    assert extra["int8_calibration"] == {"documents": 6, "queries": 3}
    # the tiny random model has no activation 8x its median channel: nothing split off
    assert extra["int8_outlier_channels"] == 0
    texts = ["the moon pulls the sea", "a short one"]
    got = Embedder.load(out).embed_documents(texts)
    ref = torch_embedder.embed_documents(texts).numpy()
    assert ((got * ref).sum(1) > 0.97).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int8", int8_recipe="smooth-pertoken"), "needs? .*calibration|calibration file"),
    (dict(dtype="int8", int8_recipe="w8-block32-outliers"), "calibration file"),
    (dict(dtype="fp32", int8_recipe="pertoken"), "dtype='int8' only"),
    (dict(dtype="int8", int8_recipe="int3"), "unknown int8 recipe"),
    (dict(dtype="int8", int8_recipe="int8-block32", calibration="CAL"), "takes no calibration"),
    (dict(dtype="int8", optimize="fused"), "drop --optimize fused"),
])
def test_bad_int8_options_are_refused_before_any_work(kwargs, message, tiny_ckpt, tmp_path,
                                                      calibration_file):
    if kwargs.get("calibration") == "CAL":
        kwargs = {**kwargs, "calibration": calibration_file}
    with pytest.raises(InputError, match=message):
        export_model("embedder", str(tiny_ckpt), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_reranker_calibration_needs_queries_and_documents(tiny_ckpt, tmp_path):
    docs_only = tmp_path / "docs.jsonl"
    docs_only.write_text('{"text": "a document"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="both documents"):
        export_model("reranker", str(tiny_ckpt), tmp_path / "out", dtype="int8",
                     int8_recipe="smooth-pertoken", calibration=docs_only)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(InputError, match="bad.jsonl:2"):
        export_model("embedder", str(tiny_ckpt), tmp_path / "out", dtype="int8",
                     int8_recipe="smooth-pertoken", calibration=bad)
    assert not (tmp_path / "out").exists()
