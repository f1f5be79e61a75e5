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
void tile_portable(const float* x, int64_t nr, int64_t ldx, const W* w, int64_t ldw, int64_t mr, int64_t K,
                   float acc[NR][MR]) {
  for (int64_t n = 0; n < nr; ++n)
    for (int64_t m = 0; m < mr; ++m) {
      float sum = 0.f;
      const float* xn = x + n * ldx;
      const W* wm = w + m * ldw;
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

// One activation row (a decode step's usual case): MR accumulators alone would make each k step
// wait for the previous step's FMAs (4-5 cycles of latency), so two sets take alternate halves of
// every 16 k, and the loop runs at the speed of its loads and conversions instead.
template <typename W>
__attribute__((target("avx2,fma"))) void row1_avx2(const float* x, const W* w, int64_t ldw, int64_t K, float acc[NR][MR]) {
  const int64_t body = K - K % 8, pairs = K - K % 16;
  __m256 a[2][MR];
  for (int m = 0; m < MR; ++m) a[0][m] = a[1][m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < pairs; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    for (int m = 0; m < MR; ++m) {
      a[0][m] = _mm256_fmadd_ps(x0, load8(w + m * ldw + k), a[0][m]);
      a[1][m] = _mm256_fmadd_ps(x1, load8(w + m * ldw + k + 8), a[1][m]);
    }
  }
  if (pairs < body) {
    const __m256 xv = _mm256_loadu_ps(x + pairs);
    for (int m = 0; m < MR; ++m) a[0][m] = _mm256_fmadd_ps(xv, load8(w + m * ldw + pairs), a[0][m]);
  }
  for (int m = 0; m < MR; ++m) {
    float sum = hsum8(_mm256_add_ps(a[0][m], a[1][m]));
    for (int64_t k = body; k < K; ++k) sum += x[k] * load_weight(w + m * ldw + k);
    acc[0][m] = sum;
  }
}

// AVX2 has 16 vector registers: MR weights + NR2 x 4 accumulators + x, NR2 = 2 rows at a time.
template <typename W>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, int64_t nr, int64_t ldx, const W* w,
                                                   int64_t ldw, int64_t mr, int64_t K, float acc[NR][MR]) {
  if (mr < MR) return tile_portable(x, nr, ldx, w, ldw, mr, K, acc);
  if (nr == 1) return row1_avx2(x, w, ldw, K, acc);
  const int64_t body = K - K % 8;
  for (int64_t n0 = 0; n0 < nr; n0 += 2) {
    const bool two = n0 + 1 < nr;
    const float* x0 = x + n0 * ldx;
    const float* x1 = two ? x0 + ldx : x0;
    __m256 a[2][MR];
    for (int m = 0; m < MR; ++m) a[0][m] = a[1][m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < body; k += 8) {
      __m256 wv[MR];
      for (int m = 0; m < MR; ++m) wv[m] = load8(w + m * ldw + k);
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
        for (int64_t k = body; k < K; ++k) sum += xr[k] * load_weight(w + m * ldw + k);
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
__attribute__((target("avx512f,avx512bw"))) void rows_avx512(const float* x, int64_t ldx, const W* w, int64_t ldw, int64_t K,
                                                             float acc[NR][MR]) {
  const int64_t body = K - K % 16;
  __m512 a[R][MR];
  for (int n = 0; n < R; ++n)
    for (int m = 0; m < MR; ++m) a[n][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < body; k += 16) {
    __m512 wv[MR];
    for (int m = 0; m < MR; ++m) wv[m] = load16(w + m * ldw + k);
    for (int n = 0; n < R; ++n) {
      __m512 xv = _mm512_loadu_ps(x + n * ldx + k);
      for (int m = 0; m < MR; ++m) a[n][m] = _mm512_fmadd_ps(xv, wv[m], a[n][m]);
    }
  }
  for (int n = 0; n < R; ++n)
    for (int m = 0; m < MR; ++m) {
      float sum = _mm512_reduce_add_ps(a[n][m]);
      for (int64_t k = body; k < K; ++k) sum += x[n * ldx + k] * load_weight(w + m * ldw + k);
      acc[n][m] = sum;
    }
}

template <typename W>
void tile_avx512(const float* x, int64_t nr, int64_t ldx, const W* w, int64_t ldw, int64_t mr, int64_t K, float acc[NR][MR]) {
  if (mr < MR) return tile_portable(x, nr, ldx, w, ldw, mr, K, acc);
  switch (nr) {
    case 1: return rows_avx512<1>(x, ldx, w, ldw, K, acc);
    case 2: return rows_avx512<2>(x, ldx, w, ldw, K, acc);
    case 3: return rows_avx512<3>(x, ldx, w, ldw, K, acc);
    default: return rows_avx512<4>(x, ldx, w, ldw, K, acc);
  }
}

template <typename W>
void tile(const float* x, int64_t nr, int64_t ldx, const W* w, int64_t ldw, int64_t mr, int64_t K, float acc[NR][MR]) {
  switch (isa()) {
    case kAvx512: return tile_avx512(x, nr, ldx, w, ldw, mr, K, acc);
    case kAvx2: return tile_avx2(x, nr, ldx, w, ldw, mr, K, acc);
    default: return tile_portable(x, nr, ldx, w, ldw, mr, K, acc);
  }
}

// Which weight rows a tile reads. Tile b of the first M / MR takes rows b, b + Q, b + 2Q, b + 3Q
// (Q = M / MR), not MR neighbours: neighbouring rows would put the tile's MR streams within one
// 4 KB page at K-element offsets, a pattern the hardware prefetchers do not follow (int8 rows
// read at ~3 GB/s per thread on an AVX2 EPYC that way), while these are MR sequential streams
// that the consecutive tiles of a thread continue. The last tile takes the M % MR rows left.
struct Tile {
  int64_t first;   // the tile's first weight row
  int64_t stride;  // rows between the tile's rows
  int64_t rows;    // MR, or fewer in the last tile
};

inline int64_t tile_count(int64_t M) { return M / MR + (M % MR ? 1 : 0); }

inline Tile tile_of(int64_t b, int64_t M) {
  const int64_t quarter = M / MR;
  if (b < quarter) return Tile{b, quarter, MR};
  return Tile{quarter * MR, 1, M - quarter * MR};
}

// out (N, M) = x (N, K) . w (M, K)^T, then * scale[m] (if given) + bias[m] (if given).
template <typename W>
void linear(const float* x, const W* w, const float* scale, const float* bias, float* out, int64_t N, int64_t M,
            int64_t K) {
  const int64_t blocks = tile_count(M);
  const int threads = omp_get_max_threads();
  for (int64_t n0 = 0; n0 < N; n0 += ROW_CHUNK) {
    const int64_t rows = N - n0 < ROW_CHUNK ? N - n0 : ROW_CHUNK;
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks * rows * K > 65536)
    for (int64_t b = 0; b < blocks; ++b) {
      const Tile t = tile_of(b, M);
      float acc[NR][MR];
      for (int64_t n = n0; n < n0 + rows; n += NR) {
        const int64_t nr = n0 + rows - n < NR ? n0 + rows - n : NR;
        tile(x + n * K, nr, K, w + t.first * K, t.stride * K, t.rows, K, acc);
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t m = 0; m < t.rows; ++m) {
            const int64_t o = t.first + m * t.stride;
            float v = acc[r][m];
            if (scale) v *= scale[o];
            if (bias) v += bias[o];
            out[(n + r) * M + o] = v;
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
