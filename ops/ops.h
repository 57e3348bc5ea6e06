// embedrank custom ops (the ai.embedrank domain of ONNX Runtime).
//
// SwiGLU(x)[..., j] = silu(x[..., j]) * x[..., I + j] for x of shape [..., 2I]: the gate and up
// projections of the MLP run as one MatMul against their concatenated weights, and this op
// reads both halves once and writes the product once (ONNX Runtime's stock graph runs the SiLU
// and the product as two element-wise kernels, five passes over the activations instead of three).
//
// QKVRotary(qkv, cos, sin[, q_norm, k_norm]) -> q, k, v: the prologue of causal attention from
// position 0 (an embedder's or a reranker's right-padded batch), in one pass over the packed
// projections. qkv is [B, S, (H + 2 Hkv) * D]: H query heads, then Hkv key heads, then Hkv value
// heads of D each. Each query and key head is RMS-normalized over D (when its norm weight is
// given: Qwen3's q_norm / k_norm), then rotated by the position s of its row (the rotate-half
// form: x[i] * cos - x[i + D/2] * sin and x[i + D/2] * cos + x[i] * sin, tables of [P, D/2]).
// q, k and v come out [B, S, H * D]: each key / value head repeated for the H / Hkv query heads
// that read it, the layout MultiHeadAttention's flash kernel takes without a copy. The tables and
// the norm weights are float whatever qkv's type (the kernels compute in float).
#pragma once

#include <cstdint>

namespace embedrank {

// element types the kernels take (ONNX TensorProto numbering)
enum class DType : int { kFloat = 1, kFloat16 = 10, kBFloat16 = 16 };

struct RotaryShape {
  int64_t tokens;  // B * S
  int64_t seq;     // S: a token's position is its index in its row
  int heads;       // H
  int kv_heads;    // Hkv, dividing H
  int dim;         // D, even
  float epsilon;   // of the RMS norms
};

#ifdef EMBEDRANK_WITH_CUDA
// Launch the kernel on `stream` (a cudaStream_t); nullptr on success, else CUDA's error text.
const char* SwiGLUCuda(const void* x, void* y, int64_t rows, int64_t inter, DType dtype, void* stream);
// q_norm / k_norm may be nullptr (no norm)
const char* QKVRotaryCuda(const void* qkv, const void* cos, const void* sin, const void* q_norm,
                          const void* k_norm, void* q, void* k, void* v, const RotaryShape& shape,
                          DType dtype, void* stream);
#endif

}  // namespace embedrank
