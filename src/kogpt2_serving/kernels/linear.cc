// Matrix products for CPU decoding, as MXNet (>= 1.7) extension operators.
//
// Decode reads every weight once per token, so a step is as fast as its weights stream from
// memory. These kernels read a weight matrix once per call, row by row, at memory speed, for
// the few activation rows a decode step has (and tile them for a prefill's many rows):
//   kogpt2_linear_int8 (x (..., K) float32, w (M, K) int8, scale (M) float32[, bias (M)])
//       -> (..., M) float32 = (q(x) . w^T) * (x's row scale * scale) + bias: each row of x is
//       quantized to 8 bits first (its own scale, max|row| / 127; int8_rows.h) and the products
//       are exact int32 sums (vpdpbusd with VNNI, vpmaddubsw on AVX2, vpmaddwd on AVX-512, plain
//       C), so every ISA gives the same bytes
//   kogpt2_linear_f32  (x (..., K) float32, w (M, K) float32[, bias (M)]) -> (..., M)
// Both take a last input residual (..., M) with residual=True, added to the output: a layer's
// residual add done where the output is written, instead of as an operator of its own (each costs
// a decode step its dispatch: the 24 adds of a KoGPT2 step were 5% of an int8 batch-1 step).
// With activation="gelu" (and no residual) the output is GELU(x . w^T + bias) (fast_math.h): the
// MLP's activation, which as MXNet's operator cost a KoGPT2 int8 step at one row ~6%.
// Each output is a dot product along K (both operands contiguous); float32 ones accumulate in
// float32.
// The instruction set is chosen once per process (isa.h; kogpt2_kernel_isa names it).
// Threads: OpenMP, as many as MXNet's own pool.
#include <immintrin.h>
#include <omp.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "fast_math.h"
#include "int8_rows.h"
#include "isa.h"
#include "mxnet/lib_api.h"
#include "op_common.h"

using namespace mxnet::ext;
using namespace kogpt2;

namespace {

// Output rows (weight rows) per tile and activation rows per tile: MR x NR accumulators.
const int MR = 4;
const int NR = 6;
// Activation rows per pass over the weights: a prefill's rows are taken this many at a time, so
// that they stay in cache while the weights stream past them.
const int ROW_CHUNK = 64;
// Activation rows per pass on AVX2 (16 vector registers), float32 and int8.
const int kAvx2PassRows = 2;
// How far ahead a tile's passes fetch (Passes): the tile whose weights begin about 4 K bytes
// further along each of its rows' streams, 1 tile of float32 weights, 4 of int8. Measured on the
// AMX Xeon, interleaved in one process: int8 at 1 row 5.7 ms a tile ahead, 4.6 at 4, no better
// at 6-12; float32 no better at 2 or 4.
const int64_t kAheadBytesPerK = 4;

// A later tile's weights, fetched into cache while this tile computes (see over_tiles): bytes
// [from, to) of each of its rows.
struct Ahead {
  const char* rows[MR];  // nullptr: nothing to fetch
  int64_t from, to;
};

// Fetches an Ahead's lines spread evenly over `iterations` calls of next(): a few prefetches
// among many products, so the loads the loop waits for keep their place. Into L1 (T0): measured
// interleaved against L2 (T1) on the AMX Xeon, int8 at 1 row 5.6 -> 4.2-4.5 ms with VNNI tiles and
// 6.3 -> 5.3 with AVX2's, 8 rows 7.1-7.7 -> 6.6-7.2; float32 1-3% faster.
class Fetcher {
 public:
  Fetcher(const Ahead& ahead, int64_t iterations)
      : ahead_(ahead),
        per_(ahead.rows[0] && iterations > 0 ? ((ahead.to - ahead.from) << 16) / iterations : 0),
        due_(ahead.from << 16),
        line_(ahead.from) {}

  inline void next() {
    due_ += per_;  // fixed point, 16 fraction bits: bytes due so far
    for (; line_ < (due_ >> 16); line_ += 64)
      for (int m = 0; m < MR; ++m) _mm_prefetch(ahead_.rows[m] + line_, _MM_HINT_T0);
  }

 private:
  const Ahead& ahead_;
  const int64_t per_;
  int64_t due_, line_;
};

// ---- one tile: out[n][m] = sum_k x[n][k] * w[m][k], for nr <= NR rows of x, MR rows of w ----

void tile_portable(const float* x, int64_t nr, int64_t ldx, const float* w, int64_t ldw, int64_t mr, int64_t K,
                   float acc[NR][MR]) {
  for (int64_t n = 0; n < nr; ++n)
    for (int64_t m = 0; m < mr; ++m) {
      float sum = 0.f;
      const float* xn = x + n * ldx;
      const float* wm = w + m * ldw;
      for (int64_t k = 0; k < K; ++k) sum += xn[k] * wm[k];
      acc[n][m] = sum;
    }
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
// every 16 k, and the loop runs at the speed of its loads instead.
__attribute__((target("avx2,fma"))) void row1_avx2(const float* x, const float* w, int64_t ldw, int64_t K,
                                                   const Ahead& ahead, float acc[NR][MR]) {
  const int64_t body = K - K % 8, pairs = K - K % 16;
  Fetcher fetch(ahead, pairs / 16);
  __m256 a[2][MR];
  for (int m = 0; m < MR; ++m) a[0][m] = a[1][m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < pairs; k += 16) {
    fetch.next();
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
    for (int64_t k = body; k < K; ++k) sum += x[k] * w[m * ldw + k];
    acc[0][m] = sum;
  }
}

// AVX2 has 16 vector registers: MR weights + 2 x MR accumulators + x, so its passes take at most
// two rows (kAvx2PassRows).
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, int64_t nr, int64_t ldx, const float* w,
                                                   int64_t ldw, int64_t mr, int64_t K, const Ahead& ahead,
                                                   float acc[NR][MR]) {
  if (mr < MR) return tile_portable(x, nr, ldx, w, ldw, mr, K, acc);
  if (nr == 1) return row1_avx2(x, w, ldw, K, ahead, acc);
  const int64_t body = K - K % 8;
  const float* x1 = x + ldx;
  Fetcher fetch(ahead, body / 8);
  __m256 a[2][MR];
  for (int m = 0; m < MR; ++m) a[0][m] = a[1][m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < body; k += 8) {
    fetch.next();
    __m256 wv[MR];
    for (int m = 0; m < MR; ++m) wv[m] = load8(w + m * ldw + k);
    __m256 xv = _mm256_loadu_ps(x + k);
    for (int m = 0; m < MR; ++m) a[0][m] = _mm256_fmadd_ps(xv, wv[m], a[0][m]);
    xv = _mm256_loadu_ps(x1 + k);
    for (int m = 0; m < MR; ++m) a[1][m] = _mm256_fmadd_ps(xv, wv[m], a[1][m]);
  }
  for (int r = 0; r < 2; ++r)
    for (int m = 0; m < MR; ++m) {
      const float* xr = x + r * ldx;
      float sum = hsum8(a[r][m]);
      for (int64_t k = body; k < K; ++k) sum += xr[k] * w[m * ldw + k];
      acc[r][m] = sum;
    }
}

__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }

// 32 vector registers: MR weights + R x MR accumulators + x; R fixed at compile time so that
// the accumulators stay in registers.
template <int R>
__attribute__((target("avx512f,avx512bw"))) void rows_avx512(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K,
                                                             const Ahead& ahead, float acc[NR][MR]) {
  const int64_t body = K - K % 16;
  Fetcher fetch(ahead, body / 16);
  __m512 a[R][MR];
  for (int n = 0; n < R; ++n)
    for (int m = 0; m < MR; ++m) a[n][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < body; k += 16) {
    fetch.next();
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
      for (int64_t k = body; k < K; ++k) sum += x[n * ldx + k] * w[m * ldw + k];
      acc[n][m] = sum;
    }
}

void tile_avx512(const float* x, int64_t nr, int64_t ldx, const float* w, int64_t ldw, int64_t mr, int64_t K,
                 const Ahead& ahead, float acc[NR][MR]) {
  if (mr < MR) return tile_portable(x, nr, ldx, w, ldw, mr, K, acc);
  switch (nr) {
    case 1: return rows_avx512<1>(x, ldx, w, ldw, K, ahead, acc);
    case 2: return rows_avx512<2>(x, ldx, w, ldw, K, ahead, acc);
    case 3: return rows_avx512<3>(x, ldx, w, ldw, K, ahead, acc);
    case 4: return rows_avx512<4>(x, ldx, w, ldw, K, ahead, acc);
    case 5: return rows_avx512<5>(x, ldx, w, ldw, K, ahead, acc);
    default: return rows_avx512<6>(x, ldx, w, ldw, K, ahead, acc);
  }
}

void tile(const float* x, int64_t nr, int64_t ldx, const float* w, int64_t ldw, int64_t mr, int64_t K, const Ahead& ahead,
          float acc[NR][MR]) {
  switch (isa()) {
    case kAmx:
    case kAvx512Vnni:
    case kAvx512: return tile_avx512(x, nr, ldx, w, ldw, mr, K, ahead, acc);
    case kAvx2: return tile_avx2(x, nr, ldx, w, ldw, mr, K, ahead, acc);
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

// A tile's passes (one per few rows of x) and a tile further on: the first pass reads the tile's
// weights from memory, the others from cache, so each pass also fetches its share of a later
// tile's weights (Ahead; `ahead` tiles on, see kAheadBytesPerK) and memory keeps streaming while
// the cores compute.
struct Passes {
  int64_t from, to;  // this pass's share of each of the later tile's rows, in bytes
  const Tile* next;  // the tile to fetch; nullptr near the end
};

// out (N, M) = sums * (row_scale(n) * scale[m]) (scale if given) + bias[m] (if given), the sums
// out of product(n, nr, tile, passes, acc) for every tile: rows n..n+nr of x against one Tile of w.
// Activation rows are taken ROW_CHUNK at a time, each chunk's tiles split over the threads.
template <typename Acc, typename Product, typename RowScale>
void over_tiles(int64_t N, int64_t M, int64_t K, int64_t row_bytes, int64_t per_pass, int64_t ahead, const float* scale,
                const float* bias, const float* residual, float* out, const Product& product,
                const RowScale& row_scale) {
  const int64_t blocks = tile_count(M);
  const int threads = omp_get_max_threads();
  for (int64_t n0 = 0; n0 < N; n0 += ROW_CHUNK) {
    const int64_t rows = N - n0 < ROW_CHUNK ? N - n0 : ROW_CHUNK;
    const int64_t count = (rows + per_pass - 1) / per_pass;
    int64_t share[ROW_CHUNK + 1];  // pass p fetches bytes [share[p], share[p + 1]): divided here, not per tile
    for (int64_t p = 0; p <= count; ++p) share[p] = row_bytes * p / count;
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks * rows * K > 65536)
    for (int64_t b = 0; b < blocks; ++b) {
      const Tile t = tile_of(b, M);
      const Tile next = tile_of(b + ahead, M);
      Acc acc[NR][MR];
      for (int64_t n = n0, p = 0; n < n0 + rows; n += per_pass, ++p) {
        const int64_t nr = n0 + rows - n < per_pass ? n0 + rows - n : per_pass;
        product(n, nr, t, Passes{share[p], share[p + 1], b + ahead < blocks ? &next : nullptr}, acc);
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t m = 0; m < t.rows; ++m) {
            const int64_t o = t.first + m * t.stride;
            float factor = row_scale(n + r);
            if (scale) factor *= scale[o];
            float v = static_cast<float>(acc[r][m]) * factor;
            if (bias) v += bias[o];
            if (residual) v += residual[(n + r) * M + o];
            out[(n + r) * M + o] = v;
          }
      }
    }
  }
}

// This pass's share of the later tile's weights (w: the matrix, K weights of type W per row).
template <typename W>
Ahead ahead_of(const W* w, int64_t K, const Passes& p) {
  Ahead a{{nullptr}, p.from, p.to};
  if (!p.next || p.next->rows != MR) return a;
  for (int m = 0; m < MR; ++m)
    a.rows[m] = reinterpret_cast<const char*>(w + (p.next->first + m * p.next->stride) * K);
  return a;
}

// out (N, M) = x (N, K) . w (M, K)^T + bias[m] (if given), float32 weights.
void linear_f32(const float* x, const float* w, const float* bias, const float* residual, float* out, int64_t N,
                int64_t M, int64_t K) {
  over_tiles<float>(
      N, M, K, K * sizeof(float), isa() == kAvx2 ? kAvx2PassRows : NR, kAheadBytesPerK / sizeof(float), nullptr,
      bias, residual, out,
      [&](int64_t n, int64_t nr, const Tile& t, const Passes& p, float acc[NR][MR]) {
        tile(x + n * K, nr, K, w + t.first * K, t.stride * K, t.rows, K, ahead_of(w, K, p), acc);
      },
      [](int64_t) { return 1.0f; });
}

// ---- AVX-512 VNNI: int8 activations times int8 weights, exact int32 sums ----
//
// vpdpbusd multiplies 64 unsigned by 64 signed bytes and adds them in groups of four to 16 int32
// lanes: one instruction per 64 weights and a row (int8 weights turned into float32 for FMAs took
// three per 16, which bounded a step on a VNNI CPU, not memory). Each row of x is quantized on its
// own (int8_rows.h), so a row's result never depends on the rows it is batched with. vpdpbusd
// needs one unsigned operand: the weights, flipped to w + 128 (one xor per 64 weights, shared by
// every row), and 128 * sum(q) of each row of x, counted while quantizing it, is taken off the sums.

// [sum(a0), sum(a1), sum(a2), sum(a3)]: the four reductions share their shuffles (about a third
// of the instructions of four separate ones, which cost as much as the products at K = 768).
__attribute__((target("avx512f,avx512bw"))) inline __m128i sum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));  // per lane
  const __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

// R rows of quantized x against MR weight rows: acc[n][m] = sum_k q[n][k] * w[m][k], exact.
// Per 64-byte column: a[n][m] += (w[m] + 128) . q[n]; the bytes past K are masked to 0 in q,
// so whatever w holds there adds nothing. The accumulators are named variables, not arrays: GCC
// keeps arrays of them in memory around vpdpbusd (a store per instruction), which halved the speed.
#define KOGPT2_VNNI_ROW(n)                                              \
  if (R > n) {                                                          \
    const __m512i xv = _mm512_maskz_loadu_epi8(mask, q + n * ldq + k); \
    a##n##0 = _mm512_dpbusd_epi32(a##n##0, w0, xv);                     \
    a##n##1 = _mm512_dpbusd_epi32(a##n##1, w1, xv);                     \
    a##n##2 = _mm512_dpbusd_epi32(a##n##2, w2, xv);                     \
    a##n##3 = _mm512_dpbusd_epi32(a##n##3, w3, xv);                     \
  }
#define KOGPT2_VNNI_SUMS(n)                                                                          \
  if (R > n) {                                                                                       \
    const __m128i sums = _mm_sub_epi32(sum4(a##n##0, a##n##1, a##n##2, a##n##3),                     \
                                       _mm_set1_epi32(128 * q_sums[n]));                             \
    _mm_storeu_si128(reinterpret_cast<__m128i*>(acc[n]), sums);                                      \
  }

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void rows_vnni(const int8_t* q, int64_t ldq,
                                                                       const int32_t* q_sums, const int8_t* w,
                                                                       int64_t ldw, int64_t K, const Ahead& ahead,
                                                                       int32_t acc[NR][MR]) {
  static_assert(MR == 4 && R <= 4, "the named accumulators are 4 x 4");
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));  // w ^ 0x80 = w + 128, unsigned
  const __m512i zero = _mm512_setzero_si512();
  __m512i a00 = zero, a01 = zero, a02 = zero, a03 = zero, a10 = zero, a11 = zero, a12 = zero, a13 = zero;
  __m512i a20 = zero, a21 = zero, a22 = zero, a23 = zero, a30 = zero, a31 = zero, a32 = zero, a33 = zero;
  Fetcher fetch(ahead, (K + 63) / 64);
  for (int64_t k = 0; k < K; k += 64) {
    fetch.next();
    const __mmask64 mask = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
    const __m512i w0 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + k), flip);
    const __m512i w1 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + ldw + k), flip);
    const __m512i w2 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + 2 * ldw + k), flip);
    const __m512i w3 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + 3 * ldw + k), flip);
    KOGPT2_VNNI_ROW(0)
    KOGPT2_VNNI_ROW(1)
    KOGPT2_VNNI_ROW(2)
    KOGPT2_VNNI_ROW(3)
  }
  KOGPT2_VNNI_SUMS(0)
  KOGPT2_VNNI_SUMS(1)
  KOGPT2_VNNI_SUMS(2)
  KOGPT2_VNNI_SUMS(3)
}
#undef KOGPT2_VNNI_ROW
#undef KOGPT2_VNNI_SUMS

void tile_portable_q(const int8_t* q, int64_t nr, int64_t ldq, const int8_t* w, int64_t ldw, int64_t mr, int64_t K,
                     int32_t acc[NR][MR]) {
  for (int64_t n = 0; n < nr; ++n)
    for (int64_t m = 0; m < mr; ++m) {
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += static_cast<int32_t>(q[n * ldq + k]) * w[m * ldw + k];
      acc[n][m] = sum;
    }
}

// ---- AVX2: the same exact sums with vpmaddubsw ----
//
// vpmaddubsw multiplies 32 unsigned by 32 signed bytes and sums them in pairs into 16-bit lanes;
// vpmaddwd by ones then sums those pairs into int32 lanes. The unsigned operand is |w| and the
// signed one q with w's sign (vpsignb): the products are q w exactly, and a pair's sum is at most
// 2 * 128 * 127 = 32512 in size, within 16 bits, so the sums are the same int32 sums as every other
// ISA's, for any int8 weight. (ONNX Runtime's AVX2 kernel feeds q + 128 unsigned, which can
// saturate.) Against widening both to 16 bits for vpmaddwd (this path until 2026-12-07), there is
// no widening shuffle per weight and row: 8 rows 11% faster, 16 rows 7%, 1 row 2-4% (the AVX2
// class shown on an AMX Xeon by benchmarks/as_cpu.py; the two switched at run time in one process).

__attribute__((target("avx2"))) inline __m256i load32(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// a[n][m] += q[n] . w[m] for 32 k: |w[m]| (b##m) times q[n] with w[m]'s sign. The weights are
// loaded again for their signs rather than kept: with the 8 accumulators, 4 |w| and the ones,
// keeping them would take more than AVX2's 16 registers. The accumulators are named variables,
// as in rows_vnni.
#define KOGPT2_SIGN_PRODUCT(n, m)                                                                 \
  a##n##m = _mm256_add_epi32(                                                                     \
      a##n##m, _mm256_madd_epi16(_mm256_maddubs_epi16(b##m, _mm256_sign_epi8(xv, load32(w + m * ldw + k))), ones))
#define KOGPT2_SIGN_ROW(n)                         \
  if (R > n) {                                     \
    const __m256i xv = load32(q + n * ldq + k);    \
    KOGPT2_SIGN_PRODUCT(n, 0);                     \
    KOGPT2_SIGN_PRODUCT(n, 1);                     \
    KOGPT2_SIGN_PRODUCT(n, 2);                     \
    KOGPT2_SIGN_PRODUCT(n, 3);                     \
  }

template <int R>
__attribute__((target("avx2,fma"))) void rows_sign_avx2(const int8_t* q, int64_t ldq, const int8_t* w, int64_t ldw,
                                                        int64_t K, const Ahead& ahead, int32_t acc[NR][MR]) {
  static_assert(MR == 4 && R <= kAvx2PassRows, "the named accumulators are 2 x 4");
  const int64_t body = K - K % 32;
  Fetcher fetch(ahead, body / 32);
  const __m256i ones = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
  __m256i a00 = zero, a01 = zero, a02 = zero, a03 = zero, a10 = zero, a11 = zero, a12 = zero, a13 = zero;
  for (int64_t k = 0; k < body; k += 32) {
    fetch.next();
    const __m256i b0 = _mm256_abs_epi8(load32(w + k)), b1 = _mm256_abs_epi8(load32(w + ldw + k));
    const __m256i b2 = _mm256_abs_epi8(load32(w + 2 * ldw + k)), b3 = _mm256_abs_epi8(load32(w + 3 * ldw + k));
    KOGPT2_SIGN_ROW(0)
    KOGPT2_SIGN_ROW(1)
  }
  const __m256i sums[2][MR] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
  for (int n = 0; n < R; ++n)
    for (int m = 0; m < MR; ++m) {
      int32_t sum = sum8(sums[n][m]);
      for (int64_t k = body; k < K; ++k) sum += static_cast<int32_t>(q[n * ldq + k]) * w[m * ldw + k];
      acc[n][m] = sum;
    }
}
#undef KOGPT2_SIGN_PRODUCT
#undef KOGPT2_SIGN_ROW

// ---- AVX-512 without VNNI: the same exact sums with vpmaddwd ----
//
// The 8-bit rows and weights are widened to 16 bits and multiplied with vpmaddwd (32 products a
// pair summed into int32 lanes, exact: |q w| <= 128 * 127). AVX-512 has no vpsignb for the AVX2
// path's form.

template <int R>
__attribute__((target("avx512f,avx512bw"))) void rows_madd_avx512(const int8_t* q, int64_t ldq, const int8_t* w,
                                                                  int64_t ldw, int64_t K, const Ahead& ahead,
                                                                  int32_t acc[NR][MR]) {
  const int64_t body = K - K % 32;
  Fetcher fetch(ahead, body / 32);
  __m512i a[R][MR];
  for (int n = 0; n < R; ++n)
    for (int m = 0; m < MR; ++m) a[n][m] = _mm512_setzero_si512();
  for (int64_t k = 0; k < body; k += 32) {
    fetch.next();
    __m512i wv[MR];
    for (int m = 0; m < MR; ++m)
      wv[m] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + m * ldw + k)));
    for (int n = 0; n < R; ++n) {
      const __m512i xv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + n * ldq + k)));
      for (int m = 0; m < MR; ++m) a[n][m] = _mm512_add_epi32(a[n][m], _mm512_madd_epi16(xv, wv[m]));
    }
  }
  for (int n = 0; n < R; ++n)
    for (int m = 0; m < MR; ++m) {
      int32_t sum = _mm512_reduce_add_epi32(a[n][m]);
      for (int64_t k = body; k < K; ++k) sum += static_cast<int32_t>(q[n * ldq + k]) * w[m * ldw + k];
      acc[n][m] = sum;
    }
}

// acc[n][m] = sum_k q[n][k] * w[m][k], exact, for nr <= 4 rows of q (kAvx2PassRows on AVX2) and a
// tile of w, on this process's ISA.
void tile_q(const int8_t* q, const int32_t* q_sums, int64_t nr, int64_t ldq, const int8_t* w, int64_t ldw,
            int64_t mr, int64_t K, const Ahead& ahead, int32_t acc[NR][MR]) {
  if (mr < MR) return tile_portable_q(q, nr, ldq, w, ldw, mr, K, acc);
  switch (isa()) {
    case kAmx:
    case kAvx512Vnni:
      switch (nr) {
        case 1: return rows_vnni<1>(q, ldq, q_sums, w, ldw, K, ahead, acc);
        case 2: return rows_vnni<2>(q, ldq, q_sums, w, ldw, K, ahead, acc);
        case 3: return rows_vnni<3>(q, ldq, q_sums, w, ldw, K, ahead, acc);
        default: return rows_vnni<4>(q, ldq, q_sums, w, ldw, K, ahead, acc);
      }
    case kAvx512:
      switch (nr) {
        case 1: return rows_madd_avx512<1>(q, ldq, w, ldw, K, ahead, acc);
        case 2: return rows_madd_avx512<2>(q, ldq, w, ldw, K, ahead, acc);
        case 3: return rows_madd_avx512<3>(q, ldq, w, ldw, K, ahead, acc);
        default: return rows_madd_avx512<4>(q, ldq, w, ldw, K, ahead, acc);
      }
    case kAvx2:
      if (nr == 1) return rows_sign_avx2<1>(q, ldq, w, ldw, K, ahead, acc);
      return rows_sign_avx2<2>(q, ldq, w, ldw, K, ahead, acc);
    default: return tile_portable_q(q, nr, ldq, w, ldw, mr, K, acc);
  }
}

// out = x . (w * scale)^T + bias for int8 weights, every ISA alike: each row of x quantized to 8
// bits on its own (int8_rows.h), exact int32 sums, then out = sums * (x's row scale * scale[m]) +
// bias[m].
void linear_int8(const float* x, const int8_t* w, const float* scale, const float* bias, const float* residual,
                 float* out, int64_t N, int64_t M, int64_t K) {
  const QuantizedRows rows = quantize_rows(x, N, K);
  over_tiles<int32_t>(
      N, M, K, K, isa() == kAvx2 ? kAvx2PassRows : 4, kAheadBytesPerK / sizeof(int8_t), scale, bias, residual, out,
      [&](int64_t n, int64_t nr, const Tile& t, const Passes& p, int32_t acc[NR][MR]) {
        tile_q(rows.values.data() + n * K, rows.sums.data() + n, nr, K, w + t.first * K, t.stride * K, t.rows, K,
               ahead_of(w, K, p), acc);
      },
      [&](int64_t n) { return rows.scales[n]; });
}

void product(const float* x, const int8_t* w, const float* scale, const float* bias, const float* residual, float* out,
             int64_t N, int64_t M, int64_t K) {
  linear_int8(x, w, scale, bias, residual, out, N, M, K);
}

void product(const float* x, const float* w, const float*, const float* bias, const float* residual, float* out,
             int64_t N, int64_t M, int64_t K) {
  linear_f32(x, w, bias, residual, out, N, M, K);
}

// GELU over a product's output (fast_math.h), in the widest vectors the process runs, split over
// the threads for a batch's outputs. No FMA in any copy (target("avx512f") lets GCC fuse products
// and sums unless told not to): the same bytes on every ISA.
#define KOGPT2_NO_FMA optimize("fp-contract=off")
__attribute__((target("avx512f"), KOGPT2_NO_FMA)) void gelu_avx512(float* v, int64_t n) { gelu_in_place(v, n); }
__attribute__((target("avx2"), KOGPT2_NO_FMA)) void gelu_avx2(float* v, int64_t n) { gelu_in_place(v, n); }
void gelu_portable(float* v, int64_t n) { gelu_in_place(v, n); }
#undef KOGPT2_NO_FMA

}  // namespace

void kogpt2::gelu(float* v, int64_t n) {
  void (*run)(float*, int64_t) = isa() >= kAvx512 ? gelu_avx512 : isa() == kAvx2 ? gelu_avx2 : gelu_portable;
  const int64_t chunk = 4096;
#pragma omp parallel for schedule(static) if (n > 2 * chunk)
  for (int64_t i = 0; i < n; i += chunk) run(v + i, std::min(chunk, n - i));
}

namespace {

// ---- the MXNet operators ----

template <int WeightInputs>
MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs, int* num_in, int* num_out) {
  if (!known_activation("kogpt2 linear", attrs)) return MX_FAIL;
  *num_in = 1 + WeightInputs + (has_bias(attrs) ? 1 : 0) + (has_residual(attrs) ? 1 : 0);
  *num_out = 1;
  return MX_SUCCESS;
}

template <int WeightDtype, int WeightInputs>
MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return expect_types("kogpt2 linear", *in_types, out_types,
                      [](size_t i) { return i == 1 ? WeightDtype : kFloat32; });
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  return product_shape("kogpt2 linear", *in_shapes, out_shapes, has_residual(attrs));
}

template <typename W, int WeightInputs>
MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  MXTensor& x = (*inputs)[0];
  MXTensor& w = (*inputs)[1];
  const float* scale = WeightInputs == 2 ? (*inputs)[2].data<float>() : nullptr;
  const float* bias = has_bias(attrs) ? (*inputs)[1 + WeightInputs].data<float>() : nullptr;
  const float* residual = has_residual(attrs) ? inputs->back().data<float>() : nullptr;
  const int64_t M = w.shape[0], K = w.shape[1], N = x.size() / K;
  float* out = (*outputs)[0].data<float>();
  product(x.data<float>(), w.data<W>(), scale, bias, residual, out, N, M, K);
  if (has_gelu(attrs)) gelu(out, N * M);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(kogpt2_linear_int8)
    .setParseAttrs(parse_attrs<2>)
    .setInferType(infer_type<kInt8, 2>)
    .setInferShape(infer_shape)
    .setForward(forward<int8_t, 2>, "cpu")
    .setBackward(no_backward, "cpu");

REGISTER_OP(kogpt2_linear_f32)
    .setParseAttrs(parse_attrs<1>)
    .setInferType(infer_type<kFloat32, 1>)
    .setInferShape(infer_shape)
    .setForward(forward<float, 1>, "cpu")
    .setBackward(no_backward, "cpu");

extern "C" {
// Which instruction set the kernels run with in this process ("amx", "avx512_vnni", "avx512", "avx2",
// "portable").
const char* kogpt2_kernel_isa() { return kIsaNames[isa()]; }
}

MXReturnValue initialize(int version) {
  if (version >= 10700) return MX_SUCCESS;
  MX_ERROR_MSG << "kogpt2 kernels need MXNet >= 1.7 (its extension API), this is " << version;
  return MX_FAIL;
}
