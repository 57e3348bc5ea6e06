"""Torch-free runtime: load an exported model directory and embed / rerank with ONNX Runtime."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embedrank.errors import DeviceError, InputError, ManifestError, ModelDirError, OpsError
from embedrank.formats import (
    check_dim,
    check_instruction,
    check_texts,
    encode_embedding_inputs,
    encode_rerank_inputs,
    load_tokenizer,
    matryoshka,
    pad,
    plan_batches,
)
from embedrank.manifest import GRAPH_NAME, TOKENIZER_NAME, Manifest, fingerprint, read_manifest

DEFAULT_TOKEN_BUDGET = 16384  # padded tokens per forward pass (TEI's default)
DEFAULT_MAX_BATCH = 128
INPUT_DIMS = ("batch", "sequence")  # the names export/ gives the input axes (both export paths)


def providers_for(device: str) -> list:
    """ONNX Runtime providers for ``device`` ("cpu", "cuda", "cuda:N"); never a silent fallback."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeviceError(
                f"device={device!r} needs onnxruntime-gpu with CUDA; this onnxruntime offers "
                f"{ort.get_available_providers()}. pip uninstall onnxruntime && pip install "
                "'embedrank[gpu]', or use device='cpu'"
            )
        index = _device_index(device)
        # grow the memory arena by what is asked, not to the next power of two: the same speed
        # on an H100 with 1.45 GB less for a 0.6B fp16 model's weights (docs/performance.md)
        options = {"device_id": index, "arena_extend_strategy": "kSameAsRequested"}
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


class _OnnxModel:
    """A model directory: manifest + tokenizer + ONNX Runtime session, checked for consistency."""

    kind = ""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", *,
                 token_budget: int = DEFAULT_TOKEN_BUDGET, max_batch_size: int = DEFAULT_MAX_BATCH,
                 check_fingerprint: bool = True, threads: int | None = None,
                 io_binding: bool | None = None, static_shape: tuple[int, int] | None = None,
                 cuda_graph: bool = False) -> None:
        """``static_shape=(B, S)``: every forward pass is exactly B x S (rows padded to S, missing rows
        filled with one-token dummies), so ONNX Runtime folds every shape computation and no node
        runs on the CPU; ``cuda_graph=True`` (needs it, and CUDA) also replays the pass as a CUDA
        graph (+1.3% on an H100 at 64 x 256, docs/performance.md)."""
        self.path = Path(path)
        self.device = device
        if cuda_graph and static_shape is None:
            raise InputError("cuda_graph=True needs static_shape=(batch, sequence): a CUDA graph "
                             "replays one fixed input size")
        if cuda_graph and not device.startswith("cuda"):
            raise DeviceError(f"cuda_graph=True needs a CUDA device, not device={device!r}")
        # CUDA: bind inputs / output explicitly (one host->device copy per input, the output
        # allocated by ORT on the device and copied back once); CPU keeps session.run
        self.io_binding = device != "cpu" if io_binding is None else io_binding
        self.manifest: Manifest = read_manifest(self.path)
        if self.manifest.kind != self.kind:
            raise ManifestError(f"{str(self.path)!r} holds a {self.manifest.kind}, not a {self.kind}: "
                                f"load it with embedrank.plugin.{self.manifest.kind.title()}")
        if device == "cpu" and self.manifest.extra.get("requires_device") == "cuda":
            raise DeviceError(f"{str(self.path)!r} was exported for CUDA (GroupQueryAttention with the "
                              "q/k norms inside, which ONNX Runtime runs on CUDA only): load it with "
                              "device='cuda', or export for CPU with `embedrank export ... --device cpu`")
        self.static_shape = _check_static_shape(static_shape, self.manifest.max_length)
        _check_onnxruntime(self.manifest.extra.get("min_onnxruntime"), self.path)
        if check_fingerprint and fingerprint(self.path, self.manifest) != self.manifest.fingerprint:
            raise ManifestError(f"the files in {str(self.path)!r} do not match the fingerprint in its "
                                "manifest (changed or corrupted since export); re-export the model")
        self.tokenizer = _tokenizer(self.path / TOKENIZER_NAME)
        self.session = _session(self.path / GRAPH_NAME, device, threads, self.static_shape, cuda_graph,
                                self.manifest.extra.get("custom_ops"))
        self._check_graph()
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        if self.static_shape is not None:  # batches of exactly B rows of at most S tokens
            self.max_batch_size, seq = self.static_shape
            self.token_budget = self.max_batch_size * seq
        self._graph_buffers = self._bind_device_buffers() if cuda_graph else None
        self._graph_lock = threading.Lock()  # one batch at a time in the shared device buffers

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def _check_graph(self) -> None:
        m = self.manifest
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = [o for o in self.session.get_outputs()]
        if inputs != m.inputs or len(outputs) != 1 or outputs[0].name != m.output:
            raise ManifestError(
                f"the graph in {str(self.path)!r} takes {inputs} and returns "
                f"{[o.name for o in outputs]}, but its manifest says {m.inputs} -> {m.output!r}; "
                "re-export the model")
        shape = outputs[0].shape
        if self.static_shape is not None and any(
                i.shape != list(self.static_shape) for i in self.session.get_inputs()):
            raise ManifestError(f"the graph in {str(self.path)!r} does not name its input axes "
                                f"{INPUT_DIMS}, so static_shape cannot fix them; re-export the model")
        if self.kind == "embedder" and (len(shape) != 2 or shape[1] != m.dim):
            raise ManifestError(f"the graph outputs {shape} but the manifest says dim={m.dim}; "
                                "re-export the model")
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if max(m.eot_token_id, m.pad_token_id) >= vocab or self.tokenizer.id_to_token(
                m.eot_token_id) != m.prompts.eot_token:
            raise ManifestError(f"the tokenizer in {str(self.path)!r} does not match the manifest "
                                f"(token {m.eot_token_id} is not {m.prompts.eot_token!r})")

    def _run(self, seqs: Sequence[Sequence[int]], width: int,
             progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Run the graph over token-budget batches (longest first); rows back in input order."""
        lengths = [len(s) for s in seqs]
        if self.static_shape is not None and max(lengths, default=0) > self.static_shape[1]:
            raise InputError(f"an input has {max(lengths)} tokens, more than static_shape's sequence "
                             f"length S={self.static_shape[1]}; load with a larger S (up to "
                             f"max_length={self.max_length}) or shorten the texts")
        out = np.zeros((len(seqs), width) if width else (len(seqs),), dtype=np.float32)
        for batch in plan_batches(lengths, self.token_budget, self.max_batch_size):
            ids, mask = self._pad([seqs[i] for i in batch])
            out[batch] = self._infer(ids, mask)[: len(batch)].astype(np.float32)
            if progress is not None:
                progress(len(batch))
        return out

    def _pad(self, rows: list[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pad to the longest row; static: to B rows of S, dummies holding one real token (EOT)."""
        m = self.manifest
        if self.static_shape is None:
            return pad(rows, m.pad_token_id, m.padding_side)
        batch, seq = self.static_shape
        ids, mask = pad(rows + [[m.eot_token_id]] * (batch - len(rows)), m.pad_token_id, m.padding_side)
        extra = seq - ids.shape[1]
        widths = ((0, 0), (extra, 0) if m.padding_side == "left" else (0, extra))
        return np.pad(ids, widths, constant_values=m.pad_token_id), np.pad(mask, widths)

    def _bind_device_buffers(self):
        """CUDA graph: inputs and output on fixed device buffers, bound once (their addresses are
        what the graph replays); each batch is copied into them in place."""
        import onnxruntime as ort

        index = _device_index(self.device)
        zeros = np.zeros(self.static_shape, dtype=np.int64)
        ids, mask = (ort.OrtValue.ortvalue_from_numpy(zeros, "cuda", index) for _ in range(2))
        rows, dtype = self.static_shape[0], self.session.get_outputs()[0].type
        shape = [rows, self.manifest.dim] if self.kind == "embedder" else [rows]
        dtype = np.float16 if dtype == "tensor(float16)" else np.float32
        out = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", index)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", ids)
        binding.bind_ortvalue_input("attention_mask", mask)
        binding.bind_ortvalue_output(self.manifest.output, out)
        return ids, mask, out, binding

    def _infer(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One forward pass over a padded batch."""
        if self._graph_buffers is not None:
            ids_buffer, mask_buffer, out, binding = self._graph_buffers
            with self._graph_lock:
                ids_buffer.update_inplace(ids)
                mask_buffer.update_inplace(mask)
                self.session.run_with_iobinding(binding)
                return out.numpy()
        if not self.io_binding:
            return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_output(self.manifest.output, "cpu" if self.device == "cpu" else "cuda",
                            _device_index(self.device))
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def _check_onnxruntime(minimum: str | None, path: Path) -> None:
    """The export needs an ONNX Runtime at least this new (an op input older ones lack)."""
    import onnxruntime as ort

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("+")[0].split(".")[:2])

    if minimum is not None and version(ort.__version__) < version(minimum):
        raise DeviceError(f"{str(path)!r} needs onnxruntime >= {minimum} (this is {ort.__version__}): "
                          f"pip install -U 'onnxruntime-gpu>={minimum}', or re-export without --rewrites qkv")


def _ops_library(custom_ops: dict | None, device: str, path: Path) -> Path | None:
    """embedrank's custom-op library for a model whose graph uses it (the "swiglu" rewrite)."""
    if not custom_ops:
        return None
    from embedrank.ops import DOMAIN, find_library

    if custom_ops.get("domain") != DOMAIN:
        raise ManifestError(f"{str(path)!r} needs custom ops of domain {custom_ops.get('domain')!r}, "
                            f"not embedrank's {DOMAIN!r}; re-export the model")
    return find_library(cuda=device != "cpu")


def _device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def _check_static_shape(shape, max_length: int) -> tuple[int, int] | None:
    if shape is None:
        return None
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise InputError(f"static_shape must be two positive ints (batch, sequence), got {shape!r}")
    if shape[1] > max_length:
        raise InputError(f"static_shape's sequence length {shape[1]} is over this model's "
                         f"max_length={max_length}")
    return int(shape[0]), int(shape[1])


def _tokenizer(path: Path):
    try:
        return load_tokenizer(path)
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise ModelDirError(f"cannot read the tokenizer {str(path)!r} ({exc}); re-export the model") from None


def _session(path: Path, device: str, threads: int | None,
             static_shape: tuple[int, int] | None = None, cuda_graph: bool = False,
             custom_ops: dict | None = None):
    import onnxruntime as ort

    providers = providers_for(device)
    ops_library = _ops_library(custom_ops, device, path.parent)  # after the device is checked
    if cuda_graph:
        name, provider_options = providers[0]
        providers[0] = (name, {**provider_options, "enable_cuda_graph": "1"})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if ops_library is not None:
        try:
            options.register_custom_ops_library(str(ops_library))
        except Exception as exc:  # onnxruntime raises its own Fail type
            raise OpsError(f"ONNX Runtime cannot load the ops library {str(ops_library)!r} ({exc}); "
                           "rebuild it with `embedrank ops build --force`") from None
    if static_shape is not None:
        # fix the input axes by name when the graph is loaded: the same optimized graph as an
        # onnx-edited copy with fixed dims (checked on ORT 1.32), without needing onnx (not a
        # serving dependency) and without touching the model directory or its external data
        for dim, size in zip(INPUT_DIMS, static_shape, strict=True):
            options.add_free_dimension_override_by_name(dim, size)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        if cuda_graph or static_shape is not None:
            raise DeviceError(f"ONNX Runtime refused {str(path)!r} with static_shape={static_shape} / "
                              f"cuda_graph={cuda_graph} ({str(exc)[:300]}); load it without them") from None
        raise ModelDirError(f"ONNX Runtime cannot load {str(path)!r} ({str(exc)[:300]}); the file "
                            "is truncated or corrupt (or needs a newer onnxruntime): re-export the "
                            "model") from None
    if device != "cpu" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise DeviceError(f"ONNX Runtime did not start CUDA for {str(path)!r} (providers: "
                          f"{session.get_providers()}); check the CUDA / cuDNN installation")
    return session


class Embedder(_OnnxModel):
    """Qwen3-style embedder: instruction-prefixed queries, plain documents, (n, d) float32."""

    kind = "embedder"

    def __init__(self, path, device: str = "cpu", dim: int | None = None, **kwargs) -> None:
        super().__init__(path, device, **kwargs)
        self.dim = self.manifest.dim if dim is None else check_dim(dim, self.manifest.dim)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", dim: int | None = None,
             **kwargs) -> Embedder:
        return cls(path, device, dim, **kwargs)

    @property
    def default_instruction(self) -> str:
        return self.manifest.prompts.default_instruction

    def embed_queries(self, texts, instruction: str | None = None, *,
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
        check_instruction(instruction)
        prompts = self.manifest.prompts
        texts = [prompts.query(t, instruction) for t in check_texts(texts, "queries")]
        return self._embed(texts, progress)

    def embed_documents(self, texts, *, progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self._embed(check_texts(texts, "documents"), progress)

    def _embed(self, texts: list[str], progress) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        seqs = encode_embedding_inputs(self.tokenizer, texts, self.max_length,
                                       self.manifest.prompts.eot_token)
        full = self._run(seqs, self.manifest.dim, progress)
        return matryoshka(full, self.dim).astype(np.float32)


class Reranker(_OnnxModel):
    """Qwen3-style reranker: P("yes") for each (query, document)."""

    kind = "reranker"

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", **kwargs) -> Reranker:
        return cls(path, device, **kwargs)

    def score(self, query: str, documents, instruction: str | None = None) -> np.ndarray:
        if not isinstance(query, str):
            raise InputError(f"query must be a str, got {type(query).__name__}")
        query = check_texts([query], "query")[0]
        check_instruction(instruction)
        documents = check_texts(documents, "documents")
        if not documents:
            return np.zeros(0, dtype=np.float32)
        seqs = encode_rerank_inputs(self.tokenizer, self.manifest.prompts, query, documents,
                                    instruction, self.max_length)
        logits = self._run(seqs, 0).astype(np.float64)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
