// Matrix products for CPU decoding, as MXNet (>= 1.7) extension operators.
//
// Decode reads every weight once per token, so a step is as fast as its weights stream from
// memory. These kernels read a weight matrix once per call, row by row, at memory speed, for
// the few activation rows a decode step has (and tile them for a prefill's many rows):
//   kogpt2_linear_int8 (x (..., K) float32, w (M, K) int8, scale (M) float32[, bias (M)])
//       -> (..., M) float32 = (x . w^T) * scale + bias     weight-only int8, float32 math
//   kogpt2_linear_f32  (x (..., K) float32, w (M, K) float32[, bias (M)]) -> (..., M)
// Each output is a dot product along K (both operands contiguous), accumulated in float32.
// The instruction set is chosen once per process (kogpt2_kernel_isa): AVX-512 (F+BW), AVX2+FMA
// or portable C, capped by KOGPT2_KERNEL_ISA or DNNL_MAX_CPU_ISA (the cap oneDNN obeys), so a
// big CPU can run the small one's path. Threads: OpenMP, as many as MXNet's own pool.
#include <immintrin.h>
#include <omp.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;

namespace {

enum Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
const char* kIsaNames[] = {"portable", "avx2", "avx512"};

// Output rows (weight rows) per tile and activation rows per tile: MR x NR accumulators.
const int MR = 4;
const int NR = 4;
// Activation rows per pass over the weights: a prefill's rows are taken this many at a time, so
// that they stay in cache while the weights stream past them.
const int ROW_CHUNK = 64;
// How far ahead of its reads a tile asks for each weight row, in bytes. A tile reads MR rows
// side by side, MR streams K elements apart, which the hardware prefetchers follow too late for
// int8 (measured on an AVX2 EPYC: 3.3 GB/s per thread from memory without, against 13 from
// cache); asking once per 64-byte line, this far ahead, keeps the lines arriving in time.
#ifndef KOGPT2_PREFETCH
#define KOGPT2_PREFETCH 512
#endif
const int64_t kLine = 64;

template <typename W>
inline void prefetch_rows(const W* w, int64_t K, int64_t k) {
  if ((k * static_cast<int64_t>(sizeof(W))) % kLine != 0) return;
  for (int m = 0; m < MR; ++m)
    _mm_prefetch(reinterpret_cast<const char*>(w + m * K + k) + KOGPT2_PREFETCH, _MM_HINT_T0);
}

int cap_from(const char* value) {
  if (!value || !*value) return kAvx512;
  std::string v(value);
  if (v == "portable" || v == "SSE41" || v == "AVX") return kPortable;
  if (v == "avx2" || v == "AVX2" || v == "AVX2_VNNI") return kAvx2;
  return kAvx512;
}

int detect_isa() {
  int isa = kPortable;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = kAvx2;
  if (isa == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) isa = kAvx512;
  const char* own = std::getenv("KOGPT2_KERNEL_ISA");
  int cap = cap_from(own && *own ? own : std::getenv("DNNL_MAX_CPU_ISA"));
  return isa < cap ? isa : cap;
}

int isa() {
  static int chosen = detect_isa();
  return chosen;
}

// ---- one tile: out[n][m] = sum_k x[n][k] * w[m][k], for nr <= NR rows of x, MR rows of w ----

inline float load_weight(const int8_t* w) { return static_cast<float>(*w); }
inline float load_weight(const float* w) { return *w; }

template <typename W>
void tile_portable(const float* x, int64_t nr, int64_t ldx, const W* w, int64_t mr, int64_t K,
                   float acc[NR][MR]) {
  for (int64_t n = 0; n < nr; ++n)
    for (int64_t m = 0; m < mr; ++m) {
      float sum = 0.f;
      const float* xn = x + n * ldx;
      const W* wm = w + m * K;
      for (int64_t k = 0; k < K; ++k) sum += xn[k] * load_weight(wm + k);
      acc[n][m] = sum;
    }
}

__attribute__((target("avx2,fma"))) inline __m256 load8(const int8_t* w) {
  __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }

__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// AVX2 has 16 vector registers: MR weights + NR2 x 4 accumulators + x, NR2 = 2 rows at a time.
template <typename W>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, int64_t nr, int64_t ldx, const W* w,
                                                   int64_t mr, int64_t K, float acc[NR][MR]) {
  if (mr < MR) return tile_portable(x, nr, ldx, w, mr, K, acc);
  const int64_t body = K - K % 8;
  for (int64_t n0 = 0; n0 < nr; n0 += 2) {
    const bool two = n0 + 1 < nr;
    const float* x0 = x + n0 * ldx;
    const float* x1 = two ? x0 + ldx : x0;
    __m256 a[2][MR];
    for (int m = 0; m < MR; ++m) a[0][m] = a[1][m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < body; k += 8) {
      prefetch_rows(w, K, k);
      __m256 wv[MR];
      for (int m = 0; m < MR; ++m) wv[m] = load8(w + m * K + k);
      __m256 xv = _mm256_loadu_ps(x0 + k);
      for (int m = 0; m < MR; ++m) a[0][m] = _mm256_fmadd_ps(xv, wv[m], a[0][m]);
      if (two) {
        xv = _mm256_loadu_ps(x1 + k);
        for (int m = 0; m < MR; ++m) a[1][m] = _mm256_fmadd_ps(xv, wv[m], a[1][m]);
      }
    }
    for (int r = 0; r < (two ? 2 : 1); ++r)
      for (int m = 0; m < MR; ++m) {
        const float* xr = r ? x1 : x0;
        float sum = hsum8(a[r][m]);
        for (int64_t k = body; k < K; ++k) sum += xr[k] * load_weight(w + m * K + k);
        acc[n0 + r][m] = sum;
      }
  }
}

__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const int8_t* w) {
  __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
}
__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }

// 32 vector registers: MR weights + R x MR accumulators + x; R fixed at compile time so that
// the accumulators stay in registers.
template <int R, typename W>
__attribute__((target("avx512f,avx512bw"))) void rows_avx512(const float* x, int64_t ldx, const W* w, int64_t K,
                                                             float acc[NR][MR]) {
  const int64_t body = K - K % 16;
  __m512 a[R][MR];
  for (int n = 0; n < R; ++n)
    for (int m = 0; m < MR; ++m) a[n][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < body; k += 16) {
    prefetch_rows(w, K, k);
    __m512 wv[MR];
    for (int m = 0; m < MR; ++m) wv[m] = load16(w + m * K + k);
    for (int n = 0; n < R; ++n) {
      __m512 xv = _mm512_loadu_ps(x + n * ldx + k);
      for (int m = 0; m < MR; ++m) a[n][m] = _mm512_fmadd_ps(xv, wv[m], a[n][m]);
    }
  }
  for (int n = 0; n < R; ++n)
    for (int m = 0; m < MR; ++m) {
      float sum = _mm512_reduce_add_ps(a[n][m]);
      for (int64_t k = body; k < K; ++k) sum += x[n * ldx + k] * load_weight(w + m * K + k);
      acc[n][m] = sum;
    }
}

template <typename W>
void tile_avx512(const float* x, int64_t nr, int64_t ldx, const W* w, int64_t mr, int64_t K, float acc[NR][MR]) {
  if (mr < MR) return tile_portable(x, nr, ldx, w, mr, K, acc);
  switch (nr) {
    case 1: return rows_avx512<1>(x, ldx, w, K, acc);
    case 2: return rows_avx512<2>(x, ldx, w, K, acc);
    case 3: return rows_avx512<3>(x, ldx, w, K, acc);
    default: return rows_avx512<4>(x, ldx, w, K, acc);
  }
}

template <typename W>
void tile(const float* x, int64_t nr, int64_t ldx, const W* w, int64_t mr, int64_t K, float acc[NR][MR]) {
  switch (isa()) {
    case kAvx512: return tile_avx512(x, nr, ldx, w, mr, K, acc);
    case kAvx2: return tile_avx2(x, nr, ldx, w, mr, K, acc);
    default: return tile_portable(x, nr, ldx, w, mr, K, acc);
  }
}

// out (N, M) = x (N, K) . w (M, K)^T, then * scale[m] (if given) + bias[m] (if given).
template <typename W>
void linear(const float* x, const W* w, const float* scale, const float* bias, float* out, int64_t N, int64_t M,
            int64_t K) {
  const int64_t blocks = (M + MR - 1) / MR;
  const int threads = omp_get_max_threads();
  for (int64_t n0 = 0; n0 < N; n0 += ROW_CHUNK) {
    const int64_t rows = N - n0 < ROW_CHUNK ? N - n0 : ROW_CHUNK;
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks * rows * K > 65536)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t m0 = b * MR, mr = M - m0 < MR ? M - m0 : MR;
      float acc[NR][MR];
      for (int64_t n = n0; n < n0 + rows; n += NR) {
        const int64_t nr = n0 + rows - n < NR ? n0 + rows - n : NR;
        tile(x + n * K, nr, K, w + m0 * K, mr, K, acc);
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t m = 0; m < mr; ++m) {
            float v = acc[r][m];
            if (scale) v *= scale[m0 + m];
            if (bias) v += bias[m0 + m];
            out[(n + r) * M + m0 + m] = v;
          }
      }
    }
  }
}

// ---- the MXNet operators ----

bool has_bias(const std::unordered_map<std::string, std::string>& attrs) {
  auto it = attrs.find("no_bias");
  return it == attrs.end() || (it->second != "True" && it->second != "1" && it->second != "true");
}

template <int WeightInputs>
MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs, int* num_in, int* num_out) {
  *num_in = 1 + WeightInputs + (has_bias(attrs) ? 1 : 0);
  *num_out = 1;
  return MX_SUCCESS;
}

template <int WeightDtype, int WeightInputs>
MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    int want = i == 1 ? WeightDtype : kFloat32;
    if ((*in_types)[i] != want) {
      MX_ERROR_MSG << "input " << i << " has dtype " << (*in_types)[i] << ", expected " << want;
      return MX_FAIL;
    }
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& x = (*in_shapes)[0];
  const auto& w = (*in_shapes)[1];
  if (x.empty() || w.size() != 2 || x.back() != w[1]) {
    MX_ERROR_MSG << "kogpt2 linear: x (..., K) and weight (M, K) disagree on K";
    return MX_FAIL;
  }
  for (size_t i = 2; i < in_shapes->size(); ++i)
    if ((*in_shapes)[i].size() != 1 || (*in_shapes)[i][0] != w[0]) {
      MX_ERROR_MSG << "kogpt2 linear: input " << i << " must have shape (M,) = (" << w[0] << ",)";
      return MX_FAIL;
    }
  std::vector<unsigned int> out(x.begin(), x.end());
  out.back() = w[0];
  (*out_shapes)[0] = out;
  return MX_SUCCESS;
}

template <typename W, int WeightInputs>
MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  MXTensor& x = (*inputs)[0];
  MXTensor& w = (*inputs)[1];
  const float* scale = WeightInputs == 2 ? (*inputs)[2].data<float>() : nullptr;
  const float* bias = has_bias(attrs) ? (*inputs)[1 + WeightInputs].data<float>() : nullptr;
  const int64_t M = w.shape[0], K = w.shape[1], N = x.size() / K;
  linear<W>(x.data<float>(), w.data<W>(), scale, bias, (*outputs)[0].data<float>(), N, M, K);
  return MX_SUCCESS;
}

// Gluon's cached graphs need a gradient registered for every operator, though decoding never
// asks for one; asking fails with a message.
MXReturnValue backward(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  MX_ERROR_MSG << "kogpt2 linear kernels are for inference: they have no backward pass";
  return MX_FAIL;
}

}  // namespace

REGISTER_OP(kogpt2_linear_int8)
    .setParseAttrs(parse_attrs<2>)
    .setInferType(infer_type<kInt8, 2>)
    .setInferShape(infer_shape)
    .setForward(forward<int8_t, 2>, "cpu")
    .setBackward(backward, "cpu");

REGISTER_OP(kogpt2_linear_f32)
    .setParseAttrs(parse_attrs<1>)
    .setInferType(infer_type<kFloat32, 1>)
    .setInferShape(infer_shape)
    .setForward(forward<float, 1>, "cpu")
    .setBackward(backward, "cpu");

extern "C" {
// Which instruction set the kernels run with in this process ("avx512", "avx2", "portable").
const char* kogpt2_kernel_isa() { return kIsaNames[isa()]; }
}

MXReturnValue initialize(int version) {
  if (version >= 10700) return MX_SUCCESS;
  MX_ERROR_MSG << "kogpt2 kernels need MXNet >= 1.7 (its extension API), this is " << version;
  return MX_FAIL;
}
