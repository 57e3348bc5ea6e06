// CUDA kernels of the ai.embedrank ops (see ops.h). Both are memory-bound and compute in float.
//
// SwiGLU: y[r, j] = silu(x[r, j]) * x[r, I + j]. Each thread loads 16 bytes of the gate and of
// the up half and stores 16 bytes of the product (8 halves / 4 floats). Rows whose width is not
// a multiple of the vector, or unaligned pointers, take the one-element path.
//
// QKVRotary: a query or key head is RMS-normalized (a sum of squares reduced with shuffles) and
// rotated in pairs (i, i + D/2); a key or value head is written once per query head that reads it.
// The vector kernel gives each (token, head) row D / (2 V) lanes moving 16 bytes per load and
// store (V = 8 halves, 4 floats); other head sizes or unaligned tensors take the one-element
// kernel, a warp per row (consecutive lanes on consecutive elements).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "ops.h"

namespace embedrank {
namespace {

template <typename T>
__device__ __forceinline__ float Load(T v) { return static_cast<float>(v); }
template <typename T>
__device__ __forceinline__ T Store(float v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __half Store<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 Store<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + __expf(-g)); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// one thread per V consecutive outputs of a row; `inter` is a multiple of V
template <typename T, int V>
__global__ void SwiGLUKernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t inter) {
  const int64_t per_row = inter / V;
  const int64_t total = rows * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / per_row;
    const int64_t col = (i - row * per_row) * V;
    const T* gate = x + row * 2 * inter + col;
    const Vec<T, V> g = *reinterpret_cast<const Vec<T, V>*>(gate);
    const Vec<T, V> u = *reinterpret_cast<const Vec<T, V>*>(gate + inter);
    Vec<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = Store<T>(Silu(Load(g.v[k])) * Load(u.v[k]));
    *reinterpret_cast<Vec<T, V>*>(y + row * inter + col) = out;
  }
}

// multiprocessors of the current device (queried once per device)
cudaError_t Multiprocessors(int* sms) {
  constexpr int kDevices = 64;
  static std::atomic<int> cache[kDevices];  // zero: not queried yet
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  if (device < kDevices && cache[device] > 0) {
    *sms = cache[device];
    return cudaSuccess;
  }
  status = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
  if (status == cudaSuccess && device < kDevices) cache[device] = *sms;
  return status;
}

template <typename T>
cudaError_t Launch(const void* x, void* y, int64_t rows, int64_t inter, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kThreads = 256;
  const bool aligned = inter % kVec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(y) % 16 == 0;
  const int64_t work = rows * inter / (aligned ? kVec : 1);
  int sms = 0;
  const cudaError_t status = Multiprocessors(&sms);
  if (status != cudaSuccess) return status;
  const int64_t wanted = (work + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < sms * 32LL ? wanted : sms * 32LL);
  const T* in = static_cast<const T*>(x);
  T* out = static_cast<T*>(y);
  if (aligned) {
    SwiGLUKernel<T, kVec><<<blocks, kThreads, 0, stream>>>(in, out, rows, inter);
  } else {
    SwiGLUKernel<T, 1><<<blocks, kThreads, 0, stream>>>(in, out, rows, inter);
  }
  return cudaGetLastError();
}

// one warp per (token, head); heads of a token: H query, Hkv key, Hkv value
template <typename T>
__global__ void QKVRotaryKernel(const T* __restrict__ qkv, const float* __restrict__ cos,
                                const float* __restrict__ sin, const float* __restrict__ q_norm,
                                const float* __restrict__ k_norm, T* __restrict__ q, T* __restrict__ k,
                                T* __restrict__ v, RotaryShape shape) {
  const int heads = shape.heads, kv = shape.kv_heads, dim = shape.dim, half = dim / 2;
  const int items = heads + 2 * kv, group = heads / kv, lane = threadIdx.x & 31;
  const int64_t warps_per_block = blockDim.x / 32;
  const int64_t total = shape.tokens * items;
  for (int64_t w = blockIdx.x * warps_per_block + threadIdx.x / 32; w < total;
       w += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const int64_t token = w / items;
    const int item = static_cast<int>(w - token * items);
    const T* src = qkv + w * dim;
    T* out_row = nullptr;
    const float* weight = nullptr;
    int copies = 1;
    if (item < heads) {
      out_row = q + (token * heads + item) * dim;
      weight = q_norm;
    } else if (item < heads + kv) {
      out_row = k + (token * heads + static_cast<int64_t>(item - heads) * group) * dim;
      weight = k_norm;
      copies = group;
    } else {  // a value head: copied to its query heads
      T* dst = v + (token * heads + static_cast<int64_t>(item - heads - kv) * group) * dim;
      for (int i = lane; i < dim; i += 32) {
        const T x = src[i];
        for (int c = 0; c < group; ++c) dst[c * dim + i] = x;
      }
      continue;
    }
    float scale = 1.0f;
    if (weight != nullptr) {
      float squares = 0.0f;
      for (int i = lane; i < dim; i += 32) squares += Load(src[i]) * Load(src[i]);
      for (int offset = 16; offset > 0; offset >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
      scale = rsqrtf(squares / dim + shape.epsilon);
    }
    const int64_t position = token % shape.seq;
    const float* c_row = cos + position * half;
    const float* s_row = sin + position * half;
    for (int i = lane; i < half; i += 32) {
      float x1 = Load(src[i]) * scale, x2 = Load(src[i + half]) * scale;
      if (weight != nullptr) {
        x1 *= weight[i];
        x2 *= weight[i + half];
      }
      const float c = c_row[i], s = s_row[i];
      const T y1 = Store<T>(x1 * c - x2 * s), y2 = Store<T>(x2 * c + x1 * s);
      for (int r = 0; r < copies; ++r) {
        out_row[r * dim + i] = y1;
        out_row[r * dim + i + half] = y2;
      }
    }
  }
}

// The same, vectorized: G = D / (2 V) lanes per (token, head) row, 32 / G rows per warp. Lane j of
// a row loads V elements at j V of the first half and V at D/2 + j V (16 bytes each) and writes
// them back rotated, 16 bytes per store; the norm's sum of squares is reduced over the G lanes.
// Needs D / 2 a multiple of V, G a power of two up to 32, and 16-byte aligned tensors.
template <typename T, int V>
__global__ void QKVRotaryVecKernel(const T* __restrict__ qkv, const float* __restrict__ cos,
                                   const float* __restrict__ sin, const float* __restrict__ q_norm,
                                   const float* __restrict__ k_norm, T* __restrict__ q, T* __restrict__ k,
                                   T* __restrict__ v, RotaryShape shape) {
  const int heads = shape.heads, kv = shape.kv_heads, dim = shape.dim, half = dim / 2;
  const int items = heads + 2 * kv, group = heads / kv, lanes = half / V, lane = threadIdx.x & 31;
  const int sub = lane % lanes, rows_per_warp = 32 / lanes;
  const int64_t total = shape.tokens * items;
  const int64_t rows_per_block = static_cast<int64_t>(blockDim.x / 32) * rows_per_warp;
  const int64_t first = blockIdx.x * rows_per_block + static_cast<int64_t>(threadIdx.x / 32) * rows_per_warp;
  // every lane of a warp runs the same iterations (the shuffles need the whole warp)
  for (int64_t base = first; base < total; base += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    const int64_t w = base + lane / lanes;
    const bool active = w < total;
    const int64_t token = active ? w / items : 0;
    const int item = active ? static_cast<int>(w - token * items) : 0;
    const bool is_query = item < heads, is_value = item >= heads + kv;
    Vec<T, V> a{}, b{};
    if (active) {
      a = *reinterpret_cast<const Vec<T, V>*>(qkv + w * dim + sub * V);
      b = *reinterpret_cast<const Vec<T, V>*>(qkv + w * dim + half + sub * V);
    }
    const float* weight = is_value ? nullptr : (is_query ? q_norm : k_norm);
    float x1[V], x2[V], squares = 0.0f;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      x1[e] = Load(a.v[e]);
      x2[e] = Load(b.v[e]);
      squares += x1[e] * x1[e] + x2[e] * x2[e];
    }
    for (int offset = lanes / 2; offset > 0; offset >>= 1) {
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
    }
    if (!active) continue;
    int64_t out_head = token * heads + item;
    T* out = q;
    int copies = 1;
    if (!is_query) {
      out_head = token * heads + static_cast<int64_t>(item - heads - (is_value ? kv : 0)) * group;
      out = is_value ? v : k;
      copies = group;
    }
    if (!is_value) {
      const float scale = weight != nullptr ? rsqrtf(squares / dim + shape.epsilon) : 1.0f;
      const int64_t at = (token % shape.seq) * half + sub * V;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        float y1 = x1[e] * scale, y2 = x2[e] * scale;
        if (weight != nullptr) {
          y1 *= weight[sub * V + e];
          y2 *= weight[half + sub * V + e];
        }
        const float c = cos[at + e], s = sin[at + e];
        a.v[e] = Store<T>(y1 * c - y2 * s);
        b.v[e] = Store<T>(y2 * c + y1 * s);
      }
    }
    T* row = out + out_head * dim + sub * V;
    for (int r = 0; r < copies; ++r) {
      *reinterpret_cast<Vec<T, V>*>(row + r * dim) = a;
      *reinterpret_cast<Vec<T, V>*>(row + r * dim + half) = b;
    }
  }
}

template <typename T>
cudaError_t LaunchRotary(const void* qkv, const void* cos, const void* sin, const void* q_norm,
                         const void* k_norm, void* q, void* k, void* v, const RotaryShape& shape,
                         cudaStream_t stream) {
  constexpr int kThreads = 256, kVec = 16 / sizeof(T);  // 8 warps; elements per 16 bytes
  int sms = 0;
  const cudaError_t status = Multiprocessors(&sms);
  if (status != cudaSuccess) return status;
  const int half = shape.dim / 2, lanes = half / kVec;
  const bool aligned = [&] {
    for (const void* p : {qkv, static_cast<const void*>(q), static_cast<const void*>(k),
                          static_cast<const void*>(v)}) {
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
    }
    return true;
  }();
  const bool vector = aligned && half % kVec == 0 && lanes >= 1 && lanes <= 32 && (lanes & (lanes - 1)) == 0;
  const int64_t rows = shape.tokens * (shape.heads + 2 * shape.kv_heads);
  const int64_t rows_per_block = (kThreads / 32) * (vector ? 32 / lanes : 1);
  const int64_t wanted = (rows + rows_per_block - 1) / rows_per_block;
  const int blocks = static_cast<int>(wanted < sms * 64LL ? wanted : sms * 64LL);
  const T* in = static_cast<const T*>(qkv);
  const float *c = static_cast<const float*>(cos), *s = static_cast<const float*>(sin);
  const float *qn = static_cast<const float*>(q_norm), *kn = static_cast<const float*>(k_norm);
  T *qo = static_cast<T*>(q), *ko = static_cast<T*>(k), *vo = static_cast<T*>(v);
  if (vector) {
    QKVRotaryVecKernel<T, kVec><<<blocks, kThreads, 0, stream>>>(in, c, s, qn, kn, qo, ko, vo, shape);
  } else {
    QKVRotaryKernel<T><<<blocks, kThreads, 0, stream>>>(in, c, s, qn, kn, qo, ko, vo, shape);
  }
  return cudaGetLastError();
}

}  // namespace

const char* SwiGLUCuda(const void* x, void* y, int64_t rows, int64_t inter, DType dtype, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t status = cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat: status = Launch<float>(x, y, rows, inter, s); break;
    case DType::kFloat16: status = Launch<__half>(x, y, rows, inter, s); break;
    case DType::kBFloat16: status = Launch<__nv_bfloat16>(x, y, rows, inter, s); break;
  }
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

const char* QKVRotaryCuda(const void* qkv, const void* cos, const void* sin, const void* q_norm,
                          const void* k_norm, void* q, void* k, void* v, const RotaryShape& shape,
                          DType dtype, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t status = cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat: status = LaunchRotary<float>(qkv, cos, sin, q_norm, k_norm, q, k, v, shape, s); break;
    case DType::kFloat16: status = LaunchRotary<__half>(qkv, cos, sin, q_norm, k_norm, q, k, v, shape, s); break;
    case DType::kBFloat16:
      status = LaunchRotary<__nv_bfloat16>(qkv, cos, sin, q_norm, k_norm, q, k, v, shape, s);
      break;
  }
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace embedrank
