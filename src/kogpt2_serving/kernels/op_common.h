// What every operator of this library's registration shares (linear.cc, attention.cc, packed.cc).
#ifndef KOGPT2_KERNELS_OP_COMMON_H_
#define KOGPT2_KERNELS_OP_COMMON_H_

#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

namespace kogpt2 {

using Attrs = std::unordered_map<std::string, std::string>;

// Whether a boolean attribute is set (as MXNet's Python front end writes True: "True", or 1).
inline bool is_set(const Attrs& attrs, const char* name) {
  auto it = attrs.find(name);
  return it != attrs.end() && (it->second == "True" || it->second == "1" || it->second == "true");
}

// A product's bias input is there unless no_bias is set.
inline bool has_bias(const Attrs& attrs) { return !is_set(attrs, "no_bias"); }

// A product's residual input (added to its output) is there when residual is set.
inline bool has_residual(const Attrs& attrs) { return is_set(attrs, "residual"); }

// A product's activation, applied to its output after the bias: activation="gelu" (erf form,
// fast_math.h), or none when absent or empty. Not with a residual input (a layer's first MLP
// product has the activation, its last the residual).
inline bool has_gelu(const Attrs& attrs) {
  auto it = attrs.find("activation");
  return it != attrs.end() && it->second == "gelu";
}

// Refuses an activation other than gelu, or one with a residual, naming the operator and what was
// given.
inline bool known_activation(const char* op, const Attrs& attrs) {
  auto it = attrs.find("activation");
  if (it == attrs.end() || it->second.empty()) return true;
  if (it->second != "gelu") {
    MX_ERROR_MSG << op << ": activation must be 'gelu' or absent, got '" << it->second << "'";
    return false;
  }
  if (has_residual(attrs)) {
    MX_ERROR_MSG << op << ": activation='gelu' and residual=True cannot be combined";
    return false;
  }
  return true;
}

// Every input's dtype against want(i) (MXNet's dtype codes), naming the operator, the input and
// both dtypes on a mismatch; the one output is float32.
template <typename Want>
mxnet::ext::MXReturnValue expect_types(const char* op, const std::vector<int>& in_types, std::vector<int>* out_types,
                                       const Want& want) {
  for (size_t i = 0; i < in_types.size(); ++i)
    if (in_types[i] != want(i)) {
      MX_ERROR_MSG << op << ": input " << i << " has dtype " << in_types[i] << ", expected " << want(i);
      return mxnet::ext::MX_FAIL;
    }
  (*out_types)[0] = mxnet::ext::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

// A product's shapes: x (..., K) and a weight (M, K) -> (..., M); every input after the weight
// (scales, bias) is (M,), but a residual, last, which is (..., M). Mismatches name the operator
// and the input.
inline mxnet::ext::MXReturnValue product_shape(const char* op, const std::vector<std::vector<unsigned int>>& in,
                                               std::vector<std::vector<unsigned int>>* out_shapes,
                                               bool residual = false) {
  const auto& x = in[0];
  const auto& w = in[1];
  if (x.empty() || w.size() != 2 || x.back() != w[1]) {
    MX_ERROR_MSG << op << ": x (..., K) and weight (M, K) disagree on K";
    return mxnet::ext::MX_FAIL;
  }
  std::vector<unsigned int> out(x.begin(), x.end());
  out.back() = w[0];
  const size_t vectors = in.size() - (residual ? 1 : 0);
  for (size_t i = 2; i < vectors; ++i)
    if (in[i].size() != 1 || in[i][0] != w[0]) {
      MX_ERROR_MSG << op << ": input " << i << " must have shape (M,) = (" << w[0] << ",)";
      return mxnet::ext::MX_FAIL;
    }
  if (residual && in.back() != out) {
    MX_ERROR_MSG << op << ": input " << vectors << " (the residual) must have the output's shape (..., M), M = "
                 << w[0];
    return mxnet::ext::MX_FAIL;
  }
  (*out_shapes)[0] = out;
  return mxnet::ext::MX_SUCCESS;
}

// Gluon's cached graphs need a gradient registered for every operator, though decoding never
// asks for one; asking fails with a message.
inline mxnet::ext::MXReturnValue no_backward(const Attrs& attrs, std::vector<mxnet::ext::MXTensor>* inputs,
                                             std::vector<mxnet::ext::MXTensor>* outputs,
                                             const mxnet::ext::OpResource& res) {
  MX_ERROR_MSG << "kogpt2 kernels are for inference: they have no backward pass";
  return mxnet::ext::MX_FAIL;
}

}  // namespace kogpt2

#endif  // KOGPT2_KERNELS_OP_COMMON_H_
