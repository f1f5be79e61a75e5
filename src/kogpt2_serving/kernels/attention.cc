// One decode step's attention, every row and head in one MXNet (>= 1.7) extension operator.
//
//   kogpt2_attention_step (qkv (B, 3U), mask (B, C), keys (1, B*H*D, C), values (1, B*H*C, D),
//                          slot (1,) int32; num_heads = H, scale) -> (B, U)
//
// qkv is the step's fused projection [q | k | v]; keys and values are one layer's cache as the
// step graph holds it (model/network.py: each head's keys transposed, (D, C), and values (C, D));
// mask is additive over the cache's slots. For each row b and head h the output is
//   softmax([q . K[:, c] * scale + mask[b, c] for the cache's slots c] ++ [q . k * scale]) . [V ; v]
// where k and v are the new token's own key and value, which the operator also writes into the
// cache at `slot` (every row's next slot, masked until the step is done: no row reads it here),
// so keys and values are inputs it mutates. This is what the convolution route of
// SelfAttention.step computes (there the engine writes the new column after the step, from the
// graph's outputs: ~1 ms of copies at 8 rows), with two differences that make it cheaper, not
// different:
//   - each row reads only its own span of slots, from its first to its last unmasked one: a slot
//     masked at MASKED (-1e4) gets an attention weight of exactly 0 in float32 either way, and
//     the convolutions read every slot of the cache's whole capacity for every row;
//   - about 20 graph operators per layer (products, softmax, slices, concatenation) become one.
// Sums are float32; exp is a vectorizable polynomial within 2 ulp of expf (fast_math.h).
#include <omp.h>
#include <cstdint>
#include <string>
#include <vector>

#include "fast_math.h"
#include "isa.h"
#include "mxnet/lib_api.h"
#include "op_common.h"

using namespace mxnet::ext;
using namespace kogpt2;

namespace {

// Slots whose mask is at or below this are not read (the model masks with -1e4, network.MASKED).
const float kUnread = -5e3f;

// Scores computed together: 4 AVX-512 (8 AVX2) registers of accumulators, so that each key is
// loaded once and the scores are not loaded and stored again for every element of the head.
const int kSlotBlock = 64;

// scores[c0 .. c0 + W) = q . keys[:, c0 + j], the W sums kept in registers. Each sum runs over d
// in order whatever W is, so a slot's score does not depend on the block it falls in.
template <int W>
inline __attribute__((always_inline)) void score_block(const float* q, const float* keys, int64_t C, int64_t D,
                                                        int64_t c0, float* scores) {
  float block[W] = {};
  for (int64_t d = 0; d < D; ++d) {
    const float qd = q[d];
    const float* row = keys + d * C + c0;
#pragma omp simd
    for (int j = 0; j < W; ++j) block[j] += qd * row[j];
  }
  for (int j = 0; j < W; ++j) scores[c0 + j] = block[j];
}

// The scores of slots [c0, n) in blocks of W, the last one ending at n and overlapping slots
// already scored (recomputed alike) -> n; c0 when there are fewer than W slots in all. Scoring a
// span's last slots one vector at a time instead (the scores loaded and stored again for each of
// the head's elements) made an 8-row int8 step 8.9 ms rather than 7.5 (AMX Xeon, interleaved,
// spans of 8-88 slots).
template <int W>
inline __attribute__((always_inline)) int64_t score_tail(const float* q, const float* keys, int64_t C, int64_t D,
                                                          int64_t c0, int64_t n, float* scores) {
  if (n < W) return c0;
  for (; c0 + W <= n; c0 += W) score_block<W>(q, keys, C, D, c0, scores);
  if (c0 < n) score_block<W>(q, keys, C, D, n - W, scores);
  return n;
}

struct Span {
  int64_t begin, end;  // the row's slots to read: [begin, end), empty when every slot is masked
};

Span span_of(const float* mask, int64_t C) {
  int64_t begin = 0, end = C;
  while (begin < C && mask[begin] <= kUnread) ++begin;
  while (end > begin && mask[end - 1] <= kUnread) --end;
  return Span{begin, end};
}

struct Head {
  const float *q, *k, *v;  // (D) each: this row's query and new key and value for the head
  const float* keys;       // (D, C): the head's cached keys, transposed
  const float* values;     // (C, D): the head's cached values
  const float* mask;       // (C): the row's mask
  float* out;              // (D)
};

// One (row, head): scores over the span and the new token, softmax, weighted values. DT is the
// head size when known at compile time (64 for KoGPT2), 0 for any: a fixed D keeps the output's
// accumulators in registers.
template <int DT>
inline __attribute__((always_inline)) void attend_one(const Head& h, Span span, int64_t C, int64_t d_size,
                                                       float scale, float* scores) {
  const int64_t D = DT ? DT : d_size, n = span.end - span.begin;
  const float* keys = h.keys + span.begin;
  int64_t c0 = 0;
  for (; c0 + kSlotBlock <= n; c0 += kSlotBlock) score_block<kSlotBlock>(h.q, keys, C, D, c0, scores);
  c0 = score_tail<kSlotBlock / 2>(h.q, keys, C, D, c0, n, scores);
  c0 = score_tail<kSlotBlock / 4>(h.q, keys, C, D, c0, n, scores);
  for (int64_t c = c0; c < n; ++c) scores[c] = 0.0f;  // a span of fewer than 16 slots
  for (int64_t d = 0; d < D && c0 < n; ++d) {
    const float qd = h.q[d];
    const float* row = keys + d * C;
#pragma omp simd
    for (int64_t c = c0; c < n; ++c) scores[c] += qd * row[c];
  }
  float own = 0.0f;  // the new token's score
#pragma omp simd reduction(+ : own)
  for (int64_t d = 0; d < D; ++d) own += h.q[d] * h.k[d];
  own *= scale;
  float top = own;
  const float* mask = h.mask + span.begin;
#pragma omp simd reduction(max : top)
  for (int64_t c = 0; c < n; ++c) {
    scores[c] = scores[c] * scale + mask[c];
    top = scores[c] > top ? scores[c] : top;
  }
  const float own_weight = fast_exp(own - top);
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) scores[c] = fast_exp(scores[c] - top);
  float total = own_weight;
#pragma omp simd reduction(+ : total)
  for (int64_t c = 0; c < n; ++c) total += scores[c];
  float acc[DT ? DT : 1];
  float* sum = DT ? acc : h.out;  // any D: accumulate in the output itself
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) sum[d] = own_weight * h.v[d];
  for (int64_t c = 0; c < n; ++c) {  // sum (D) += weight[c] * values[c]
    const float w = scores[c];
    const float* row = h.values + (span.begin + c) * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) sum[d] += w * row[d];
  }
  const float inv = 1.0f / total;
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) h.out[d] = sum[d] * inv;
}

// One step's inputs and output as the operator gets them.
struct Step {
  const float *qkv, *mask;
  float *keys, *values;  // the new token's key and value are written at `slot`
  float* out;
  int64_t B, H, D, C, slot;
  float scale;
  std::vector<Span> spans;  // (B): each row's slots to read
};

// Row-head bh (= b * H + h) of a step: the same code compiled for each ISA (attend_head_* below;
// OpenMP outlines a parallel region into a function of its own, without its caller's target, so
// the vector code lives in these and the parallel loop in attend_step calls them).
inline __attribute__((always_inline)) void attend_head(const Step& s, int64_t bh, float* scores) {
  const int64_t b = bh / s.H, h = bh % s.H, U = s.H * s.D;
  const float* row = s.qkv + b * 3 * U + h * s.D;
  float* keys = s.keys + bh * s.D * s.C;  // (D, C)
  float* values = s.values + bh * s.C * s.D;  // (C, D)
  for (int64_t d = 0; d < s.D; ++d) keys[d * s.C + s.slot] = row[U + d];
  for (int64_t d = 0; d < s.D; ++d) values[s.slot * s.D + d] = row[2 * U + d];
  const Head head{row, row + U, row + 2 * U, keys, values, s.mask + b * s.C, s.out + b * U + h * s.D};
  if (s.D == 64)
    attend_one<64>(head, s.spans[b], s.C, s.D, s.scale, scores);
  else
    attend_one<0>(head, s.spans[b], s.C, s.D, s.scale, scores);
}

__attribute__((target("avx512f,avx512bw"))) void attend_head_avx512(const Step& s, int64_t bh, float* scores) {
  attend_head(s, bh, scores);
}

__attribute__((target("avx2,fma"))) void attend_head_avx2(const Step& s, int64_t bh, float* scores) {
  attend_head(s, bh, scores);
}

void attend_head_portable(const Step& s, int64_t bh, float* scores) { attend_head(s, bh, scores); }

void attend_step(Step& s) {
  void (*attend)(const Step&, int64_t, float*) =
      isa() >= kAvx512 ? attend_head_avx512 : isa() == kAvx2 ? attend_head_avx2 : attend_head_portable;
  s.spans.resize(s.B);
  int64_t work = 0;  // values read
  for (int64_t b = 0; b < s.B; ++b) {
    s.spans[b] = span_of(s.mask + b * s.C, s.C);
    work += 2 * (s.spans[b].end - s.spans[b].begin) * s.H * s.D;
  }
#pragma omp parallel if (work > 65536)
  {
    std::vector<float> scores(s.C > 0 ? s.C : 1);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < s.B * s.H; ++bh) attend(s, bh, scores.data());
  }
}

// ---- the MXNet operator ----

bool read_attrs(const std::unordered_map<std::string, std::string>& attrs, int64_t* heads, float* scale) {
  auto h = attrs.find("num_heads"), sc = attrs.find("scale");
  if (h == attrs.end() || sc == attrs.end()) return false;
  try {
    *heads = std::stoll(h->second);
    *scale = std::stof(sc->second);
  } catch (const std::exception&) {
    return false;
  }
  return *heads > 0;
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs, int* num_in, int* num_out) {
  int64_t heads;
  float scale;
  if (!read_attrs(attrs, &heads, &scale)) {
    MX_ERROR_MSG << "kogpt2_attention_step needs num_heads (a positive integer) and scale (a number)";
    return MX_FAIL;
  }
  *num_in = 5;
  *num_out = 1;
  return MX_SUCCESS;
}

// keys and values: the new column is written into them.
MXReturnValue mutate_inputs(const std::unordered_map<std::string, std::string>& attrs, std::vector<int>* inputs) {
  *inputs = {2, 3};
  return MX_SUCCESS;
}

MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return expect_types("kogpt2_attention_step", *in_types, out_types,
                      [](size_t i) { return i == 4 ? kInt32 : kFloat32; });
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  int64_t H;
  float scale;
  read_attrs(attrs, &H, &scale);
  const auto &qkv = (*in_shapes)[0], &mask = (*in_shapes)[1], &keys = (*in_shapes)[2], &values = (*in_shapes)[3];
  if (qkv.size() != 2 || qkv[1] % 3 != 0 || (qkv[1] / 3) % H != 0) {
    MX_ERROR_MSG << "kogpt2_attention_step: qkv must be (B, 3U) with U a multiple of num_heads " << H;
    return MX_FAIL;
  }
  const int64_t B = qkv[0], U = qkv[1] / 3, D = U / H;
  if (mask.size() != 2 || mask[0] != B) {
    MX_ERROR_MSG << "kogpt2_attention_step: mask must be (B, C) with B = " << B;
    return MX_FAIL;
  }
  const int64_t C = mask[1];
  if (keys.size() != 3 || keys[0] != 1 || keys[1] != B * U || keys[2] != C) {
    MX_ERROR_MSG << "kogpt2_attention_step: keys must be (1, B*H*D, C) = (1, " << B * U << ", " << C << ")";
    return MX_FAIL;
  }
  if (values.size() != 3 || values[0] != 1 || values[1] != B * H * C || values[2] != D) {
    MX_ERROR_MSG << "kogpt2_attention_step: values must be (1, B*H*C, D) = (1, " << B * H * C << ", " << D << ")";
    return MX_FAIL;
  }
  if ((*in_shapes)[4] != std::vector<unsigned int>{1}) {
    MX_ERROR_MSG << "kogpt2_attention_step: slot must be (1,)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {static_cast<unsigned int>(B), static_cast<unsigned int>(U)};
  return MX_SUCCESS;
}

MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  int64_t H;
  float scale;
  read_attrs(attrs, &H, &scale);
  std::vector<MXTensor>& in = *inputs;
  const int64_t B = in[0].shape[0], U = in[0].shape[1] / 3, C = in[1].shape[1];
  const int64_t slot = in[4].data<int32_t>()[0];
  if (slot < 0 || slot >= C) {
    MX_ERROR_MSG << "kogpt2_attention_step: slot " << slot << " is outside the cache's " << C << " slots";
    return MX_FAIL;
  }
  Step step{in[0].data<float>(), in[1].data<float>(), in[2].data<float>(), in[3].data<float>(),
            (*outputs)[0].data<float>(), B, H, U / H, C, slot, scale, {}};
  attend_step(step);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(kogpt2_attention_step)
    .setParseAttrs(parse_attrs)
    .setMutateInputs(mutate_inputs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(no_backward, "cpu");
