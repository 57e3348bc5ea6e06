// The ai.embedrank custom-op domain for ONNX Runtime: SwiGLU (see swiglu.h), with a CPU kernel
// and, when built with EMBEDRANK_WITH_CUDA, a CUDA kernel on ONNX Runtime's compute stream.
//
// Built by `embedrank ops build` (embedrank/ops/__init__.py) against ONNX Runtime's C API
// headers; loaded with SessionOptions.register_custom_ops_library. No link to libonnxruntime:
// the API table comes from the OrtApiBase handed to RegisterCustomOps.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "swiglu.h"

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
    static embedrank::SwiGLUOp cpu_op(nullptr);
    failure = api->CreateCustomOpDomain(embedrank::kDomain, &domain);
    if (failure == nullptr) failure = api->CustomOpDomain_Add(domain, &cpu_op);
#ifdef EMBEDRANK_WITH_CUDA
    static embedrank::SwiGLUOp cuda_op(embedrank::kCudaProvider);
    if (failure == nullptr) failure = api->CustomOpDomain_Add(domain, &cuda_op);
#endif
  });
  if (failure != nullptr) {
    return api->CreateStatus(api->GetErrorCode(failure), api->GetErrorMessage(failure));
  }
  return api->AddCustomOpDomain(options, domain);
}
