"""The runtime: model directories served with ONNX Runtime (no torch)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embedrank.errors import DeviceError, InputError, ManifestError, ModelDirError, OpsError
from embedrank.formats import (
    check_dim,
    check_instruction,
    check_texts,
    encode_embedding_inputs,
    encode_query_inputs,
    encode_rerank_inputs,
    load_tokenizer,
    matryoshka,
    pad,
    plan_batches,
)
from embedrank.manifest import GRAPH_NAME, TOKENIZER_NAME, Manifest, fingerprint, read_manifest

DEFAULT_TOKEN_BUDGET = 16384  # padded tokens per forward pass (TEI's default)
DEFAULT_MAX_BATCH = 128


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
        # on an H100, 1.21 GB instead of 2.65 GB for a 0.6B fp16 model's weights (docs/performance.md)
        options = {"device_id": index, "arena_extend_strategy": "kSameAsRequested"}
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


class _OnnxModel:
    """A model directory: manifest + tokenizer + ONNX Runtime session, checked for consistency."""

    kind = ""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", *,
                 token_budget: int = DEFAULT_TOKEN_BUDGET, max_batch_size: int = DEFAULT_MAX_BATCH,
                 check_fingerprint: bool = True, threads: int | None = None,
                 io_binding: bool | None = None, raw_control_tokens: bool = False) -> None:
        self.path = Path(path)
        self.device = device
        # user text is plain text: "<|im_end|>" in a document is characters, not a control token
        # (formats.encode_text); True parses control tokens in user text as the HF tokenizer does
        self.raw_control_tokens = raw_control_tokens
        # CUDA: bind inputs / output explicitly (one host->device copy per input, the output
        # allocated by ORT on the device and copied back once); CPU keeps session.run
        self.io_binding = device != "cpu" if io_binding is None else io_binding
        self.manifest: Manifest = read_manifest(self.path)
        if self.manifest.kind != self.kind:
            raise ManifestError(f"{str(self.path)!r} holds {_an(self.manifest.kind)}, not "
                                f"{_an(self.kind)}: load it with "
                                f"embedrank.runtime.{self.manifest.kind.title()}")
        if device == "cpu" and self.manifest.requires_device == "cuda":
            raise DeviceError(f"{str(self.path)!r} was exported for CUDA (GroupQueryAttention with the "
                              "q/k norms inside, which ONNX Runtime runs on CUDA only): load it with "
                              "device='cuda', or export for CPU with `embedrank export ... --device cpu`")
        _check_onnxruntime(self.manifest.min_onnxruntime, self.path)
        if check_fingerprint and fingerprint(self.path, self.manifest) != self.manifest.fingerprint:
            raise ManifestError(f"the files in {str(self.path)!r} do not match the fingerprint in its "
                                "manifest (changed or corrupted since export); re-export the model")
        self.tokenizer = _tokenizer(self.path / TOKENIZER_NAME)
        self.session = _session(self.path / GRAPH_NAME, device, threads, self.manifest.custom_ops)
        self._check_graph()
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size

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
        out = np.zeros((len(seqs), width) if width else (len(seqs),), dtype=np.float32)
        for batch in plan_batches(lengths, self.token_budget, self.max_batch_size):
            ids, mask = pad([seqs[i] for i in batch], self.manifest.pad_token_id,
                            self.manifest.padding_side)
            out[batch] = self._infer(ids, mask)[: len(batch)].astype(np.float32)
            if progress is not None:
                progress(len(batch))
        return out

    def forward(self, seqs: Sequence[Sequence[int]], width: int | None = None) -> np.ndarray:
        """One forward pass: the graph's output rows (float32) for token sequences padded to
        ``width`` (default: the longest). ``encode_*`` make the sequences; ``embed_*`` / ``score``
        are these two steps with batches planned by the token budget."""
        if not seqs:
            raise InputError("forward needs at least one token sequence")
        ids, mask = pad(seqs, self.manifest.pad_token_id, self.manifest.padding_side, width)
        return self._infer(ids, mask).astype(np.float32)

    def _infer(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One forward pass over a padded batch."""
        if not self.io_binding:
            return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_output(self.manifest.output, "cpu" if self.device == "cpu" else "cuda",
                            _device_index(self.device))
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def _an(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _check_onnxruntime(minimum: str | None, path: Path) -> None:
    """The export needs an ONNX Runtime at least this new (an op input older ones lack)."""
    import onnxruntime as ort

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("+")[0].split(".")[:2])

    if minimum is not None and version(ort.__version__) < version(minimum):
        raise DeviceError(f"{str(path)!r} needs onnxruntime >= {minimum} (this is {ort.__version__}): "
                          f"pip install -U 'onnxruntime-gpu>={minimum}', or re-export without --rewrites qkv")


def _ops_library(custom_ops: tuple[str, ...], device: str, path: Path) -> Path | None:
    """embedrank's custom-op library for a model whose graph uses it (the "swiglu" and "rope" rewrites)."""
    if not custom_ops:
        return None
    from embedrank.ops import OPS, find_library

    unknown = sorted(set(custom_ops) - set(OPS))
    if unknown:
        raise ManifestError(f"{str(path)!r} needs custom ops {unknown} that this embedrank's library "
                            f"lacks (it has {list(OPS)}); upgrade embedrank or re-export the model")
    return find_library(cuda=device != "cpu")


def _device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def _tokenizer(path: Path):
    try:
        return load_tokenizer(path)
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise ModelDirError(f"cannot read the tokenizer {str(path)!r} ({exc}); re-export the model") from None


def _session(path: Path, device: str, threads: int | None, custom_ops: tuple[str, ...] = ()):
    import onnxruntime as ort

    providers = providers_for(device)
    ops_library = _ops_library(custom_ops, device, path.parent)  # after the device is checked
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
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
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
        return self._embed(self.encode_queries(texts, instruction), progress)

    def embed_documents(self, texts, *, progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self._embed(self.encode_documents(texts), progress)

    def encode_queries(self, texts, instruction: str | None = None) -> list[list[int]]:
        """Token ids of instruction-prefixed queries, as :meth:`forward` takes them."""
        check_instruction(instruction)
        texts = check_texts(texts, "queries")
        if not texts:
            return []
        return encode_query_inputs(self.tokenizer, self.manifest.prompts, texts, instruction,
                                   self.max_length, raw_control_tokens=self.raw_control_tokens)

    def encode_documents(self, texts) -> list[list[int]]:
        """Token ids of documents, as :meth:`forward` takes them."""
        texts = check_texts(texts, "documents")
        if not texts:
            return []
        return encode_embedding_inputs(self.tokenizer, texts, self.max_length,
                                       self.manifest.prompts.eot_token,
                                       raw_control_tokens=self.raw_control_tokens)

    def finish(self, rows: np.ndarray, dim: int | None = None) -> np.ndarray:
        """:meth:`forward` rows -> embeddings at ``dim`` (default: this embedder's dim)."""
        dim = self.dim if dim is None else check_dim(dim, self.manifest.dim)
        return matryoshka(rows, dim).astype(np.float32)

    def _embed(self, seqs: list[list[int]], progress) -> np.ndarray:
        if not seqs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.finish(self._run(seqs, self.manifest.dim, progress))


class Reranker(_OnnxModel):
    """Qwen3-style reranker: P("yes") for each (query, document)."""

    kind = "reranker"

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", **kwargs) -> Reranker:
        return cls(path, device, **kwargs)

    def score(self, query: str, documents, instruction: str | None = None) -> np.ndarray:
        seqs = self.encode(query, documents, instruction)
        if not seqs:
            return np.zeros(0, dtype=np.float32)
        return self.finish(self._run(seqs, 0))

    def encode(self, query: str, documents, instruction: str | None = None) -> list[list[int]]:
        """Token ids of the (query, document) prompts, as :meth:`forward` takes them."""
        if not isinstance(query, str):
            raise InputError(f"query must be a str, got {type(query).__name__}")
        query = check_texts([query], "query")[0]
        check_instruction(instruction)
        documents = check_texts(documents, "documents")
        if not documents:
            return []
        return encode_rerank_inputs(self.tokenizer, self.manifest.prompts, query, documents,
                                    instruction, self.max_length,
                                    raw_control_tokens=self.raw_control_tokens)

    @staticmethod
    def finish(logits: np.ndarray) -> np.ndarray:
        """:meth:`forward` logits (yes - no) -> P("yes")."""
        logits = np.asarray(logits, dtype=np.float64)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
