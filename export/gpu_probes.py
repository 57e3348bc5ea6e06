"""Probes run by :mod:`embedrank.export.gpu_bench` for what did not apply: ORT CUDA graphs, TensorRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedrank.export.gpu_bench import ARCH, _timed


def cuda_graph_probe(model_dir: Path, work: dict, pad: int) -> dict:
    """Fixed 64 x 256 through an ORT CUDA graph (all inputs / outputs bound on the device)."""
    import onnxruntime as ort

    from embedrank.formats import pad_left

    ids, mask = pad_left(work["fixed"], pad)
    try:
        sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=[
            ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
        binding = sess.io_binding()
        ids_v, mask_v = (ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0) for x in (ids, mask))
        out = ort.OrtValue.ortvalue_from_shape_and_type([len(ids), ARCH["hidden_size"]], np.float32,
                                                       "cuda", 0)
        binding.bind_ortvalue_input("input_ids", ids_v)
        binding.bind_ortvalue_input("attention_mask", mask_v)
        binding.bind_ortvalue_output(sess.get_outputs()[0].name, out)
        for _ in range(3):
            sess.run_with_iobinding(binding)
        t = _timed(lambda: (sess.run_with_iobinding(binding), out.numpy()), 20)
        return {"fixed_tokens_per_s": ids.size / float(np.median(t))}
    except Exception as exc:  # report why it does not apply
        return {"error": str(exc)[:400]}


def tensorrt_probe() -> dict:
    import onnxruntime as ort

    try:
        import ctypes

        ctypes.CDLL("libnvinfer.so.10")
        return {"libnvinfer": "found", "providers": ort.get_available_providers()}
    except OSError as exc:
        return {"libnvinfer": f"missing ({exc})", "providers": ort.get_available_providers()}
