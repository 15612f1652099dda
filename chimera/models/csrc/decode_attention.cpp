// Decode attention on x86 CPUs: a few query rows (the query heads of one KV group, times the tokens
// of a speculative block) against a long KV cache, reading each key and value once.
//
// torch's scaled_dot_product_attention and matmul route these shapes (M <= a few dozen rows, T in the
// thousands, D = 64 / 128) to GEMM kernels tuned for large M, which on one core got through the
// cache at 3-4 GB/s against a memory bandwidth of about 11 GB/s. Here each (batch, KV head) walks the
// keys in blocks of BT: per block, the scores of every row (8 keys at a time, with the eight dot
// products reduced together), an online-softmax update, and the values accumulated in registers.
// With fewer (batch, KV head) pairs than threads, as when one sequence is decoded, the keys are
// also split into ranges that threads work through apart and whose softmax states are then merged.
//
// Registered as chimera::decode_attention(q, k, v, mask, scale) so that torch.compile graphs call it
// like any other op; chimera/models/decode_attention.py builds it and falls back to SDPA without it.

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "chimera decode attention needs a CPU with AVX2, FMA and F16C"
#endif
#include <immintrin.h>

namespace {

constexpr int BT = 64;  // keys per block: BT x D floats of keys and of values stay in L1 for the block
constexpr int64_t MIN_SPLIT_BLOCKS = 8;  // the fewest blocks worth a thread of their own

// eight vectors -> one vector whose lane u is the sum of the lanes of a[u]
inline __m256 sum8(const __m256* a) {
  __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// exp(x) lane-wise for x <= 0 (scores minus their running maximum): 2^n e^r with n = round(x log2 e)
// and e^r, |r| <= ln2 / 2, from its degree-6 Taylor polynomial (relative error under 2e-7).
// Lanes below -87 (e^-87 < 2e-38), masked keys' -inf among them, give exactly 0.
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.f), _CMP_GT_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln 2 in two parts, exact products
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(scale)), keep);
}

inline float max_of(const float* s, int n, float init) {
  __m256 m = _mm256_set1_ps(init);
  int t = 0;
  for (; t + 8 <= n; t += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + t));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float mx = init;
  for (float x : lanes) mx = std::max(mx, x);
  for (; t < n; t++) mx = std::max(mx, s[t]);
  return mx;
}

// s[t] = exp(s[t] - mx) for t < n (every s[t] <= mx); returns their sum
inline float exp_shifted(float* s, int n, float mx) {
  const __m256 shift = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  int t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), shift));
    _mm256_storeu_ps(s + t, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = 0.f;
  for (float x : lanes) sum += x;
  for (; t < n; t++) {
    s[t] = std::exp(s[t] - mx);
    sum += s[t];
  }
  return sum;
}

// Keys and values are float32, bfloat16 or float16 (a model's own dtype); each is widened to float32
// as it is loaded, and everything after that is float32.
using bf16 = at::BFloat16;
using f16 = at::Half;
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const bf16* p) {  // bf16 is the top half of a float32
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x), 16));
}
inline __m256 load8(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

template <typename E>
struct Head {
  const float* q;      // (M, D), contiguous
  const E* k;          // T rows of D at stride ks
  const E* v;          // T rows of D at stride vs
  const bool* mask;    // (M, T) at row stride ms, or nullptr: true = may attend
  int64_t ks, vs, ms, M, T;
  float scale;
};

// scores of query row qr against keys t0 .. t0 + n of the block, into s[0 .. n)
template <int C, typename E>
inline void scores(const float* qr, const E* k, int64_t ks, int64_t t0, int n, float scale, float* s) {
  constexpr int D = 8 * C;
  const __m256 sc = _mm256_set1_ps(scale);
  int t = 0;
  for (; t + 8 <= n; t += 8) {
    __m256 acc[8];
    for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
    const E* kb = k + (t0 + t) * ks;
    for (int c = 0; c < C; c++) {
      const __m256 qv = _mm256_loadu_ps(qr + 8 * c);
      for (int u = 0; u < 8; u++) acc[u] = _mm256_fmadd_ps(load8(kb + u * ks + 8 * c), qv, acc[u]);
    }
    _mm256_storeu_ps(s + t, _mm256_mul_ps(sum8(acc), sc));
  }
  for (; t < n; t++) {
    const E* kr = k + (t0 + t) * ks;
    float x = 0.f;
    for (int d = 0; d < D; d++) x += static_cast<float>(kr[d]) * qr[d];
    s[t] = x * scale;
  }
}

// Softmax state of the M rows over keys [begin, end): running maximum m, sum l and unnormalised
// output acc (M x D); start from m = -inf, l = 0, acc = 0.
template <int C, typename E>
void attend_range(const Head<E>& h, int64_t begin, int64_t end, float* m, float* l, float* acc) {
  constexpr int D = 8 * C;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> s(h.M * BT);
  for (int64_t t0 = begin; t0 < end; t0 += BT) {
    const int n = static_cast<int>(std::min<int64_t>(BT, end - t0));
    for (int64_t j = 0; j < h.M; j++) {
      float* sj = s.data() + j * BT;
      scores<C>(h.q + j * D, h.k, h.ks, t0, n, h.scale, sj);
      if (h.mask) {
        const bool* mr = h.mask + j * h.ms + t0;
        for (int t = 0; t < n; t++) sj[t] = mr[t] ? sj[t] : ninf;
      }
      const float mx = max_of(sj, n, m[j]);
      if (mx == ninf) continue;  // every key so far is masked for this row
      const float rescale = std::exp(m[j] - mx);
      l[j] = l[j] * rescale + exp_shifted(sj, n, mx);
      m[j] = mx;
      float* aj = acc + j * D;
      __m256 a[C];
      const __m256 r = _mm256_set1_ps(rescale);
      for (int c = 0; c < C; c++) a[c] = _mm256_mul_ps(_mm256_loadu_ps(aj + 8 * c), r);
      for (int t = 0; t < n; t++) {
        const E* vr = h.v + (t0 + t) * h.vs;
        const __m256 p = _mm256_set1_ps(sj[t]);
        for (int c = 0; c < C; c++) a[c] = _mm256_fmadd_ps(p, load8(vr + 8 * c), a[c]);
      }
      for (int c = 0; c < C; c++) _mm256_storeu_ps(aj + 8 * c, a[c]);
    }
  }
}

template <typename E>
void attend_range_d(int64_t D, const Head<E>& h, int64_t begin, int64_t end, float* m, float* l, float* acc) {
  switch (D) {
    case 32: return attend_range<4, E>(h, begin, end, m, l, acc);
    case 64: return attend_range<8, E>(h, begin, end, m, l, acc);
    case 128: return attend_range<16, E>(h, begin, end, m, l, acc);
    case 256: return attend_range<32, E>(h, begin, end, m, l, acc);
    default: TORCH_CHECK(false, "decode_attention: head_dim ", D, " is not one of 32, 64, 128, 256");
  }
}

// The states of S key ranges of one (batch, head), each laid out as m (M), l (M), acc (M x D),
// merged into out (M x D): each range's sums are rescaled to the overall maximum.
void merge(const float* states, int64_t S, int64_t M, int64_t D, float* out) {
  const int64_t stride = M * (2 + D);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < M; j++) {
    float mx = ninf;
    for (int64_t s = 0; s < S; s++) mx = std::max(mx, states[s * stride + j]);
    float l = 0.f;
    float* o = out + j * D;
    std::fill(o, o + D, 0.f);
    if (mx == ninf) continue;  // a fully masked row gives zeros
    for (int64_t s = 0; s < S; s++) {
      const float* st = states + s * stride;
      const float w = std::exp(st[j] - mx);  // 0 for a range with every key masked
      l += w * st[M + j];
      const float* a = st + 2 * M + j * D;
      for (int64_t d = 0; d < D; d++) o[d] += w * a[d];
    }
    const float inv = 1.f / l;
    for (int64_t d = 0; d < D; d++) o[d] *= inv;
  }
}

// out (b, h, M, D) float32 = attention of q (float32, contiguous) over k, v of element type E.
template <typename E>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const bool* mp, int64_t mb, int64_t ms,
         float scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), M = q.size(2), D = q.size(3), T = k.size(2);
  const float* qp = q.data_ptr<float>();
  const E* kp = k.data_ptr<E>();
  const E* vp = v.data_ptr<E>();
  float* op = out.data_ptr<float>();
  // With fewer (batch, head) pairs than threads, the keys are split into ranges of whole blocks (at
  // least MIN_SPLIT_BLOCKS each) that threads work through apart, then merged (flash decoding).
  const int64_t pairs = B * H, blocks = (T + BT - 1) / BT, threads = at::get_num_threads();
  int64_t splits = pairs >= threads ? 1 : std::min((threads + pairs - 1) / pairs, blocks / MIN_SPLIT_BLOCKS);
  splits = std::max<int64_t>(splits, 1);
  const int64_t span = (blocks + splits - 1) / splits * BT;  // keys per range
  splits = std::max<int64_t>((T + span - 1) / span, 1);
  const int64_t stride = M * (2 + D);
  std::vector<float> states(pairs * splits * stride);
  at::parallel_for(0, pairs * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const int64_t pair = i / splits, range = i % splits, b = pair / H, hh = pair % H;
      Head<E> h{qp + pair * M * D, kp + b * k.stride(0) + hh * k.stride(1), vp + b * v.stride(0) + hh * v.stride(1),
                mp ? mp + b * mb : nullptr, k.stride(2), v.stride(2), ms, M, T, scale};
      float* st = states.data() + i * stride;
      std::fill(st, st + M, -std::numeric_limits<float>::infinity());
      std::fill(st + M, st + stride, 0.f);
      attend_range_d(D, h, range * span, std::min(T, (range + 1) * span), st, st + M, st + 2 * M);
    }
  });
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; pair++)
      merge(states.data() + pair * splits * stride, splits, M, D, op + pair * M * D);
  });
}

// q (b, h, M, D); k, v (b, h, T, D) with unit stride in D; mask (b, M, T) bool with unit stride in T
// (the same for every head), or none. q, k, v share one dtype: float32, bfloat16 or float16; the
// arithmetic is float32. Returns (b, h, M, D) in that dtype.
at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(q_in.dim() == 4 && k.dim() == 4 && v.dim() == 4, "decode_attention: q, k, v must be 4-d");
  const auto dtype = k.scalar_type();
  TORCH_CHECK((dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf) && q_in.scalar_type() == dtype &&
              v.scalar_type() == dtype, "decode_attention: q, k, v must share one dtype of float32, bfloat16, "
              "float16; got ", q_in.scalar_type(), ", ", dtype, ", ", v.scalar_type());
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "decode_attention: keys and values need unit stride in D");
  TORCH_CHECK(k.sizes() == v.sizes() && q_in.size(0) == k.size(0) && q_in.size(1) == k.size(1) &&
              q_in.size(3) == k.size(3), "decode_attention: shapes of q ", q_in.sizes(), ", k ", k.sizes(),
              ", v ", v.sizes(), " do not match");
  const at::Tensor q = q_in.to(at::kFloat).contiguous();
  const int64_t B = q.size(0), M = q.size(2), T = k.size(2);
  const bool* mp = nullptr;
  int64_t mb = 0, ms = 0;
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 3 && mask->size(0) == B && mask->size(1) == M &&
                mask->size(2) == T && mask->stride(2) == 1, "decode_attention: mask must be bool (b, M, T) with unit "
                "stride in T, got ", mask->sizes());
    mp = mask->data_ptr<bool>();
    mb = mask->stride(0);
    ms = mask->stride(1);
  }
  at::Tensor out = at::empty(q.sizes(), q.options());
  const float sc = static_cast<float>(scale);
  if (dtype == at::kFloat) run<float>(q, k, v, mp, mb, ms, sc, out);
  else if (dtype == at::kBFloat16) run<bf16>(q, k, v, mp, mb, ms, sc, out);
  else run<f16>(q, k, v, mp, mb, ms, sc, out);
  return out.to(dtype);
}

}  // namespace

TORCH_LIBRARY(chimera, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(chimera, CPU, m) {
  m.impl("decode_attention", &decode_attention);
}
