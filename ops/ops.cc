// The ai.embedrank custom-op domain for ONNX Runtime: SwiGLU and QKVRotary (see ops.h), each with a
// CPU kernel and, when built with EMBEDRANK_WITH_CUDA, a CUDA kernel on ONNX Runtime's compute stream.
//
// Built by `embedrank ops build` (embedrank/ops/__init__.py) against ONNX Runtime's C API
// headers; loaded with SessionOptions.register_custom_ops_library. No link to libonnxruntime:
// the API table comes from the OrtApiBase handed to RegisterCustomOps.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "ops.h"

namespace embedrank {
namespace {

constexpr const char* kDomain = "ai.embedrank";
constexpr const char* kCudaProvider = "CUDAExecutionProvider";

inline float ToFloat(float v) { return v; }
inline float ToFloat(Ort::Float16_t v) { return v.ToFloat(); }
inline float ToFloat(Ort::BFloat16_t v) { return v.ToFloat(); }

template <typename T>
void SwiGLUCpu(const T* x, T* y, int64_t rows, int64_t inter) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* gate = x + r * 2 * inter;
    const T* up = gate + inter;
    T* out = y + r * inter;
    for (int64_t j = 0; j < inter; ++j) {
      const float g = ToFloat(gate[j]);
      out[j] = T(g / (1.0f + std::exp(-g)) * ToFloat(up[j]));
    }
  }
}

OrtStatusPtr Error(const std::string& message) {
  return Ort::Status(message.c_str(), ORT_INVALID_ARGUMENT).release();
}

struct SwiGLUKernel {
  bool cuda;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      Ort::ConstValue x = ctx.GetInput(0);
      Ort::TensorTypeAndShapeInfo info = x.GetTensorTypeAndShapeInfo();
      std::vector<int64_t> shape = info.GetShape();
      if (shape.empty() || shape.back() % 2 != 0) {
        return Error("ai.embedrank.SwiGLU: the last axis holds [gate | up] and must be even");
      }
      const int64_t inter = shape.back() / 2;
      int64_t rows = 1;
      for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
      shape.back() = inter;
      Ort::UnownedValue y = ctx.GetOutput(0, shape);
      if (rows * inter == 0) return nullptr;
      const ONNXTensorElementDataType type = info.GetElementType();
      if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 &&
          type != ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16) {
        return Error("ai.embedrank.SwiGLU takes float, float16 or bfloat16, got type " +
                     std::to_string(static_cast<int>(type)));
      }
      const DType dtype = static_cast<DType>(type);  // DType uses ONNX's numbering
#ifdef EMBEDRANK_WITH_CUDA
      if (cuda) {  // only the op registered for the CUDA provider sets it
        const char* failure = SwiGLUCuda(x.GetTensorRawData(), y.GetTensorMutableRawData(), rows, inter,
                                         dtype, ctx.GetGPUComputeStream());
        if (failure == nullptr) return nullptr;
        const std::string message = std::string("ai.embedrank.SwiGLU: CUDA kernel failed: ") + failure;
        return Ort::Status(message.c_str(), ORT_FAIL).release();
      }
#endif
      switch (dtype) {
        case DType::kFloat:
          SwiGLUCpu(x.GetTensorData<float>(), y.GetTensorMutableData<float>(), rows, inter);
          break;
        case DType::kFloat16:
          SwiGLUCpu(x.GetTensorData<Ort::Float16_t>(), y.GetTensorMutableData<Ort::Float16_t>(), rows, inter);
          break;
        case DType::kBFloat16:
          SwiGLUCpu(x.GetTensorData<Ort::BFloat16_t>(), y.GetTensorMutableData<Ort::BFloat16_t>(), rows,
                    inter);
          break;
      }
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::Status(e).release();
    }
  }
};

struct SwiGLUOp : Ort::CustomOpBase<SwiGLUOp, SwiGLUKernel, true> {
  explicit SwiGLUOp(const char* provider) : provider_(provider) {}

  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo*, void** kernel) const {
    *kernel = new SwiGLUKernel{provider_ != nullptr};
    return nullptr;
  }
  const char* GetName() const { return "SwiGLU"; }
  const char* GetExecutionProviderType() const { return provider_; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }

 private:
  const char* provider_;  // nullptr: the CPU provider
};

template <typename T>
void QKVRotaryCpu(const T* qkv, const float* cos, const float* sin, const float* q_norm, const float* k_norm,
                  T* q, T* k, T* v, const RotaryShape& s) {
  const int items = s.heads + 2 * s.kv_heads, group = s.heads / s.kv_heads, half = s.dim / 2;
  std::vector<float> x(s.dim);
  for (int64_t token = 0; token < s.tokens; ++token) {
    const int64_t position = token % s.seq;
    for (int item = 0; item < items; ++item) {
      const T* src = qkv + (token * items + item) * s.dim;
      for (int i = 0; i < s.dim; ++i) x[i] = ToFloat(src[i]);
      const bool is_query = item < s.heads, is_value = item >= s.heads + s.kv_heads;
      const int64_t head = is_query ? item : static_cast<int64_t>(item - s.heads - (is_value ? s.kv_heads : 0)) * group;
      T* out = (is_query ? q : is_value ? v : k) + (token * s.heads + head) * s.dim;
      if (!is_value) {
        const float* weight = is_query ? q_norm : k_norm;
        if (weight != nullptr) {
          float squares = 0.0f;
          for (float value : x) squares += value * value;
          const float scale = 1.0f / std::sqrt(squares / s.dim + s.epsilon);
          for (int i = 0; i < s.dim; ++i) x[i] *= scale * weight[i];
        }
        for (int i = 0; i < half; ++i) {
          const float c = cos[position * half + i], sn = sin[position * half + i];
          const float x1 = x[i], x2 = x[i + half];
          x[i] = x1 * c - x2 * sn;
          x[i + half] = x2 * c + x1 * sn;
        }
      }
      for (int copy = 0; copy < (is_query ? 1 : group); ++copy) {
        for (int i = 0; i < s.dim; ++i) out[copy * s.dim + i] = T(x[i]);
      }
    }
  }
}

struct QKVRotaryKernel {
  bool cuda;
  int64_t heads, kv_heads;
  float epsilon;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      const size_t count = ctx.GetInputCount();
      Ort::ConstValue qkv = ctx.GetInput(0), cos = ctx.GetInput(1), sin = ctx.GetInput(2);
      const void* norms[2] = {nullptr, nullptr};
      const std::vector<int64_t> shape = qkv.GetTensorTypeAndShapeInfo().GetShape();
      const std::vector<int64_t> table = cos.GetTensorTypeAndShapeInfo().GetShape();
      const ONNXTensorElementDataType type = qkv.GetTensorTypeAndShapeInfo().GetElementType();
      if (shape.size() != 3 || table.size() != 2 || sin.GetTensorTypeAndShapeInfo().GetShape() != table) {
        return Error("ai.embedrank.QKVRotary takes qkv [batch, sequence, (heads + 2 kv_heads) * head_dim] "
                     "and cos / sin tables [positions, head_dim / 2]");
      }
      const int64_t dim = 2 * table[1];
      if (dim == 0 || shape[2] != (heads + 2 * kv_heads) * dim) {
        return Error("ai.embedrank.QKVRotary: qkv's last axis is " + std::to_string(shape[2]) + ", not (" +
                     std::to_string(heads) + " + 2 x " + std::to_string(kv_heads) + ") heads of " +
                     std::to_string(dim) + " (twice the cos table's width)");
      }
      if (shape[1] > table[0]) {
        return Error("ai.embedrank.QKVRotary: a sequence of " + std::to_string(shape[1]) +
                     " tokens is longer than the rotary tables (" + std::to_string(table[0]) + " positions)");
      }
      for (size_t i = 3; i < 5 && i < count; ++i) {
        Ort::ConstValue norm = ctx.GetInput(i);
        if (static_cast<const OrtValue*>(norm) == nullptr) continue;
        if (norm.GetTensorTypeAndShapeInfo().GetShape() != std::vector<int64_t>{dim}) {
          return Error("ai.embedrank.QKVRotary: the q / k norm weights must be [head_dim]");
        }
        norms[i - 3] = norm.GetTensorRawData();
      }
      if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 &&
          type != ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16) {
        return Error("ai.embedrank.QKVRotary takes float, float16 or bfloat16, got type " +
                     std::to_string(static_cast<int>(type)));
      }
      const std::vector<int64_t> out_shape{shape[0], shape[1], heads * dim};
      Ort::UnownedValue q = ctx.GetOutput(0, out_shape), k = ctx.GetOutput(1, out_shape),
                        v = ctx.GetOutput(2, out_shape);
      const RotaryShape rs{shape[0] * shape[1], std::max<int64_t>(shape[1], 1), static_cast<int>(heads),
                           static_cast<int>(kv_heads), static_cast<int>(dim), epsilon};
      if (rs.tokens == 0) return nullptr;
      const DType dtype = static_cast<DType>(type);
      void* outs[3] = {q.GetTensorMutableRawData(), k.GetTensorMutableRawData(), v.GetTensorMutableRawData()};
#ifdef EMBEDRANK_WITH_CUDA
      if (cuda) {
        const char* failure = QKVRotaryCuda(qkv.GetTensorRawData(), cos.GetTensorRawData(), sin.GetTensorRawData(),
                                            norms[0], norms[1], outs[0], outs[1], outs[2], rs, dtype,
                                            ctx.GetGPUComputeStream());
        if (failure == nullptr) return nullptr;
        const std::string message = std::string("ai.embedrank.QKVRotary: CUDA kernel failed: ") + failure;
        return Ort::Status(message.c_str(), ORT_FAIL).release();
      }
#endif
      switch (dtype) {
        case DType::kFloat: Run<float>(qkv, cos, sin, norms, outs, rs); break;
        case DType::kFloat16: Run<Ort::Float16_t>(qkv, cos, sin, norms, outs, rs); break;
        case DType::kBFloat16: Run<Ort::BFloat16_t>(qkv, cos, sin, norms, outs, rs); break;
      }
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::Status(e).release();
    }
  }

  template <typename T>
  static void Run(Ort::ConstValue& qkv, Ort::ConstValue& cos, Ort::ConstValue& sin, const void* const* norms,
                  void* const* outs, const RotaryShape& rs) {
    QKVRotaryCpu(qkv.GetTensorData<T>(), cos.GetTensorData<float>(), sin.GetTensorData<float>(),
                 static_cast<const float*>(norms[0]), static_cast<const float*>(norms[1]), static_cast<T*>(outs[0]),
                 static_cast<T*>(outs[1]), static_cast<T*>(outs[2]), rs);
  }
};

struct QKVRotaryOp : Ort::CustomOpBase<QKVRotaryOp, QKVRotaryKernel, true> {
  explicit QKVRotaryOp(const char* provider) : provider_(provider) {}

  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    try {
      Ort::ConstKernelInfo attrs(info);
      const int64_t heads = attrs.GetAttribute<int64_t>("num_heads");
      const int64_t kv_heads = attrs.GetAttribute<int64_t>("kv_num_heads");
      if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0) {
        return Error("ai.embedrank.QKVRotary: num_heads must be a positive multiple of kv_num_heads");
      }
      *kernel = new QKVRotaryKernel{provider_ != nullptr, heads, kv_heads, attrs.GetAttribute<float>("epsilon")};
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::Status(e).release();
    }
  }
  const char* GetName() const { return "QKVRotary"; }
  const char* GetExecutionProviderType() const { return provider_; }
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t index) const {  // qkv's type; the tables and norms in float
    return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < 3 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;  // the q / k norm weights
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }

 private:
  const char* provider_;  // nullptr: the CPU provider
};

}  // namespace
}  // namespace embedrank

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // an ONNX Runtime older than these headers
    return api_base->GetApi(1)->CreateStatus(
        ORT_FAIL, "the embedrank ops library needs a newer onnxruntime than this one");
  }
  // One domain for the process, built on first use; it must outlive every session it is added to,
  // and every session of the process shares it.
  static std::once_flag once;
  static OrtCustomOpDomain* domain = nullptr;
  static OrtStatus* failure = nullptr;
  std::call_once(once, [api] {
    Ort::InitApi(api);
    static embedrank::SwiGLUOp swiglu_cpu(nullptr);
    static embedrank::QKVRotaryOp rotary_cpu(nullptr);
    failure = api->CreateCustomOpDomain(embedrank::kDomain, &domain);
    if (failure == nullptr) failure = api->CustomOpDomain_Add(domain, &swiglu_cpu);
    if (failure == nullptr) failure = api->CustomOpDomain_Add(domain, &rotary_cpu);
#ifdef EMBEDRANK_WITH_CUDA
    static embedrank::SwiGLUOp swiglu_cuda(embedrank::kCudaProvider);
    static embedrank::QKVRotaryOp rotary_cuda(embedrank::kCudaProvider);
    if (failure == nullptr) failure = api->CustomOpDomain_Add(domain, &swiglu_cuda);
    if (failure == nullptr) failure = api->CustomOpDomain_Add(domain, &rotary_cuda);
#endif
  });
  if (failure != nullptr) {
    return api->CreateStatus(api->GetErrorCode(failure), api->GetErrorMessage(failure));
  }
  return api->AddCustomOpDomain(options, domain);
}
