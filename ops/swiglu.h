// embedrank custom ops: the SwiGLU activation of a gated MLP, fused into one pass.
//
// SwiGLU(x)[..., j] = silu(x[..., j]) * x[..., I + j] for x of shape [..., 2I]: the gate and up
// projections of the MLP run as one MatMul against their concatenated weights, and this op
// reads both halves once and writes the product once (ONNX Runtime's stock graph runs the SiLU
// and the product as two element-wise kernels, five passes over the activations instead of three).
#pragma once

#include <cstdint>

namespace embedrank {

// element types the kernels take (ONNX TensorProto numbering)
enum class DType : int { kFloat = 1, kFloat16 = 10, kBFloat16 = 16 };

#ifdef EMBEDRANK_WITH_CUDA
// Launches the kernel on `stream` (a cudaStream_t); nullptr on success, else CUDA's error text.
const char* SwiGLUCuda(const void* x, void* y, int64_t rows, int64_t inter, DType dtype, void* stream);
#endif

}  // namespace embedrank
