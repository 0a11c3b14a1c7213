#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")
// AVX-512 twins of the chains in chains_ref.cpp (the definition): the same integers, bit for bit.
//
// Layout: one vector holds 8 int64 lanes (one per channel); softmax works on 16 int32 lanes. The
// per-channel chains loop over column blocks of 8 outside and rows inside, so a block's constants
// (m, e, bias, i-GELU b/c/one, ...) are loaded once per tile instead of once per row. Tails use
// masked loads and stores (masked-off lanes read as 0 and are never written).
//
// Products: vpmuldq multiplies the low 32 bits of each lane, sign-extended (exact when that lane's
// value fits int32 and the other factor is in [0, 2^31)); vpmullq (DQ) is the full 64-bit product.
// Every bound that makes a product exact is written beside it.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

namespace intbert {
// Types and helpers have internal linkage (anonymous namespace / static): chains_avx2.cpp reuses the names.
namespace {

typedef __m512i V;     // 8 x int64
typedef __mmask8 M;    // one bit per int64 lane
typedef __m512i W;     // 16 x int32
typedef __mmask16 M16;  // one bit per int32 lane

// ---------------------------------------------------------------------------------------------
// Lanes
// ---------------------------------------------------------------------------------------------

static inline V set1(int64_t x) { return _mm512_set1_epi64(x); }
static inline V zero() { return _mm512_setzero_si512(); }
static inline M tail8(int64_t left) { return left >= 8 ? M(0xFF) : M((1u << left) - 1); }
static inline M16 tail16(int64_t left) { return left >= 16 ? M16(0xFFFF) : M16((1u << left) - 1); }
// The sum of 16 int32 lanes, widened to int64 first.
static inline int64_t hsum32(W v) {
  return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)),
                                                  _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1))));
}
static inline V load_i64(const int64_t* p, M k) { return _mm512_maskz_loadu_epi64(k, p); }
static inline V load_i32(const int32_t* p, M k) { return _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, p)); }
static inline V load_i8(const int8_t* p, M k) { return _mm512_cvtepi8_epi64(_mm_maskz_loadu_epi8(k, p)); }
// Stores keep the low bytes of each lane (vpmovq*): the value must already be clamped to the width.
// Full blocks narrow in a register and store plainly (the masked memory form of vpmovqb is slow).
static inline void store_i8(int8_t* p, M k, V v) {
  if (k == M(0xFF))
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm512_cvtepi64_epi8(v));
  else
    _mm512_mask_cvtepi64_storeu_epi8(p, k, v);
}
static inline void store_i32(int32_t* p, M k, V v) {
  if (k == M(0xFF))
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi64_epi32(v));
  else
    _mm512_mask_cvtepi64_storeu_epi32(p, k, v);
}
static inline V clamp(V v, V lo, V hi) { return _mm512_min_epi64(_mm512_max_epi64(v, lo), hi); }
static inline V neg_where(M neg, V v) { return _mm512_mask_sub_epi64(v, neg, zero(), v); }

static inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// ---------------------------------------------------------------------------------------------
// Requantization (intops.rescale / requantize) of one column block
// ---------------------------------------------------------------------------------------------

struct Rq {
  V m, e, half;  // m in [0, 2^31), e in [0, 63], half = 2^(e-1) (0 for e = 0)
  V lo, hi;      // output range of `bits`
  V e16;         // max(e - 16, 0): the split form's final shift
  M split;       // lanes with e >= 16 (and lanes past the tail): the split form applies
  bool wide;     // input_bits > 31
};

static inline Rq rq_load(const RequantC& rq, int64_t c, M k) {
  Rq r;
  r.m = load_i64(rq.m + c, k);
  r.e = load_i64(rq.e + c, k);
  // vpsllvq by e - 1 = -1 (e = 0) is a count >= 64: every bit is shifted out, giving 0.
  r.half = _mm512_sllv_epi64(set1(1), _mm512_sub_epi64(r.e, set1(1)));
  r.lo = set1(-(int64_t(1) << (rq.bits - 1)));
  r.hi = set1((int64_t(1) << (rq.bits - 1)) - 1);
  r.e16 = _mm512_max_epi64(_mm512_sub_epi64(r.e, set1(16)), zero());
  r.split = M(_mm512_cmpge_epi64_mask(r.e, set1(16)) | M(~k));
  r.wide = rq.input_bits > 31;
  return r;
}

// (q m + 2^(e-1)) >> e for lanes whose value fits int32: |q m| <= 2^31 (2^31 - 1) < 2^62.
static inline V rescale_narrow(const Rq& r, V q) {
  return _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(q, r.m), r.half), r.e);
}

// intops.rescale for input_bits > 31, |q| < 2^47. e >= 16: q = qh 2^16 + ql (0 <= ql < 2^16),
// low = (ql m + 2^(e-1)) >> 16 (< 2^47 + 2^62, non-negative: a logical shift), result
// (qh m + low) >> (e - 16) with qh in [-2^31, 2^31) (vpmuldq exact, |qh m| < 2^62). e < 16: q clamped
// to [INT32_MIN + 1, INT32_MAX], then the direct form.
static inline V rescale_wide(const Rq& r, V q) {
  const V ql = _mm512_and_si512(q, set1(0xFFFF));
  const V low = _mm512_srli_epi64(_mm512_add_epi64(_mm512_mul_epu32(ql, r.m), r.half), 16);
  const V split = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(_mm512_srai_epi64(q, 16), r.m), low), r.e16);
  if (r.split == M(0xFF)) return split;
  const V direct = rescale_narrow(r, clamp(q, set1(INT32_MIN + 1), set1(INT32_MAX)));
  return _mm512_mask_blend_epi64(r.split, direct, split);
}

// rescale(q) under the RequantC's input_bits contract (narrow: |q| <= 2^31).
static inline V rescale(const Rq& r, V q) { return r.wide ? rescale_wide(r, q) : rescale_narrow(r, q); }

// rescale(acc + bias) for int32 acc and bias. Narrow: acc m + (bias m + 2^(e-1)) with the bias term
// `bm` computed once per block: the same int64 value as (acc + bias) m + 2^(e-1) (|acc + bias| <= 2^32,
// m < 2^31: every partial product < 2^62). Wide: the int64 sum |acc + bias| <= 2^32 < 2^47.
static inline V bias_term(const Rq& r, V bias) { return _mm512_add_epi64(_mm512_mul_epi32(bias, r.m), r.half); }
static inline V rescale_acc(const Rq& r, V acc, V bias, V bm) {
  if (r.wide) return rescale_wide(r, _mm512_add_epi64(acc, bias));
  return _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(acc, r.m), bm), r.e);
}

// ---------------------------------------------------------------------------------------------
// i-GELU (intops.int_gelu): |q| < 2^31, |b| < 2^22, |erf + one| < 2^31 (input scales >= 2^-20)
// ---------------------------------------------------------------------------------------------

struct Gelu {
  V b, nb, c, one;  // nb = -b > 0
};

static inline Gelu gelu_load(const GeluC& g, int64_t c, M k) {
  Gelu r;
  r.b = load_i64(g.b + c, k);
  r.nb = _mm512_sub_epi64(zero(), r.b);
  r.c = load_i64(g.c + c, k);
  r.one = load_i64(g.one + c, k);
  return r;
}

static inline V int_gelu(const Gelu& g, V q) {
  const V t = _mm512_min_epi64(_mm512_abs_epi64(q), g.nb);
  const V u = _mm512_add_epi64(t, g.b);                       // in [b, 0]: fits int32
  const V p = _mm512_add_epi64(_mm512_mul_epi32(u, u), g.c);  // (t + b)^2 + c, |.| < 2^44
  // sign(q) p: q = 0 takes +p, which the final product multiplies by q = 0 anyway.
  const V erf = _mm512_srai_epi64(neg_where(_mm512_movepi64_mask(q), p), 14);
  const V nv = _mm512_sub_epi64(zero(), _mm512_add_epi64(erf, g.one));  // -(erf + one), fits int32
  return _mm512_mul_epi32(q, nv);                                        // -q (erf + one), |.| < 2^62
}

// ---------------------------------------------------------------------------------------------
// Integer LayerNorm (intops.int_layernorm) on rows of h (int32, |h| < 2^22) kept in a stack buffer
// ---------------------------------------------------------------------------------------------

// Rows wider than this go to the scalar definition (no BERT-family model comes close: hidden <= 8192).
static const int64_t kLnScratch = 16384;  // int32 values of h on the stack (64 KiB)
static const int64_t kLnGroup = 16;       // rows normalised together (constants loaded once per block)

// floor(sqrt(n)) for 0 <= n < 2^62, exactly. With k = floor(sqrt n) < 2^31, x = trunc(fl(sqrt(fl(n))))
// is k or k + 1 (fl: round to nearest double, relative error <= 2^-53; fl and sqrt are monotone):
//  x >= k: fl(n) >= fl(k^2). If k is a power of two, k^2 is a double and its root is k. Otherwise, for
//    2^j < k < 2^(j+1), sqrt(fl(k^2)) >= k sqrt(1 - 2^-53) > k - k 2^-54 - 2^-70 > k - 2^(j-53), the
//    midpoint between k and the double below it (k - 2^(j-52)), so the root rounds to k or above.
//  x <= k + 1: the same argument from above with n < (k + 1)^2.
// One step down fixes x = k + 1 (it happens: n = k^2 - 1 for k = 2^26 + 1); x^2 <= 2^62 cannot overflow.
static int64_t isqrt(int64_t n) {
  const __m128d d = _mm_set_sd(double(n));
  int64_t x = int64_t(_mm_cvtsd_f64(_mm_sqrt_sd(d, d)));
  if (x * x > n) --x;
  return x;
}

// Per-row constants of the normalisation: the rounded mean, std = max(isqrt(var) << shift, 1), and
// for the division (floor_div below) c30 = fl(2^30 / std) and ds = std 2^-30 (exact) as doubles.
struct LnRow {
  int64_t mean, std_;
  double c30, ds;
};

static LnRow ln_row(const int32_t* h, int64_t n, int64_t shift) {
  // 16 int32 lanes: each lane sums at most n / 16 <= 1024 values |h| <= 2^21 (n <= kLnScratch), < 2^31
  W s = _mm512_setzero_si512();
  for (int64_t c = 0; c < n; c += 16) s = _mm512_add_epi32(s, _mm512_maskz_loadu_epi32(tail16(n - c), h + c));
  LnRow row;
  row.mean = floor_div(2 * hsum32(s) + n, 2 * n);  // |sum| <= 2^21 n
  const W mean = _mm512_set1_epi32(int32_t(row.mean));
  const __m128i cnt = _mm_cvtsi64_si128(shift);
  V var = zero();  // sum of (y >> shift)^2 < n 2^46 < 2^62 (|y| < 2^23, n < 2^16)
  for (int64_t c = 0; c < n; c += 16) {
    const M16 k = tail16(n - c);
    // y = h - mean fits int32 (|y| < 2^23); squares by vpmuldq on the even and the odd int32 lanes
    const W ys = _mm512_sra_epi32(_mm512_maskz_sub_epi32(k, _mm512_maskz_loadu_epi32(k, h + c), mean), cnt);
    var = _mm512_add_epi64(var, _mm512_mul_epi32(ys, ys));
    const V odd = _mm512_srli_epi64(ys, 32);
    var = _mm512_add_epi64(var, _mm512_mul_epi32(odd, odd));
  }
  const int64_t v = _mm512_reduce_add_epi64(var);
  row.std_ = isqrt(v) << shift;
  if (row.std_ < 1) row.std_ = 1;  // std < 2^32 (intops.int_layernorm)
  row.c30 = 1073741824.0 / double(row.std_);
  row.ds = double(row.std_) * 0x1p-30;
  return row;
}

// floor(X), X = y 2^30 / d, for |y| < 2^23 and 1 <= d < 2^32 (intops.floor_div_by_reciprocal: the same
// number by another exact route, in double precision, whose units this core has more of):
//  * y and d are exact doubles, and c30 = fl(2^30 / d), p = fl(y c30) = X (1 + e1)(1 + e2), |e| <= 2^-53,
//    so |p - X| <= |X| (2^-52 + 2^-106). For d >= 2, |X| <= (2^23 - 1) 2^29 = 2^52 - 2^29 gives
//    |p - X| <= 1 - 2^-23 + 2^-54 < 1; for d = 1, c30 = 2^30 and p = X exactly. So q0 = floor(p) is
//    floor(X) - 1, floor(X) or floor(X) + 1, and |q0| < 2^53 is an exact double.
//  * r = fma(-q0, ds, y) with ds = d 2^-30 (exact) is (y 2^30 - q0 d) 2^-30 rounded once; that value is
//    an integer multiple of 2^-30 in [-d, 2d) 2^-30, |.| < 8 (34 significant bits at most), so the fma
//    is exact, and r < 0 / r >= ds are exactly y 2^30 - q0 d < 0 / >= d: one step down or up gives floor(X).
//    (For |y| < 2^22, as in every row the chains build, |p - X| < 1/d: p never crosses an integer that X
//    does not reach, so only the step up, for an integer X with p just below it, ever applies.)
//  * the result converts to int64 exactly.
static inline V floor_div_recip(__m256i y32, const LnRow& row) {
  const __m512d y = _mm512_cvtepi32_pd(y32);
  const __m512d ds = _mm512_set1_pd(row.ds), one = _mm512_set1_pd(1.0);
  __m512d q = _mm512_roundscale_pd(_mm512_mul_pd(y, _mm512_set1_pd(row.c30)), _MM_FROUND_TO_NEG_INF);
  __m512d r = _mm512_fnmadd_pd(q, ds, y);  // y - q ds
  const __mmask8 low = _mm512_cmp_pd_mask(r, _mm512_setzero_pd(), _CMP_LT_OQ);
  q = _mm512_mask_sub_pd(q, low, q, one);
  r = _mm512_mask_add_pd(r, low, r, ds);
  q = _mm512_mask_add_pd(q, _mm512_cmp_pd_mask(r, ds, _CMP_GE_OQ), q, one);
  return _mm512_cvtpd_epi64(q);
}

// out[g] = requant(int_layernorm(h[g])) for G rows of h (row stride n).
static void ln_requant_rows(const int32_t* h, int64_t G, int64_t n, const LayerNormC& ln, const RequantC& rq,
                            int8_t* out, int64_t ld_out) {
  LnRow rows[kLnGroup];
  for (int64_t g = 0; g < G; ++g) rows[g] = ln_row(h + g * n, n, ln.shift);
  for (int64_t c = 0; c < n; c += 8) {
    const M k = tail8(n - c);
    const M neg = _mm512_movepi64_mask(load_i64(ln.sign + c, k));  // sign = -1
    const V bias = load_i64(ln.bias + c, k);
    const Rq r = rq_load(rq, c, k);
    for (int64_t g = 0; g < G; ++g) {
      const __m256i y = _mm256_sub_epi32(_mm256_maskz_loadu_epi32(k, h + g * n + c),
                                         _mm256_set1_epi32(int32_t(rows[g].mean)));  // |y| < 2^23
      const V v = neg_where(neg, _mm512_add_epi64(floor_div_recip(y, rows[g]), bias));  // |.| < 2^54
      const V x = clamp(v, set1(INT32_MIN), set1(INT32_MAX));
      store_i8(out + g * ld_out + c, k, clamp(rescale(r, x), r.lo, r.hi));
    }
  }
}

// h = clamp(rescale(acc + bias; add.a) + rescale(res; add.b), add.bits) for G rows into h (stride n).
static void residual_rows(const int32_t* acc, int64_t ld_acc, int64_t G, int64_t n, const int32_t* bias,
                          const int8_t* res, int64_t ld_res, const ResidualC& add, int32_t* h) {
  const V lo = set1(-(int64_t(1) << (add.bits - 1))), hi = set1((int64_t(1) << (add.bits - 1)) - 1);
  for (int64_t c = 0; c < n; c += 8) {
    const M k = tail8(n - c);
    const Rq ra = rq_load(add.a, c, k), rb = rq_load(add.b, c, k);
    const V b = bias ? load_i32(bias + c, k) : zero();
    const V bm = bias_term(ra, b);
    for (int64_t g = 0; g < G; ++g) {
      const V a = rescale_acc(ra, load_i32(acc + g * ld_acc + c, k), b, bm);
      const V s = _mm512_add_epi64(a, rescale(rb, load_i8(res + g * ld_res + c, k)));
      store_i32(h + g * n + c, k, clamp(s, lo, hi));
    }
  }
}

// Embeddings: h = residual(residual(word[id], tt[tid]; add1), pos[pid]; add2) for G tokens.
static void embed_rows(const int8_t* word, const int8_t* tt, const int8_t* pos, const int64_t* ids,
                       const int64_t* tids, const int64_t* pids, int64_t G, int64_t n, const ResidualC& add1,
                       const ResidualC& add2, int32_t* h) {
  const V lo1 = set1(-(int64_t(1) << (add1.bits - 1))), hi1 = set1((int64_t(1) << (add1.bits - 1)) - 1);
  const V lo2 = set1(-(int64_t(1) << (add2.bits - 1))), hi2 = set1((int64_t(1) << (add2.bits - 1)) - 1);
  for (int64_t c = 0; c < n; c += 8) {
    const M k = tail8(n - c);
    const Rq a1 = rq_load(add1.a, c, k), b1 = rq_load(add1.b, c, k);
    const Rq a2 = rq_load(add2.a, c, k), b2 = rq_load(add2.b, c, k);
    for (int64_t g = 0; g < G; ++g) {
      const V w = load_i8(word + ids[g] * n + c, k), t = load_i8(tt + tids[g] * n + c, k);
      const V h1 = clamp(_mm512_add_epi64(rescale(a1, w), rescale(b1, t)), lo1, hi1);  // int8 inputs
      const V p = load_i8(pos + pids[g] * n + c, k);
      store_i32(h + g * n + c, k, clamp(_mm512_add_epi64(rescale(a2, h1), rescale(b2, p)), lo2, hi2));
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The chains
// ---------------------------------------------------------------------------------------------

void bias_requant_avx512(INTBERT_BIAS_REQUANT_ARGS) {
  for (int64_t c = 0; c < n; c += 8) {
    const M k = tail8(n - c);
    const Rq r = rq_load(rq, c, k);
    const V b = bias ? load_i32(bias + c, k) : zero();
    const V bm = bias_term(r, b);
    for (int64_t i = 0; i < rows; ++i) {
      const V y = rescale_acc(r, load_i32(acc + i * ld_acc + c, k), b, bm);
      store_i8(out + i * ld_out + c, k, clamp(y, r.lo, r.hi));
    }
  }
}

void requant_i32_avx512(INTBERT_REQUANT_I32_ARGS) { bias_requant_avx512(q, ld_q, rows, n, nullptr, rq, out, ld_out); }

void bias_gelu_requant2_avx512(INTBERT_BIAS_GELU_REQUANT2_ARGS) {
  for (int64_t c = 0; c < n; c += 8) {
    const M k = tail8(n - c);
    const Gelu gl = gelu_load(g, c, k);
    const Rq r1 = rq_load(rq1, c, k), r2 = rq_load(rq2, c, k);
    const V b = bias ? load_i32(bias + c, k) : zero();
    for (int64_t i = 0; i < rows; ++i) {
      const V x = int_gelu(gl, _mm512_add_epi64(load_i32(acc + i * ld_acc + c, k), b));  // |x| < 2^47
      const V y1 = clamp(rescale(r1, x), r1.lo, r1.hi);                                 // rq1.bits <= 32
      store_i8(out + i * ld_out + c, k, clamp(rescale(r2, y1), r2.lo, r2.hi));
    }
  }
}

void bias_residual_ln_requant_avx512(INTBERT_BIAS_RESIDUAL_LN_REQUANT_ARGS) {
  if (n > kLnScratch) {
    bias_residual_ln_requant_ref(acc, ld_acc, rows, n, bias, res, ld_res, add, ln, rq, out, ld_out);
    return;
  }
  int32_t h[kLnScratch];
  const int64_t group = n * kLnGroup <= kLnScratch ? kLnGroup : kLnScratch / n;
  for (int64_t r0 = 0; r0 < rows; r0 += group) {
    const int64_t G = rows - r0 < group ? rows - r0 : group;
    residual_rows(acc + r0 * ld_acc, ld_acc, G, n, bias, res + r0 * ld_res, ld_res, add, h);
    ln_requant_rows(h, G, n, ln, rq, out + r0 * ld_out, ld_out);
  }
}

void embed_avx512(INTBERT_EMBED_ARGS) {
  if (n > kLnScratch) {
    embed_ref(word, tt, pos, ids, tids, pids, rows, n, add1, add2, ln, rq, out, ld_out);
    return;
  }
  int32_t h[kLnScratch];
  const int64_t group = n * kLnGroup <= kLnScratch ? kLnGroup : kLnScratch / n;
  for (int64_t r0 = 0; r0 < rows; r0 += group) {
    const int64_t G = rows - r0 < group ? rows - r0 : group;
    embed_rows(word, tt, pos, ids + r0, tids + r0, pids + r0, G, n, add1, add2, h);
    ln_requant_rows(h, G, n, ln, rq, out + r0 * ld_out, ld_out);
  }
}

// ---------------------------------------------------------------------------------------------
// i-exp softmax (intops.int_softmax), 16 int32 lanes
// ---------------------------------------------------------------------------------------------

namespace {

// Lanes to attend: inside the row and keep != 0.
static inline M16 kept16(const uint8_t* keep, M16 k) {
  if (!keep) return k;
  const __m128i b = _mm_maskz_loadu_epi8(k, keep);
  return _mm_test_epi8_mask(b, b);
}

struct Exp {
  __m128i pcnt;     // pre_shift (a shift count >= 32 fills with the sign, as the int64 shift does)
  W xmax, floor_t;  // row max of kept x = q >> pre_shift; max(xmax + 30 x0, INT32_MIN)
  W dd;             // -x0 (1 <= dd < 11358 since the score scale is raised to >= 2^-14)
  __m512 inv_dd;    // float32 1 / dd
  W b, c, em;       // i-exp polynomial and the dyadic shift e
  V m;              // dyadic m (< 2^31), int64 lanes
};

// e = round_half_up(L m / 2^(z + e_m)) clamped to [0, 2^15] for 16 scores (intops.int_softmax):
//  x = max(q >> p, xmax + 30 x0) - xmax            (= max(x - xmax, 30 x0), in [30 x0, 0]: int32)
//  z = floor(n / dd), n = -x in [0, 30 dd] < 2^19  (= floor(x / x0), the ((-x) zm) >> 33 of intops):
//      n and 1/dd in float32 (n exact, 1/dd and the product each within 2^-24 relative), so the float
//      quotient is within 30 2^-22.9 < 2^-17 of n / dd <= 30. A non-integer n / dd is at least
//      1/dd > 2^-14 from an integer, so truncation gives floor(n / dd) except when n / dd is an
//      integer and the float falls just below: then one too small, which r' = n - z dd >= dd detects.
//  r = x - x0 z = -r' in (x0, 0];  L = (r + b) r + c   (|(r + b) r| < 2^30, L in (0, 2^30): int32)
//  L m < 2^61 (int64, even and odd lanes by vpmuldq); a negative (L m + half) floors below 0 and
//  clamps to 0, so a logical shift serves the non-negative ones.
static inline W exp16(const Exp& x, const int32_t* q, M16 k) {
  const W s = _mm512_sra_epi32(_mm512_maskz_loadu_epi32(k, q), x.pcnt);
  const W d = _mm512_sub_epi32(_mm512_max_epi32(s, x.floor_t), x.xmax);
  const W n = _mm512_sub_epi32(_mm512_setzero_si512(), d);
  W z = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(n), x.inv_dd));
  W rr = _mm512_sub_epi32(n, _mm512_mullo_epi32(z, x.dd));
  const M16 up = _mm512_cmpge_epi32_mask(rr, x.dd);
  z = _mm512_mask_add_epi32(z, up, z, _mm512_set1_epi32(1));
  rr = _mm512_mask_sub_epi32(rr, up, rr, x.dd);
  const W r = _mm512_sub_epi32(_mm512_setzero_si512(), rr);
  const W L = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(r, x.b), r), x.c);
  const W sh = _mm512_min_epi32(_mm512_add_epi32(z, x.em), _mm512_set1_epi32(63));
  // even lanes (low halves of the int64 lanes) and odd lanes (high halves, moved down)
  const V lo32 = set1(0xFFFFFFFF);
  const V sh_e = _mm512_and_si512(sh, lo32), sh_o = _mm512_srli_epi64(sh, 32);
  const V half_e = _mm512_sllv_epi64(set1(1), _mm512_sub_epi64(sh_e, set1(1)));  // 0 for a shift of 0
  const V half_o = _mm512_sllv_epi64(set1(1), _mm512_sub_epi64(sh_o, set1(1)));
  const V ve = _mm512_add_epi64(_mm512_mul_epi32(L, x.m), half_e);
  const V vo = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(L, 32), x.m), half_o);
  const V top = set1(1 << 15);
  const V ee = _mm512_maskz_min_epu64(M(~_mm512_movepi64_mask(ve)), _mm512_srlv_epi64(ve, sh_e), top);
  const V eo = _mm512_maskz_min_epu64(M(~_mm512_movepi64_mask(vo)), _mm512_srlv_epi64(vo, sh_o), top);
  return _mm512_or_si512(ee, _mm512_slli_epi64(eo, 32));
}

static const int64_t kSmScratch = 8192;  // exponentials kept on the stack; longer rows recompute them

}  // namespace

void softmax_row_avx512(INTBERT_SOFTMAX_ROW_ARGS) {
  Exp x;
  x.pcnt = _mm_cvtsi64_si128(sm.pre_shift);
  W vmax = _mm512_set1_epi32(INT32_MIN);
  M16 any = 0;
  for (int64_t i = 0; i < L; i += 16) {
    const M16 k = tail16(L - i);
    const M16 kk = kept16(keep ? keep + i : nullptr, k);
    const W s = _mm512_sra_epi32(_mm512_maskz_loadu_epi32(k, scores + i), x.pcnt);
    vmax = _mm512_mask_max_epi32(vmax, kk, vmax, s);
    any |= kk;
  }
  if (!any) {  // every key masked: all zeros (intops: e = 0 everywhere, sum clamped to 1)
    memset(probs, 0, size_t(L));
    return;
  }
  const int64_t xmax = _mm512_reduce_max_epi32(vmax);
  const int64_t t = xmax + 30 * sm.x0;  // EXP_MAX_HALVINGS
  x.xmax = _mm512_set1_epi32(int32_t(xmax));
  x.floor_t = _mm512_set1_epi32(int32_t(t < INT32_MIN ? INT32_MIN : t));
  x.dd = _mm512_set1_epi32(int32_t(-sm.x0));
  x.inv_dd = _mm512_set1_ps(1.0f / float(-sm.x0));
  x.b = _mm512_set1_epi32(int32_t(sm.b));
  x.c = _mm512_set1_epi32(int32_t(sm.c));
  x.em = _mm512_set1_epi32(int32_t(sm.e));
  x.m = set1(sm.m);

  int32_t buf[kSmScratch];
  const bool keep_e = L <= kSmScratch;
  int64_t total = 0;  // < L 2^15
  for (int64_t i0 = 0; i0 < L; i0 += int64_t(1) << 20) {  // int32 lane sums stay < 2^16 2^15
    const int64_t i1 = L - i0 < (int64_t(1) << 20) ? L : i0 + (int64_t(1) << 20);
    W sum = _mm512_setzero_si512();
    for (int64_t i = i0; i < i1; i += 16) {
      const M16 k = tail16(i1 - i);
      const W e = _mm512_maskz_mov_epi32(kept16(keep ? keep + i : nullptr, k), exp16(x, scores + i, k));
      if (keep_e) _mm512_mask_storeu_epi32(buf + i, k, e);
      sum = _mm512_add_epi32(sum, e);
    }
    total += _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(sum)),
                                                      _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(sum, 1))));
  }
  if (total < 1) total = 1;
  const int64_t factor = (int64_t(1) << 32) / total;  // SOFTMAX_SUM_BITS; 2^32 only for total = 1
  const V top = set1((int64_t(1) << sm.output_bit) - 1);
  const __m128i cnt = _mm_cvtsi64_si128(factor == (int64_t(1) << 32) ? 0 : 32 - sm.output_bit);
  // p = min((e factor) >> (32 - output_bit), 2^output_bit - 1), e factor <= 2^47: for factor < 2^32 by
  // vpmuludq (e <= 2^15); for factor = 2^32 the same number is e << output_bit.
  const V f = set1(factor == (int64_t(1) << 32) ? (int64_t(1) << sm.output_bit) : factor);
  for (int64_t i = 0; i < L; i += 16) {
    const M16 k = tail16(L - i);
    const W e = keep_e ? _mm512_maskz_loadu_epi32(k, buf + i)
                       : _mm512_maskz_mov_epi32(kept16(keep ? keep + i : nullptr, k), exp16(x, scores + i, k));
    const V pe = _mm512_min_epu64(_mm512_srl_epi64(_mm512_mul_epu32(e, f), cnt), top);
    const V po = _mm512_min_epu64(_mm512_srl_epi64(_mm512_mul_epu32(_mm512_srli_epi64(e, 32), f), cnt), top);
    _mm512_mask_cvtepi32_storeu_epi8(probs + i, k, _mm512_or_si512(pe, _mm512_slli_epi64(po, 32)));
  }
}

}  // namespace intbert
