// int8 weights packed for VNNI and AMX, as MXNet (>= 1.7) extension operators.
//
//   kogpt2_linear_int8_packed (x (..., K) float32, w (M, K) int8 packed, scale (M) float32[, bias (M)])
//       -> (..., M) float32 = (q(x) . w^T) * (x's row scale * scale) + bias
//   kogpt2_lookup_int8_packed (ids (...) int32 or float32, table (M, K) int8 packed, scale (M))
//       -> (..., K) float32 = table[id] * scale[id]  (ids clipped to [0, M), as take's default)
//
// The packed layout (kernels.pack_int8 writes it; M a multiple of 16, K of 64) stores the weight
// as blocks of 16 outputs x 64 inputs, 1 KB each, block (mb, kb) at (mb * K/64 + kb) * 1024, its
// byte r * 64 + n * 4 + j holding w[mb * 16 + n][kb * 64 + r * 4 + j]. That is the B operand of
// AMX's tdpbssd as it is, and row by row it gives 16 outputs' 4 inputs for one vpdpbusd against
// 4 bytes of x broadcast: 16 output sums in one register, with no horizontal sums at the end,
// which the row-major kernels (linear.cc) spend a third of their time on at K = 768.
//
// x is quantized per row first (int8_rows.h), so the sums are exact integers and a row's result
// does not depend on its batch. On AMX CPUs, tdpbssd multiplies up to 16 rows of x by 16 outputs
// x 64 inputs per instruction (two blocks share each x tile); on AVX-512 VNNI CPUs without AMX,
// vpdpbusd takes the weights as unsigned (w + 128, one xor per 64 bytes) and each row's
// 128 * sum(q) is taken off. Measured on a 2-vCPU Sapphire Rapids-class Xeon: benchmarks/README.md.
#include <immintrin.h>
#include <omp.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "int8_rows.h"
#include "isa.h"
#include "mxnet/lib_api.h"

using namespace mxnet::ext;
using namespace kogpt2;

namespace {

const int kOut = 16;          // outputs per block
const int kIn = 64;           // inputs per block
const int kBlock = kOut * kIn;  // bytes per block
const int kVnniRows = 8;      // rows of x per pass of the VNNI kernel (8 accumulators)
const int kAmxRows = 16;      // rows of x per tile

// ---- AVX-512 VNNI: R rows of x against one block column (16 outputs, every K) ----

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void vnni_rows(const int8_t* q, int64_t K,
                                                                       const int32_t* q_sums, const int8_t* blocks,
                                                                       int32_t sums[][kOut]) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));  // w ^ 0x80 = w + 128, unsigned
  __m512i acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_si512();
  for (int64_t kb = 0; kb < K / kIn; ++kb) {
    const int8_t* block = blocks + kb * kBlock;
    for (int r = 0; r < kIn / 4; ++r) {
      const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(block + r * 64), flip);
      for (int i = 0; i < R; ++i) {
        int32_t four;  // x[i][kb * 64 + r * 4 .. + 4]
        std::memcpy(&four, q + i * K + kb * kIn + r * 4, sizeof four);
        acc[i] = _mm512_dpbusd_epi32(acc[i], w, _mm512_set1_epi32(four));
      }
    }
  }
  for (int i = 0; i < R; ++i)
    _mm512_storeu_si512(sums[i], _mm512_sub_epi32(acc[i], _mm512_set1_epi32(128 * q_sums[i])));
}

void vnni_block_column(const int8_t* q, int64_t nr, int64_t K, const int32_t* q_sums, const int8_t* blocks,
                       int32_t sums[][kOut]) {
  switch (nr) {
    case 1: return vnni_rows<1>(q, K, q_sums, blocks, sums);
    case 2: return vnni_rows<2>(q, K, q_sums, blocks, sums);
    case 3: return vnni_rows<3>(q, K, q_sums, blocks, sums);
    case 4: return vnni_rows<4>(q, K, q_sums, blocks, sums);
    case 5: return vnni_rows<5>(q, K, q_sums, blocks, sums);
    case 6: return vnni_rows<6>(q, K, q_sums, blocks, sums);
    case 7: return vnni_rows<7>(q, K, q_sums, blocks, sums);
    default: return vnni_rows<8>(q, K, q_sums, blocks, sums);
  }
}

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

// out[n][o .. o + 16) = sums * (row scale * scale[o ..]) + bias[o ..], 16 outputs of one row.
__attribute__((target("avx512f,avx512bw"))) void write_outputs(const int32_t* sums, float row_scale,
                                                               const float* scale, const float* bias, float* out) {
  const __m512 factor = _mm512_mul_ps(_mm512_set1_ps(row_scale), _mm512_loadu_ps(scale));
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(sums)), factor);
  if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias));
  _mm512_storeu_ps(out, v);
}

void linear_packed(const float* x, const int8_t* w, const float* scale, const float* bias, float* out, int64_t N,
                   int64_t M, int64_t K) {
  const QuantizedRows rows = quantize_rows(x, N, K);
  const int8_t* q = rows.values.data();
  const int64_t columns = M / kOut, column_bytes = K * kOut;
  const bool amx = isa() == kAmx;
  const int64_t step = amx ? 2 : 1;  // block columns per task
#pragma omp parallel if (columns * N * K > 65536)
  {
    int configured = 0;  // rows the tiles are configured for in this thread
#pragma omp for schedule(static)
    for (int64_t c = 0; c < columns; c += step) {
      for (int64_t n = 0; n < N; n += amx ? kAmxRows : kVnniRows) {
        const int64_t nr = std::min<int64_t>(N - n, amx ? kAmxRows : kVnniRows);
        const int64_t outputs = amx && c + 1 < columns ? 2 * kOut : kOut;
        int32_t sums[kAmxRows][2 * kOut];
        if (amx) {
          if (configured != nr) {
            configured = static_cast<int>(nr);
            configure_tiles(configured);
          }
          amx_rows(q + n * K, K, w + c * column_bytes, outputs > kOut ? w + (c + 1) * column_bytes : nullptr, sums);
        } else {
          int32_t own[kVnniRows][kOut];
          vnni_block_column(q + n * K, nr, K, rows.sums.data() + n, w + c * column_bytes, own);
          for (int64_t i = 0; i < nr; ++i) std::memcpy(sums[i], own[i], sizeof own[i]);
        }
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t half = 0; half < outputs; half += kOut) {
            const int64_t o = c * kOut + half;
            write_outputs(sums[i] + half, rows.scales[n + i], scale + o, bias ? bias + o : nullptr,
                          out + (n + i) * M + o);
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

bool has_bias(const std::unordered_map<std::string, std::string>& attrs) {
  auto it = attrs.find("no_bias");
  return it == attrs.end() || (it->second != "True" && it->second != "1" && it->second != "true");
}

bool runs_packed() { return isa() >= kAvx512Vnni; }

MXReturnValue linear_attrs(const std::unordered_map<std::string, std::string>& attrs, int* num_in, int* num_out) {
  *num_in = has_bias(attrs) ? 4 : 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue linear_type(const std::unordered_map<std::string, std::string>& attrs, std::vector<int>* in_types,
                          std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    const int want = i == 1 ? kInt8 : kFloat32;
    if ((*in_types)[i] != want) {
      MX_ERROR_MSG << "kogpt2_linear_int8_packed: input " << i << " has dtype " << (*in_types)[i] << ", expected "
                   << want;
      return MX_FAIL;
    }
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

bool packable(unsigned M, unsigned K) { return M % kOut == 0 && K % kIn == 0 && M > 0 && K > 0; }

MXReturnValue linear_shape(const std::unordered_map<std::string, std::string>& attrs,
                           std::vector<std::vector<unsigned int>>* in_shapes,
                           std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& x = (*in_shapes)[0];
  const auto& w = (*in_shapes)[1];
  if (x.empty() || w.size() != 2 || x.back() != w[1] || !packable(w[0], w[1])) {
    MX_ERROR_MSG << "kogpt2_linear_int8_packed: x (..., K) and a packed weight (M, K) with M a multiple of " << kOut
                 << " and K of " << kIn << " disagree";
    return MX_FAIL;
  }
  for (size_t i = 2; i < in_shapes->size(); ++i)
    if ((*in_shapes)[i].size() != 1 || (*in_shapes)[i][0] != w[0]) {
      MX_ERROR_MSG << "kogpt2_linear_int8_packed: input " << i << " must have shape (M,) = (" << w[0] << ",)";
      return MX_FAIL;
    }
  std::vector<unsigned int> out(x.begin(), x.end());
  out.back() = w[0];
  (*out_shapes)[0] = out;
  return MX_SUCCESS;
}

MXReturnValue refuse_unpacked(const char* op) {
  MX_ERROR_MSG << op << ": packed int8 weights need AVX-512 VNNI, which this process does not run (kernels ISA "
               << kIsaNames[isa()] << ")";
  return MX_FAIL;
}

MXReturnValue linear_forward(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs, const OpResource& res) {
  if (!runs_packed()) return refuse_unpacked("kogpt2_linear_int8_packed");
  std::vector<MXTensor>& in = *inputs;
  const int64_t M = in[1].shape[0], K = in[1].shape[1], N = in[0].size() / K;
  linear_packed(in[0].data<float>(), in[1].data<int8_t>(), in[2].data<float>(),
                has_bias(attrs) ? in[3].data<float>() : nullptr, (*outputs)[0].data<float>(), N, M, K);
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

MXReturnValue backward(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  MX_ERROR_MSG << "kogpt2 packed int8 kernels are for inference: they have no backward pass";
  return MX_FAIL;
}

}  // namespace

REGISTER_OP(kogpt2_linear_int8_packed)
    .setParseAttrs(linear_attrs)
    .setInferType(linear_type)
    .setInferShape(linear_shape)
    .setForward(linear_forward, "cpu")
    .setBackward(backward, "cpu");

REGISTER_OP(kogpt2_lookup_int8_packed)
    .setParseAttrs(lookup_attrs)
    .setInferType(lookup_type)
    .setInferShape(lookup_shape)
    .setForward(lookup_forward, "cpu")
    .setBackward(backward, "cpu");
