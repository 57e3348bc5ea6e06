"""embedrank's custom-op library (embedrank/ops) and the "swiglu" rewrite that uses it: the
kernel against NumPy, the build (headers from Debian's package, CPU and CUDA builds), the
rewritten export against the plain one, and the runtime's errors when the library is missing."""

import io
import os
import shutil
import subprocess
import tarfile
from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from ops_support import assert_same_outputs, unpack_deb_headers

from embedrank import ops
from embedrank.cli.main import main
from embedrank.errors import ManifestError, OpsError
from embedrank.export import export_model
from embedrank.export.onnx import resolve_variant
from embedrank.manifest import read_manifest
from embedrank.plugin import Embedder


def _swiglu_session(library, elem, width, provider="CPUExecutionProvider", float_io=False):
    """One SwiGLU node; ``float_io``: float32 in and out, cast to / from ``elem`` around it (numpy
    has no bfloat16)."""
    io = TensorProto.FLOAT if float_io else elem
    nodes = [helper.make_node("SwiGLU", ["x"], ["y"], domain=ops.DOMAIN)]
    names = ("x", "y")
    if float_io:
        nodes = [helper.make_node("Cast", ["x32"], ["x"], to=elem), *nodes,
                 helper.make_node("Cast", ["y"], ["y32"], to=TensorProto.FLOAT)]
        names = ("x32", "y32")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(names[0], io, ["b", "s", width])],
                              [helper.make_tensor_value_info(names[1], io, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ops.DOMAIN, 1)], ir_version=10)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=[provider])


def _reference(x: np.ndarray) -> np.ndarray:
    """silu(gate) * up in float64, the halves of the last axis."""
    x = x.astype(np.float64)
    gate, up = np.split(x, 2, axis=-1)
    return gate / (1 + np.exp(-gate)) * up


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float16, 1e-3)])
def test_swiglu_kernel_matches_numpy(library, dtype, tol):
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    x = np.random.default_rng(0).normal(0, 3, (2, 5, 14)).astype(dtype)
    y = _swiglu_session(library, elem, 14).run(None, {"x": x})[0]
    assert y.dtype == dtype and y.shape == (2, 5, 7)
    np.testing.assert_allclose(y.astype(np.float64), _reference(x), rtol=tol, atol=tol)
    assert _swiglu_session(library, elem, 14).run(None, {"x": x[:, :0]})[0].shape == (2, 0, 7)


def test_swiglu_kernel_bfloat16_on_cpu(library):
    session = _swiglu_session(library, TensorProto.BFLOAT16, 16, float_io=True)
    x = np.random.default_rng(2).normal(0, 3, (2, 3, 16)).astype(np.float32)
    expected = _reference(_rounded(x, TensorProto.BFLOAT16))
    np.testing.assert_allclose(session.run(None, {"x32": x})[0], expected, rtol=1.6e-2, atol=1.6e-2)


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="the CUDA kernel needs onnxruntime-gpu and a GPU (run on the lent device)")
@pytest.mark.parametrize("width", [2 * 3072, 2 * 13, 2 * 8])  # vectorized, one-element, one vector
@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_cuda_kernel_matches_numpy(headers, tmp_path_factory, width, elem):
    path = ops.build(cuda=True, out=tmp_path_factory.getbasetemp() / "cuda" / "lib.so", ort_include=headers)
    session = _swiglu_session(path, elem, width, "CUDAExecutionProvider", float_io=True)
    x = np.random.default_rng(1).normal(0, 3, (3, 100, width)).astype(np.float32)
    got = session.run(None, {"x32": x})[0]
    np.testing.assert_array_equal(got, session.run(None, {"x32": x})[0])  # deterministic
    tol = {TensorProto.FLOAT: 1e-5, TensorProto.FLOAT16: 2e-3, TensorProto.BFLOAT16: 1.6e-2}[elem]
    # against the inputs as the kernel reads them (rounded to elem)
    np.testing.assert_allclose(got, _reference(_rounded(x, elem)), rtol=tol, atol=tol)


def _rounded(x: np.ndarray, elem: int) -> np.ndarray:
    """float32 values rounded to ``elem`` (round to nearest even), as ONNX Cast does."""
    if elem == TensorProto.FLOAT16:
        return x.astype(np.float16).astype(np.float32)
    if elem == TensorProto.BFLOAT16:
        bits = x.view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return x


def test_swiglu_kernel_refuses_an_odd_width(library):
    with pytest.raises(Exception, match="last axis holds \\[gate \\| up\\] and must be even"):
        _swiglu_session(library, TensorProto.FLOAT, "w").run(None, {"x": np.ones((1, 2, 5), np.float32)})


def test_cuda_build_compiles_and_still_serves_the_cpu(headers, tmp_path):
    if ops.find_nvcc() is None:
        pytest.skip("no nvcc on this machine")
    path = ops.build(cuda=True, out=tmp_path / "libembedrank_ops_cuda.so", archs=("90",), ort_include=headers)
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True).stdout
    names = [line.split()[-1] for line in symbols.splitlines()]
    exported = sorted(name for name in names if not name.startswith("_"))
    assert exported == ["RegisterCustomOps"]  # everything else hidden
    x = np.linspace(-4, 4, 12, dtype=np.float32).reshape(1, 1, 12)
    y = _swiglu_session(path, TensorProto.FLOAT, 12).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, _reference(x), rtol=1e-6)


def _deb(members: dict[str, bytes]) -> bytes:
    """A .deb: an ar archive of debian-binary, control.tar.xz and data.tar.xz."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    out = b"!<arch>\n"
    parts = (("debian-binary", b"2.0\n"), ("control.tar.xz", b"ctl"), ("data.tar.xz", data.getvalue()))
    for name, blob in parts:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode() + blob
        out += b"\n" if len(blob) % 2 else b""
    return out


def test_headers_come_from_an_installed_package_only(tmp_path, monkeypatch):
    deb = _deb({"./usr/include/onnxruntime/onnxruntime_cxx_api.h": b"// api\n",
                "./usr/include/onnxruntime/core/x.h": b"x", "./usr/share/doc/readme": b"no",
                "./usr/include/onnxruntime/../../../evil.h": b"no"})
    unpack_deb_headers(deb, tmp_path / "h")
    found = sorted(str(p.relative_to(tmp_path / "h")) for p in (tmp_path / "h").rglob("*") if p.is_file())
    assert found == ["core/x.h", "onnxruntime_cxx_api.h"]
    monkeypatch.delenv("ORT_INCLUDE", raising=False)
    monkeypatch.setattr(ops, "SYSTEM_HEADERS", tmp_path / "none")
    with pytest.raises(OpsError, match="install libonnxruntime-dev"):
        ops.ort_headers()  # nothing installed: an error, never a download
    assert ops.ort_headers(tmp_path / "h") == tmp_path / "h"
    monkeypatch.setenv("ORT_INCLUDE", str(tmp_path / "h"))
    assert ops.ort_headers() == tmp_path / "h"
    with pytest.raises(OpsError, match="has no onnxruntime_cxx_api.h"):
        ops.ort_headers(tmp_path)


@pytest.fixture(scope="module")
def swiglu_embedder(library, tiny_ckpt, tmp_path_factory):
    return export_model("embedder", str(tiny_ckpt), tmp_path_factory.mktemp("sw") / "swiglu",
                        rewrites=("swiglu",))


def test_swiglu_rewrite_is_exact_and_holds_the_mlp_weights(swiglu_embedder, embedder_dir, torch_embedder):
    result = swiglu_embedder
    assert result.parity.passed and result.manifest.extra["rewrites"] == ["swiglu"]
    assert result.manifest.custom_ops == ("SwiGLU",)
    assert result.manifest.extra["fused_ops"]["rewrite_swiglu"] == 2
    graph = onnx.load(str(result.out / "model.onnx")).graph
    counts = Counter(n.op_type for n in graph.node)
    plain = Counter(n.op_type for n in onnx.load(str(embedder_dir / "model.onnx")).graph.node)
    assert counts["SwiGLU"] == 2 and counts["Sigmoid"] == 0 and counts["MatMul"] == plain["MatMul"] - 2
    producer = {o: n for n in graph.node for o in n.output}
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for index, node in enumerate(n for n in graph.node if n.op_type == "SwiGLU"):
        mlp = torch_embedder.model.layers[index].mlp
        packed = weights[producer[node.input[0]].input[1]]
        np.testing.assert_array_equal(packed, np.concatenate([mlp.gate_proj.weight.detach().numpy().T,
                                                              mlp.up_proj.weight.detach().numpy().T], axis=1))
    assert_same_outputs(result.out, embedder_dir, "embedder")


def test_missing_library_is_a_clear_error_and_nothing_is_written(swiglu_embedder, tiny_ckpt, tmp_path,
                                                                monkeypatch):
    monkeypatch.delenv(ops.LIBRARY_ENV)
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "empty"))
    with pytest.raises(OpsError, match="not built: run `embedrank ops build`"):
        Embedder.load(swiglu_embedder.out)
    with pytest.raises(OpsError, match="not built with its CUDA kernel: run `embedrank ops build --cuda`"):
        ops.find_library(cuda=True)
    with pytest.raises(OpsError, match="not built"):
        export_model("embedder", str(tiny_ckpt), tmp_path / "out", rewrites=("swiglu",))
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(ops.LIBRARY_ENV, str(tmp_path / "nope.so"))
    with pytest.raises(OpsError, match="is not a file"):
        Embedder.load(swiglu_embedder.out)
    (tmp_path / "bad.so").write_bytes(b"not an elf")
    monkeypatch.setenv(ops.LIBRARY_ENV, str(tmp_path / "bad.so"))
    with pytest.raises(OpsError, match="cannot load the ops library"):
        Embedder.load(swiglu_embedder.out)


def test_an_unknown_custom_op_is_refused(swiglu_embedder, library, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(swiglu_embedder.out, copy)
    replace(read_manifest(copy), custom_ops=("FlashMLP",)).sealed(copy).write(copy)
    with pytest.raises(ManifestError, match=r"needs custom ops \['FlashMLP'\]"):
        Embedder.load(copy)


def test_the_device_default_never_takes_swiglu_even_when_built(library, tiny_llama, tmp_path, monkeypatch):
    """The same export command gives the same graph on every machine: swiglu only when asked."""
    from embedrank.export import onnx as onnx_export

    resolve = onnx_export.resolve_variant
    monkeypatch.setattr(onnx_export, "resolve_variant",  # the CUDA default, on CPU
                        lambda *a: (*resolve(*a)[:3], onnx_export.CUDA_REWRITES))
    result = export_model("embedder", str(tiny_llama), tmp_path / "default")
    assert result.manifest.extra["rewrites"] == ["qkv"] and result.parity.passed
    assert result.manifest.custom_ops == () and "rewrite_swiglu" not in result.manifest.extra["fused_ops"]
    assert resolve_variant("cuda", rewrites=("qkv", "swiglu"))[3] == ("qkv", "swiglu")


def test_cli_ops_build_and_path(headers, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ops.LIBRARY_ENV, raising=False)
    result = CliRunner().invoke(main, ["ops", "path"])
    assert result.exit_code == 1 and "not built" in result.output
    result = CliRunner().invoke(main, ["ops", "build", "--cpu-only", "--ort-include", str(headers)])
    assert result.exit_code == 0, result.output
    built = result.output.strip().splitlines()[-1]
    assert built == str(ops.default_library(False)) and os.path.isfile(built)
    assert CliRunner().invoke(main, ["ops", "path"]).output.strip() == built
    result = CliRunner().invoke(main, ["ops", "build", "--cpu-only", "--arch", "9x"])
    assert result.exit_code == 0  # archs matter to CUDA builds only
    result = CliRunner().invoke(main, ["ops", "build", "--cuda", "--arch", "9x", "--force"])
    need = "compute capabilities" if ops.find_nvcc() else "needs nvcc"
    assert result.exit_code == 1 and need in result.output
