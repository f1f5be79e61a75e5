// int8 weights packed for AMX, as MXNet (>= 1.7) extension operators.
//
//   kogpt2_linear_int8_packed (x (..., K) float32, w (M, K) int8 packed, scale (M) float32[, bias (M)]
//                              [, residual (..., M)]) -> (..., M) float32
//       = (q(x) . w^T) * (x's row scale * scale) + bias + residual (no_bias, residual, activation:
//       as linear.cc's)
//   kogpt2_lookup_int8_packed (ids (...) int32 or float32, table (M, K) int8 packed, scale (M))
//       -> (..., K) float32 = table[id] * scale[id]  (ids clipped to [0, M), as take's default)
//
// The packed layout (kernels.pack_int8 writes it; M a multiple of 16, K of 64) stores the weight
// as blocks of 16 outputs x 64 inputs, 1 KB each, block (mb, kb) at (mb * K/64 + kb) * 1024, its
// byte r * 64 + n * 4 + j holding w[mb * 16 + n][kb * 64 + r * 4 + j]: the B operand of AMX's
// tdpbssd as it is. tdpbssd multiplies up to 16 rows of x (quantized per row first, int8_rows.h)
// by 16 outputs x 64 inputs in one instruction, exactly, and two blocks share each x tile: a
// step's products cost about as much at 16 rows as at 1 (benchmarks/README.md). The same layout
// read by AVX-512 VNNI (16 outputs per vpdpbusd against 4 broadcast bytes of x) measured no
// faster than linear.cc's row-major VNNI kernel there, so only AMX CPUs pack (kernels.packs_int8).
#include <immintrin.h>
#include <omp.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fast_math.h"
#include "int8_rows.h"
#include "isa.h"
#include "mxnet/lib_api.h"
#include "op_common.h"

using namespace mxnet::ext;
using namespace kogpt2;

namespace {

const int kOut = 16;            // outputs per block
const int kIn = 64;             // inputs per block
const int kBlock = kOut * kIn;  // bytes per block
const int kRows = 16;           // rows of x per tile

// ---- AMX: up to 16 rows of x against one or two block columns ----

struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};

// Tiles 0 and 1: sums of two block columns (nr x 16 int32); 2: x (nr x 64 bytes); 3, 4: blocks.
__attribute__((target("amx-tile"))) void configure_tiles(int nr) {
  TileConfig config;
  std::memset(&config, 0, sizeof config);
  config.palette = 1;
  const int rows[] = {nr, nr, nr, kOut, kOut};
  for (int t = 0; t < 5; ++t) {
    config.rows[t] = static_cast<uint8_t>(rows[t]);
    config.bytes_per_row[t] = 64;
  }
  // GCC 12 does not see that ldtilecfg reads the struct and drops the stores above without this.
  asm volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

__attribute__((target("amx-tile,amx-int8"))) void amx_rows(const int8_t* q, int64_t K, const int8_t* first,
                                                           const int8_t* second, int32_t sums[][2 * kOut]) {
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t kb = 0; kb < K / kIn; ++kb) {
    _tile_loadd(2, q + kb * kIn, K);
    _tile_loadd(3, first + kb * kBlock, 64);
    _tile_dpbssd(0, 2, 3);
    if (second) {
      _tile_loadd(4, second + kb * kBlock, 64);
      _tile_dpbssd(1, 2, 4);
    }
  }
  _tile_stored(0, &sums[0][0], 2 * kOut * 4);
  if (second) _tile_stored(1, &sums[0][kOut], 2 * kOut * 4);
}

// ---- the products ----

// out[n][o .. o + 16) = sums * (row scale * scale[o ..]) + bias[o ..] + residual[n][o ..], 16
// outputs of one row (bias and residual where given).
__attribute__((target("avx512f,avx512bw"))) void write_outputs(const int32_t* sums, float row_scale,
                                                               const float* scale, const float* bias,
                                                               const float* residual, float* out) {
  const __m512 factor = _mm512_mul_ps(_mm512_set1_ps(row_scale), _mm512_loadu_ps(scale));
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(sums)), factor);
  if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias));
  if (residual) v = _mm512_add_ps(v, _mm512_loadu_ps(residual));
  _mm512_storeu_ps(out, v);
}

void linear_packed(const float* x, const int8_t* w, const float* scale, const float* bias, const float* residual,
                   float* out, int64_t N, int64_t M, int64_t K) {
  const QuantizedRows rows = quantize_rows(x, N, K);
  const int8_t* q = rows.values.data();
  const int64_t columns = M / kOut, column_bytes = K * kOut;
#pragma omp parallel if (columns * N * K > 65536)
  {
    int configured = 0;  // rows the tiles are configured for in this thread
#pragma omp for schedule(static)
    for (int64_t c = 0; c < columns; c += 2) {  // two block columns per x tile
      const int64_t outputs = c + 1 < columns ? 2 * kOut : kOut;
      for (int64_t n = 0; n < N; n += kRows) {
        const int nr = static_cast<int>(std::min<int64_t>(N - n, kRows));
        if (configured != nr) {
          configured = nr;
          configure_tiles(nr);
        }
        int32_t sums[kRows][2 * kOut];
        amx_rows(q + n * K, K, w + c * column_bytes, outputs > kOut ? w + (c + 1) * column_bytes : nullptr, sums);
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t half = 0; half < outputs; half += kOut) {
            const int64_t o = c * kOut + half;
            write_outputs(sums[i] + half, rows.scales[n + i], scale + o, bias ? bias + o : nullptr,
                          residual ? residual + (n + i) * M + o : nullptr, out + (n + i) * M + o);
          }
      }
    }
    if (configured) release_tiles();
  }
}

// table[id][k] of the packed layout, times scale[id], for every id.
template <typename Id>
void lookup_packed(const Id* ids, int64_t count, const int8_t* table, const float* scale, float* out, int64_t M,
                   int64_t K) {
  for (int64_t i = 0; i < count; ++i) {
    int64_t m = static_cast<int64_t>(ids[i]);
    m = m < 0 ? 0 : m >= M ? M - 1 : m;
    const int8_t* column = table + (m / kOut) * K * kOut + (m % kOut) * 4;
    for (int64_t k = 0; k < K; ++k)
      out[i * K + k] = column[(k / kIn) * kBlock + (k % kIn / 4) * 64 + k % 4] * scale[m];
  }
}

// ---- the MXNet operators ----

bool runs_packed() { return isa() == kAmx; }

MXReturnValue linear_attrs(const std::unordered_map<std::string, std::string>& attrs, int* num_in, int* num_out) {
  if (!known_activation("kogpt2_linear_int8_packed", attrs)) return MX_FAIL;
  *num_in = 3 + (has_bias(attrs) ? 1 : 0) + (has_residual(attrs) ? 1 : 0);
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue linear_type(const std::unordered_map<std::string, std::string>& attrs, std::vector<int>* in_types,
                          std::vector<int>* out_types) {
  return expect_types("kogpt2_linear_int8_packed", *in_types, out_types,
                      [](size_t i) { return i == 1 ? kInt8 : kFloat32; });
}

bool packable(unsigned M, unsigned K) { return M % kOut == 0 && K % kIn == 0 && M > 0 && K > 0; }

MXReturnValue linear_shape(const std::unordered_map<std::string, std::string>& attrs,
                           std::vector<std::vector<unsigned int>>* in_shapes,
                           std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& w = (*in_shapes)[1];
  if (w.size() != 2 || !packable(w[0], w[1])) {
    MX_ERROR_MSG << "kogpt2_linear_int8_packed: a packed weight is (M, K) with M a multiple of " << kOut
                 << " and K of " << kIn;
    return MX_FAIL;
  }
  return product_shape("kogpt2_linear_int8_packed", *in_shapes, out_shapes, has_residual(attrs));
}

MXReturnValue refuse_unpacked(const char* op) {
  MX_ERROR_MSG << op << ": packed int8 weights need AMX, which this process does not run (kernels ISA "
               << kIsaNames[isa()] << ")";
  return MX_FAIL;
}

MXReturnValue linear_forward(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs, const OpResource& res) {
  if (!runs_packed()) return refuse_unpacked("kogpt2_linear_int8_packed");
  std::vector<MXTensor>& in = *inputs;
  const int64_t M = in[1].shape[0], K = in[1].shape[1], N = in[0].size() / K;
  const float* bias = has_bias(attrs) ? in[3].data<float>() : nullptr;
  const float* residual = has_residual(attrs) ? in.back().data<float>() : nullptr;
  float* out = (*outputs)[0].data<float>();
  linear_packed(in[0].data<float>(), in[1].data<int8_t>(), in[2].data<float>(), bias, residual, out, N, M, K);
  if (has_gelu(attrs)) gelu(out, N * M);
  return MX_SUCCESS;
}

MXReturnValue lookup_attrs(const std::unordered_map<std::string, std::string>& attrs, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue lookup_type(const std::unordered_map<std::string, std::string>& attrs, std::vector<int>* in_types,
                          std::vector<int>* out_types) {
  const int ids = (*in_types)[0];
  if ((ids != kInt32 && ids != kFloat32) || (*in_types)[1] != kInt8 || (*in_types)[2] != kFloat32) {
    MX_ERROR_MSG << "kogpt2_lookup_int8_packed: ids int32 or float32, table int8, scale float32; got dtypes " << ids
                 << ", " << (*in_types)[1] << ", " << (*in_types)[2];
    return MX_FAIL;
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue lookup_shape(const std::unordered_map<std::string, std::string>& attrs,
                           std::vector<std::vector<unsigned int>>* in_shapes,
                           std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& table = (*in_shapes)[1];
  if (table.size() != 2 || !packable(table[0], table[1]) || (*in_shapes)[2] != std::vector<unsigned int>{table[0]}) {
    MX_ERROR_MSG << "kogpt2_lookup_int8_packed: a packed table (M, K) with M a multiple of " << kOut << " and K of "
                 << kIn << ", and its scale (M,)";
    return MX_FAIL;
  }
  std::vector<unsigned int> out((*in_shapes)[0]);
  out.push_back(table[1]);
  (*out_shapes)[0] = out;
  return MX_SUCCESS;
}

MXReturnValue lookup_forward(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs, const OpResource& res) {
  std::vector<MXTensor>& in = *inputs;
  const int64_t M = in[1].shape[0], K = in[1].shape[1];
  float* out = (*outputs)[0].data<float>();
  if (in[0].dtype == kInt32)
    lookup_packed(in[0].data<int32_t>(), in[0].size(), in[1].data<int8_t>(), in[2].data<float>(), out, M, K);
  else
    lookup_packed(in[0].data<float>(), in[0].size(), in[1].data<int8_t>(), in[2].data<float>(), out, M, K);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(kogpt2_linear_int8_packed)
    .setParseAttrs(linear_attrs)
    .setInferType(linear_type)
    .setInferShape(linear_shape)
    .setForward(linear_forward, "cpu")
    .setBackward(no_backward, "cpu");

REGISTER_OP(kogpt2_lookup_int8_packed)
    .setParseAttrs(lookup_attrs)
    .setInferType(lookup_type)
    .setInferShape(lookup_shape)
    .setForward(lookup_forward, "cpu")
    .setBackward(no_backward, "cpu");
