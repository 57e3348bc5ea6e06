// CUDA kernel of ai.embedrank.SwiGLU (see swiglu.h): y[r, j] = silu(x[r, j]) * x[r, I + j].
//
// Memory-bound: each thread loads 16 bytes of the gate and of the up half and stores 16 bytes
// of the product (8 halves / 4 floats), computing in float. Rows whose width is not a
// multiple of the vector, or unaligned pointers, take the one-element path.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "swiglu.h"

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

}  // namespace embedrank
