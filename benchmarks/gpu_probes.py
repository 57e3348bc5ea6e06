"""Probes that ``benchmarks/gpu_bench.py`` runs: a kernel profile, TensorRT, the activation kernels,
memory, and the reranker head variants in PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import DEVICE, DRY_RUN, gpu_used_mib, ops_library, timed


def tensorrt_probe() -> dict:
    import onnxruntime as ort

    try:
        import ctypes

        ctypes.CDLL("libnvinfer.so.10")
        return {"libnvinfer": "found", "providers": ort.get_available_providers()}
    except OSError as exc:
        return {"libnvinfer": f"missing ({exc})", "providers": ort.get_available_providers()}


def kernel_profile(fn, rows: list, calls: int = 5, top: int = 25) -> dict:
    """GPU kernels of ``calls`` batches of ``rows`` (torch.profiler / CUPTI sees every library's
    kernels in the process, ONNX Runtime's included): total ms per call, grouped by kernel name."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn(rows)
    if not torch.cuda.is_available():
        return {"error": "no CUDA device (dry run)"}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn(rows)
        torch.cuda.synchronize()
    totals: dict[str, list] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(event.name, [0.0, 0])
            entry[0] += event.time_range.elapsed_us() / 1e3 / calls  # ms per call
            entry[1] += 1
    total = sum(ms for ms, _ in totals.values())
    rows_out = sorted(((ms, n // calls, name) for name, (ms, n) in totals.items()), reverse=True)
    return {"gpu_ms_per_call": total, "kernels": [
        {"name": name[:160], "ms": round(ms, 3), "share": round(ms / total, 4), "launches": n}
        for ms, n, name in rows_out[:top]]}


def memory_probe(model_dir: Path, rows: list, pad_id: int) -> dict:
    """Device memory (NVML) of one fixed batch under ORT's arena strategies, one session each."""
    import gc

    import onnxruntime as ort

    from embedrank.formats import pad
    from embedrank.manifest import read_manifest

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"error": "no CUDA provider (dry run)"}
    manifest = read_manifest(model_dir)
    ids, mask = pad(rows, pad_id, manifest.padding_side)
    library = ops_library(model_dir, "cuda")
    res = {}
    for strategy in ("kNextPowerOfTwo", "kSameAsRequested"):
        res[strategy] = _arena_run(model_dir / "model.onnx", strategy, ids, mask, library)
        gc.collect()
    return res


def _arena_run(path: Path, strategy: str, ids: np.ndarray, mask: np.ndarray, library=None) -> dict:
    import onnxruntime as ort

    before = gpu_used_mib()
    options = ort.SessionOptions()
    if library is not None:  # embedrank's custom ops (the swiglu rewrite)
        options.register_custom_ops_library(str(library))
    sess = ort.InferenceSession(str(path), options, providers=[
        ("CUDAExecutionProvider", {"arena_extend_strategy": strategy})])
    loaded = gpu_used_mib()
    times = timed(lambda: sess.run(None, {"input_ids": ids, "attention_mask": mask}), 10)
    used = gpu_used_mib() - loaded
    return {"weights_mib": loaded - before, "run_mib": used,
            "mib_per_1k_tokens": used / (ids.size / 1000),
            "fixed_tokens_per_s": ids.size / float(np.median(times))}


def reranker_heads(ckpt: Path, work: dict, pad: int) -> dict:
    """PyTorch bf16 top-100 latency: one-logit head vs full LM head (last position / all)."""
    import torch

    from embedrank.formats import pad_left
    from embedrank.train.modeling import Reranker, position_ids

    dtype = torch.float32 if DRY_RUN else torch.bfloat16
    rr = Reranker.from_pretrained(ckpt, dtype=dtype, device=DEVICE).eval()
    ids, mask = (torch.from_numpy(x).to(DEVICE) for x in pad_left(work["rerank"], pad))
    pos = position_ids(mask)
    pair = [rr.yes_id, rr.no_id]
    heads = {
        "one_logit": lambda: rr(ids, mask),
        "lm_head_last_position": lambda: rr.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                                  logits_to_keep=1).logits[:, -1, pair],
        "lm_head_all_positions": lambda: rr.model(input_ids=ids, attention_mask=mask,
                                                  position_ids=pos).logits[:, -1, pair],
    }
    res = {}
    with torch.inference_mode():
        for name, call in heads.items():
            for _ in range(3):
                call().float().cpu()
            if not DRY_RUN:
                torch.cuda.reset_peak_memory_stats()
            res[f"{name}_p50_ms"] = float(np.median(timed(lambda: call().float().cpu(), 10))) * 1e3  # noqa: B023
            if not DRY_RUN:
                res[f"{name}_peak_alloc_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def activation_probe(tokens: int = 16384, width: int = 3072, calls: int = 50) -> dict:
    """SiLU(gate) * up on [tokens, width] fp16 through the ONNX Runtime ops that can express it:
    ms per call (device-bound I/O) and max |error| against float32 numpy, or why an op is absent."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    gate, up = (rng.standard_normal((tokens, width)).astype(np.float16) for _ in range(2))
    g32, u32 = gate.astype(np.float32), up.astype(np.float32)
    reference = g32 / (1 + np.exp(-g32)) * u32
    ms = "com.microsoft"
    forms = {  # name -> (nodes, inputs)
        "QuickGelu+Mul": ([helper.make_node("QuickGelu", ["g"], ["s"], domain=ms, alpha=1.0),
                           helper.make_node("Mul", ["s", "u"], ["y"])], ("g", "u")),
        "ScaledSiLU+Mul": ([helper.make_node("ScaledSiLU", ["g"], ["s"], domain=ms, alpha=1.0),
                            helper.make_node("Mul", ["s", "u"], ["y"])], ("g", "u")),
        "SwiGLU (packed gate|up)": ([helper.make_node("SwiGLU", ["gu"], ["y"], domain=ms,
                                                      activation_alpha=1.0)], ("gu",)),
    }
    feeds = {"g": gate, "u": up, "gu": np.concatenate([gate, up], axis=1)}
    res = {}
    for name, (nodes, names) in forms.items():
        try:
            inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, list(feeds[n].shape))
                      for n in names]
            output = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [tokens, width])
            model = helper.make_model(helper.make_graph(nodes, "act", inputs, [output]), opset_imports=[
                helper.make_opsetid("", 20), helper.make_opsetid(ms, 1)], ir_version=10)
            options = ort.SessionOptions()  # a node without a CUDA kernel fails instead of moving to CPU
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            sess = ort.InferenceSession(model.SerializeToString(), options,
                                        providers=["CUDAExecutionProvider"])
            binding = sess.io_binding()
            for n in names:
                binding.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(feeds[n], "cuda", 0))
            out = ort.OrtValue.ortvalue_from_shape_and_type([tokens, width], np.float16, "cuda", 0)
            binding.bind_ortvalue_output("y", out)
            for _ in range(5):
                sess.run_with_iobinding(binding)
            t = timed(lambda: sess.run_with_iobinding(binding), calls)  # noqa: B023
            res[name] = {"ms": float(np.median(t)) * 1e3,
                         "max_abs_err": float(np.abs(out.numpy().astype(np.float32) - reference).max())}
        except Exception as exc:  # the op is missing from this build: say so
            res[name] = {"error": str(exc)[:300]}
    return res


def main(argv=None) -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(description="One GPU probe on its own (no checkpoint, no export); "
                                            "the others run inside `gpu_bench.py all`.")
    p.add_argument("probe", choices=["activations", "tensorrt"],
                   help="activations: SiLU(gate) * up through the ONNX Runtime ops that can express "
                        "it; tensorrt: whether the TensorRT provider's library loads")
    a = p.parse_args(argv)
    print(json.dumps(activation_probe() if a.probe == "activations" else tensorrt_probe(), indent=2))


if __name__ == "__main__":
    main()
